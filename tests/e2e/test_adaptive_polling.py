"""Adaptive polling through the real path: fewer requests than fixed, no finish missed.

Two exporter subprocesses, one `fixed` and one `adaptive`, watch the same
tasks on one simulator. Every interval is divided by the simulator's time
scale. The adaptive one learns from a first batch of tasks, is restarted (what
it learnt must survive), and both are compared on a second batch: requests per
task (counted, not timed) and every finish seen with the right status.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.simulator import Simulator, SimulatorSettings
from tests.harness import ExporterProcess, total, wait_for

pytestmark = pytest.mark.integration  # every test here starts a server

KEY = "sk-e2e-adaptive-0123456789"
SCALE = 10.0  # a 60 s task takes 6 s
MODELS = ("flux-pro", "dall-e-3", "ideogram-v3")
FINISHED = ("completed", "failed", "cancelled", "expired")


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    sim = Simulator(
        SimulatorSettings(
            port=0, api_keys=(KEY,), time_scale=SCALE, seed=23, rate_limit_per_minute=0
        )
    )
    sim.start()
    yield sim
    sim.stop()


def config(sim: Simulator, workdir: Path, tasks_file: Path, strategy: str) -> dict[str, Any]:
    seconds = {  # simulated seconds, divided by the scale below
        "cycle_interval_seconds": 1.5,
        "task_interval_seconds": 3,
        "freshness_target_seconds": 4.5,  # dense interval 4.5 - 1.5 = 3 s, as fixed
        "max_interval_seconds": 60,
        "max_wait_seconds": 1800,
        "backoff_base_seconds": 2,
        "backoff_max_seconds": 30,
    }
    return {
        "api": {"base_url": sim.url, "max_connections": 8, "timeout_seconds": 5},
        "polling": {
            **{name: value / SCALE for name, value in seconds.items()},
            "strategy": strategy,
            "requests_per_second": 1000,
        },
        "store": {"path": str(workdir / "store.db")},
        "discovery": {"interval_seconds": 0.05, "files": [{"path": str(tasks_file)}]},
        "log_level": "info",
    }


def create(sim: Simulator, path: Path, count: int, rng: random.Random) -> list[str]:
    ids = []
    with path.open("a") as handle:
        for _ in range(count):
            model = rng.choice(MODELS)
            created = sim.create_task(model=model, kind="image")
            task_id = str(created["task_id"])
            line: dict[str, object] = {"task_id": task_id, "model": model}
            if rng.random() < 0.5:  # the unified path: `updated` and `progress`
                line["poll_url"] = created["poll_url"]
            handle.write(json.dumps(line) + "\n")
            ids.append(task_id)
    return ids


def stored(exporter: ExporterProcess) -> dict[str, tuple[str, int]]:
    with sqlite3.connect(exporter.workdir / "store.db") as db:
        return {
            task_id: (status, attempts)
            for task_id, status, attempts in db.execute(
                "SELECT task_id, status, attempts FROM tasks"
            )
        }


def all_seen(sim: Simulator, exporters: list[ExporterProcess], ids: list[str]) -> bool:
    truth = {str(t["id"]): str(t["status"]) for t in sim.ground_truth()}
    if any(truth[i] not in FINISHED for i in ids):
        return False
    for exporter in exporters:
        samples = exporter.metrics()
        if total(samples, "lemondata_tasks") < len(ids):  # not all discovered yet
            return False
        active = sum(
            total(samples, "lemondata_tasks", status=s)
            for s in ("unknown", "pending", "processing")
        )
        if active:
            return False
    return True


def test_adaptive_spends_fewer_requests_per_task_and_misses_no_finish(
    simulator: Simulator, tmp_path: Path
) -> None:
    rng = random.Random(5)
    tasks_file = tmp_path / "tasks.jsonl"
    tasks_file.touch()
    dirs = {name: tmp_path / name for name in ("fixed", "adaptive")}
    for directory in dirs.values():
        directory.mkdir()
    fixed = ExporterProcess(
        dirs["fixed"], config(simulator, dirs["fixed"], tasks_file, "fixed"), KEY
    )
    adaptive_config = config(simulator, dirs["adaptive"], tasks_file, "adaptive")
    adaptive = ExporterProcess(dirs["adaptive"], adaptive_config, KEY)
    exporters = [fixed.start(), adaptive.start()]
    try:
        # 1. Warm-up: at least 30 finished tasks of each model to learn from.
        warmup = create(simulator, tasks_file, 150, rng)
        wait_for(lambda: all_seen(simulator, exporters, warmup), 90, "the warm-up to finish")
        # What was learnt survives a restart.
        assert adaptive.terminate() == 0
        restarted = ExporterProcess(dirs["adaptive"], adaptive_config, KEY, port=adaptive.port)
        exporters = [fixed, restarted.start()]
        assert "durations of 3 model(s) loaded" in restarted.log_text()

        # 2. The measured batch, the same tasks for both.
        measured = create(simulator, tasks_file, 120, rng)
        wait_for(
            lambda: all_seen(simulator, exporters, warmup + measured), 90, "the batch to finish"
        )
    finally:
        for exporter in exporters:
            exporter.terminate()
    truth = {str(t["id"]): str(t["status"]) for t in simulator.ground_truth()}
    spent = {}
    for name, exporter in (("fixed", fixed), ("adaptive", restarted)):
        rows = stored(exporter)
        # Every finish seen, as what it was.
        assert {i: rows[i][0] for i in measured} == {i: truth[i] for i in measured}
        spent[name] = sum(rows[i][1] for i in measured)
    print(
        f"\nrequests per task: fixed {spent['fixed'] / len(measured):.1f}, "
        f"adaptive {spent['adaptive'] / len(measured):.1f}"
    )
    # On this short, image-only workload about 0.7 is usual (0.43 on the benchmark mix);
    # a wide margin, as both exporters share two CPUs with the simulator.
    assert spent["adaptive"] < 0.85 * spent["fixed"]
