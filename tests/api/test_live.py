"""Through the real server: the exporter as a subprocess, the simulator on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from exporter.api.auth import TOKEN_ENV
from exporter.simulator import Simulator
from exporter.track import TrackError, track_task, track_tasks
from tests.api.conftest import api_config, start_exporter, stop_exporter
from tests.api.support import AUTH, TOKEN
from tests.harness import ExporterProcess, total, wait_for

pytestmark = pytest.mark.integration
FINISHED = {"completed", "failed", "cancelled", "expired", "timeout"}


def track_cli(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    if token is not None:
        env[TOKEN_ENV] = token
    return subprocess.run(
        [sys.executable, "-m", "exporter", "track", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def discovered(exporter: ExporterProcess) -> float:
    return total(exporter.metrics(), "lemondata_tasks_discovered_total", source="api")


def create(sim: Simulator, model: str, **plan: Any) -> tuple[str, str]:
    created = sim.create_task(model=model, kind="video" if model == "veo-3" else "image", **plan)
    return str(created["task_id"]), str(created["poll_url"])


def test_tasks_registered_every_way_are_polled_to_completion(
    sim: Simulator, exporter: ExporterProcess, client: requests.Session, tmp_path: Path
) -> None:
    before = discovered(exporter)
    quick = {"pending_seconds": 2, "processing_seconds": 20}
    done, done_url = create(sim, "flux-schnell", outcome="completed", **quick)
    failed, failed_url = create(sim, "dall-e-3", reason="content_policy", **quick)
    cancelled, _ = create(sim, "flux-pro", outcome="cancelled", **quick)
    by_cli, _ = create(sim, "midjourney", outcome="completed", **quick)
    by_cli_file, _ = create(sim, "midjourney", outcome="completed", **quick)
    by_helper, by_helper_url = create(sim, "veo-3", outcome="completed", **quick)
    by_helper_bare, _ = create(sim, "flux-pro", reason="timeout", **quick)

    # 1. The API, a batch.
    batch = [
        {"task_id": done, "model": "flux-schnell", "poll_url": done_url},
        {"task_id": failed, "model": "dall-e-3", "poll_url": failed_url},
        {"task_id": cancelled},
    ]
    reply = client.post(f"{exporter.url}/api/v1/tasks", json={"tasks": batch}, timeout=5)
    assert (reply.status_code, reply.json()) == (
        201,
        {"added": [done, failed, cancelled], "known": []},
    )
    # 2. The command line: token from the environment, then from a file.
    result = track_cli(by_cli, "--model", "midjourney", "--poll-url", "/v1/tasks/{task_id}",
                       "--url", exporter.url, token=TOKEN)  # fmt: skip
    assert (result.returncode, result.stdout) == (0, f"added {by_cli}\n"), result.stderr
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    result = track_cli(by_cli_file, "--url", exporter.url, "--token-file", str(token_file),
                       token=None)  # fmt: skip
    assert (result.returncode, result.stdout) == (0, f"added {by_cli_file}\n"), result.stderr
    # 3. The Python helper, in one line.
    assert track_task(
        by_helper, model="veo-3", poll_url=by_helper_url, url=exporter.url, token=TOKEN
    )
    assert track_task(by_helper_bare, url=exporter.url, token=TOKEN)

    ids = [done, failed, cancelled, by_cli, by_cli_file, by_helper, by_helper_bare]

    def all_finished() -> dict[str, dict[str, Any]] | None:
        details = {i: client.get(f"{exporter.url}/api/v1/tasks/{i}", timeout=5).json() for i in ids}
        return details if all(d["status"] in FINISHED for d in details.values()) else None

    details = wait_for(all_finished, 60, "the registered tasks to finish", every=0.3)
    truth = {t["id"]: t for t in sim.ground_truth()}
    for task_id, detail in details.items():
        expected = truth[task_id]
        assert detail["status"] == expected["status"], (task_id, detail)
        assert detail["source"] == "api"
        history = detail["history"]
        assert history and history[-1]["status"] == detail["status"]
        assert history[0]["previous"] == "unknown"
        assert [e["at"] for e in history] == sorted(e["at"] for e in history)
        if expected["status"] == "failed":
            assert detail["error_message"] == expected["error"]
            assert detail["reason"] == expected["reason"]
    assert details[done]["model"] == "flux-schnell" and details[by_cli]["model"] == "midjourney"
    assert details[by_cli]["poll_url"] == f"/v1/tasks/{by_cli}"
    assert details[by_helper_bare]["poll_url"] is None
    assert discovered(exporter) == before + len(ids)
    listed = client.get(f"{exporter.url}/api/v1/tasks", params={"limit": 1000}, timeout=5).json()
    assert set(ids) <= {t["task_id"] for t in listed["tasks"]}


def test_registration_is_idempotent(
    sim: Simulator, exporter: ExporterProcess, client: requests.Session
) -> None:
    first, _ = create(sim, "flux-pro", pending_seconds=3600)
    second, _ = create(sim, "flux-pro", pending_seconds=3600)
    url = f"{exporter.url}/api/v1/tasks"
    before = discovered(exporter)
    assert client.post(url, json={"task_id": first}, timeout=5).status_code == 201
    again = client.post(url, json={"tasks": [{"task_id": first}, {"task_id": second}]}, timeout=5)
    assert (again.status_code, again.json()) == (201, {"added": [second], "known": [first]})
    same = client.post(url, json={"tasks": [{"task_id": second}, {"task_id": first}]}, timeout=5)
    assert (same.status_code, same.json()) == (200, {"added": [], "known": [second, first]})
    assert not track_task(first, url=exporter.url, token=TOKEN)
    result = track_cli(first, second, "--url", exporter.url)
    assert (result.returncode, result.stdout) == (0, f"known {first}\nknown {second}\n")
    assert track_tasks([first, second], url=exporter.url, token=TOKEN).known == [first, second]
    assert discovered(exporter) == before + 2
    for task_id in (first, second):
        assert client.delete(f"{url}/{task_id}", timeout=5).status_code == 204


def raw_request(port: int, request: bytes) -> tuple[int, dict[str, Any]]:
    """A request written by hand (for what requests would never send); status and JSON."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_error_codes(exporter: ExporterProcess, client: requests.Session) -> None:
    url = f"{exporter.url}/api/v1/tasks"

    def error(reply: requests.Response, status: int, code: str) -> None:
        assert reply.status_code == status, reply.text
        assert reply.headers["Content-Type"] == "application/json"
        assert reply.json()["error"]["code"] == code

    error(requests.get(url, timeout=5), 401, "unauthorized")
    error(requests.post(url, json={"task_id": "a"}, timeout=5), 401, "unauthorized")
    wrong = {"Authorization": f"Bearer {TOKEN}x"}
    error(requests.get(f"{url}/a", headers=wrong, timeout=5), 401, "unauthorized")
    error(requests.delete(f"{url}/a", headers=wrong, timeout=5), 401, "unauthorized")
    error(client.get(f"{url}/img_never_registered", timeout=5), 404, "not_found")
    error(client.get(f"{exporter.url}/api/v1/nothing", timeout=5), 404, "not_found")
    error(client.put(url, json={}, timeout=5), 405, "method_not_allowed")
    error(client.post(url, data=b'{"task_id": "a"}', timeout=5), 415, "unsupported_media_type")
    big = {"tasks": [{"task_id": f"img_{n:06d}", "model": "flux-pro"} for n in range(3000)]}
    error(client.post(url, json=big, timeout=10), 413, "body_too_large")
    error(client.post(url, data=b"{not json", headers={"Content-Type": "application/json"},
                      timeout=5), 400, "invalid_json")  # fmt: skip
    elsewhere = {"task_id": "img_x", "poll_url": "https://attacker.example/v1/tasks/img_x"}
    error(client.post(url, json=elsewhere, timeout=5), 400, "invalid_poll_url")
    error(client.post(url, json={"task_id": "img x"}, timeout=5), 400, "invalid_task_id")
    error(client.post(url, json={"task_id": "a", "color": "red"}, timeout=5), 400, "unknown_field")
    error(client.get(url, params={"limit": 5000}, timeout=5), 400, "invalid_limit")
    status, body = raw_request(
        exporter.port,
        b"POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
        + b"\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
    )  # fmt: skip
    assert (status, body["error"]["code"]) == (411, "length_required")
    status, body = raw_request(
        exporter.port,
        b"POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 5\r\nConnection: close"
        b"\r\n\r\n\xff\xfe\xfd\xfc\xfb",
    )  # fmt: skip
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    # Nothing of this reached the store.
    assert client.get(f"{url}/img_x", timeout=5).status_code == 404
    assert client.get(f"{url}/a", timeout=5).status_code == 404
    assert "Traceback" not in exporter.log_text()


