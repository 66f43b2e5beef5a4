"""Pure parsing and validation of task API requests.

Nothing here does I/O. Every problem becomes an `ApiError` carrying the HTTP
status, a stable machine-readable code and a message for people; messages
name the offending field but never echo its value (it may be huge or hostile).
The limits and patterns here are the ones the OpenAPI document publishes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from exporter.config import check_poll_path
from exporter.model import (
    DEFAULT_ACCOUNT,
    TASK_ID_PATTERN,
    DiscoveredTask,
    Status,
    valid_account,
    valid_task_id,
)

SOURCE = "api"  # the `source` of registered tasks, and their discovered_total label

# The same alphabet as the `model` label, so a registered model is its own label.
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$"
MAX_MODEL_CHARS = 64
MAX_POLL_URL_CHARS = 512
# Printable ASCII except `\` and `#`, starting with one `/` (check_poll_path's
# rules, restricted to ASCII so the same rule can be published as a pattern),
# segment by segment so that none is a dot segment (`.`, `..`, also before a
# `;`): plain characters, `.` and `;`, and percent escapes except those of `.`,
# `/`, `;`, `\` and `%` (exporter/upstream/paths.py's rule, decoded or not).
# The length (MAX_POLL_URL_CHARS) is published as maxLength.
_ESCAPE = r"%(?:[0146-9A-Fa-f][0-9A-Fa-f]|2[0-46-9A-Da-d]|3[0-9AC-Fac-f]|5[0-9ABD-Fabd-f])"
_PLAIN = r"[\x21\x22\x24\x26-\x2d\x30-\x3a\x3c-\x3e\x40-\x5b\x5d-\x7e]"  # not # % . / ; ? \\
_CHAR = rf"(?:{_PLAIN}|{_ESCAPE}|[.;])"
_SEGMENT = (
    rf"(?:(?:{_PLAIN}|{_ESCAPE}|;){_CHAR}*"  # not starting with a dot
    rf"|\.(?:{_PLAIN}|{_ESCAPE}){_CHAR}*"  # one dot, then not a dot or `;`
    rf"|\.\.(?:{_PLAIN}|{_ESCAPE}|\.){_CHAR}*)"  # two dots, then not `;`
)
_QUERY = r"\?[\x21\x22\x24-\x5b\x5d-\x7e]*"
POLL_URL_PATTERN = rf"^/(?:{_SEGMENT}(?:/(?:{_SEGMENT})?)*)?(?:{_QUERY})?$"
TASK_ID_TEXT = "1-128 characters of A-Z a-z 0-9 . _ : -, starting with a letter or digit"
TASK_FIELDS = ("task_id", "model", "poll_url", "account")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
LIST_PARAMETERS = ("status", "model", "limit", "cursor")
_LIMIT_PATTERN = re.compile(r"[0-9]{1,7}")
_MODEL_RE = re.compile(MODEL_PATTERN)
_POLL_URL_RE = re.compile(POLL_URL_PATTERN)


class ApiError(Exception):
    """A request the API refuses: HTTP status, stable code, message for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def check_model(value: str, field: str) -> str:
    if not _MODEL_RE.fullmatch(value):
        raise bad_request(
            "invalid_model",
            f"{field}: must be 1-{MAX_MODEL_CHARS} characters of A-Z a-z 0-9 . _ : / -, "
            "starting with a letter or digit",
        )
    return value


def _check_poll_url(value: str, field: str) -> str:
    try:
        check_poll_path(value)
    except ValueError as exc:
        raise bad_request("invalid_poll_url", f"{field}: {exc}") from None
    if not _POLL_URL_RE.fullmatch(value):
        raise bad_request(
            "invalid_poll_url",
            f"{field}: must be a path on the API base (such as /v1/tasks/ID) of at most "
            f"{MAX_POLL_URL_CHARS} printable ASCII characters, without \\, # or dot segments",
        )
    return value


def parse_json(body: bytes) -> Any:
    """The body as JSON (UTF-8, no NaN or Infinity)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("invalid_json", "the body is not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise bad_request("invalid_json", "the body is not valid JSON") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _check_account(data: dict[str, Any], field: str, accounts: Sequence[str]) -> str:
    """The task's account: the one it names, else the first configured."""
    if "account" not in data:
        return accounts[0]
    account = data["account"]
    # The value is never echoed: a caller may have put a key there by mistake.
    if not isinstance(account, str) or not valid_account(account):
        raise bad_request(
            "invalid_account", f"{field}: must be an account name (a-z 0-9 _ -, at most 32)"
        )
    if account not in accounts:
        raise bad_request("unknown_account", f"{field}: not one of the configured accounts")
    return account


