"""The task API: a WSGI app for everything under /api/.

    POST   /api/v1/tasks             register one task or a batch (idempotent)
    GET    /api/v1/tasks             list, filtered by status and model, paginated
    GET    /api/v1/tasks/{task_id}   one task, its status history and error text
    DELETE /api/v1/tasks/{task_id}   stop tracking it
    GET    /api/v1/openapi.json      the OpenAPI document (no token needed)

Without a token the whole family answers 404 with a JSON body saying how to
turn it on. Every answer is JSON (`{"error": {"code", "message"}}` for
errors); an unexpected exception is logged and answered with a 500 that holds
no details.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from pydantic import SecretStr

from exporter.api.auth import TOKEN_ENV, BearerCheck
from exporter.api.openapi import PREFIX, openapi_document
from exporter.api.schema import detail_json, task_json
from exporter.api.validation import (
    SOURCE,
    ApiError,
    parse_json,
    parse_list_query,
    parse_registration,
    task_id_from_path,
)
from exporter.intake import (
    ACCOUNT_REASON,
    LIMIT_SETTING,
    RegistrationRecorder,
    TaskIntake,
    register_tasks,
)
from exporter.model import DEFAULT_ACCOUNT
from exporter.store.base import IntakeStore, TaskReader
from exporter.store.guard import StoreUnavailable

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
Headers = list[tuple[str, str]]
# Bodies refused before they were read are read and dropped up to this size, so
# the client gets the answer instead of a connection reset.
DRAIN_LIMIT_BYTES = 1 << 20
DISABLED_MESSAGE = (
    "The task API is off. Set a token in $" + TOKEN_ENV + " or in a file named by "
    "api_server.token_file in the config, restart the exporter, and send it as "
    "`Authorization: Bearer <token>`. See docs/api.md."
)


class ApiStore(TaskReader, IntakeStore, Protocol):
    """What the task API uses: the readers' calls, and registering tasks."""


