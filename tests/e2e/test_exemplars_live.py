"""From a slow bucket to the task, through the real path.

The simulator (time x60) runs fast and slow tasks; the exporter polls them; a
real Prometheus with exemplar storage on scrapes the exporter (it asks for
OpenMetrics, the only format with exemplars). `query_exemplars` must name, on
the slowest bucket, tasks the simulator's ground truth says were slow, and on
the fast bucket, fast ones; each named task's page (the dashboards' data link)
opens without the API token; and the task IDs are never a series label.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import yaml

from exporter.simulator import Simulator, SimulatorSettings
from tests.e2e.conftest import KEY, exporter_config
from tests.e2e.harness import ExporterProcess, free_port, total, wait_for
from tests.monitoring.support import require_tool

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TIME_SCALE = 60.0
FAST, SLOW = 12, 4
# Real seconds (the exporter measures real time): fast tasks take about 0.4 s,
# slow ones about 8 s; the buckets put them apart with room for the polls.
DURATION_BUCKETS = [2, 5, 30]
PENDING_BUCKETS = [0.5, 1, 5]
SLOW_AFTER = 5.0
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass
class Run:
    prometheus: str
    exporter: ExporterProcess
    truth: dict[str, dict[str, Any]]  # task ID -> the simulator's ground truth

    def exemplars(self, metric: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
        """(series labels, exemplar) for every exemplar Prometheus holds of `metric`."""
        now = time.time()
        reply = requests.get(
            f"{self.prometheus}/api/v1/query_exemplars",
            params={"query": metric, "start": now - 600, "end": now + 60},
            timeout=10,
        ).json()
        assert reply["status"] == "success", reply
        return [
            (series["seriesLabels"], exemplar)
            for series in reply["data"]
            for exemplar in series["exemplars"]
        ]


@pytest.fixture(scope="module", name="run")
def _run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    prometheus_bin = require_tool("prometheus", hint="Debian package prometheus")
    tmp = tmp_path_factory.mktemp("exemplars")
    sim = Simulator(
        SimulatorSettings(
            port=0, api_keys=(KEY,), time_scale=TIME_SCALE, seed=5, rate_limit_per_minute=0
        )
    )
    sim.start()
    config = exporter_config(sim.url, tmp)
    config["metrics"] = {
        "duration_buckets": DURATION_BUCKETS,
        "pending_buckets": PENDING_BUCKETS,
        "static_labels": {"env": "exemplar-test"},  # exemplars survive static labels
    }
    (tmp / "tasks.jsonl").touch()
    exporter = ExporterProcess(tmp, config, api_key=KEY).start()
    port = free_port()
    (tmp / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "lemondata-exporter",
                        "scrape_interval": "1s",
                        "scrape_timeout": "1s",
                        "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}],
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    log = tmp / "prometheus.log"
    with log.open("wb") as handle:
        prometheus = subprocess.Popen(
            [
                prometheus_bin,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--enable-feature=exemplar-storage",
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(f"{url}/-/ready", timeout=2).ok, 30, "Prometheus")
        ids = []
        with (tmp / "tasks.jsonl").open("a") as handle:
            for number in range(FAST + SLOW):
                slow = number % ((FAST + SLOW) // SLOW) == 0
                created = sim.create_task(
                    "flux-pro",
                    "image",
                    outcome="completed",
                    lost=False,
                    pending_seconds=120.0 if slow else 5.0,  # simulated seconds
                    processing_seconds=360.0 if slow else 20.0,
                )
                ids.append(str(created["task_id"]))
                line = {"task_id": created["task_id"], "model": "flux-pro"}
                handle.write(json.dumps(line) + "\n")
                handle.flush()
                time.sleep(0.25)  # a few scrapes apart, so each bucket's exemplar changes
        wait_for(
            lambda: total(exporter.metrics(), "lemondata_task_duration_seconds_count") == len(ids),
            60,
            "every task finished and measured",
        )
        truth = {task["id"]: task for task in sim.ground_truth()}
        assert set(truth) == set(ids)
        yield Run(url, exporter, truth)
    finally:
        prometheus.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            prometheus.wait(10)
        if prometheus.poll() is None:
            prometheus.kill()
            prometheus.wait(5)
        with contextlib.suppress(Exception):
            exporter.terminate()
        sim.stop()


def _by_bucket(run: Run, metric: str) -> dict[float, set[str]]:
    """Bucket bound (`le`, "30.0" in OpenMetrics) -> the task IDs on it."""
    found: dict[float, set[str]] = {}
    for series, exemplar in run.exemplars(metric):
        found.setdefault(float(series["le"]), set()).add(exemplar["labels"]["task_id"])
    return found


def test_the_slowest_buckets_name_slow_tasks(run: Run) -> None:
    slow = {i for i, t in run.truth.items() if float(t["duration_seconds"]) > SLOW_AFTER}
    fast = set(run.truth) - slow
    assert len(slow) == SLOW and len(fast) == FAST
    # Prometheus holds an exemplar once a scrape after the finish has shown it.
    found = wait_for(
        lambda: (
            (b := _by_bucket(run, "lemondata_task_duration_seconds_bucket"))
            and 30 in b
            and 2 in b
            and b
        ),
        30,
        "exemplars on the slow and fast buckets",
    )
    assert found[30] <= slow, (found, slow)
    assert found[2] <= fast, (found, fast)
    assert 5 not in found or found[5] <= slow  # none of the fast tasks took 2 s
    # The exemplar's value is the measured duration of that very task.
    for series, exemplar in run.exemplars("lemondata_task_duration_seconds_bucket"):
        real = float(run.truth[exemplar["labels"]["task_id"]]["duration_seconds"])
        assert abs(float(exemplar["value"]) - real) < 1.5, (exemplar, real)
        assert series["env"] == "exemplar-test" and series["model"] == "flux-pro"
        assert "task_id" not in series


def test_pending_and_counters_carry_task_ids(run: Run) -> None:
    pending = wait_for(
        lambda: run.exemplars("lemondata_task_pending_seconds_bucket"), 30, "pending exemplars"
    )
    finished = wait_for(
        lambda: run.exemplars("lemondata_tasks_finished_total"), 30, "counter exemplars"
    )
    for series, exemplar in [*pending, *finished]:
        assert exemplar["labels"]["task_id"] in run.truth
        assert "task_id" not in series
    # Pending 2 s (simulated 120 s) is only seen on the slow tasks.
    slow_pending = {i for i, t in run.truth.items() if float(t["pending_seconds"] or 0) > 1.0}
    for series, exemplar in pending:
        if float(series["le"]) == 5:
            assert exemplar["labels"]["task_id"] in slow_pending


def test_the_link_target_and_the_exposition(run: Run) -> None:
    task_id = next(iter(_by_bucket(run, "lemondata_task_duration_seconds_bucket")[30]))
    page = requests.get(f"{run.exporter.url}/status/tasks/{task_id}", timeout=5)
    assert page.status_code == 200 and task_id in page.text and "completed" in page.text
    om = requests.get(f"{run.exporter.url}/metrics", headers={"Accept": OPENMETRICS}, timeout=5)
    assert om.headers["Content-Type"].startswith("application/openmetrics-text")
    assert ' # {task_id="' in om.text
    assert "_created" not in om.text
    plain = requests.get(f"{run.exporter.url}/metrics", timeout=5)
    assert plain.headers["Content-Type"].startswith("text/plain")
    assert "task_id" not in plain.text
    # Every series label set of the scraped exporter is free of task IDs.
    reply = requests.get(
        f"{run.prometheus}/api/v1/series",
        params={"match[]": '{job="lemondata-exporter"}'},
        timeout=10,
    ).json()
    values = {value for series in reply["data"] for value in series.values()}
    assert not values & set(run.truth)