def _parse_task(
    data: Any, field: str, accounts: Sequence[str] = (DEFAULT_ACCOUNT,)
) -> DiscoveredTask:
    if not isinstance(data, dict):
        raise bad_request("invalid_body", f"{field}: must be a JSON object")
    unknown = sorted(set(data) - set(TASK_FIELDS))
    if unknown:
        raise bad_request(
            "unknown_field",
            f"{field}: unknown field(s) {', '.join(map(_name, unknown))}; "
            f"allowed: {', '.join(TASK_FIELDS)}",
        )
    prefix = f"{field}." if field != "body" else ""
    task_id = data.get("task_id")
    if "task_id" not in data:
        raise bad_request("missing_field", f"{prefix}task_id: required")
    if not isinstance(task_id, str) or not valid_task_id(task_id):
        raise bad_request("invalid_task_id", f"{prefix}task_id: must be {TASK_ID_TEXT}")
    model = data.get("model")
    if "model" in data:
        if not isinstance(model, str):
            raise bad_request("invalid_model", f"{prefix}model: must be a string")
        check_model(model, f"{prefix}model")
    poll_url = data.get("poll_url")
    if "poll_url" in data:
        if not isinstance(poll_url, str):
            raise bad_request("invalid_poll_url", f"{prefix}poll_url: must be a string")
        _check_poll_url(poll_url, f"{prefix}poll_url")
    account = _check_account(data, f"{prefix}account", accounts)
    return DiscoveredTask(task_id, SOURCE, model=model, poll_url=poll_url, account=account)


def _name(key: str) -> str:
    """A field name as it may appear in a message: short and printable."""
    shown = key[:40]
    return json.dumps(shown) + ("..." if len(key) > 40 else "")


def parse_registration(
    data: Any, max_batch: int, accounts: Sequence[str] = (DEFAULT_ACCOUNT,)
) -> list[DiscoveredTask]:
    """One task (`{"task_id": ...}`) or a batch (`{"tasks": [...]}`), deduplicated.

    Duplicate IDs in a batch are accepted (registration is idempotent); the
    first occurrence wins. `accounts`: the configured names; a task naming none
    belongs to the first.
    """
    if not isinstance(data, dict):
        raise bad_request("invalid_body", "the body must be a JSON object")
    if "tasks" not in data:
        return [_parse_task(data, "body", accounts)]
    unknown = sorted(set(data) - {"tasks"})
    if unknown:
        raise bad_request(
            "unknown_field",
            f"unknown field(s) {', '.join(map(_name, unknown))} next to tasks; a batch "
            'is {"tasks": [...]} alone',
        )
    items = data["tasks"]
    if not isinstance(items, list):
        raise bad_request("invalid_body", "tasks: must be a list of task objects")
    if not items:
        raise bad_request("invalid_body", "tasks: must hold at least one task")
    if len(items) > max_batch:
        raise bad_request(
            "batch_too_large", f"tasks: at most {max_batch} tasks per request, got {len(items)}"
        )
    tasks: dict[str, DiscoveredTask] = {}
    for index, item in enumerate(items):
        task = _parse_task(item, f"tasks[{index}]", accounts)
        tasks.setdefault(task.task_id, task)
    return list(tasks.values())


@dataclass(frozen=True, slots=True)
class ListQuery:
    status: Status | None = None
    model: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None  # the last task ID of the previous page


def parse_list_query(query_string: str) -> ListQuery:
    """`status`, `model`, `limit` and `cursor`; anything else is refused."""
    try:
        pairs = parse_qsl(
            query_string,
            keep_blank_values=True,
            errors="strict",
            max_num_fields=len(LIST_PARAMETERS),
        )
    except UnicodeDecodeError:
        raise bad_request("invalid_query", "the query string is not UTF-8") from None
    except ValueError:
        raise bad_request(
            "invalid_query", f"too many query parameters; allowed: {', '.join(LIST_PARAMETERS)}"
        ) from None
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in LIST_PARAMETERS:
            raise bad_request(
                "unknown_parameter",
                f"unknown query parameter {_name(name)}; allowed: {', '.join(LIST_PARAMETERS)}",
            )
        if name in values:
            raise bad_request("invalid_query", f"{name}: given more than once")
        values[name] = value
    status = None
    if "status" in values:
        try:
            status = Status(values["status"])
        except ValueError:
            raise bad_request(
                "invalid_status", f"status: must be one of {', '.join(s.value for s in Status)}"
            ) from None
    model = check_model(values["model"], "model") if "model" in values else None
    limit = DEFAULT_LIMIT
    if "limit" in values:
        text = values["limit"]
        if not _LIMIT_PATTERN.fullmatch(text) or not 1 <= int(text) <= MAX_LIMIT:
            raise bad_request("invalid_limit", f"limit: must be an integer from 1 to {MAX_LIMIT}")
        limit = int(text)
    cursor = values.get("cursor")
    if cursor is not None and not valid_task_id(cursor):
        raise bad_request(
            "invalid_cursor", "cursor: pass back the next_cursor of the previous page unchanged"
        )
    return ListQuery(status, model, limit, cursor)


def task_id_from_path(text: str) -> str | None:
    """The task ID of a /tasks/{task_id} path segment, None if it cannot be one."""
    return text if valid_task_id(text) else None


# Published in the OpenAPI document: the exact pattern valid_task_id checks.
TASK_ID_REGEX = TASK_ID_PATTERN.pattern
