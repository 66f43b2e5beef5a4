"""The task API's WSGI app in-process: every route, every error code, the metrics it feeds."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from exporter.api.app import DRAIN_LIMIT_BYTES, TaskApi
from exporter.metrics.recorder import Recorder
from exporter.model import DiscoveredTask, Finish, Status
from exporter.store.sqlite import SqliteTaskStore
from tests.api.support import AUTH, TOKEN, Reply, call
from tests.harness.updates import polled

TASKS = "/api/v1/tasks"


class Setup:
    def __init__(self, tmp_path: Path, token: str | None = TOKEN, **limits: Any) -> None:
        self.store = SqliteTaskStore(tmp_path / "store.db")
        self.registry = CollectorRegistry()
        self.recorder = Recorder(
            self.registry,
            duration_buckets=[1.0],
            pending_buckets=[1.0],
            max_models=10,
            reasons=["unknown"],
            budget_rps=1.0,
        )
        self.app = TaskApi(
            self.store,
            self.recorder,
            SecretStr(token) if token else None,
            clock=lambda: 1000.0,
            **limits,
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Reply:
        kwargs.setdefault("headers", AUTH)
        return call(self.app, method, path, **kwargs)

    def discovered(self) -> float:
        value = self.registry.get_sample_value(
            "lemondata_tasks_discovered_total", {"source": "api"}
        )
        return value or 0.0


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Setup]:
    setup = Setup(tmp_path, max_body_bytes=2048, max_batch_size=5)
    yield setup
    setup.store.close()


def assert_error(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.headers["Cache-Control"] == "no-store"
    assert set(reply.json()) == {"error"} and set(reply.json()["error"]) == {"code", "message"}
    assert reply.code == code
    assert reply.json()["error"]["message"]


def test_register_one_then_again(api: Setup) -> None:
    body = {"task_id": "img_1", "model": "flux-pro", "poll_url": "/v1/tasks/img_1"}
    first = api.call("POST", TASKS, json_body=body)
    assert (first.status, first.json()) == (201, {"added": ["img_1"], "known": []})
    again = api.call("POST", TASKS, json_body={"task_id": "img_1", "model": "other"})
    assert (again.status, again.json()) == (200, {"added": [], "known": ["img_1"]})
    task = api.store.get("img_1")
    assert task is not None
    assert (task.source, task.model, task.poll_url, task.discovered_at) == (
        "api",
        "flux-pro",  # a known task changes nothing
        "/v1/tasks/img_1",
        1000.0,
    )
    assert api.discovered() == 1.0
    # Zero series exist for the new model at once.
    assert (
        api.registry.get_sample_value(
            "lemondata_tasks_finished_total", {"model": "flux-pro", "status": "failed"}
        )
        == 0.0
    )


def test_register_a_batch(api: Setup) -> None:
    api.store.add([DiscoveredTask("known", "file")], 1.0)
    batch = {"tasks": [{"task_id": "a"}, {"task_id": "known"}, {"task_id": "b"}, {"task_id": "a"}]}
    reply = api.call("POST", TASKS, json_body=batch)
    assert (reply.status, reply.json()) == (201, {"added": ["a", "b"], "known": ["known"]})
    assert api.discovered() == 2.0
    known = api.store.get("known")
    assert known is not None and known.source == "file"


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "Application/JSON", 'application/json;charset="UTF-8"'],
)
def test_json_content_types(api: Setup, content_type: str) -> None:
    reply = api.call("POST", TASKS, json_body={"task_id": "a"}, content_type=content_type)
    assert reply.status == 201


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
def test_415_for_other_media_types(api: Setup, content_type: str | None) -> None:
    reply = api.call("POST", TASKS, body=b'{"task_id": "a"}', content_type=content_type)
    assert_error(reply, 415, "unsupported_media_type")
    assert api.store.get("a") is None


def test_411_without_content_length(api: Setup) -> None:
    reply = api.call("POST", TASKS, body=b'{"task_id": "a"}', content_length="")  # e.g. chunked
    assert_error(reply, 411, "length_required")


def test_413_for_large_bodies(api: Setup) -> None:
    body = b'{"task_id": "a", "model": "' + b"x" * 3000 + b'"}'
    assert_error(api.call("POST", TASKS, body=body), 413, "body_too_large")
    huge = api.call("POST", TASKS, body=b"", content_length=str(DRAIN_LIMIT_BYTES * 10))
    assert_error(huge, 413, "body_too_large")
    assert "2048" in huge.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "length", "code"),
    [
        (b'{"task_id": "a"}', "12x", "invalid_content_length"),
        (b'{"task_id": "a"}', "-1", "invalid_content_length"),
        (b'{"task_id": "a"}', "100", "incomplete_body"),
        (b"", "0", "invalid_json"),
        (b"not json", None, "invalid_json"),
        (b'{"task_id": "a", "unknown": true}', None, "unknown_field"),
        (
            b'{"tasks": [{"task_id": "1"}, {"task_id": "2"}, {"task_id": "3"}, {"task_id": "4"},'
            b' {"task_id": "5"}, {"task_id": "6"}]}',
            None,
            "batch_too_large",
        ),
    ],
)
def test_400s(api: Setup, body: bytes, length: str | None, code: str) -> None:
    reply = api.call("POST", TASKS, body=body, content_length=length)
    assert_error(reply, 400, code)
    assert api.store.list_tasks() == []


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": f"Bearer {TOKEN}-wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer"},
    ],
)
def test_401_without_the_token(api: Setup, method: str, headers: dict[str, str]) -> None:
    body = {"task_id": "a"} if method == "POST" else None
    for path in (TASKS, f"{TASKS}/a", f"{TASKS}/not valid"):
        verb = "GET" if path != TASKS else method
        reply = api.call(verb, path, json_body=body if verb == "POST" else None, headers=headers)
        assert_error(reply, 401, "unauthorized")
        assert reply.headers["WWW-Authenticate"] == 'Bearer realm="lemondata-exporter"'
    assert api.call("DELETE", f"{TASKS}/a", headers=headers).status == 401
    assert api.store.list_tasks() == []


def test_404_and_405(api: Setup) -> None:
    for path in ("/api/", "/api/v1", "/api/v1/", "/api/v2/tasks", f"{TASKS}x", "/api/v1/openapi"):
        assert_error(api.call("GET", path), 404, "not_found")
    for method, path, allow in (
        ("PUT", TASKS, "GET, POST"),
        ("DELETE", TASKS, "GET, POST"),
        ("PATCH", f"{TASKS}/a", "GET, DELETE"),
        ("POST", f"{TASKS}/a", "GET, DELETE"),
        ("POST", "/api/v1/openapi.json", "GET"),
    ):
        reply = api.call(method, path, headers={})  # 405 comes before 401
        assert_error(reply, 405, "method_not_allowed")
        assert reply.headers["Allow"] == allow


def test_everything_is_404_without_a_token(tmp_path: Path) -> None:
    off = Setup(tmp_path, token=None)
    for method, path in (
        ("POST", TASKS),
        ("GET", TASKS),
        ("GET", f"{TASKS}/a"),
        ("DELETE", f"{TASKS}/a"),
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/api/other"),
    ):
        reply = off.call(method, path, json_body={"task_id": "a"} if method == "POST" else None)
        assert_error(reply, 404, "api_disabled")
        assert "LEMONDATA_EXPORTER_TOKEN" in reply.json()["error"]["message"]
        assert "api_server.token_file" in reply.json()["error"]["message"]
    assert off.store.list_tasks() == []


def test_openapi_document_needs_no_token(api: Setup) -> None:
    reply = api.call("GET", "/api/v1/openapi.json", headers={})
    assert reply.status == 200
    document = reply.json()
    assert document["openapi"].startswith("3.")
    assert document["components"]["schemas"]["TaskBatch"]["properties"]["tasks"]["maxItems"] == 5
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def finish(setup: Setup, task_id: str, error: str | None = None) -> None:
    status = Status.FAILED if error else Status.COMPLETED
    for step, now in ((Status.PROCESSING, 1001.0), (status, 1002.5)):
        setup.store.apply(
            task_id,
            polled(
                step,
                Finish(status, 3.5, error_message=error) if step is status else None,
                at=now,
                next_poll_at=now + 5,
                created=999.0,
                model="flux-pro",
                first_seen=1001.0,
                processing_seen=1001.0,
                last_polled=now,
            ),
            now,
            "unknown" if error else None,
        )


def test_show_a_task_with_its_history_and_error(api: Setup) -> None:
    api.call("POST", TASKS, json_body={"task_id": "img_f", "model": "flux-pro"})
    error = '<script>alert(1)</script>\x00\u202e "quoted" ' + "x" * 8000
    finish(api, "img_f", error)
    reply = api.call("GET", f"{TASKS}/img_f")
    assert reply.status == 200
    assert reply.body.isascii()  # control characters and the like are escaped
    detail = reply.json()
    assert detail["error_message"] == error
    assert detail["status"] == "failed" and detail["reason"] == "unknown"
    assert detail["duration_seconds"] == 3.5 and detail["finished_at"] == 1002.5
    assert detail["next_poll_at"] is None
    assert detail["history"] == [
        {"at": 1001.0, "status": "processing", "previous": "unknown"},
        {"at": 1002.5, "status": "failed", "previous": "processing"},
    ]
    assert_error(api.call("GET", f"{TASKS}/img_missing"), 404, "not_found")
    assert_error(api.call("GET", f"{TASKS}/not%20valid"), 404, "not_found")
    assert_error(api.call("GET", f"{TASKS}/"), 404, "not_found")
    assert_error(api.call("GET", f"{TASKS}/a/b"), 404, "not_found")


def test_list_filter_and_paginate(api: Setup) -> None:
    ids = [f"img_{n:02d}" for n in range(12)]
    for start in range(0, 12, 4):
        batch = [{"task_id": i, "model": "m1" if n % 3 else "m2"} for n, i in enumerate(ids)]
        api.call("POST", TASKS, json_body={"tasks": batch[start : start + 4]})
    finish(api, "img_03")
    everything = api.call("GET", TASKS).json()
    assert [t["task_id"] for t in everything["tasks"]] == ids
    assert "next_cursor" not in everything
    assert "error_message" not in everything["tasks"][0]
    seen, query = [], "limit=5"
    while True:
        page = api.call("GET", TASKS, query=query).json()
        seen += [t["task_id"] for t in page["tasks"]]
        if "next_cursor" not in page:
            break
        query = f"limit=5&cursor={page['next_cursor']}"
    assert seen == ids
    m2 = api.call("GET", TASKS, query="model=m2").json()["tasks"]
    assert [t["task_id"] for t in m2] == ["img_00", "img_06", "img_09"]  # img_03 became flux-pro
    done = api.call("GET", TASKS, query="status=completed").json()["tasks"]
    assert [(t["task_id"], t["status"]) for t in done] == [("img_03", "completed")]
    exact = api.call("GET", TASKS, query="limit=12").json()
    assert len(exact["tasks"]) == 12 and "next_cursor" not in exact
    assert_error(api.call("GET", TASKS, query="limit=0"), 400, "invalid_limit")
    assert_error(api.call("GET", TASKS, query="sort=id"), 400, "unknown_parameter")


def test_delete(api: Setup) -> None:
    api.call("POST", TASKS, json_body={"task_id": "img_1"})
    reply = api.call("DELETE", f"{TASKS}/img_1")
    assert (reply.status, reply.body) == (204, b"")
    assert api.store.get("img_1") is None and api.store.due(2000.0, 10) == []
    assert_error(api.call("DELETE", f"{TASKS}/img_1"), 404, "not_found")
    assert_error(api.call("DELETE", f"{TASKS}/bad%2Fid"), 404, "not_found")
    again = api.call("POST", TASKS, json_body={"task_id": "img_1"})
    assert again.status == 201
    assert api.discovered() == 2.0


def test_unexpected_errors_are_a_500_without_details(
    api: Setup, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("secret detail from deep inside")

    monkeypatch.setattr(api.store, "list_tasks", broken)
    with caplog.at_level(logging.ERROR):
        reply = api.call("GET", TASKS)
    assert_error(reply, 500, "internal_error")
    assert b"secret detail" not in reply.body
    assert "secret detail from deep inside" in caplog.text


class Stalled:
    """A client that sent headers and then nothing: reads time out."""

    def read(self, size: int = -1) -> bytes:
        raise TimeoutError("timed out")


def test_a_body_that_never_arrives(api: Setup, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        reply = api.call("POST", TASKS, body=b"{}", content_length="20", stream=Stalled())
        assert_error(reply, 400, "incomplete_body")
        refused = api.call("POST", TASKS, body=b"{}", content_type="text/plain", stream=Stalled())
        assert_error(refused, 415, "unsupported_media_type")  # draining gave up quietly
    assert caplog.text == ""
