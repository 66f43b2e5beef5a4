"""The cap on tracked tasks at the proxy and in discovery, /status behind the token,
and how the upstream client counts a hanging API, all with real sockets."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from exporter.api.mounts import WebApis
from exporter.config import parse_config
from exporter.discovery.file import FileSource
from exporter.discovery.runner import run_discovery
from exporter.intake import TaskIntake
from exporter.metrics.recorder import Recorder
from exporter.model import DiscoveredTask, OutcomeKind
from exporter.proxy import build_proxy
from exporter.store.sqlite import SqliteTaskStore
from exporter.upstream.client import UpstreamClient
from exporter.web.httpserver import HttpServer
from exporter.web.server import build_app
from tests.proxy.upstream import Upstream

pytestmark = pytest.mark.integration

TOKEN = "status-page-token-0123456789abcdef"


def recorder(registry: CollectorRegistry) -> Recorder:
    return Recorder(
        registry,
        duration_buckets=(1.0,),
        pending_buckets=(1.0,),
        max_models=5,
        reasons=("unknown",),
        budget_rps=1.0,
    )


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteTaskStore]:
    opened = SqliteTaskStore(tmp_path / "store.db")
    yield opened
    opened.close()


def test_the_proxy_answers_but_does_not_track_beyond_the_cap(store: SqliteTaskStore) -> None:
    upstream = Upstream().start()
    registry = CollectorRegistry()
    intake = TaskIntake(store, registry, limit=1)
    store.add([DiscoveredTask("already", "api")], time.time())
    config = parse_config(
        {
            "api": {"base_url": upstream.url},
            "proxy": {
                "enabled": True,
                "listen_address": "127.0.0.1:0",
                "create_paths": ["/create"],
            },
        },
        "c.yml",
    )
    proxy = build_proxy(config, store, recorder(registry), intake)
    labels = {"source": "proxy", "reason": "limit"}
    assert registry.get_sample_value("lemondata_tasks_rejected_total", labels) == 0  # not None
    proxy.start()
    try:
        answer = requests.post(
            f"http://127.0.0.1:{proxy.port}/create", json={"model": "m"}, timeout=5
        )
    finally:
        proxy.stop()
        upstream.stop()
    assert answer.status_code == 200 and answer.json()["task_id"] == "img_1"
    assert store.get("img_1") is None
    assert sample(registry, "lemondata_tasks_rejected_total", source="proxy", reason="limit") == 1
    assert sample(registry, "lemondata_tracked_tasks_limit") == 1


def test_discovery_stops_at_the_cap_and_moves_on(
    store: SqliteTaskStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    intake = TaskIntake(store, registry, limit=3)
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("".join(f"file_{n}\n" for n in range(5)) + "bad id!\n")
    source = FileSource(tasks)
    metrics = recorder(registry)
    assert run_discovery([source], store, metrics, time.time(), intake) == 3
    assert sample(registry, "lemondata_tasks_rejected_total", source="file", reason="limit") == 2
    assert sample(registry, "lemondata_tasks_rejected_total", source="file", reason="invalid") == 1
    # The file's position moved on: the same lines are not offered again.
    tasks.write_text(tasks.read_text() + "file_9\n")
    run_discovery([source], store, metrics, time.time(), intake)
    assert sample(registry, "lemondata_tasks_rejected_total", source="file", reason="limit") == 3
    assert [line for line in caplog.text.splitlines() if "not tracked" in line][:1], caplog.text
    assert len([line for line in caplog.text.splitlines() if "not tracked" in line]) == 1


def test_the_status_page_can_ask_for_the_token(store: SqliteTaskStore) -> None:
    config = parse_config({"api_server": {"status_page_auth": "token"}}, "c.yml")
    with pytest.raises(ValueError, match="status_page_auth"):
        WebApis.from_config(config, {})
    apis = WebApis.from_config(config, {"LEMONDATA_EXPORTER_TOKEN": TOKEN})
    registry = CollectorRegistry()
    health: Any = type(
        "Health",
        (),
        {
            "healthy": lambda self: (True, "ok"),
            "ready": lambda self: (True, "ok"),
            "summary": lambda self: {},
            "hint": lambda self: "",
        },
    )()
    app = build_app(registry, health, apis.mounts(store, recorder(registry)))
    server = HttpServer(app, "127.0.0.1:0")
    server.start()
    url = f"http://127.0.0.1:{server.port}"
    try:
        refused = requests.get(f"{url}/status", timeout=5)
        wrong = requests.get(f"{url}/status", headers={"Authorization": "Bearer x"}, timeout=5)
        shown = requests.get(
            f"{url}/status", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
        )
        metrics = requests.get(f"{url}/metrics", timeout=5)
    finally:
        server.stop()
    assert refused.status_code == wrong.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert shown.status_code == 200 and "<html" in shown.text
    assert metrics.status_code == 200  # /metrics is for Prometheus: basic auth covers it
    assert apis.own_auth_prefixes() == ("/api/", "/status")


# ---- the upstream client against a hanging API --------------------------------------


@pytest.fixture
def hanging() -> Iterator[int]:
    """A server that accepts, reads the request and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


def test_a_read_timeout_is_counted_as_a_timeout(hanging: int) -> None:
    client = UpstreamClient(f"http://127.0.0.1:{hanging}", SecretStr("k" * 20), timeout_seconds=0.3)
    try:
        outcome = client.fetch_status("t1")
    finally:
        client.close()
    assert outcome.kind is OutcomeKind.TIMEOUT and outcome.code is None


def test_a_refused_connection_is_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    client = UpstreamClient(f"http://127.0.0.1:{port}", SecretStr("k" * 20), timeout_seconds=1)
    try:
        outcome = client.fetch_status("t1")
    finally:
        client.close()
    assert outcome.kind is OutcomeKind.CONNECTION
