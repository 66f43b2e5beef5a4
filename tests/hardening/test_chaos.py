"""Chaos: the real exporter against the real simulator with every fault mode on.

A few hundred time-scaled tasks go through the simulator while a mix of all
its faults is on from the start and changed at run time (`PUT /_sim/faults`):
an outage (a burst of 503s), a spell of 401s, then a heavier mix. Throughout,
the exporter must keep polling and keep answering /metrics about as fast as
before the load; afterwards every task must have finished exactly once, with
the statuses, failure reasons and durations of the simulator's ground truth.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.hardening.support import (
    KEY,
    Scraper,
    SimulatorProcess,
    create_tasks,
    rss_mib,
    store_rows,
)
from tests.harness import ExporterProcess, by_label, total, wait_for

pytestmark = pytest.mark.integration  # every test here starts a server

TASKS = 300
MAX_WAIT = 40.0  # real seconds: only the longest videos could time out
# How long a task may go without a usable answer here: an outage, a spell of
# 401s, a run of faults with backoff, and poll lag while a cycle waits for its
# slowest request. A task reported as timed out must have run at least
# MAX_WAIT - UNREACHED.
UNREACHED = 25.0
TIMEOUT = 2.0  # the exporter's request timeout
BACKOFF_MAX = 1.0
# Every family of faults, at low probability; huge bodies far beyond the cap.
MIX: dict[str, Any] = {
    "unknown_status": 0.05,
    "status_backwards": 0.05,
    "bad_timestamps": 0.03,
    "hostile_error_text": {"probability": 0.3, "huge_probability": 0.2, "huge_bytes": 2_000_000},
    "rate_limit_429": {"probability": 0.02, "retry_after_seconds": 1},
    "http_500": 0.02,
    "http_502": 0.02,
    "html_error": 0.02,
    "malformed_json": 0.02,
    "huge_body": {"probability": 0.03, "size_bytes": 20_000_000},
    "wrong_content_type": 0.05,
    "timeout": {"probability": 0.01, "seconds": 4},
    "reset": 0.03,
    "drip": {"probability": 0.01, "interval_seconds": 0.05},
    "slow": {"probability": 0.05, "delay_seconds": 0.3},
}
HEAVY: dict[str, Any] = {
    **MIX,
    "huge_body": {"probability": 0.1, "size_bytes": 20_000_000},
    "reset": 0.1,
    "slow": {"probability": 0.2, "delay_seconds": 0.5},
    "malformed_json": 0.05,
}
FINISHED = ("completed", "failed", "cancelled", "expired", "timeout")
CANCEL_TEXT = "cancel"


def config(sim: SimulatorProcess, workdir: Path) -> dict[str, Any]:
    return {
        "api": {
            "base_url": sim.url,
            "max_connections": 16,
            "timeout_seconds": TIMEOUT,
            "max_response_bytes": 1_048_576,
        },
        "polling": {
            "cycle_interval_seconds": 0.2,
            "task_interval_seconds": 0.5,
            "requests_per_second": 150,
            "max_wait_seconds": MAX_WAIT,
            "backoff_base_seconds": 0.2,
            "backoff_max_seconds": BACKOFF_MAX,
        },
        "store": {"path": str(workdir / "store.db")},
        "discovery": {"interval_seconds": 0.2, "files": [{"path": str(workdir / "tasks.jsonl")}]},
        "log_level": "info",
    }


def outage(
    sim: SimulatorProcess, scraper: Scraper, faults: dict[str, Any], kind: str, timeout: float = 20
) -> None:
    """While `faults` last, `api_up` is 0 and `api_errors_total{kind}` grows; then up is 1."""
    before = scraper.value("lemondata_api_errors_total", kind=kind)
    sim.set_faults(faults)

    def down() -> bool:
        samples = scraper.latest()
        return (
            total(samples, "lemondata_api_up") == 0
            and total(samples, "lemondata_api_errors_total", kind=kind) > before
        )

    wait_for(down, timeout, f"api_up 0 and {kind} errors")
    wait_for(lambda: scraper.value("lemondata_api_up") == 1, timeout, "api_up back to 1")


def test_chaos(tmp_path: Path) -> None:
    sim = SimulatorProcess(tmp_path, time_scale=60, seed=23, lost_fraction=0.03, faults=MIX)
    exporter: ExporterProcess | None = None
    scraper: Scraper | None = None
    try:
        exporter = ExporterProcess(tmp_path, config(sim, tmp_path), KEY).start()
        assert exporter.proc is not None
        pid = exporter.proc.pid
        scraper = Scraper(exporter.url, pid)
        baseline = scraper.baseline()
        rss_start = rss_mib(pid)
        scraper.start()
        run_started = time.monotonic()

        create_tasks(sim, tmp_path / "tasks.jsonl", TASKS // 2, seed=1, video_share=0.2)

        # An outage: every request gets a 503 for a while (nothing else on, so
        # no 429 counts as an answer meanwhile).
        outage(sim, scraper, {"http_503": {"burst_seconds": 3}}, "server_error")

        # The key is refused for a while.
        outage(sim, scraper, {"unauthorized": {"unauthorized_for_seconds": 2}}, "unauthorized")

        sim.set_faults(HEAVY)
        create_tasks(sim, tmp_path / "tasks.jsonl", TASKS - TASKS // 2, seed=2, video_share=0.2)
        wait_for(
            lambda: sum(1 for t in sim.ground_truth() if t["status"] in FINISHED) == TASKS,
            60,
            "the simulator to finish every task",
            every=1,
        )
        sim.set_faults({})

        def all_finished() -> bool:
            samples = scraper.latest()
            return total(samples, "lemondata_tasks_finished_total") == TASKS

        wait_for(all_finished, 60, "the exporter to finish every task", every=0.5)
        finished = time.monotonic()
        wait_for(lambda: len(scraper.since(finished)) >= 3, 30, "a few more scrapes")
        run_seconds = time.monotonic() - run_started
        scraper.stop()
        assert exporter.proc.poll() is None, exporter.log_text()[-3000:]
        final = scraper.latest()
        truth = {str(t["id"]): t for t in sim.ground_truth()}
    finally:
        if scraper is not None:
            scraper.stop()
        if exporter is not None and exporter.proc is not None:
            code = exporter.terminate()
        sim.stop()
    assert code == 0, exporter.log_text()[-3000:]
    rows = {str(row["task_id"]): row for row in store_rows(tmp_path / "store.db")}

    check_polling_never_stopped(scraper, run_seconds)
    check_scrapes(scraper, baseline)
    check_memory(scraper, rss_start)
    check_every_task_once(rows, truth, final)
    check_statuses_and_reasons(rows, truth)
    check_durations(rows, truth, final)
    assert "Traceback" not in exporter.log_text()


def check_polling_never_stopped(scraper: Scraper, run_seconds: float) -> None:
    scrapes = scraper.scrapes
    assert not scraper.failures, scraper.failures[:5]
    assert all(s.healthy == 200 for s in scrapes)
    # Requests go out in every 5-second stretch while tasks are unfinished, and
    # poll cycles end in every 10-second stretch (a cycle waits for its slowest
    # request, and a 429 pauses every request for its Retry-After).
    for window, metric in (
        (5.0, "lemondata_api_requests_total"),
        (10.0, "lemondata_poll_cycles_total"),
    ):
        start = scrapes[0].at
        while start + window <= scrapes[-1].at:
            inside = [s for s in scrapes if start <= s.at <= start + window]
            values = [total(s.samples, metric) for s in inside]
            done = total(inside[0].samples, "lemondata_tasks_finished_total") == TASKS
            assert done or values[-1] > values[0], f"{metric} stood still {start:.1f}+{window} s"
            start += window / 2
    assert len(scrapes) >= run_seconds / (scraper.interval + 0.5)


def check_scrapes(scraper: Scraper, baseline: float) -> None:
    latencies = sorted(s.latency for s in scraper.scrapes)
    p50 = statistics.median(latencies)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    print(
        f"\nscrape latency: baseline {baseline * 1000:.1f} ms, under load p50 {p50 * 1000:.1f} ms,"
        f" p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms ({len(latencies)} scrapes)"
    )
    assert p50 <= 10 * baseline
    assert p99 <= 100 * baseline


def check_memory(scraper: Scraper, rss_start: float) -> None:
    peak = max(s.rss for s in scraper.scrapes)
    last = scraper.scrapes[-1].rss
    print(f"RSS: start {rss_start:.1f} MiB, peak {peak:.1f} MiB, end {last:.1f} MiB")
    # 20 MB bodies, 16 at a time, would be 320 MB if they were read whole.
    assert peak <= 2 * rss_start


def check_every_task_once(
    rows: dict[str, dict[str, Any]], truth: dict[str, dict[str, Any]], final: Any
) -> None:
    assert set(rows) == set(truth)
    assert all(row["finished_at"] is not None for row in rows.values())
    stored = Counter(str(row["status"]) for row in rows.values())
    counted = by_label(final, "lemondata_tasks_finished_total", "status")
    assert {s: counted.get(s, 0.0) for s in FINISHED} == {s: float(stored[s]) for s in FINISHED}
    assert total(final, "lemondata_tasks_discovered_total") == len(truth)
    assert total(final, "lemondata_task_failures_total") == stored["failed"]


def check_statuses_and_reasons(
    rows: dict[str, dict[str, Any]], truth: dict[str, dict[str, Any]]
) -> None:
    hostile = 0
    timeouts = 0
    for task_id, row in rows.items():
        real = truth[task_id]
        status = row["status"]
        error = row["error_message"]
        assert error is None or len(error) <= 8192
        if status == "timeout":
            # Given up after max_wait: the task really ran that long (or longer).
            timeouts += 1
            duration = real["duration_seconds"]
            assert duration is None or duration >= MAX_WAIT - UNREACHED, real
            continue
        if error is not None and real["error"] is not None and error != real["error"]:
            # The error text was replaced by a hostile one: the reason cannot be
            # read from it, and on the image path neither can a cancellation.
            hostile += 1
            if real["status"] == "cancelled" and row["poll_url"] is None:
                assert status in ("cancelled", "failed")
            else:
                assert status == real["status"], (row, real)
            continue
        assert status == real["status"], (row, real)
        if status == "failed":
            assert row["reason"] == real["reason"], (row, real)
    print(f"{timeouts} timed out, {hostile} seen with a hostile error text")
    assert timeouts < len(rows) / 5
    assert sum(1 for row in rows.values() if row["status"] == "expired") > 0


def check_durations(
    rows: dict[str, dict[str, Any]], truth: dict[str, dict[str, Any]], final: Any
) -> None:
    timed = [
        (row, truth[task_id])
        for task_id, row in rows.items()
        if row["status"] in ("completed", "failed", "cancelled")
        and row["status"] == truth[task_id]["status"]
    ]
    measured = [(row, real) for row, real in timed if row["duration_seconds"] is not None]
    # Without a plausible `created` nothing can be measured; bad timestamps are rare.
    assert len(measured) >= 0.9 * len(timed)
    # Exact durations when `updated` was usable; otherwise the midpoint of the
    # gap between two polls, off by at most half of it, which the uncertainty
    # histogram records.
    off = sum(abs(row["duration_seconds"] - real["duration_seconds"]) for row, real in measured)
    uncertainty = total(final, "lemondata_task_duration_uncertainty_seconds_sum")
    assert off <= uncertainty + 0.01 * len(measured)
    counted = total(final, "lemondata_task_duration_seconds_count")
    with_duration = sum(1 for row in rows.values() if row["duration_seconds"] is not None)
    assert counted == with_duration
