"""CPU per status poll: the agent's whole poll path vs a bare `requests` loop.

    python -m bench.cpu_per_poll [--tasks 1000] [--rounds 15] [--profile]

The simulator runs as a subprocess (its CPU is not counted) with tasks that
stay unfinished for the whole run (time scale 0.01). This process then polls
every task, alternating, `--rounds` times each:

- bare: `requests.Session().get(url)` for each task, nothing else;
- whole path: `PollCycle.run_once()` wired as `Agent` wires it (SQLite store
  file, `UpstreamClient`, parse, `decide` with the adaptive schedule,
  classify, store, `Recorder`), every task due.

Each is run with one thread, and with 8 (the default `api.max_connections`:
the bare loop then splits the URLs over 8 threads sharing the session).
CPU is `time.process_time()` of this process (all threads) around the polls
only. `--profile` prints the top of a cProfile of one whole-path cycle.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from bench.common import machine, start_simulator, table
from exporter.classify import ReasonClassifier
from exporter.config import PollingConfig
from exporter.loops import build_poller
from exporter.metrics.recorder import Recorder
from exporter.model import DiscoveredTask
from exporter.poller.adaptive import build_schedule
from exporter.poller.cycle import CycleSettings
from exporter.poller.ratelimit import AccountShare, RequestBudget
from exporter.poller.transitions import PollPolicy
from exporter.store.sqlite import SqliteTaskStore
from exporter.upstream.client import UpstreamClient

KEY = "sk-bench-cpu-per-poll"


class WholePath:
    def __init__(self, url: str, task_ids: list[tuple[str, str]], workers: int, db: Path):
        self.db = db
        self.store = SqliteTaskStore(db)
        self.store.add([DiscoveredTask(t, "bench", "veo-3", p) for t, p in task_ids], time.time())
        polling = PollingConfig(requests_per_second=1e6)
        registry = CollectorRegistry()
        classifier = ReasonClassifier([])
        recorder = Recorder(
            registry,
            duration_buckets=[1, 10, 100],
            pending_buckets=[1, 10],
            max_models=50,
            reasons=classifier.reasons,
            budget_rps=polling.requests_per_second,
        )
        self.client = UpstreamClient(url, SecretStr(KEY), max_connections=workers)
        schedule = build_schedule(polling)
        self.cycle = build_poller(
            self.store,
            self.client,
            classifier,
            recorder,
            RequestBudget(polling.requests_per_second),
            PollPolicy(task_interval=polling.task_interval_seconds),
            CycleSettings(workers=workers, batch_size=len(task_ids)),
            schedule=schedule,
            share=AccountShare(polling.requests_per_second, polling.rate_limit_reserve_ratio),
        ).cycle
        self.count = len(task_ids)

    def reset(self) -> None:
        with sqlite3.connect(self.db) as db:
            db.execute("UPDATE tasks SET next_poll_at = 0")

    def run(self) -> int:
        return self.cycle.run_once().polled

    def close(self) -> None:
        self.cycle.stop()
        self.client.close()
        self.store.close()


def bare(urls: list[str], workers: int) -> Callable[[], int]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {KEY}"
    pool = ThreadPoolExecutor(workers) if workers > 1 else None

    def run_part(part: list[str]) -> None:
        for url in part:
            session.get(url, timeout=10)

    def run() -> int:
        if pool is None:
            run_part(urls)
        else:
            parts = [urls[i::workers] for i in range(workers)]
            list(pool.map(run_part, parts))
        return len(urls)

    return run


def cpu_per_call(run: Callable[[], int], before: Callable[[], None] | None = None) -> float:
    if before is not None:
        before()
    cpu = time.process_time()
    count = run()
    return (time.process_time() - cpu) / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    sim, url = start_simulator(KEY, "--seed", "5")
    workdir = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    try:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {KEY}"
        tasks = []
        for _ in range(args.tasks):
            answer = session.post(
                f"{url}/v1/videos/generations", json={"model": "veo-3", "prompt": "x"}, timeout=10
            ).json()
            tasks.append((answer["task_id"], answer["poll_url"]))
        urls = [url + poll_url for _, poll_url in tasks]
        rows = []
        for workers in (1, 8):
            whole = WholePath(url, tasks, workers, workdir / f"store-{workers}.db")
            plain = bare(urls, workers)
            cpu_per_call(plain)  # warm-up: connections, caches
            cpu_per_call(whole.run, whole.reset)
            bare_us, whole_us = [], []
            for _ in range(args.rounds):
                bare_us.append(cpu_per_call(plain) * 1e6)
                whole_us.append(cpu_per_call(whole.run, whole.reset) * 1e6)
            b, w = statistics.median(bare_us), statistics.median(whole_us)
            # Each round's whole path against the bare loop just before it: drift
            # of the shared machine hits both sides of a pair alike.
            paired = sorted(x / y for x, y in zip(whole_us, bare_us, strict=True))
            rows.append(
                [workers, b, w, statistics.median(paired), paired[len(paired) // 4], paired[-1]]
            )
            print(f"workers={workers}: bare {bare_us} whole {whole_us}", flush=True)
            if args.profile and workers == 1:
                whole.reset()
                profile = cProfile.Profile()
                profile.enable()
                whole.run()
                profile.disable()
                pstats.Stats(profile).sort_stats("tottime").print_stats(25)
            whole.close()
        report = (
            f"Machine: {machine()}\n\n{args.tasks} tasks, {args.rounds} rounds each, alternating; "
            "CPU µs per poll of this process (simulator excluded)\n\n"
            + table(
                [
                    "threads",
                    "bare µs (median)",
                    "whole path µs (median)",
                    "ratio (median of pairs)",
                    "ratio, 1st quartile",
                    "ratio, worst pair",
                ],
                rows,
            )
        )
        print(report)
    finally:
        sim.terminate()
        sim.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
