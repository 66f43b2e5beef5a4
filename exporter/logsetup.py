"""Logging set-up, with every known secret masked in every record."""

from __future__ import annotations

import logging
import sys

_secrets: set[str] = set()


def add_secret(secret: str) -> None:
    """Mask `secret` wherever it would appear in a log line (defence in depth)."""
    if len(secret) >= 4:
        _secrets.add(secret)


def redact(text: str) -> str:
    """`text` with every known secret masked (for messages printed without logging)."""
    for secret in _secrets:
        text = text.replace(secret, "<redacted>")
    return text


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("urllib3").setLevel(logging.WARNING)
