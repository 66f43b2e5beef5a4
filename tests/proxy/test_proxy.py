"""The proxy in-process: against a scriptable upstream, and against the simulator."""

from __future__ import annotations

import hashlib
import logging
import socket
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from exporter.model import DiscoveredTask
from exporter.proxy.register import created_task, decode_body, request_model
from exporter.proxy.server import ProxyServer
from exporter.simulator import Simulator, SimulatorSettings
from tests.proxy.upstream import Upstream

KEY = "sk-proxy-user-key-0123456789abcdef"


class Registry:
    def __init__(self) -> None:
        self.tasks: list[DiscoveredTask] = []
        self.problems: list[str] = []
        self.fail = False

    def register(self, tasks: list[DiscoveredTask]) -> None:
        if self.fail:
            raise RuntimeError("store down")
        self.tasks += tasks


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream().start()
    yield server
    server.stop()


def start_proxy(base_url: str, registry: Registry, **options: Any) -> ProxyServer:
    proxy = ProxyServer(
        base_url,
        "127.0.0.1:0",
        registry.register,
        register_error=registry.problems.append,
        **options,
    )
    proxy.start()
    return proxy


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def echo_proxy(upstream: Upstream, registry: Registry) -> Iterator[str]:
    proxy = start_proxy(upstream.url, registry, create_paths=["/create"])
    yield f"http://127.0.0.1:{proxy.port}"
    proxy.stop()


def test_create_answer_parsing() -> None:
    assert request_model(b'{"model": " flux-pro ", "prompt": "x"}') == "flux-pro"
    assert request_model(b"not json") is None and request_model(None) is None
    base = "https://api.example"
    task, problem = created_task(None, b'{"id": "t1", "status": "pending", "model": "m"}', base)
    assert (task.task_id, task.model, task.source, problem) == ("t1", "m", "proxy", None)
    task, problem = created_task(
        "x", b'{"task_id": "t2", "poll_url": "%s/v1/tasks/t2"}' % base.encode(), base
    )
    assert (task.model, task.poll_url, problem) == ("x", "/v1/tasks/t2", None)
    task, problem = created_task(
        "x", b'{"task_id": "t3", "poll_url": "https://evil.example/t3"}', base
    )
    assert task.poll_url is None and problem is not None and problem.startswith("poll_url")
    with pytest.raises(ValueError):
        decode_body(b"\x00", "br", 100)


@pytest.mark.integration
def test_headers_pass_both_ways_without_hop_by_hop_ones(
    echo_proxy: str, upstream: Upstream
) -> None:
    answer = requests.get(
        f"{echo_proxy}/v1/anything?q=1",
        headers={
            "Authorization": f"Bearer {KEY}",
            "X-Keep": "1",
            "Connection": "keep-alive, X-Drop",
            "X-Drop": "1",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic abc",
        },
        timeout=5,
    )
    seen = answer.json()
    headers = {name.lower(): value for name, value in seen["headers"]}
    assert seen["path"] == "/v1/anything?q=1" and seen["method"] == "GET"
    assert headers["authorization"] == f"Bearer {KEY}" and headers["x-keep"] == "1"
    assert not {"x-drop", "keep-alive", "proxy-authorization"} & set(headers)
    assert headers["host"] == upstream.url.removeprefix("http://")
    answer = requests.get(f"{echo_proxy}/headers", timeout=5)
    assert answer.status_code == 201 and answer.content == b"ok"
    assert answer.raw.headers.getlist("Set-Cookie") == ["a=1", "b=2"]
    assert answer.headers["X-Resp"] == "yes"
    assert "X-Hop" not in answer.headers and "Keep-Alive" not in answer.headers


@pytest.mark.integration
def test_redirects_pass_through_unfollowed(echo_proxy: str, upstream: Upstream) -> None:
    answer = requests.get(f"{echo_proxy}/redirect", allow_redirects=False, timeout=5)
    assert answer.status_code == 302
    assert answer.headers["Location"] == "https://elsewhere.example/"
    assert len(upstream.seen) == 1


