"""The real agent (a subprocess) against the real simulator on loopback."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from exporter.simulator import Simulator
from tests.harness import ExporterProcess, by_label, total, wait_for
from tests.harness.fixtures import KEY, create_tasks, exporter_config

pytestmark = pytest.mark.integration  # every test here starts a server

FINISHED = ("completed", "failed", "cancelled", "expired")


def truth_finished(sim: Simulator) -> list[dict[str, object]]:
    truth = sim.ground_truth()
    return [t for t in truth if t["status"] in FINISHED]


def wait_all_finished(
    sim: Simulator, exporter: ExporterProcess, count: int, timeout: float = 120
) -> None:
    wait_for(lambda: len(truth_finished(sim)) == count, timeout, "the simulator to finish")

    def exporter_done() -> bool:
        samples = exporter.metrics()
        active = sum(
            total(samples, "lemondata_tasks", status=s)
            for s in ("unknown", "pending", "processing")
        )
        return total(samples, "lemondata_tasks") == count and active == 0

    wait_for(exporter_done, timeout, "the exporter to see every task finish", every=0.5)


def test_metrics_equal_the_ground_truth(simulator: Simulator, tmp_path: Path) -> None:
    count = 150
    exporter = ExporterProcess(tmp_path, exporter_config(simulator.url, tmp_path), KEY).start()
    try:
        create_tasks(simulator, tmp_path / "tasks.jsonl", count)
        wait_all_finished(simulator, exporter, count)
        samples = exporter.metrics()
    finally:
        exporter.terminate()
    truth = simulator.ground_truth()
    truth_status = Counter(str(t["status"]) for t in truth)
    assert by_label(samples, "lemondata_tasks_finished_total", "status") == {
        status: float(truth_status.get(status, 0)) for status in (*FINISHED, "timeout")
    }
    assert total(samples, "lemondata_tasks_discovered_total", source="file") == count

    # Failure reasons: the simulator's error families, as our default rules classify them.
    truth_reasons = Counter(str(t["reason"]) for t in truth if t["status"] == "failed")
    measured = {
        k: v for k, v in by_label(samples, "lemondata_task_failures_total", "reason").items() if v
    }
    assert measured == {reason: float(n) for reason, n in truth_reasons.items()}

    # Durations: exact when the API gave `updated`, otherwise the midpoint of the
    # gap between two polls, off by at most half of it: the uncertainty histogram
    # bounds the error.
    timed = ("completed", "failed", "cancelled")
    for status in timed:
        durations = [float(t["duration_seconds"]) for t in truth if t["status"] == status]  # type: ignore[arg-type]
        observed_count = total(samples, "lemondata_task_duration_seconds_count", status=status)
        assert observed_count == len(durations)
    error = total(samples, "lemondata_task_duration_seconds_sum") - sum(
        float(t["duration_seconds"])  # type: ignore[arg-type]
        for t in truth
        if t["status"] in timed
    )
    assert abs(error) <= total(samples, "lemondata_task_duration_uncertainty_seconds_sum") + 0.5
    assert total(samples, "lemondata_task_duration_uncertainty_seconds_count") > 0
    assert total(samples, "lemondata_task_pending_seconds_count") > 0

    requests_sent = total(samples, "lemondata_api_requests_total")
    cpu = total(samples, "process_cpu_seconds_total")
    print(
        f"\n{count} tasks, {requests_sent:.0f} requests ({requests_sent / count:.1f}/task), "
        f"{cpu:.2f} s CPU ({cpu / requests_sent * 1000:.2f} ms/request)"
    )
    assert total(samples, "lemondata_api_up") == 1


def test_sigkill_and_restart_finish_every_task_once(simulator: Simulator, tmp_path: Path) -> None:
    count = 120
    config = exporter_config(simulator.url, tmp_path)
    first = ExporterProcess(tmp_path, config, KEY).start()
    create_tasks(simulator, tmp_path / "tasks.jsonl", count)
    wait_for(
        lambda: 10 < total(first.metrics(), "lemondata_tasks_finished_total") < count - 20,
        60,
        "some tasks to finish",
    )
    first.kill()
    restarted_at = time.time()
    second = ExporterProcess(tmp_path, config, KEY, port=first.port).start()
    try:
        wait_all_finished(simulator, second, count)
        samples = second.metrics()
    finally:
        second.terminate()
    with sqlite3.connect(tmp_path / "store.db") as db:
        rows = db.execute(
            "SELECT task_id, status, finished_at, discovered_at FROM tasks"
        ).fetchall()
    truth = {str(t["id"]): str(t["status"]) for t in simulator.ground_truth()}
    assert len(rows) == count
    assert {task_id: status for task_id, status, _, _ in rows} == truth
    finished_after = sum(1 for _, _, finished_at, _ in rows if finished_at >= restarted_at)
    assert total(samples, "lemondata_tasks_finished_total") == finished_after
    # Nothing discovered twice: the file position survived the kill with the tasks.
    discovered_after = sum(1 for *_, discovered_at in rows if discovered_at >= restarted_at)
    assert total(samples, "lemondata_tasks_discovered_total") == discovered_after


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_live_metrics(simulator: Simulator, tmp_path: Path) -> None:
    exporter = ExporterProcess(tmp_path, exporter_config(simulator.url, tmp_path), KEY).start()
    try:
        create_tasks(simulator, tmp_path / "tasks.jsonl", 20)
        wait_for(
            lambda: total(exporter.metrics(), "lemondata_tasks_finished_total") >= 5,
            60,
            "finished tasks",
        )
        text = exporter.metrics_text()
        openmetrics = requests.get(
            f"{exporter.url}/metrics",
            timeout=5,
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        )
    finally:
        exporter.terminate()
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result
    assert "_created" not in text
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")


def test_wrong_key_is_reported_once_and_the_agent_keeps_running(
    simulator: Simulator, tmp_path: Path
) -> None:
    wrong_key = "sk-wrong-key-must-not-leak-42"
    exporter = ExporterProcess(tmp_path, exporter_config(simulator.url, tmp_path), wrong_key)
    exporter.start()
    try:
        create_tasks(simulator, tmp_path / "tasks.jsonl", 5)
        wait_for(
            lambda: (
                total(exporter.metrics(), "lemondata_api_errors_total", kind="unauthorized") >= 10
            ),
            30,
            "401s",
        )
        samples = exporter.metrics()
        assert total(samples, "lemondata_api_up") == 0
        assert total(samples, "lemondata_api_requests_total", code="401") >= 10
        assert requests.get(f"{exporter.url}/-/healthy", timeout=5).status_code == 200
        page = requests.get(f"{exporter.url}/", timeout=5).text
        metrics_text = exporter.metrics_text()
    finally:
        assert exporter.terminate() == 0
    log = exporter.log_text()
    assert log.count("rejects the API key") == 1
    for text in (log, page, metrics_text):
        assert wrong_key not in text


def test_nothing_tracked_says_why(simulator: Simulator, tmp_path: Path) -> None:
    exporter = ExporterProcess(tmp_path, exporter_config(simulator.url, tmp_path), KEY).start()
    try:
        page = requests.get(f"{exporter.url}/", timeout=5).text
        assert "No tasks are tracked" in page
        assert requests.get(f"{exporter.url}/-/healthy", timeout=5).status_code == 200
        assert requests.get(f"{exporter.url}/nope", timeout=5).status_code == 404
        # Logged after the first discovery pass, by the next poll cycle.
        wait_for(lambda: "No tasks are tracked" in exporter.log_text(), 30, "the idle hint logged")
    finally:
        exporter.terminate()


def test_run_without_key_explains(tmp_path: Path) -> None:
    exporter = ExporterProcess(tmp_path, {}, api_key=None)
    exporter.start(wait_ready=False)
    assert exporter.proc is not None
    assert exporter.proc.wait(30) == 2
    assert "LEMONDATA_API_KEY" in exporter.log_text()
    assert "demo" in exporter.log_text()
