"""A store that fails loudly, against the running exporter: a full disk (a small
tmpfs), store files deleted under it, a damaged file, a path that cannot be made.

Nothing acknowledged with 201 may be missing after a restart; health, readiness
and the task API answer 503 with the reason while the store fails; the log
grows by a few lines, not one per task; polling pauses and resumes by itself.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from exporter.api.auth import TOKEN_ENV
from exporter.model import DiscoveredTask
from exporter.store.sqlite import SqliteTaskStore
from tests.api.support import AUTH, TOKEN
from tests.hardening.support import KEY, SimulatorProcess
from tests.harness import ExporterProcess, total, wait_for

pytestmark = pytest.mark.integration


def settings(sim_url: str, store_path: Path) -> dict[str, Any]:
    return {
        "api": {"base_url": sim_url, "max_connections": 4, "timeout_seconds": 3},
        "polling": {
            "cycle_interval_seconds": 0.2,
            "task_interval_seconds": 0.3,
            "requests_per_second": 50,
            "max_wait_seconds": 600,
            "backoff_base_seconds": 0.2,
            "backoff_max_seconds": 1,
        },
        "store": {"path": str(store_path)},
        "log_level": "info",
    }


def exporter_for(tmp_path: Path, sim_url: str, store_path: Path) -> ExporterProcess:
    exporter = ExporterProcess(tmp_path, settings(sim_url, store_path), KEY)
    exporter.env[TOKEN_ENV] = TOKEN
    return exporter


def register(exporter: ExporterProcess, ids: list[str]) -> requests.Response:
    body = {"tasks": [{"task_id": task_id, "model": "flux-pro"} for task_id in ids]}
    return requests.post(f"{exporter.url}/api/v1/tasks", json=body, headers=AUTH, timeout=10)


def new_ids(count: int) -> list[str]:
    return [f"img_{uuid.uuid4().hex[:24]}" for _ in range(count)]


def stored_ids(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT task_id FROM tasks")}


def store_log_lines(exporter: ExporterProcess) -> list[str]:
    return [line for line in exporter.log_text().splitlines() if "task store" in line]


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimulatorProcess]:
    simulator = SimulatorProcess(tmp_path, lost_fraction=0.0)
    yield simulator
    simulator.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs (root only); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace')}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the file system is full."""
    filler = disk / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


def test_full_disk_is_loud_pauses_polling_and_loses_nothing(
    tmp_path: Path, sim: SimulatorProcess, small_disk: Path
) -> None:
    store_path = small_disk / "store.db"
    exporter = exporter_for(tmp_path, sim.url, store_path).start()
    try:
        acknowledged: list[str] = []
        first = [str(sim.create("image", "flux-pro")["task_id"]) for _ in range(3)]
        assert register(exporter, first).status_code == 201
        acknowledged += first
        filler = fill(small_disk)
        refused = None
        for _ in range(400):  # the disk is full: some write must fail soon
            batch = new_ids(100)
            answer = register(exporter, batch)
            if answer.status_code == 201:
                acknowledged += batch
                continue
            refused = answer
            break
        assert refused is not None, "every write succeeded on a full disk"
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["code"] == "store_unavailable"
        assert str(store_path) in error["message"] and "free space" in error["message"]
        assert refused.headers["Retry-After"]

        health = requests.get(f"{exporter.url}/-/healthy", timeout=5)
        assert health.status_code == 503 and "task store" in health.text, health.text
        ready = requests.get(f"{exporter.url}/-/ready", timeout=5)
        assert ready.status_code == 503 and "task store" in ready.text
        samples = exporter.metrics()  # /metrics still answers
        assert total(samples, "lemondata_store_up") == 0
        assert total(samples, "lemondata_store_errors_total", op="add") >= 1
        # While the store fails, more registrations are refused, not acknowledged.
        assert register(exporter, new_ids(100)).status_code == 503
        errors_then = total(exporter.metrics(), "lemondata_store_errors_total")

        filler.unlink()  # space again: the store heals by itself
        wait_for(
            lambda: requests.get(f"{exporter.url}/-/healthy", timeout=5).status_code == 200,
            30,
            "health back to 200 once space is free",
        )
        samples = exporter.metrics()
        assert total(samples, "lemondata_store_up") == 1
        # Paused meanwhile: a probe every few seconds, not a failed write per task and cycle.
        assert total(samples, "lemondata_store_errors_total") - errors_then < 20
        after = new_ids(5)
        assert register(exporter, after).status_code == 201
        acknowledged += after
        wait_for(
            lambda: total(exporter.metrics(), "lemondata_tasks", status="completed") >= 1,
            60,
            "polling resumed: a task finished",
        )
        lines = store_log_lines(exporter)
        assert 2 <= len(lines) <= 10, lines
        assert "Traceback" not in exporter.log_text()
    finally:
        code = exporter.terminate()
    assert code == 0
    missing = set(acknowledged) - stored_ids(store_path)
    assert not missing, f"{len(missing)} acknowledged task(s) lost"
    restarted = exporter_for(tmp_path, sim.url, store_path).start()
    try:
        for task_id in (*first, *after):
            url = f"{restarted.url}/api/v1/tasks/{task_id}"
            answer = requests.get(url, headers=AUTH, timeout=5)
            assert answer.status_code == 200, task_id
    finally:
        restarted.terminate()