@pytest.mark.integration
def test_large_bodies_stream_through_without_being_held(
    echo_proxy: str, upstream: Upstream, registry: Registry
) -> None:
    blocks = 320  # 20 MiB each way
    block = b"z" * 65536
    expected = hashlib.sha256(block * blocks).hexdigest()

    class Upload:
        def __init__(self) -> None:
            self.left = blocks

        def __len__(self) -> int:
            return blocks * len(block)

        def read(self, size: int = -1) -> bytes:
            if not self.left:
                return b""
            self.left -= 1
            return block

    tracemalloc.start()
    try:
        sent = requests.put(f"{echo_proxy}/upload", data=Upload(), timeout=30).json()
        requests.post(f"{echo_proxy}/create", data=(block for _ in range(blocks)), timeout=30)
        got = hashlib.sha256()
        for path in (f"/stream?n={blocks}", f"/big?n={blocks}"):
            with requests.get(echo_proxy + path, stream=True, timeout=30) as answer:
                size = 0
                for part in answer.iter_content(65536):
                    size += len(part)
                    if path.startswith("/big"):
                        got.update(part)
                assert size == blocks * len(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (sent["body_bytes"], sent["body_sha256"]) == (blocks * len(block), expected)
    # A chunked create body is streamed too (and its model left to the status answers).
    assert upstream.seen[1]["body_bytes"] == blocks * len(block)
    assert registry.tasks == [DiscoveredTask("img_1", "proxy")]
    assert got.hexdigest() == hashlib.sha256(b"y" * 65536 * blocks).hexdigest()
    assert peak < 8 * 1024 * 1024, f"peak Python memory {peak} bytes"


@pytest.mark.integration
def test_create_registers_from_gzip_answers_and_reports_bad_poll_urls(
    echo_proxy: str, upstream: Upstream, registry: Registry
) -> None:
    upstream.gzip = True
    upstream.create_reply = {"task_id": "img_9", "poll_url": "https://evil.example/v1/tasks/img_9"}
    answer = requests.post(f"{echo_proxy}/create", json={"model": "flux"}, timeout=5)
    assert answer.json() == upstream.create_reply  # decoded by the client, unchanged
    assert registry.tasks == [DiscoveredTask("img_9", "proxy", model="flux", poll_url=None)]
    assert len(registry.problems) == 1 and "poll_url" in registry.problems[0]
    # A synchronous answer names no task: nothing registered, nothing reported.
    upstream.gzip = False
    upstream.create_reply = {"created": 1, "data": [{"url": "https://cdn.example/x.png"}]}
    requests.post(f"{echo_proxy}/create", json={"model": "flux"}, timeout=5)
    assert len(registry.tasks) == 1 and len(registry.problems) == 1


@pytest.mark.integration
def test_a_store_failure_does_not_change_the_answer(
    echo_proxy: str, upstream: Upstream, registry: Registry
) -> None:
    registry.fail = True
    answer = requests.post(f"{echo_proxy}/create", json={"model": "flux"}, timeout=5)
    assert answer.status_code == 200 and answer.json()["task_id"] == "img_1"
    assert registry.problems == ["cannot register task img_1"]


@pytest.mark.integration
def test_unreachable_api_is_a_502(registry: Registry) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proxy = start_proxy(f"http://127.0.0.1:{port}", registry)
    try:
        answer = requests.get(f"http://127.0.0.1:{proxy.port}/v1/tasks/x", timeout=5)
    finally:
        proxy.stop()
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "upstream_unreachable"


@pytest.mark.integration
def test_absolute_form_targets_are_refused(echo_proxy: str, upstream: Upstream) -> None:
    port = int(echo_proxy.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET http://evil.example/x HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 400") and upstream.seen == []


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    sim = Simulator(
        SimulatorSettings(port=0, api_keys=(KEY,), time_scale=60, seed=5, rate_limit_per_minute=0)
    )
    sim.start()
    yield sim
    sim.stop()


@pytest.mark.integration
def test_simulator_create_and_status_through_the_proxy(
    simulator: Simulator, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = start_proxy(simulator.url, registry)
    base = f"http://127.0.0.1:{proxy.port}"
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        with requests.Session() as session:
            for path, model in (
                ("/v1/images/generations", "flux-pro"),
                ("/v1/videos/generations", "veo-3"),
            ):
                answer = session.post(
                    base + path, json={"model": model, "prompt": "a"}, headers=auth
                )
                assert answer.status_code == 200
            created = registry.tasks
            assert [(t.model, t.source) for t in created] == [
                ("flux-pro", "proxy"),
                ("veo-3", "proxy"),
            ]
            assert all(t.poll_url == f"/v1/tasks/{t.task_id}" for t in created)
            # Status calls and errors pass through and register nothing.
            status = session.get(base + str(created[0].poll_url), headers=auth)
            assert status.status_code == 200 and status.json()["task_id"] == created[0].task_id
            refused = session.post(base + "/v1/images/generations", json={"model": "m"})
            assert refused.status_code == 401
            bad = session.post(base + "/v1/images/generations", json={"prompt": "x"}, headers=auth)
            assert bad.status_code == 400
            assert len(registry.tasks) == 2
    finally:
        proxy.stop()
    truth = {t["id"]: t["model"] for t in simulator.ground_truth()}
    assert truth == {t.task_id: t.model for t in created}
    assert KEY not in caplog.text
