"""Status response bodies -> `StatusReport`. Pure; the body is untrusted."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from exporter.model import StatusReport

MAX_ERROR_CHARS = 8192  # kept for people in the store; the rest is cut
MAX_FIELD_CHARS = 256


class InvalidResponse(ValueError):
    """The body is not a usable status response."""


def parse_status_body(body: bytes) -> StatusReport:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidResponse("body is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidResponse("body is not a JSON object")
    status = data.get("status")
    # A status of only spaces is none at all.
    if not isinstance(status, str) or not status.strip() or len(status) > MAX_FIELD_CHARS:
        raise InvalidResponse("no status field")
    return StatusReport(
        status=_encodable(status.strip().lower()),
        created=_timestamp(data.get("created", data.get("created_at"))),
        updated=_timestamp(data.get("updated", data.get("updated_at"))),
        model=_short_text(data.get("model")),
        error=_error_text(data.get("error")),
        cancelled=data.get("cancelled") is True,
        progress=_progress(data.get("progress")),
    )


def parse_error_code(body: bytes) -> str | None:
    """`error.code` of an error body such as `{"error": {"code": "..."}}`, if any."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _timestamp(value: Any) -> float | None:
    """Unix seconds from a number, a numeric string or an ISO 8601 string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                return None
    if isinstance(value, int) and abs(value) > 1e15:
        return None  # an integer too large for a float (isfinite would overflow)
    if isinstance(value, int | float) and math.isfinite(value) and value > 0:
        # Milliseconds are a common mistake; 1e11 s is the year 5138.
        return float(value) / 1000.0 if value > 1e11 else float(value)
    return None


def _short_text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return _encodable(value.strip()[:MAX_FIELD_CHARS])
    return None


def _error_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("message")
    if isinstance(value, str) and value:
        return _encodable(value[:MAX_ERROR_CHARS])
    return None


def _encodable(text: str) -> str:
    """JSON may carry lone surrogates (`"\\ud800"`), which no store can encode as UTF-8."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _progress(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 100:
        return float(value)
    return None
