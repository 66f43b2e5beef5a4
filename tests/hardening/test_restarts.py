"""Restarts and shutdown: SIGTERM with polls hanging upstream, and SIGKILL at random moments."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.hardening.support import KEY, SimulatorProcess, create_tasks, integrity, store_rows
from tests.harness import ExporterProcess, total, wait_for

pytestmark = pytest.mark.integration  # every test here starts a server

FINISHED = ("completed", "failed", "cancelled", "expired")


def config(sim: SimulatorProcess, workdir: Path, **polling: Any) -> dict[str, Any]:
    return {
        "api": {"base_url": sim.url, "max_connections": 8, "timeout_seconds": 3},
        "polling": {
            "cycle_interval_seconds": 0.2,
            "task_interval_seconds": 0.5,
            "requests_per_second": 100,
            "max_wait_seconds": 120,
            "backoff_base_seconds": 0.2,
            "backoff_max_seconds": 1,
            **polling,
        },
        "store": {"path": str(workdir / "store.db")},
        "discovery": {"interval_seconds": 0.2, "files": [{"path": str(workdir / "tasks.jsonl")}]},
        "log_level": "info",
    }


def test_sigterm_with_hanging_polls(tmp_path: Path) -> None:
    shutdown_timeout = 2.0
    request_timeout = 20.0  # far longer: in-flight polls must be abandoned, not awaited
    sim = SimulatorProcess(tmp_path, faults={"slow": {"probability": 1, "delay_seconds": 60}})
    try:
        settings = config(sim, tmp_path, shutdown_timeout_seconds=shutdown_timeout)
        settings["api"]["timeout_seconds"] = request_timeout
        exporter = ExporterProcess(tmp_path, settings, KEY).start()
        assert exporter.proc is not None
        create_tasks(sim, tmp_path / "tasks.jsonl", 12)
        wait_for(
            lambda: total(exporter.metrics(), "lemondata_tasks", status="unknown") == 12,
            20,
            "the tasks discovered",
        )
        time.sleep(1.0)  # the first polls are now hanging upstream
        sent = time.monotonic()
        exporter.proc.send_signal(15)
        answers = []
        while exporter.proc.poll() is None and time.monotonic() - sent < 30:
            try:
                answers.append(requests.get(f"{exporter.url}/-/ready", timeout=1).status_code)
            except requests.RequestException:
                answers.append(0)
            time.sleep(0.05)
        code = exporter.proc.wait(30)
        took = time.monotonic() - sent
    finally:
        sim.stop()
    log = exporter.log_text()
    assert code == 0, log[-2000:]
    assert 503 in answers, answers  # not ready while shutting down
    assert 200 not in answers[answers.index(503) :]
    # Within the shutdown timeout (plus start-up slack for the interpreter's exit),
    # nowhere near the request timeout of the hanging polls.
    assert took < shutdown_timeout + (request_timeout - shutdown_timeout) / 2, took
    assert "abandoning" in log
    assert "Traceback" not in log
    assert (
        not (tmp_path / "store.db-wal").exists() or (tmp_path / "store.db-wal").stat().st_size == 0
    )
    assert integrity(tmp_path / "store.db") == "ok"
    rows = store_rows(tmp_path / "store.db")
    assert len(rows) == 12 and all(row["finished_at"] is None for row in rows)


def test_sigkill_twenty_times(tmp_path: Path) -> None:
    count = 200
    rng = random.Random(20)
    sim = SimulatorProcess(
        tmp_path,
        seed=9,
        faults={
            "slow": {"probability": 0.2, "delay_seconds": 0.3},
            "http_500": 0.05,
            "reset": 0.05,
        },
    )
    settings = config(sim, tmp_path)
    created: list[str] = []

    def feed() -> None:  # tasks keep coming while the exporter is killed
        for batch in range(20):
            created.extend(
                create_tasks(sim, tmp_path / "tasks.jsonl", count // 20, seed=batch, video_share=0)
            )
            time.sleep(0.8)

    feeder = threading.Thread(target=feed, daemon=True)
    port = None
    try:
        feeder.start()
        for _ in range(20):
            exporter = ExporterProcess(tmp_path, settings, KEY, port=port).start()
            port = exporter.port
            time.sleep(rng.uniform(0.1, 1.5))
            exporter.kill()
        feeder.join(60)
        assert len(created) == count
        started = time.time()
        last = ExporterProcess(tmp_path, settings, KEY, port=port).start()
        try:
            wait_for(
                lambda: sum(1 for t in sim.ground_truth() if t["status"] in FINISHED) == count,
                60,
                "the simulator to finish",
                every=0.5,
            )

            def done() -> bool:
                samples = last.metrics()
                active = sum(
                    total(samples, "lemondata_tasks", status=s)
                    for s in ("unknown", "pending", "processing")
                )
                return total(samples, "lemondata_tasks") == count and active == 0

            wait_for(done, 60, "the exporter to finish every task", every=0.5)
            samples = last.metrics()
        finally:
            assert last.terminate() == 0
        truth = {str(t["id"]): str(t["status"]) for t in sim.ground_truth()}
    finally:
        sim.stop()
    db = tmp_path / "store.db"
    assert integrity(db) == "ok"
    rows = store_rows(db)
    assert {row["task_id"]: row["status"] for row in rows} == truth
    assert all(row["finished_at"] is not None for row in rows)
    # The last run counted exactly the finishes it stored: none twice.
    finished_after = sum(1 for row in rows if row["finished_at"] >= started)
    assert total(samples, "lemondata_tasks_finished_total") == finished_after
    assert "Traceback" not in last.log_text()
