"""The task API's task fields, written once.

Each pydantic model here is both the shape of an answer (`task_json`,
`detail_json`) and, through `component`, its schema in the OpenAPI document
(`openapi.py`): a field added here shows in both, with its description.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from exporter.model import Status, Task
from exporter.store.base import TaskEvent

_STATUS: JsonDict = {"enum": [status.value for status in Status]}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskEventBody(_Body):
    at: float = Field(description="When the change was seen (unix seconds).")
    status: str = Field(json_schema_extra=_STATUS)
    previous: str = Field(json_schema_extra=_STATUS)


class TaskBody(_Body):
    task_id: str = Field(description="The upstream task ID.")
    source: str = Field(
        description="Where the task came from: `api`, `config`, or a discovery "
        "source's name (`file`, ...)."
    )
    model: str | None = Field(description="The model, when someone said which.")
    account: str = Field(
        description="The account whose key polls it (`default` when the config lists no "
        "`accounts:`)."
    )
    poll_url: str | None = Field(
        description="The path the task is polled on; null: the configured `api.status_path`."
    )
    status: str = Field(
        description="Last seen status: `unknown` until the API answered.",
        json_schema_extra=_STATUS,
    )
    discovered_at: float = Field(description="When the exporter learnt of the task (unix seconds).")
    next_poll_at: float | None = Field(
        description="When it is polled next (unix seconds); null once finished."
    )
    created: float | None = Field(description="The upstream `created` (unix seconds).")
    first_seen: float | None = Field(description="The first usable answer (unix seconds).")
    last_polled: float | None = Field(
        description="The last poll that told the task's status (unix seconds)."
    )
    processing_seen: float | None = Field(
        description="The first poll that saw it processing (unix seconds)."
    )
    finished_at: float | None = Field(description="When the exporter saw it finish (unix seconds).")
    duration_seconds: float | None = Field(description="Created to finished, when measurable.")
    attempts: int = Field(ge=0, description="Polls so far.")
    consecutive_errors: int = Field(ge=0, description="Failed polls in a row (they back off).")
    reason: str | None = Field(
        description="The failure reason classified from the error text (failed tasks)."
    )
    last_error: str | None = Field(
        description="The last polling problem (a short description for people)."
    )


class TaskDetailBody(TaskBody):
    error_message: str | None = Field(
        description="The raw error text the API gave for a finished task (untrusted text, "
        "up to 8192 characters)."
    )
    history: list[TaskEventBody] = Field(description="Status changes, oldest first (the last 50).")


# Component names in the OpenAPI document.
COMPONENTS: dict[type[BaseModel], str] = {
    TaskBody: "Task",
    TaskDetailBody: "TaskDetail",
    TaskEventBody: "TaskEvent",
}


def _number(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _task_values(task: Task) -> dict[str, Any]:
    finished = task.finished_at is not None
    return {
        "task_id": task.task_id,
        "source": task.source,
        "model": task.model,
        "account": task.account,
        "poll_url": task.poll_url,
        "status": task.status.value,
        "discovered_at": _number(task.discovered_at) or 0.0,
        "next_poll_at": None if finished else _number(task.next_poll_at),
        "created": _number(task.created),
        "first_seen": _number(task.first_seen),
        "last_polled": _number(task.last_polled),
        "processing_seen": _number(task.processing_seen),
        "finished_at": _number(task.finished_at),
        "duration_seconds": _number(task.duration_seconds),
        "attempts": task.attempts,
        "consecutive_errors": task.consecutive_errors,
        "reason": task.reason,
        "last_error": task.last_error,
    }


def _shaped(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """`values` in the model's fields and order (a field without a value is a
    KeyError, so an answer cannot miss a published field). Plain dicts: a page
    of 1,000 tasks must not pay for model instances."""
    return {name: values[name] for name in model.model_fields}


def task_json(task: Task) -> dict[str, Any]:
    """A task as the list answers show it."""
    return _shaped(TaskBody, _task_values(task))


def event_json(event: TaskEvent) -> dict[str, Any]:
    values = {
        "at": _number(event.at) or 0.0,
        "status": event.status.value,
        "previous": event.previous.value,
    }
    return _shaped(TaskEventBody, values)


def detail_json(task: Task, events: list[TaskEvent]) -> dict[str, Any]:
    """One task with its error text and status history."""
    values = {
        **_task_values(task),
        "error_message": task.error_message,
        "history": [event_json(event) for event in events],
    }
    return _shaped(TaskDetailBody, values)


def component(model: type[BaseModel]) -> dict[str, Any]:
    """The model's schema as an OpenAPI 3.0 component: every field required,
    nothing else allowed, `nullable` for optional values, references to the
    other components, no titles."""
    schema = model.model_json_schema(ref_template="#/$defs/{model}")
    names = {cls.__name__: name for cls, name in COMPONENTS.items()}
    schema.pop("$defs", None)
    return {
        "type": "object",
        "required": list(schema["properties"]),
        "additionalProperties": False,
        "properties": {
            name: _openapi(field, names) for name, field in schema["properties"].items()
        },
    }


def _openapi(field: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    field = {key: value for key, value in field.items() if key != "title"}
    if "$ref" in field:
        return {"$ref": "#/components/schemas/" + names[field["$ref"].rsplit("/", 1)[1]]}
    variants = field.pop("anyOf", None)
    if variants is not None:  # X | None
        [kind] = [v for v in variants if v != {"type": "null"}]
        return {**_openapi(kind, names), "nullable": True, **field}
    if "items" in field:
        field["items"] = _openapi(field["items"], names)
    return field
