"""Durations on the image path (no `updated`) against the simulator's ground truth.

Without `updated`, a task finished somewhere between the last poll that saw it
unfinished and the first that saw it finished. The exporter takes the midpoint
of that gap: over hundreds of tasks the mean signed error is about zero, and
no error is larger than half the gap, the task's uncertainty.
"""

from __future__ import annotations

import sqlite3
import statistics
import time
from pathlib import Path

import pytest

from exporter.simulator import Simulator, SimulatorSettings
from tests.harness import ExporterProcess, Samples, total, wait_for
from tests.harness.fixtures import KEY, exporter_config

TASKS = 300
# Slower than the other end-to-end tests (an image task takes 1-4 s): the
# midpoint is unbiased when a finish is equally likely anywhere in the gap,
# which needs gaps short against the spread of task durations, as they are
# at real speed (5 s gaps, tasks of 30-120 s).
TIME_SCALE = 30.0
IMAGE_MODELS = ("flux-pro", "flux-schnell", "dall-e-3", "midjourney", "stable-diffusion-3.5")
TIMED = ("completed", "failed", "cancelled")


def latency_bound(samples: Samples) -> float:
    """No status request took longer than this (the smallest histogram bucket
    holding them all). A poll's time is the midpoint of sending and receiving;
    the API answered within half the request's latency of it, so each end of
    a gap, and the truth with it, may lie up to that much outside."""
    name = "lemondata_api_request_duration_seconds"
    count = total(samples, f"{name}_count")
    bounds = sorted(
        float(dict(labels)["le"])
        for (sample, labels), value in samples.items()
        if sample == f"{name}_bucket" and value >= count
    )
    return bounds[0]


@pytest.mark.integration
@pytest.mark.parametrize("strategy", ["fixed", "adaptive"])
def test_midpoint_durations_are_unbiased_and_within_half_the_gap(
    tmp_path: Path, strategy: str
) -> None:
    settings = SimulatorSettings(
        port=0, api_keys=(KEY,), time_scale=TIME_SCALE, seed=7, rate_limit_per_minute=0
    )
    simulator = Simulator(settings)
    simulator.start()
    config = exporter_config(simulator.url, tmp_path, strategy=strategy)
    exporter = ExporterProcess(tmp_path, config, KEY).start()
    try:
        with (tmp_path / "tasks.jsonl").open("a") as tasks:
            for number in range(TASKS):
                created = simulator.create_task(IMAGE_MODELS[number % len(IMAGE_MODELS)])
                tasks.write(f"{created['task_id']}\n")  # bare ID: the image path
                tasks.flush()
                if number % 10 == 9:
                    time.sleep(0.3)  # a steady stream, within the request budget

        def all_seen() -> bool:
            samples = exporter.metrics()
            finished = total(samples, "lemondata_tasks_finished_total")
            return finished == TASKS and total(samples, "lemondata_tasks_discovered_total") == TASKS

        wait_for(all_seen, 180, "every task to be seen finished", every=0.5)
        samples = exporter.metrics()
    finally:
        exporter.terminate()
        simulator.stop()
    truth = {str(t["id"]): t for t in simulator.ground_truth()}
    with sqlite3.connect(tmp_path / "store.db") as db:
        rows = db.execute(
            "SELECT task_id, status, created, finished_at, duration_seconds FROM tasks"
        ).fetchall()
    allowance = latency_bound(samples)
    errors: list[float] = []
    half_gaps: list[float] = []
    for task_id, status, created, finished_at, duration in rows:
        real = truth[task_id]
        if status not in TIMED or status != real["status"] or duration is None:
            continue
        # duration = midpoint - created and the gap ends at finished_at, so:
        half_gap = finished_at - created - duration
        error = duration - float(real["duration_seconds"])  # type: ignore[arg-type]
        assert abs(error) <= half_gap + allowance, (task_id, error, half_gap, allowance)
        errors.append(error)
        half_gaps.append(half_gap)
    assert len(errors) >= 0.9 * TASKS
    mean_error = statistics.fmean(errors)
    mean_half_gap = statistics.fmean(half_gaps)
    # The previous measure, the later poll alone, was late by the half gap more.
    later_poll_error = statistics.fmean(e + h for e, h in zip(errors, half_gaps, strict=True))
    ratios = [abs(e) / h for e, h in zip(errors, half_gaps, strict=True) if h]
    latency = total(samples, "lemondata_api_request_duration_seconds_sum") / total(
        samples, "lemondata_api_request_duration_seconds_count"
    )
    print(
        f"\n{strategy}: {len(errors)} tasks, mean signed error {mean_error * 1000:+.1f} ms "
        f"(later poll alone: {later_poll_error * 1000:+.1f} ms), "
        f"mean |error| {statistics.fmean(abs(e) for e in errors) * 1000:.1f} ms, "
        f"max |error| {max(abs(e) for e in errors) * 1000:.1f} ms, "
        f"max |error| / half gap {max(ratios):.2f} "
        f"({sum(r <= 1 for r in ratios) / len(ratios):.1%} within the half gap), "
        f"mean half gap {mean_half_gap * 1000:.1f} ms, mean request latency "
        f"{latency * 1000:.1f} ms (all under {allowance * 1000:.0f} ms)"
    )
    # A uniform error over +-h has a mean within a few h/sqrt(3n) of 0; the
    # later poll alone (the old measure) was off by +h on average.
    assert abs(mean_error) <= 0.15 * mean_half_gap
    # The exporter's own histogram agrees with the store.
    assert total(samples, "lemondata_task_duration_uncertainty_seconds_count") >= len(errors)
    assert total(samples, "lemondata_task_duration_uncertainty_seconds_sum") == pytest.approx(
        sum(
            finished_at - created - duration
            for _, status, created, finished_at, duration in rows
            if status in TIMED and duration is not None
        ),
        rel=1e-6,
        abs=1e-3,
    )
