"""Discovery sources: where task IDs come from.

Each source is one module with a class that satisfies `DiscoverySource`
(`base.py`); `runner.run_discovery` moves what they find into the store.
"""
