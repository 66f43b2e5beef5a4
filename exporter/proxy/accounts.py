"""Which configured account a create call's key belongs to.

The proxy never keeps a caller's key: it compares a digest of the key in the
`Authorization: Bearer` header with digests of the configured accounts' keys
(`hmac.compare_digest`, every account compared, so the time taken does not
say which matched), and passes the header on unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter
from pydantic import SecretStr

from exporter.logsetup import EveryInterval

log = logging.getLogger(__name__)
LOG_INTERVAL_SECONDS = 60.0


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class KeyAccounts:
    """Maps an Authorization header to the account whose key it carries."""

    def __init__(
        self, keys: Mapping[str, SecretStr], registry: CollectorRegistry | None = None
    ) -> None:
        self._digests = [(name, _digest(key.get_secret_value())) for name, key in keys.items()]
        self._unmatched = Counter(
            "lemondata_proxy_unmatched_key_creates",
            "Create calls through the proxy whose API key is none of the configured "
            "accounts' keys: forwarded, their task not tracked.",
            registry=registry,
        )
        self._log_due = EveryInterval(LOG_INTERVAL_SECONDS)

    def account_of(self, authorization: str | None) -> str | None:
        """The account whose key `authorization` carries; None (counted, logged once a
        minute, without the key) if none."""
        scheme, _, key = (authorization or "").strip().partition(" ")
        found = None
        if scheme.lower() == "bearer" and key.strip():
            digest = _digest(key.strip())
            for name, expected in self._digests:
                if hmac.compare_digest(digest, expected) and found is None:
                    found = name
        if found is None:
            self._unmatched.inc()
            if self._log_due.due():
                log.warning(
                    "proxy: a create call's API key is none of the configured accounts' "
                    "keys; the call was forwarded, its task is not tracked "
                    "(lemondata_proxy_unmatched_key_creates_total counts every one)"
                )
        return found
