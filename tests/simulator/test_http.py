"""Through the real HTTP server on loopback."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest
import requests

from exporter.simulator import Simulator
from tests.harness import wait_for

from .conftest import KEY, FakeClock, StartSim

pytestmark = pytest.mark.integration  # every test here starts a server

FINAL = ("completed", "failed")


def create(api: requests.Session, sim: Simulator, model: str, kind: str = "images") -> Any:
    reply = api.post(f"{sim.url}/v1/{kind}/generations", json={"model": model, "prompt": "p"})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_auth(sim: Simulator) -> None:
    missing = requests.get(f"{sim.url}/v1/tasks/img_x", timeout=5)
    wrong = requests.get(
        f"{sim.url}/v1/tasks/img_x", headers={"Authorization": "Bearer sk-nope"}, timeout=5
    )
    for reply in (missing, wrong):
        assert reply.status_code == 401
        assert reply.json()["error"]["code"] == "invalid_api_key"
        assert "X-RateLimit-Limit" not in reply.headers
    post = requests.post(f"{sim.url}/v1/images/generations", json={"model": "m"}, timeout=5)
    assert post.status_code == 401


def test_create_and_poll_to_completion_at_high_time_scale(
    start_sim: StartSim, api: requests.Session
) -> None:
    sim = start_sim(time_scale=2000.0)
    tasks = [create(api, sim, "flux-schnell") for _ in range(3)]
    tasks.append(create(api, sim, "veo-3", "videos"))
    reports: dict[str, Any] = {}

    def all_final() -> bool:
        for task in tasks:
            reply = api.get(sim.url + task["poll_url"], timeout=5)
            assert reply.status_code == 200
            assert "X-RateLimit-Remaining" in reply.headers
            if reply.json()["status"] in FINAL:
                reports[task["id"]] = reply.json()
        return len(reports) == len(tasks)

    wait_for(all_final, 30, "every task to finish", every=0.02)
    assert set(reports) == {task["id"] for task in tasks}
    truth = {record["id"]: record for record in sim.ground_truth()}
    for task_id, report in reports.items():
        expected = "failed" if truth[task_id]["status"] == "cancelled" else truth[task_id]["status"]
        assert report["status"] == expected
        assert isinstance(report["created"], float)  # scaled time: millisecond floats


def test_expired_task_answers_404(sim: Simulator, api: requests.Session, clock: FakeClock) -> None:
    task = sim.create_task("flux-pro", outcome="completed")
    clock.advance(600)
    assert api.get(f"{sim.url}/v1/tasks/{task['id']}", timeout=5).status_code == 200
    clock.advance(3600)
    gone = api.get(f"{sim.url}/v1/images/generations/{task['id']}", timeout=5)
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "async_task_not_found"
    (truth,) = sim.ground_truth()
    assert truth["status"] == "completed" and truth["expired_at"] is not None


def test_429_with_rate_limit_headers(
    start_sim: StartSim, api: requests.Session, clock: FakeClock
) -> None:
    sim = start_sim(clock=clock, rate_limit_per_minute=3)
    remaining = [
        api.get(f"{sim.url}/v1/tasks/img_x", timeout=5).headers["X-RateLimit-Remaining"]
        for _ in range(3)
    ]
    assert remaining == ["2", "1", "0"]
    limited = api.get(f"{sim.url}/v1/tasks/img_x", timeout=5)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["X-RateLimit-Limit"] == "3"
    assert int(limited.headers["X-RateLimit-Reset"]) >= clock.now
    clock.advance(61)
    assert api.get(f"{sim.url}/v1/tasks/img_x", timeout=5).status_code == 404


def test_ground_truth_matches_every_status_report(
    start_sim: StartSim, api: requests.Session, clock: FakeClock
) -> None:
    sim = start_sim(clock=clock, lost_fraction=0.2, seed=11)
    models = ["flux-pro", "midjourney", "gpt-image-1", "sora-2", "kling-v2.1"]
    tasks = [sim.create_task(m, kind="video" if "-v" in m or "sora" in m else "image")
             for m in models * 8]  # fmt: skip
    seen: set[str] = set()
    for _ in range(40):
        clock.advance(30)
        truth = {
            record["id"]: record
            for record in api.get(f"{sim.url}/_sim/ground_truth", timeout=5).json()["tasks"]
        }
        for task in tasks:
            reply = api.get(sim.url + task["poll_url"], timeout=5)
            record = truth[task["id"]]
            if reply.status_code == 404:
                assert record["expired_at"] is not None
                seen.add("404")
                continue
            report = reply.json()
            status = "cancelled" if report.get("cancelled") else report["status"]
            assert status == record["status"]
            assert report["progress"] == record["progress"]
            if status in ("failed", "cancelled"):
                assert report["error"] == record["error"]
            seen.add(status)
    assert {"pending", "processing", "completed", "failed", "404"} <= seen


def test_sim_endpoints_need_no_auth(sim: Simulator, api: requests.Session) -> None:
    sim.create_task("flux-pro")
    api.get(f"{sim.url}/v1/tasks/nope", timeout=5)
    truth = requests.get(f"{sim.url}/_sim/ground_truth", timeout=5).json()
    assert len(truth["tasks"]) == 1
    assert truth["requests"]["by_path_kind_and_code"]["status_task"] == {"404": 1}
    fields = "id model kind created status started_processing_at finished_at duration_seconds"
    assert {*fields.split(), "pending_seconds", "error", "reason"} <= set(truth["tasks"][0])
    faults = requests.put(f"{sim.url}/_sim/faults", json={"http_500": 1.0}, timeout=5)
    assert faults.json()["active"] == {"http_500": {"probability": 1.0}}
    assert requests.get(f"{sim.url}/_sim/faults", timeout=5).json()["active"]
    assert requests.put(f"{sim.url}/_sim/faults", data=b"[", timeout=5).status_code == 400
    assert requests.post(f"{sim.url}/_sim/reset", timeout=5).status_code == 200
    assert requests.get(f"{sim.url}/_sim/ground_truth", timeout=5).json()["tasks"] == []
    assert sim.faults() == {}
    assert requests.get(f"{sim.url}/_sim/health", timeout=5).json() == {"ok": True}


def read_response(sock: socket.socket, buffer: bytes) -> tuple[bytes, bytes, bytes]:
    """One HTTP response from a raw socket: (head, body, leftover)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, "connection closed early"
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed early"
        rest += chunk
    return head, rest[:length], rest[length:]


