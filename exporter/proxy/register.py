"""What a create call registers: pure functions over its request and response bodies."""

from __future__ import annotations

import json
import zlib
from typing import Any

from exporter.config import check_poll_path
from exporter.model import DiscoveredTask, valid_task_id

SOURCE = "proxy"
MAX_MODEL_CHARS = 256
# Statuses of a create answer that name a task still to be polled.
_TASK_STATUSES = ("pending", "processing", "queued", "in_progress")


class NotATask(Exception):
    """The answer names no task to watch (a synchronous result, an error...)."""


def request_model(body: bytes | None) -> str | None:
    """`model` of a JSON create request, if there is one."""
    if not body:
        return None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    model = data.get("model") if isinstance(data, dict) else None
    if isinstance(model, str) and 0 < len(model.strip()) <= MAX_MODEL_CHARS:
        return model.strip()
    return None


def decode_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body without its content coding (gzip, deflate); ValueError if it cannot be."""
    coding = (content_encoding or "identity").strip().lower()
    if coding in ("", "identity"):
        return body
    if coding in ("gzip", "x-gzip", "deflate"):
        wbits = 16 + zlib.MAX_WBITS if "gzip" in coding else zlib.MAX_WBITS
        decoder = zlib.decompressobj(wbits)
        try:
            plain = decoder.decompress(body, limit + 1)
        except zlib.error:
            raise ValueError(f"body is not valid {coding}") from None
        if len(plain) > limit:
            raise ValueError("decoded body too large")
        return plain
    raise ValueError(f"content coding {coding!r} not supported")


def created_task(
    model: str | None, response_body: bytes, base_url: str
) -> tuple[DiscoveredTask, str | None]:
    """The task a create answer names, and a problem with its poll_url (then left out).

    Raises NotATask when the answer names none.
    """
    try:
        data: Any = json.loads(response_body)
    except (ValueError, UnicodeDecodeError):
        raise NotATask("answer is not JSON") from None
    if not isinstance(data, dict):
        raise NotATask("answer is not a JSON object")
    task_id = data.get("task_id")
    if task_id is None and (
        "poll_url" in data or str(data.get("status", "")).lower() in _TASK_STATUSES
    ):
        task_id = data.get("id")
    if task_id is None:
        raise NotATask("answer has no task_id")
    if not isinstance(task_id, str) or not valid_task_id(task_id):
        raise NotATask("task_id is not a valid task ID")
    if model is None and isinstance(data.get("model"), str):
        model = data["model"].strip()[:MAX_MODEL_CHARS] or None
    poll_url, problem = _poll_path(data.get("poll_url"), base_url)
    return DiscoveredTask(task_id, SOURCE, model=model, poll_url=poll_url), problem


def _poll_path(value: object, base_url: str) -> tuple[str | None, str | None]:
    if value is None or value == "":
        return None, None
    if not isinstance(value, str):
        return None, "poll_url is not a string"
    # An absolute URL on the API base is the same path; any other host is refused.
    if value.startswith(base_url + "/"):
        value = value[len(base_url) :]
    try:
        return check_poll_path(value), None
    except ValueError as exc:
        return None, f"poll_url {exc}"