def test_deleted_store_is_noticed_and_nothing_more_is_acknowledged(
    tmp_path: Path, sim: SimulatorProcess
) -> None:
    store_path = tmp_path / "data" / "store.db"
    exporter = exporter_for(tmp_path, sim.url, store_path).start()
    try:
        assert register(exporter, new_ids(5)).status_code == 201
        for suffix in ("", "-wal", "-shm"):
            Path(f"{store_path}{suffix}").unlink(missing_ok=True)
        answer = register(exporter, new_ids(5))
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "store_unavailable"
        assert "deleted" in answer.json()["error"]["message"]
        health = requests.get(f"{exporter.url}/-/healthy", timeout=5)
        assert health.status_code == 503 and "deleted" in health.text
        assert requests.get(f"{exporter.url}/-/ready", timeout=5).status_code == 503
        # Only a restart mends this one: the liveness probe's path says so.
        live = requests.get(f"{exporter.url}/-/live", timeout=5)
        assert live.status_code == 503 and "deleted" in live.text
        assert total(exporter.metrics(), "lemondata_store_up") == 0
        # It does not heal by itself: the writes would go to a file nobody can open.
        assert register(exporter, new_ids(5)).status_code == 503
        assert len([line for line in store_log_lines(exporter) if "deleted" in line]) == 1
        assert "Traceback" not in exporter.log_text()
    finally:
        exporter.terminate()
    # Restarted, it opens a new store at the path and takes tasks again.
    restarted = exporter_for(tmp_path, sim.url, store_path).start()
    try:
        kept = new_ids(3)
        assert register(restarted, kept).status_code == 201
    finally:
        restarted.terminate()
    assert set(kept) <= stored_ids(store_path)


def test_replaced_store_is_noticed(tmp_path: Path, sim: SimulatorProcess) -> None:
    store_path = tmp_path / "store.db"
    exporter = exporter_for(tmp_path, sim.url, store_path).start()
    try:
        other = tmp_path / "other.db"
        SqliteTaskStore(other).close()
        os.replace(other, store_path)
        answer = register(exporter, new_ids(2))
        assert answer.status_code == 503 and "replaced" in answer.json()["error"]["message"]
    finally:
        exporter.terminate()


def test_damaged_store_stops_the_start_with_advice(tmp_path: Path) -> None:
    store_path = tmp_path / "store.db"
    store = SqliteTaskStore(store_path)
    store.add([DiscoveredTask(f"task-{n:06d}", "api", "flux-pro") for n in range(5000)], 1.0)
    store.close()
    page = 4096
    with store_path.open("r+b") as handle:  # one page in the middle, overwritten
        size = store_path.stat().st_size
        handle.seek((size // page // 2) * page)
        handle.write(os.urandom(page))
    exporter = ExporterProcess(tmp_path, settings("http://127.0.0.1:9", store_path), KEY)
    exporter.start(wait_ready=False)
    assert exporter.proc is not None
    assert exporter.proc.wait(60) == 1
    log = exporter.log_text()
    assert "damaged" in log and str(store_path) in log and "backup" in log, log
    assert "Traceback" not in log


def test_store_path_that_cannot_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    store_path = blocker / "store.db"
    exporter = ExporterProcess(tmp_path, settings("http://127.0.0.1:9", store_path), KEY)
    exporter.start(wait_ready=False)
    assert exporter.proc is not None
    assert exporter.proc.wait(60) == 1
    log = exporter.log_text()
    assert "cannot create the folder" in log and str(store_path) in log, log
    assert "Traceback" not in log


def test_proxy_answers_callers_and_keeps_the_log_short_while_the_store_fails(
    tmp_path: Path, sim: SimulatorProcess
) -> None:
    from tests.harness import free_port

    store_path = tmp_path / "data" / "store.db"
    port = free_port()
    config = settings(sim.url, store_path)
    config["proxy"] = {"enabled": True, "listen_address": f"127.0.0.1:{port}"}
    exporter = ExporterProcess(tmp_path, config, KEY).start()
    try:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{store_path}{suffix}").unlink(missing_ok=True)
        with requests.Session() as app:
            app.headers["Authorization"] = f"Bearer {KEY}"
            for _ in range(20):
                answer = app.post(
                    f"http://127.0.0.1:{port}/v1/images/generations",
                    json={"model": "flux-pro", "prompt": "p"},
                    timeout=10,
                )
                assert answer.status_code == 200, answer.text  # the caller's answer stands
        samples = exporter.metrics()
        assert total(samples, "lemondata_store_up") == 0
        assert total(samples, "lemondata_store_errors_total") >= 1
    finally:
        exporter.terminate()
    log = exporter.log_text()
    assert "cannot register" not in log
    assert len(store_log_lines(exporter)) <= 3, store_log_lines(exporter)
