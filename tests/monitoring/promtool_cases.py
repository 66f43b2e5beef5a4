"""The promtool unit tests of the default bundle, for other rule files (e.g. a PrometheusRule)."""

from __future__ import annotations

from typing import Any

from monitoring import rule_tests
from monitoring.config import BundleConfig


def promtool_tests(rule_files: list[str]) -> dict[str, dict[str, Any]]:
    """Test file stem -> the generated promtool tests, reading `rule_files`."""
    return rule_tests.pointed_at(rule_tests.documents(BundleConfig()), rule_files)
