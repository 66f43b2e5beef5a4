"""Fixtures and helpers for every folder: the in-process simulator, an exporter config, tasks."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.simulator import Simulator, SimulatorSettings

KEY = "sk-e2e-test-key-0123456789"
TIME_SCALE = 60.0  # a 90 s task takes 1.5 s
MODELS = (
    ("image", "flux-pro"),
    ("image", "dall-e-3"),
    ("image", "midjourney"),
    ("image", "flux-schnell"),
    ("video", "veo-3"),
)


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    sim = Simulator(
        SimulatorSettings(
            port=0, api_keys=(KEY,), time_scale=TIME_SCALE, seed=11, rate_limit_per_minute=0
        )
    )
    sim.start()
    yield sim
    sim.stop()


def exporter_config(sim_url: str, workdir: Path, **polling: Any) -> dict[str, Any]:
    return {
        "api": {"base_url": sim_url, "max_connections": 16, "timeout_seconds": 5},
        "polling": {
            "cycle_interval_seconds": 0.2,
            "task_interval_seconds": 0.5,
            "requests_per_second": 200,
            "max_wait_seconds": 120,
            "backoff_base_seconds": 0.2,
            "backoff_max_seconds": 2,
            **polling,
        },
        "store": {"path": str(workdir / "store.db")},
        "discovery": {"interval_seconds": 0.2, "files": [{"path": str(workdir / "tasks.jsonl")}]},
        "log_level": "info",
    }


def create_tasks(sim: Simulator, path: Path, count: int, seed: int = 3) -> list[str]:
    """Create tasks like an application would, and append them to the watched file.

    Every other task is announced with its poll_url (the unified path, which
    gives `updated`), the rest by bare ID (the image path, which does not).
    """
    rng = random.Random(seed)
    ids = []
    with path.open("a") as handle:
        for number in range(count):
            kind, model = rng.choice(MODELS)
            created = sim.create_task(model=model, kind=kind)
            task_id = str(created["task_id"])
            ids.append(task_id)
            if number % 2 and kind == "image":
                handle.write(task_id + "\n")
            else:
                line = {"task_id": task_id, "model": model, "poll_url": created["poll_url"]}
                handle.write(json.dumps(line) + "\n")
            handle.flush()
    return ids
