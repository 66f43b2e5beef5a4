"""The task API's task fields are written once: answers and OpenAPI schema agree."""

from __future__ import annotations

from exporter.api.openapi import openapi_document
from exporter.api.schema import detail_json, task_json
from exporter.model import Status, Task
from exporter.store.base import TaskEvent


def stored_task() -> Task:
    return Task(
        task_id="img_1",
        source="api",
        model="m",
        poll_url=None,
        status=Status.FAILED,
        discovered_at=100.0,
        next_poll_at=float("inf"),
        created=90.0,
        finished_at=130.0,
        error_message="boom",
    )


def test_answers_hold_exactly_the_published_fields() -> None:
    schemas = openapi_document(10)["components"]["schemas"]
    task = stored_task()
    listed = task_json(task)
    assert list(listed) == schemas["Task"]["required"] == list(schemas["Task"]["properties"])
    assert listed["status"] == "failed" and listed["next_poll_at"] is None  # finished
    event = TaskEvent(at=120.0, status=Status.FAILED, previous=Status.PROCESSING)
    detail = detail_json(task, [event])
    assert list(detail) == schemas["TaskDetail"]["required"]
    assert detail["history"] == [{"at": 120.0, "status": "failed", "previous": "processing"}]
    assert list(detail["history"][0]) == schemas["TaskEvent"]["required"]
    assert detail["error_message"] == "boom"


def test_optional_values_are_nullable_and_statuses_enumerated() -> None:
    properties = openapi_document(10)["components"]["schemas"]["TaskDetail"]["properties"]
    assert properties["created"] == {
        "type": "number",
        "nullable": True,
        "description": "The upstream `created` (unix seconds).",
    }
    assert properties["status"]["enum"] == [status.value for status in Status]
    assert properties["history"]["items"] == {"$ref": "#/components/schemas/TaskEvent"}
    assert all("title" not in field for field in properties.values())
