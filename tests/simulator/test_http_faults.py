"""Every fault mode, as a plain `requests` client sees it."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import requests

from exporter.simulator import Simulator

from .conftest import KEY, FakeClock, StartSim
from .test_http import read_response

pytestmark = pytest.mark.integration  # every test here starts a server

KNOWN = {"pending", "processing", "completed", "failed"}


@pytest.fixture
def task(sim: Simulator, clock: FakeClock) -> dict[str, Any]:
    """A completed image task."""
    created = sim.create_task("flux-pro", outcome="completed")
    clock.advance(1000)
    return created


@pytest.fixture
def failed(sim: Simulator, clock: FakeClock) -> dict[str, Any]:
    created = sim.create_task("flux-pro", reason="upstream_error")
    clock.advance(1000)
    return created


def status(api: requests.Session, sim: Simulator, task: dict[str, Any]) -> requests.Response:
    return api.get(sim.url + task["poll_url"], timeout=5)


@pytest.mark.parametrize(
    ("name", "code"), [("http_500", 500), ("http_502", 502), ("http_503", 503)]
)
def test_http_errors(
    sim: Simulator, api: requests.Session, task: dict[str, Any], name: str, code: int
) -> None:
    sim.set_faults({name: 1.0})
    assert status(api, sim, task).status_code == code


def test_502_is_an_html_page(sim: Simulator, api: requests.Session, task: dict[str, Any]) -> None:
    sim.set_faults({"http_502": 1.0})
    reply = status(api, sim, task)
    assert reply.headers["Content-Type"].startswith("text/html")
    assert "502 Bad Gateway" in reply.text


def test_burst_hits_every_request_for_a_while(
    sim: Simulator, api: requests.Session, clock: FakeClock, task: dict[str, Any]
) -> None:
    sim.set_faults({"http_503": {"burst_seconds": 10}})
    assert status(api, sim, task).status_code == 503
    created = api.post(f"{sim.url}/v1/images/generations", json={"model": "m"}, timeout=5)
    assert created.status_code == 503
    clock.advance(10)
    assert status(api, sim, task).status_code == 200


def test_unauthorized_for_a_while(
    sim: Simulator, api: requests.Session, clock: FakeClock, task: dict[str, Any]
) -> None:
    sim.set_faults({"unauthorized": {"unauthorized_for_seconds": 10}})
    for reply in (
        status(api, sim, task),
        api.post(f"{sim.url}/v1/images/generations", json={"model": "m"}, timeout=5),
    ):
        assert reply.status_code == 401
        assert reply.json()["error"]["code"] == "invalid_api_key"
    clock.advance(11)
    assert status(api, sim, task).status_code == 200


@pytest.mark.parametrize(("probability", "header"), [(1.0, True), (0.0, False)])
def test_rate_limit_429_with_and_without_retry_after(
    sim: Simulator,
    api: requests.Session,
    task: dict[str, Any],
    probability: float,
    header: bool,
) -> None:
    sim.set_faults({"rate_limit_429": {"retry_after_probability": probability}})
    reply = status(api, sim, task)
    assert reply.status_code == 429
    assert reply.json()["error"]["code"] == "rate_limit_exceeded"
    assert ("Retry-After" in reply.headers) == header


def test_slow_answers_late(start_sim: StartSim, api: requests.Session) -> None:
    sim = start_sim(faults={"slow": {"delay_seconds": 0.05}})
    task = sim.create_task("flux-pro")
    assert status(api, sim, task).status_code == 200
    sim.set_faults({"slow": {"delay_seconds": 30}})
    with pytest.raises(requests.Timeout):
        api.get(sim.url + task["poll_url"], timeout=0.2)


def test_timeout_outlasts_the_client(
    sim: Simulator, api: requests.Session, task: dict[str, Any]
) -> None:
    sim.set_faults({"timeout": 1.0})
    with pytest.raises(requests.Timeout):
        api.get(sim.url + task["poll_url"], timeout=0.2)


def test_reset_breaks_the_response(
    sim: Simulator, api: requests.Session, task: dict[str, Any]
) -> None:
    sim.set_faults({"reset": 1.0})
    with pytest.raises(requests.RequestException):
        status(api, sim, task)
    sim.set_faults({})
    assert status(api, sim, task).status_code == 200  # the pool recovers


def test_malformed_json(sim: Simulator, api: requests.Session, task: dict[str, Any]) -> None:
    sim.set_faults({"malformed_json": 1.0})
    for _ in range(10):
        reply = status(api, sim, task)
        assert reply.status_code == 200
        with pytest.raises(ValueError):
            reply.json()


def test_html_error(sim: Simulator, api: requests.Session, task: dict[str, Any]) -> None:
    sim.set_faults({"html_error": 1.0})
    codes = set()
    for _ in range(20):
        reply = status(api, sim, task)
        assert reply.headers["Content-Type"].startswith("text/html")
        assert "<html" in reply.text.lower()
        codes.add(reply.status_code)
    assert codes == {200, 502}


def test_huge_body(sim: Simulator, api: requests.Session, task: dict[str, Any]) -> None:
    sim.set_faults({"huge_body": {"size_bytes": 3_000_000}})
    reply = status(api, sim, task)
    assert len(reply.content) > 3_000_000
    assert int(reply.headers["Content-Length"]) == len(reply.content)
    assert reply.json()["status"] == "completed"


def test_drip_sends_a_byte_at_a_time(sim: Simulator, task: dict[str, Any]) -> None:
    sim.set_faults({"drip": {"interval_seconds": 0.002}})
    request = (
        f"GET {task['poll_url']} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        received = []
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while sum(map(len, received)) < length:
            received.append(sock.recv(65536))
    body = b"".join(received)
    assert json.loads(body)["status"] == "completed"
    assert len(received) > 1  # it did not come in one piece


def test_drip_through_requests(sim: Simulator, api: requests.Session, task: dict[str, Any]) -> None:
    sim.set_faults({"drip": {"interval_seconds": 0.001}})
    assert status(api, sim, task).json()["status"] == "completed"


def test_wrong_content_type(sim: Simulator, api: requests.Session, task: dict[str, Any]) -> None:
    sim.set_faults({"wrong_content_type": 1.0})
    reply = status(api, sim, task)
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert json.loads(reply.text)["status"] == "completed"


def test_unknown_status(sim: Simulator, api: requests.Session, task: dict[str, Any]) -> None:
    sim.set_faults({"unknown_status": 1.0})
    assert status(api, sim, task).json()["status"] not in KNOWN


def test_status_backwards_keeps_ground_truth(
    sim: Simulator, api: requests.Session, task: dict[str, Any]
) -> None:
    sim.set_faults({"status_backwards": 1.0})
    assert status(api, sim, task).json()["status"] == "processing"
    image = api.get(f"{sim.url}/v1/images/generations/{task['id']}", timeout=5).json()
    assert image["status"] == "processing" and image["data"][0]["url"] == ""
    assert sim.ground_truth()[0]["status"] == "completed"


def test_bad_timestamps(sim: Simulator, api: requests.Session, task: dict[str, Any]) -> None:
    sim.set_faults({"bad_timestamps": 1.0})
    kinds = set()
    for _ in range(40):
        created = status(api, sim, task).json().get("created")
        if created is None:
            kinds.add("missing")
        elif created < 0:
            kinds.add("negative")
        elif created > sim.ground_truth()[0]["created"] + 365 * 86400:
            kinds.add("future")
    assert kinds == {"missing", "negative", "future"}


def test_hostile_error_text(sim: Simulator, api: requests.Session, failed: dict[str, Any]) -> None:
    sim.set_faults({"hostile_error_text": {"huge_probability": 0.0}})
    errors = {status(api, sim, failed).json()["error"] for _ in range(30)}
    assert any("<script>" in error for error in errors)
    assert any(any(ord(c) < 32 for c in error) for error in errors)
    sim.set_faults({"hostile_error_text": {"huge_probability": 1.0, "huge_bytes": 3_000_000}})
    assert len(status(api, sim, failed).json()["error"]) == 3_000_000
    truth = sim.ground_truth()[0]
    assert truth["reason"] == "upstream_error" and len(truth["error"]) < 200


def test_faults_only_hit_status_requests(sim: Simulator, api: requests.Session) -> None:
    sim.set_faults({"http_500": 1.0})
    created = api.post(f"{sim.url}/v1/images/generations", json={"model": "m"}, timeout=5)
    assert created.status_code == 200


def test_keep_alive_survives_error_faults(sim: Simulator, task: dict[str, Any]) -> None:
    sim.set_faults({"http_502": 1.0})
    request = (
        f"GET {task['poll_url']} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as sock:
        sock.sendall(request * 2)
        head, _, rest = read_response(sock, b"")
        assert head.startswith(b"HTTP/1.1 502")
        head, _, _ = read_response(sock, rest)
        assert head.startswith(b"HTTP/1.1 502")
