"""The OpenAPI 3 document of the task API, served at /api/v1/openapi.json.

Built from the constants the validation uses, so the published limits and
patterns are the enforced ones, and from the models of `schema.py`, so the
published task fields are the ones the answers hold. `max_batch_size` comes
from the config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from exporter import __version__
from exporter.api.schema import COMPONENTS, component
from exporter.api.validation import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_MODEL_CHARS,
    MAX_POLL_URL_CHARS,
    MODEL_PATTERN,
    POLL_URL_PATTERN,
    TASK_ID_REGEX,
)
from exporter.model import DEFAULT_ACCOUNT, Status

PREFIX = "/api/v1"
JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error_response(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {JSON: {"schema": _ref("Error")}},
    }
    if headers:
        response["headers"] = headers
    return response


_UNAUTHORIZED = _error_response(
    "No `Authorization: Bearer <token>` header, or the wrong token.",
    {
        "WWW-Authenticate": {
            "description": 'The scheme the API expects: `Bearer realm="lemondata-exporter"`.',
            "schema": {"type": "string"},
        }
    },
)
_SERVER_ERROR = _error_response(
    "An unexpected problem (logged by the exporter); the body never holds details."
)
_STATUSES = [status.value for status in Status]
_TASK_ID_PARAMETER = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "description": "The task's ID.",
    "schema": {"type": "string", "pattern": TASK_ID_REGEX, "minLength": 1, "maxLength": 128},
}


def openapi_document(
    max_batch_size: int, accounts: Sequence[str] = (DEFAULT_ACCOUNT,)
) -> dict[str, Any]:
    """The whole document; `max_batch_size` is `api_server.max_batch_size`, `accounts`
    the configured accounts' names."""
    registration = {
        "type": "object",
        "required": ["task_id"],
        "additionalProperties": False,
        "properties": {
            "task_id": {
                "type": "string",
                "pattern": TASK_ID_REGEX,
                "minLength": 1,
                "maxLength": 128,
                "description": "The upstream task ID (`task_id` or `id` of the create call).",
            },
            "model": {
                "type": "string",
                "pattern": MODEL_PATTERN,
                "minLength": 1,
                "maxLength": MAX_MODEL_CHARS,
                "description": "The model; it becomes the `model` label of the task metrics.",
            },
            "poll_url": {
                "type": "string",
                "pattern": POLL_URL_PATTERN,
                "minLength": 1,
                "maxLength": MAX_POLL_URL_CHARS,
                "description": "The create call's `poll_url`: a path on the configured API "
                "base, never another host. Without it the task is polled on `api.status_path`.",
            },
            "account": {
                "type": "string",
                "enum": list(accounts),
                "description": "The configured account (`accounts:`) whose key created the "
                "task and polls it; default the first. An account that is not configured is "
                "refused (400 `unknown_account`).",
            },
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "lemondata-exporter task API",
            "version": __version__,
            "description": "Register the asynchronous tasks the exporter should watch, list "
            "them, look at one (with its status history and error text), or stop watching "
            "it. On only when a token is configured; every call but this document needs "
            "`Authorization: Bearer <token>`. Errors are "
            '`{"error": {"code": ..., "message": ...}}`.',
        },
        "security": [{"bearerAuth": []}],
        "paths": {
            f"{PREFIX}/tasks": {
                "post": {
                    "operationId": "registerTasks",
                    "summary": "Register one task or a batch; idempotent",
                    "description": "Known tasks are left as they are and reported under "
                    "`known`. Bodies larger than `api_server.max_body_bytes` get 413.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            JSON: {
                                "schema": {"oneOf": [_ref("TaskRegistration"), _ref("TaskBatch")]}
                            }
                        },
                    },
                    "responses": {
                        "201": {
                            "description": "At least one task was new.",
                            "content": {JSON: {"schema": _ref("RegistrationResult")}},
                        },
                        "200": {
                            "description": "Every task was already known; nothing changed.",
                            "content": {JSON: {"schema": _ref("RegistrationResult")}},
                        },
                        "400": _error_response("The body is not JSON or not a valid registration."),
                        "401": _UNAUTHORIZED,
                        "411": _error_response("No Content-Length header."),
                        "413": _error_response("The body is larger than the limit."),
                        "415": _error_response("The body is not `application/json`."),
                        "503": _error_response(
                            "The store already tracks `store.max_tracked_tasks` unfinished "
                            "tasks; nothing of the batch was added. Retry later."
                        ),
                        "500": _SERVER_ERROR,
                    },
                },
                "get": {
                    "operationId": "listTasks",
                    "summary": "List tracked tasks, ordered by task ID",
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "description": "Only tasks with this status.",
                            "schema": {"type": "string", "enum": _STATUSES},
                        },
                        {
                            "name": "model",
                            "in": "query",
                            "description": "Only tasks of this model (exact match).",
                            "schema": {
                                "type": "string",
                                "pattern": MODEL_PATTERN,
                                "minLength": 1,
                                "maxLength": MAX_MODEL_CHARS,
                            },
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "description": "Page size.",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_LIMIT,
                                "default": DEFAULT_LIMIT,
                            },
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "description": "The `next_cursor` of the previous page, unchanged.",
                            "schema": {
                                "type": "string",
                                "pattern": TASK_ID_REGEX,
                                "minLength": 1,
                                "maxLength": 128,
                            },
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "A page of tasks.",
                            "content": {JSON: {"schema": _ref("TaskList")}},
                        },
                        "400": _error_response("An unknown, repeated or invalid query parameter."),
                        "401": _UNAUTHORIZED,
                        "500": _SERVER_ERROR,
                    },
                },
            },
            f"{PREFIX}/tasks/{{task_id}}": {
                "parameters": [_TASK_ID_PARAMETER],
                "get": {
                    "operationId": "getTask",
                    "summary": "One task: its fields, status history and error text",
                    "responses": {
                        "200": {
                            "description": "The task.",
                            "content": {JSON: {"schema": _ref("TaskDetail")}},
                        },
                        "401": _UNAUTHORIZED,
                        "404": _error_response("No such task in the store."),
                        "500": _SERVER_ERROR,
                    },
                },
                "delete": {
                    "operationId": "forgetTask",
                    "summary": "Stop tracking a task",
                    "description": "Its metrics so far stay; it is not polled any more.",
                    "responses": {
                        "204": {"description": "The task is no longer tracked."},
                        "401": _UNAUTHORIZED,
                        "404": _error_response("No such task in the store."),
                        "500": _SERVER_ERROR,
                    },
                },
            },
            f"{PREFIX}/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document (no token needed)",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {JSON: {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token from `api_server.token_file` or "
                    "`$LEMONDATA_EXPORTER_TOKEN`.",
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "additionalProperties": False,
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "additionalProperties": False,
                            "properties": {
                                "code": {
                                    "type": "string",
                                    "description": "Stable, for programs (e.g. "
                                    "`invalid_task_id`, `unauthorized`, `not_found`).",
                                },
                                "message": {"type": "string", "description": "For people."},
                            },
                        }
                    },
                },
                "TaskRegistration": registration,
                "TaskBatch": {
                    "type": "object",
                    "required": ["tasks"],
                    "additionalProperties": False,
                    "properties": {
                        "tasks": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": max_batch_size,
                            "description": "Duplicate IDs are accepted; the first one counts.",
                            "items": _ref("TaskRegistration"),
                        }
                    },
                },
                "RegistrationResult": {
                    "type": "object",
                    "required": ["added", "known"],
                    "additionalProperties": False,
                    "properties": {
                        "added": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "IDs tracked from now on.",
                        },
                        "known": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "IDs already in the store (left as they were).",
                        },
                    },
                },
                **{name: component(model) for model, name in COMPONENTS.items()},
                "TaskList": {
                    "type": "object",
                    "required": ["tasks"],
                    "additionalProperties": False,
                    "properties": {
                        "tasks": {"type": "array", "items": _ref("Task")},
                        "next_cursor": {
                            "type": "string",
                            "description": "Present when there may be more: pass it as "
                            "`cursor` to get the next page.",
                        },
                    },
                },
            },
        },
    }