def test_forget_a_task(sim: Simulator, exporter: ExporterProcess, client: requests.Session) -> None:
    task_id, poll_url = create(sim, "flux-pro", pending_seconds=3600)
    url = f"{exporter.url}/api/v1/tasks"
    assert client.post(url, json={"task_id": task_id, "poll_url": poll_url}, timeout=5).ok
    wait_for(
        lambda: client.get(f"{url}/{task_id}", timeout=5).json()["status"] == "pending",
        20,
        "the task to be polled",
    )
    assert client.delete(f"{url}/{task_id}", timeout=5).status_code == 204
    assert client.get(f"{url}/{task_id}", timeout=5).status_code == 404
    assert client.delete(f"{url}/{task_id}", timeout=5).status_code == 404
    pending = client.get(url, params={"status": "pending"}, timeout=5).json()["tasks"]
    assert task_id not in {t["task_id"] for t in pending}
    assert client.post(url, json={"task_id": task_id}, timeout=5).status_code == 201
    assert client.delete(f"{url}/{task_id}", timeout=5).status_code == 204


def test_off_without_a_token(sim: Simulator, tmp_path: Path) -> None:
    exporter = start_exporter(tmp_path, api_config(sim.url, tmp_path), token=None)
    try:
        for path in ("/api/v1/tasks", "/api/v1/openapi.json"):
            reply = requests.get(exporter.url + path, headers=AUTH, timeout=5)
            assert reply.status_code == 404
            assert reply.json()["error"]["code"] == "api_disabled"
            assert TOKEN_ENV in reply.json()["error"]["message"]
        assert requests.get(f"{exporter.url}/status", timeout=5).status_code == 200
        result = track_cli("img_1", "--url", exporter.url)
        assert result.returncode == 1 and "The task API is off" in result.stderr
        with pytest.raises(TrackError) as info:
            track_task("img_1", url=exporter.url, token=TOKEN)
        assert (info.value.status, info.value.code) == (404, "api_disabled")
    finally:
        stop_exporter(exporter)
    assert "task API off" in exporter.log_text()