def test_keep_alive_with_exact_content_length(sim: Simulator) -> None:
    task = sim.create_task("flux-pro")
    request = (
        f"GET /v1/tasks/{task['id']} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as sock:
        sock.sendall(request * 3)  # pipelined on one connection
        leftover = b""
        for _ in range(3):
            head, body, leftover = read_response(sock, leftover)
            assert head.startswith(b"HTTP/1.1 200")
            assert body.startswith(b"{") and body.endswith(b"}")
        assert leftover == b""


def test_many_concurrent_clients(start_sim: StartSim) -> None:
    sim = start_sim(time_scale=100.0)
    ids = [sim.create_task("flux-pro")["id"] for _ in range(10)]
    errors: list[object] = []

    def client() -> None:
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {KEY}"
            for i in range(50):
                reply = session.get(f"{sim.url}/v1/tasks/{ids[i % 10]}", timeout=10)
                if reply.status_code != 200:
                    errors.append(reply.status_code)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sim.request_counts()["by_code"] == {"200": 400}


@pytest.mark.timeout(30)
def test_stop_ends_hanging_requests(start_sim: StartSim) -> None:
    sim = start_sim(faults={"timeout": {"seconds": 600}})
    task = sim.create_task("flux-pro")
    outcome: list[object] = []

    def client() -> None:
        try:
            requests.get(
                f"{sim.url}/v1/tasks/{task['id']}",
                headers={"Authorization": f"Bearer {KEY}"},
                timeout=60,
            )
            outcome.append("answered")
        except requests.RequestException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    wait_for(lambda: sim.request_counts()["total"], 10, "the request to reach the server", 0.01)
    sim.stop()
    thread.join()
    assert outcome and isinstance(outcome[0], requests.RequestException)
