"""Task IDs as OpenMetrics exemplars, in-process: what /metrics serves to a scraper
that asks for OpenMetrics and to one that does not, and the task page they link to."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from pydantic import SecretStr

from exporter.api.mounts import WebApis
from exporter.api.status_page import StatusPage
from exporter.config import parse_config
from exporter.metrics.recorder import EXEMPLAR_LABEL, MAX_EXEMPLAR_CHARS, Recorder, task_exemplar
from exporter.metrics.static_labels import serving_registry
from exporter.model import DiscoveredTask, Finish, Status, TaskUpdate
from exporter.store.sqlite import SqliteTaskStore
from exporter.web.server import build_app
from tests.api.support import call
from tests.harness.updates import polled

T = 1_700_000_000.0
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TOKEN = "exemplar-test-token-0123456789abcdef"


class Health:
    def healthy(self) -> tuple[bool, str]:
        return True, "ok"

    def alive(self) -> tuple[bool, str]:
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        return True, "ok"

    def summary(self) -> dict[str, int]:
        return {}

    def hint(self) -> str:
        return ""


def update(status: Status, duration: float | None, pending: float | None) -> TaskUpdate:
    return polled(
        status,
        Finish(status, duration, True, 0.0, None) if duration is not None else None,
        at=T,
        pending_seconds=pending,
        next_poll_at=T,
        created=T - 100,
        model="flux-pro",
        first_seen=T,
        processing_seen=T,
        last_polled=T,
    )


def recorder(registry: CollectorRegistry) -> Recorder:
    rec = Recorder(
        registry,
        duration_buckets=[10, 100],
        pending_buckets=[1, 10],
        max_models=10,
        reasons=["unknown"],
        budget_rps=1,
        clock=lambda: T,
    )
    rec.restore_models(["flux-pro"])  # counted at once, no scrape needed first
    registry.register(rec.scrape_mark)
    return rec


def scrape(registry: CollectorRegistry, accept: str) -> tuple[str, str]:
    app = build_app(registry, Health())
    reply = call(app, "GET", "/metrics", headers={"Accept": accept})
    assert reply.status == 200
    return reply.headers["Content-Type"], reply.body.decode()


def exemplars(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, str]]:
    """(sample name, labels) -> exemplar labels, parsed as Prometheus would."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.exemplar is not None:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                found[key] = dict(sample.exemplar.labels)
    return found


def test_task_ids_are_exemplars_in_openmetrics_only() -> None:
    registry = CollectorRegistry()
    rec = recorder(registry)
    rec.task_update("flux-pro", update(Status.PROCESSING, None, 3.0), None, T, "task_pending")
    rec.task_update("flux-pro", update(Status.COMPLETED, 42.0, None), None, T, "task_slow")
    rec.task_update("flux-pro", update(Status.FAILED, 5.0, None), "unknown", T, "task_failed")
    content_type, text = scrape(registry, OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text")
    found = exemplars(text)
    assert found[
        (
            "lemondata_task_duration_seconds_bucket",
            (("le", "100.0"), ("model", "flux-pro"), ("status", "completed")),
        )
    ] == {EXEMPLAR_LABEL: "task_slow"}
    assert found[
        ("lemondata_task_pending_seconds_bucket", (("le", "10.0"), ("model", "flux-pro")))
    ] == {EXEMPLAR_LABEL: "task_pending"}
    assert found[
        ("lemondata_tasks_finished_total", (("model", "flux-pro"), ("status", "completed")))
    ] == {EXEMPLAR_LABEL: "task_slow"}
    assert found[
        (
            "lemondata_task_failures_total",
            (("class", "service"), ("model", "flux-pro"), ("reason", "unknown")),
        )
    ] == {EXEMPLAR_LABEL: "task_failed"}
    assert "_created" not in text
    # Task IDs are never a label of a series.
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert not any(v.startswith("task_") for v in sample.labels.values()), sample
    # The Prometheus text format has no exemplars.
    content_type, plain = scrape(registry, "text/plain")
    assert content_type.startswith("text/plain")
    assert "task_slow" not in plain and " # {" not in plain and "_created" not in plain


def test_an_id_too_long_for_an_exemplar_gets_none_and_is_not_cut() -> None:
    longest = "t" * (MAX_EXEMPLAR_CHARS - len(EXEMPLAR_LABEL))
    assert task_exemplar(longest) == {EXEMPLAR_LABEL: longest}
    assert task_exemplar(longest + "t") is None
    assert task_exemplar(None) is None and task_exemplar("") is None
    registry = CollectorRegistry()
    rec = recorder(registry)
    rec.task_update("flux-pro", update(Status.COMPLETED, 42.0, None), None, T, "x" * 128)
    _, text = scrape(registry, OPENMETRICS)
    assert exemplars(text) == {}
    assert "lemondata_task_duration_seconds_count" in text  # observed all the same


def test_static_labels_keep_the_exemplars() -> None:
    registry = CollectorRegistry()
    rec = recorder(registry)
    rec.task_update("flux-pro", update(Status.COMPLETED, 42.0, None), None, T, "task_slow")
    served = serving_registry(registry, {"env": "prod"})
    _, text = scrape(served, OPENMETRICS)
    found = exemplars(text)
    key = (
        "lemondata_task_duration_seconds_bucket",
        (("env", "prod"), ("le", "100.0"), ("model", "flux-pro"), ("status", "completed")),
    )
    assert found[key] == {EXEMPLAR_LABEL: "task_slow"}


def test_the_task_page_an_exemplar_links_to(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "s.db")
    store.add([DiscoveredTask("task_slow", "api", model="<b>flux</b>")], T - 100)
    page = StatusPage(store, clock=lambda: T)
    reply = call(page, "GET", "/status/tasks/task_slow")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    text = reply.body.decode()
    assert "task_slow" in text and "&lt;b&gt;flux&lt;/b&gt;" in text and "<b>" not in text
    assert call(page, "HEAD", "/status/tasks/task_slow").body == b""
    assert call(page, "GET", "/status/tasks/unknown_task").status == 404
    assert call(page, "GET", "/status/tasks/../metrics").status == 404
    assert call(page, "GET", "/status/tasks/").status == 404
    assert call(page, "POST", "/status/tasks/task_slow", body=b"").status == 405
    # /status links each task it lists to that page.
    store.add([DiscoveredTask("in:flight.1", "api")], T - 10)
    listing = call(page, "GET", "/status").body.decode()
    assert '<a href="status/tasks/in%3Aflight.1">' in listing


@pytest.mark.parametrize("auth", ["none", "token"])
def test_the_task_page_sits_behind_the_status_pages_auth(tmp_path: Path, auth: str) -> None:
    store = SqliteTaskStore(tmp_path / "s.db")
    store.add([DiscoveredTask("task_slow", "api")], T)
    config = parse_config({"api_server": {"status_page_auth": auth}}, "c.yml")
    registry = CollectorRegistry()
    apis = WebApis(config, SecretStr(TOKEN))
    app = build_app(registry, Health(), apis.mounts(store, recorder(registry)))
    bare = call(app, "GET", "/status/tasks/task_slow")
    assert bare.status == (200 if auth == "none" else 401)
    with_token = call(
        app, "GET", "/status/tasks/task_slow", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert with_token.status == 200
    # The task API always wants the token.
    assert call(app, "GET", "/api/v1/tasks/task_slow").status == 401
