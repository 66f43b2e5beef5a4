"""The agent with 1k, 10k and 100k tasks in flight: memory, /metrics, due tasks, start-up.

    python -m bench.scale [--counts 1000 10000 100000] [--scrapes 300]

For each count, a store file is filled with that many unfinished tasks (as
`processing`, created up to 10 minutes ago, next polls spread over the next
10 minutes) and as many tasks are created on an in-process simulator at time
scale 0.01, so they stay unfinished. Then the exporter runs as a subprocess
on that store with the default config (adaptive polling, 5 requests/s):

- start-up: from spawning the process to its first HTTP answer, and to
  `/-/ready` answering 200 (after the first poll cycle, which waits for the
  request budget);
- `/metrics`: `--scrapes` sequential scrapes, 50 ms apart, while it polls;
- memory: VmRSS of the exporter after the scrapes;
- due tasks: `store.due()` as the poll cycle calls it (4 candidates per
  task a cycle may poll), timed in this process on the same file meanwhile.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.common import Exporter, machine, quantile, slow_simulator, table
from exporter.model import DiscoveredTask
from exporter.poller.cycle import CANDIDATES_PER_SLOT
from exporter.simulator import Simulator
from exporter.simulator.models import Kind
from exporter.store.sqlite import SqliteTaskStore

KEY = "sk-bench-scale"
MODELS = ("flux-pro", "dall-e-3", "midjourney", "gpt-image-1", "veo-3")


def fill(sim: Simulator, path: Path, count: int) -> None:
    store = SqliteTaskStore(path)
    now = time.time()
    batch = []
    for _ in range(count):
        model = random.choice(MODELS)
        kind: Kind = "video" if model == "veo-3" else "image"
        answer = sim.create_task(model=model, kind=kind)
        batch.append(DiscoveredTask(str(answer["task_id"]), "file", model, answer["poll_url"]))
        if len(batch) == 5000:
            store.add(batch, now)
            batch = []
    store.add(batch, now)
    store.close()
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE tasks SET status = 'processing', created = ? - abs(random() % 600),"
            " first_seen = ?, last_polled = ?, processing_seen = ?,"
            " next_poll_at = ? + abs(random() % 600)",
            (now, now, now, now, now),
        )


def measure(sim: Simulator, count: int, scrapes: int, workdir: Path) -> list[object]:
    path = workdir / f"store-{count}.db"
    fill(sim, path, count)
    exporter = Exporter(
        workdir / f"agent-{count}",
        {
            "api": {"base_url": sim.url},
            "store": {"path": str(path)},
            "log_level": "warning",
        },
        KEY,
    )
    startup = exporter.start()
    try:
        session = requests.Session()
        latencies = []
        for _ in range(scrapes):
            started = time.perf_counter()
            response = session.get(f"{exporter.url}/metrics", timeout=10)
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200
            time.sleep(0.05)
        tracked = sum(
            sample.value
            for family in text_string_to_metric_families(response.text)
            if family.name == "lemondata_tasks"
            for sample in family.samples
            if sample.labels["status"] in ("unknown", "pending", "processing")
        )
        assert tracked == count, (tracked, count)
        rss = exporter.rss_bytes()
        store = SqliteTaskStore(path)
        due_times = []
        for _ in range(200):
            started = time.perf_counter()
            store.due(time.time() + 0.5, 10 * CANDIDATES_PER_SLOT)
            due_times.append(time.perf_counter() - started)
            time.sleep(0.005)
        store.close()
    finally:
        exporter.stop()
    return [
        count,
        exporter.serving_after,
        startup,
        rss / 2**20,
        quantile(latencies, 0.5) * 1e3,
        quantile(latencies, 0.99) * 1e3,
        quantile(due_times, 0.5) * 1e3,
        quantile(due_times, 0.99) * 1e3,
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--scrapes", type=int, default=300)
    args = parser.parse_args()
    random.seed(1)
    sim = slow_simulator(KEY)
    sim.start()
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rows = []
    try:
        for count in args.counts:
            rows.append(measure(sim, count, args.scrapes, workdir))
            print(rows[-1], flush=True)
    finally:
        sim.stop()
    print(
        f"Machine: {machine()}\n\n"
        + table(
            [
                "tasks in flight",
                "serving after s",
                "ready after s",
                "RSS MB",
                "/metrics p50 ms",
                "/metrics p99 ms",
                "due p50 ms",
                "due p99 ms",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