def test_token_from_a_file(sim: Simulator, tmp_path: Path) -> None:
    token_file = tmp_path / "api-token"
    file_token = "file-token-0123456789abcdef"
    token_file.write_text(file_token + "\n")
    config = api_config(sim.url, tmp_path, token_file=str(token_file))
    exporter = start_exporter(tmp_path, config, token=TOKEN)  # the file wins over $ENV
    try:
        url = f"{exporter.url}/api/v1/tasks"
        assert requests.get(url, headers=AUTH, timeout=5).status_code == 401
        good = {"Authorization": f"Bearer {file_token}"}
        assert requests.get(url, headers=good, timeout=5).status_code == 200
    finally:
        stop_exporter(exporter)
    assert file_token not in exporter.log_text()


@pytest.mark.parametrize(
    ("token", "token_file", "words"),
    [
        ("short", None, "at least 16 characters"),
        (None, "missing-file", "api_server.token_file: cannot read"),
    ],
)
def test_an_unusable_token_stops_the_start(
    sim: Simulator, tmp_path: Path, token: str | None, token_file: str | None, words: str
) -> None:
    settings = {"token_file": str(tmp_path / token_file)} if token_file else {}
    exporter = ExporterProcess(tmp_path, api_config(sim.url, tmp_path, **settings), "sk-x" * 8)
    exporter.env.pop(TOKEN_ENV, None)
    if token:
        exporter.env[TOKEN_ENV] = token
    exporter.start(wait_ready=False)
    assert exporter.proc is not None
    assert exporter.proc.wait(30) == 2
    assert words in exporter.log_text()


def test_track_command_errors(exporter: ExporterProcess, tmp_path: Path) -> None:
    result = track_cli("img_1", "--url", exporter.url, token=None)
    assert result.returncode == 2 and TOKEN_ENV in result.stderr
    result = track_cli("img_1", "--url", exporter.url, "--token-file", str(tmp_path / "nope"))
    assert result.returncode == 2 and "cannot read" in result.stderr
    result = track_cli("img_1", "--url", exporter.url, token="wrong-token-0123456789")
    assert result.returncode == 1 and "HTTP 401 unauthorized" in result.stderr
    result = track_cli("img 1", "--url", exporter.url)
    assert result.returncode == 1 and "HTTP 400 invalid_task_id" in result.stderr
    result = track_cli("img_1", "img_2", "--poll-url", "/v1/tasks/x", "--url", exporter.url)
    assert result.returncode == 1 and "{task_id}" in result.stderr
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    result = track_cli("img_1", "--url", f"http://127.0.0.1:{port}")
    assert result.returncode == 1 and "cannot reach the exporter" in result.stderr