class TaskApi:
    """The WSGI app mounted on /api/ by `exporter.api.mounts`."""

    def __init__(
        self,
        store: ApiStore,
        recorder: RegistrationRecorder,
        token: SecretStr | None,
        *,
        max_body_bytes: int = 65_536,
        max_batch_size: int = 500,
        clock: Callable[[], float] = time.time,
        intake: TaskIntake | None = None,
        accounts: Sequence[str] = (DEFAULT_ACCOUNT,),
    ) -> None:
        """`accounts`: the configured accounts' names, the first taking tasks that
        name none."""
        self.store = store
        self.accounts = tuple(accounts)
        self.recorder = recorder
        self.max_body_bytes = max_body_bytes
        self.max_batch_size = max_batch_size
        self._check = BearerCheck(token) if token is not None else None
        self._clock = clock
        self._intake = intake
        self._openapi = _encode(openapi_document(max_batch_size, self.accounts))

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            status, headers, body = self._handle(environ)
        except ApiError as exc:
            status, headers, body = _error(exc)
        except StoreUnavailable as exc:
            # Counted and logged (once a minute) by the store guard; nothing was stored.
            status, headers, body = _error(
                ApiError(
                    503,
                    "store_unavailable",
                    f"the task store cannot be used now, so nothing was changed: {exc}. "
                    "Retry later; /-/healthy says when it works again",
                )
            )
            headers.append(("Retry-After", "10"))
        except Exception:
            log.exception(
                "task API: unexpected error on %s %s",
                environ.get("REQUEST_METHOD"),
                environ.get("PATH_INFO"),
            )
            status, headers, body = _error(
                ApiError(500, "internal_error", "internal error; the exporter's log has details")
            )
        headers += [
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
        ]
        start_response(_STATUS_LINES[status], headers)
        return [body]

    def _handle(self, environ: dict[str, Any]) -> tuple[int, Headers, bytes]:
        if self._check is None:
            raise ApiError(404, "api_disabled", DISABLED_MESSAGE)
        path = environ.get("PATH_INFO", "")
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        task_id: str | None = None
        if path == f"{PREFIX}/openapi.json":
            allowed: tuple[str, ...] = ("GET",)
        elif path == f"{PREFIX}/tasks":
            allowed = ("GET", "POST")
        elif path.startswith(f"{PREFIX}/tasks/"):
            allowed = ("GET", "DELETE")
            task_id = path.removeprefix(f"{PREFIX}/tasks/")
        else:
            raise ApiError(
                404, "not_found", f"no such endpoint; the API is described at {PREFIX}/openapi.json"
            )
        if method not in allowed:
            _drain(environ)
            error = ApiError(405, "method_not_allowed", f"allowed here: {', '.join(allowed)}")
            status, headers, body = _error(error)
            return status, [*headers, ("Allow", ", ".join(allowed))], body
        if path == f"{PREFIX}/openapi.json":
            return 200, [("Content-Type", "application/json")], self._openapi
        if not self._check(environ.get("HTTP_AUTHORIZATION")):
            _drain(environ)
            status, headers, body = _error(
                ApiError(
                    401,
                    "unauthorized",
                    "send the exporter's API token as `Authorization: Bearer <token>`",
                )
            )
            return (
                status,
                [*headers, ("WWW-Authenticate", 'Bearer realm="lemondata-exporter"')],
                body,
            )
        if task_id is not None:
            valid_id = task_id_from_path(task_id)
            return self._delete(valid_id) if method == "DELETE" else self._show(valid_id)
        if method == "POST":
            return self._register(environ)
        return self._list(environ.get("QUERY_STRING", ""))

    def _register(self, environ: dict[str, Any]) -> tuple[int, Headers, bytes]:
        body = self._read_body(environ)
        try:
            tasks = parse_registration(parse_json(body), self.max_batch_size, self.accounts)
        except ApiError as exc:
            if self._intake is not None:
                unknown = exc.code == "unknown_account" and self._intake.accounts is not None
                self._intake.reject(SOURCE, ACCOUNT_REASON if unknown else "invalid")
            raise
        if self._intake is not None:
            # All or nothing: a client retries the same batch once there is room.
            refused = self._intake.would_reject(tasks)
            if refused:
                self._intake.reject(SOURCE, "limit", refused)
                raise ApiError(
                    503,
                    "too_many_tasks",
                    f"the exporter already tracks its limit of {self._intake.limit} unfinished "
                    f"tasks ({LIMIT_SETTING}); {refused} new task(s) would not fit and nothing "
                    "was added; retry when tasks have finished, or raise the limit",
                )
        added = register_tasks(self.store, self.recorder, SOURCE, tasks, self._clock())
        added_ids = {task.task_id for task in added}
        result = {
            "added": [task.task_id for task in tasks if task.task_id in added_ids],
            "known": [task.task_id for task in tasks if task.task_id not in added_ids],
        }
        return _json(201 if added else 200, result)

    def _read_body(self, environ: dict[str, Any]) -> bytes:
        """Exactly Content-Length bytes of a JSON body, within the size limit."""
        length = _content_length(environ)
        try:
            media_type, _, parameters = str(environ.get("CONTENT_TYPE", "")).partition(";")
            charset = parameters.strip().lower().replace(" ", "")
            if media_type.strip().lower() != "application/json" or charset not in (
                "",
                "charset=utf-8",
                'charset="utf-8"',
            ):
                raise ApiError(
                    415, "unsupported_media_type", "send the body as Content-Type: application/json"
                )
            if length is None:
                raise ApiError(
                    411,
                    "length_required",
                    "send a Content-Length header (chunked bodies are refused)",
                )
            if length > self.max_body_bytes:
                raise ApiError(
                    413,
                    "body_too_large",
                    f"the body is {length} bytes; the limit is {self.max_body_bytes} "
                    "(api_server.max_body_bytes); send smaller batches",
                )
        except ApiError:
            _drain(environ, length)
            raise
        try:
            body = environ["wsgi.input"].read(length) if length else b""
        except OSError:  # the connection timed out or broke mid-body
            raise ApiError(400, "incomplete_body", "the body did not arrive") from None
        if len(body) != length:
            raise ApiError(400, "incomplete_body", "the body is shorter than its Content-Length")
        return bytes(body)

    def _list(self, query_string: str) -> tuple[int, Headers, bytes]:
        query = parse_list_query(query_string)
        tasks = self.store.list_tasks(
            status=query.status, model=query.model, after=query.cursor, limit=query.limit + 1
        )
        page: dict[str, Any] = {"tasks": [task_json(task) for task in tasks[: query.limit]]}
        if len(tasks) > query.limit:
            page["next_cursor"] = tasks[query.limit - 1].task_id
        return _json(200, page)

    def _show(self, task_id: str | None) -> tuple[int, Headers, bytes]:
        task = self.store.get(task_id) if task_id is not None else None
        if task is None:
            raise ApiError(404, "not_found", "no task with this ID is tracked")
        return _json(200, detail_json(task, self.store.events(task.task_id)))

    def _delete(self, task_id: str | None) -> tuple[int, Headers, bytes]:
        if task_id is None or not self.store.remove(task_id):
            raise ApiError(404, "not_found", "no task with this ID is tracked")
        log.info("task API: stopped tracking a task")
        return 204, [], b""


def _content_length(environ: dict[str, Any]) -> int | None:
    raw = str(environ.get("CONTENT_LENGTH") or "").strip()
    if not raw:
        return None
    if not raw.isascii() or not raw.isdigit():
        raise ApiError(400, "invalid_content_length", "the Content-Length header is not a number")
    return int(raw)


def _drain(environ: dict[str, Any], length: int | None = None) -> None:
    """Read and drop a body that will not be used, up to DRAIN_LIMIT_BYTES."""
    try:
        length = _content_length(environ) if length is None else length
    except ApiError:
        return
    if not length or length > DRAIN_LIMIT_BYTES:
        return
    stream = environ.get("wsgi.input")
    while stream is not None and length > 0:
        try:
            chunk = stream.read(min(length, 65_536))
        except OSError:
            return
        if not chunk:
            return
        length -= len(chunk)


def _encode(payload: Any) -> bytes:
    # ASCII-only output: control characters and odd code points in error texts are escaped.
    return json.dumps(payload, ensure_ascii=True, allow_nan=False).encode("ascii")


def _json(status: int, payload: Any) -> tuple[int, Headers, bytes]:
    return status, [("Content-Type", "application/json")], _encode(payload)


def _error(exc: ApiError) -> tuple[int, Headers, bytes]:
    return _json(exc.status, {"error": {"code": exc.code, "message": exc.message}})


_STATUS_LINES = {
    200: "200 OK",
    201: "201 Created",
    204: "204 No Content",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    411: "411 Length Required",
    413: "413 Content Too Large",
    415: "415 Unsupported Media Type",
    500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}
