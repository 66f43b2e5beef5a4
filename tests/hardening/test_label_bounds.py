"""Label values from upstream are bounded in number and length.

An upstream that names every task's model differently (long, random, with
quotes, newlines and braces), writes random error texts and answers odd HTTP
codes must not grow the number of series without bound or break the format.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import DEFAULT_FAILURE_REASONS
from exporter.intake import REASONS as REJECTION_REASONS
from tests.harness import ExporterProcess, FakeUpstream, Handler, Request, serving, total, wait_for

pytestmark = pytest.mark.integration  # every test here starts a server

TASKS = 300
MAX_MODELS = 20
ODD_CODES = (299, 418, 451, 599)
ALPHABET = "abcXYZ019 ._:/-\"'{}\\\n\t=,é漢🍋\u202e\x00"


def random_text(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(low, high)))


class Polls:
    """Answers a poll with a random model, error text and now and then an odd code."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}

    def __call__(self, request: Request, handler: Handler) -> None:
        task_id = request.path.rsplit("/", 1)[-1]
        with handler.server.lock:
            polls = self.count[task_id] = self.count.get(task_id, 0) + 1
        rng = random.Random(task_id)
        code = rng.choice(ODD_CODES) if polls == 1 and rng.random() < 0.3 else 200
        payload: dict[str, Any] = {
            "task_id": task_id,
            "created": 1_700_000_000 + rng.random(),
            "status": rng.choice(("completed", "failed")),
            "model": random_text(rng, 65, 400),
        }
        if payload["status"] == "failed":
            payload["error"] = random_text(rng, 0, 20_000)
        handler.send(code, json.dumps(payload).encode(), [("Content-Type", "application/json")])


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with serving(Polls()) as server:
        yield server


def test_model_and_reason_labels_are_bounded(upstream: FakeUpstream, tmp_path: Path) -> None:
    ids = [f"img_{n:04d}" for n in range(TASKS)]
    (tmp_path / "tasks.jsonl").write_text("\n".join(ids) + "\n")
    config = {
        "api": {"base_url": upstream.url, "max_connections": 16},
        "polling": {
            "cycle_interval_seconds": 0.2,
            "task_interval_seconds": 0.2,
            "requests_per_second": 300,
            "max_wait_seconds": 10**9,  # created is long ago: no timeouts
            "backoff_base_seconds": 0.1,
            "backoff_max_seconds": 0.2,
        },
        "store": {"path": str(tmp_path / "store.db")},
        "discovery": {"interval_seconds": 0.2, "files": [{"path": str(tmp_path / "tasks.jsonl")}]},
        "metrics": {"max_models": MAX_MODELS},
    }
    exporter = ExporterProcess(tmp_path, config, "sk-labels-test-key").start()
    try:
        wait_for(
            lambda: total(exporter.metrics(), "lemondata_tasks_finished_total") == TASKS,
            60,
            "every task finished",
            every=0.5,
        )
        text = exporter.metrics_text()
    finally:
        assert exporter.terminate() == 0

    families = list(text_string_to_metric_families(text))  # the format still parses
    values: dict[str, set[str]] = {}
    series = 0
    for family in families:
        for sample in family.samples:
            series += 1
            for label, value in sample.labels.items():
                values.setdefault(label, set()).add(value)
    models = values["model"]
    assert len(models) <= MAX_MODELS + 2  # plus "unknown" and "other"
    assert "other" in models
    assert all(re.fullmatch(r"[A-Za-z0-9._:/-]{1,64}", model) for model in models), models
    reasons = {rule.reason for rule in DEFAULT_FAILURE_REASONS} | {"unknown"}
    # lemondata_tasks_rejected_total's own fixed set of reasons shares the name.
    assert values["reason"] <= reasons | set(REJECTION_REASONS)
    assert all(re.fullmatch(r"\d{3}|none", code) for code in values["code"])
    assert {str(code) for code in ODD_CODES} & values["code"]
    # Series: bounded by models x statuses/reasons, not by tasks.
    assert series < 40 * (MAX_MODELS + 2) + 400, series
