"""Logging set-up, with every known secret masked in every record.

Three formats (`--log.format`): `text` for people (the default), and `logfmt`
and `json` for machines, one record per line. Every timestamp is RFC 3339 with
its UTC offset, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable
from datetime import datetime

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "logfmt", "json")
DEFAULT_LOG_FORMAT = "text"
_HANDLER_NAME = "lemondata-exporter"

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


def rfc3339(timestamp: float) -> str:
    """e.g. 2026-12-01T11:17:14.123+00:00, in the machine's time zone."""
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="milliseconds")


class _Formatter(logging.Formatter):
    """Masks secrets in the message and the traceback before they are encoded."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.style_name = style

    def format(self, record: logging.LogRecord) -> str:
        message = redact(record.getMessage())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        error = redact(record.exc_text) if record.exc_text else ""
        fields = {
            "ts": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": message,
        }
        if error:
            fields["error"] = error
        if self.style_name == "json":
            return json.dumps(fields, ensure_ascii=False)
        if self.style_name == "logfmt":
            return " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields.items())
        line = f"{fields['ts']} {record.levelname} {record.name}: {message}"
        return f"{line}\n{error}" if error else line


def _logfmt_value(value: str) -> str:
    if value and not any(c in value for c in ' ="\\') and value.isprintable():
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def setup_logging(level: str, log_format: str = DEFAULT_LOG_FORMAT) -> None:
    """Every record to stderr in `log_format` (text, logfmt or json) from `level` up."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(log_format))
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    # Replaces its own handler from an earlier call; leaves others (e.g. a test's) alone.
    root.handlers[:] = [h for h in root.handlers if h.get_name() != _HANDLER_NAME] + [handler]
    root.setLevel(level.upper())
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def add_log_flags(
    parser: argparse.ArgumentParser,
    level_default: str | None = "info",
    level_help: str = "default %(default)s",
) -> None:
    """`--log.level` and `--log.format`, the flag names of the Prometheus exporters."""
    parser.add_argument(
        "--log.level", dest="log_level", default=level_default, choices=LOG_LEVELS, help=level_help
    )
    parser.add_argument(  # the older spelling of `simulate`, kept working, not shown
        "--log-level",
        dest="log_level",
        default=argparse.SUPPRESS,
        choices=LOG_LEVELS,
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        default=DEFAULT_LOG_FORMAT,
        choices=LOG_FORMATS,
        help="text for people, logfmt or json for log collectors (default %(default)s)",
    )


class EveryInterval:
    """Says when a recurring log line is due: at most once per `seconds` per key
    (the first time at once), so that a flood of the same trouble is one line."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds = seconds
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def due(self, key: Hashable = None) -> bool:
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._seconds:
                return False
            self._last[key] = now
            return True
