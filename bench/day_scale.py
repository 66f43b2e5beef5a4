"""A day of a large account: 1.5 million tasks in the store, without a stall.

    python -m bench.day_scale

reproduces every figure of docs/benchmarks.md's day-scale section (SQLite,
then Redis; about an hour on 2 cores). Knobs: `--tasks` (1,500,000),
`--unfinished` (100,000), `--backend sqlite redis`, `--duty-cycle` and
`--prune-runs` (SQLite prune runs: each duty cycle, alternated, that many
times), `--help` for the rest.

About 1,000 tasks a minute for a day: `--tasks` in the store, of which
`--unfinished` are in flight (created on an in-process simulator at time scale
0.01, so they stay unfinished and the exporter polls them) and the rest
finished over the last 24 hours (85 % completed, 10 % failed with an error
text, the rest cancelled, expired or timed out; three status changes each).

SQLite (seeded through the store's own schema, triggers and indexes: rows
inserted into its tables, so its counts are what `apply` would have left):

- rest: the exporter started on the store (retention 48 h: nothing to prune);
  first HTTP answer and `/-/ready`; `/metrics` p50/p99 over `--scrapes`
  sequential scrapes (on one kept-alive connection, as Prometheus scrapes);
  the same while `--clients` clients (in a process of their own, as browsers
  are) reload `/status` without pause, and once a second; `/status` p50/p99
  as those clients saw
  it; the task API's filtered list pages (first page and a page deep in, by
  cursor); RSS.
- prune runs, each on a fresh copy of that file: `--baseline-scrapes` scrapes
  at rest (retention 48 h), then the exporter restarted with a 12 h retention,
  so its start-up prune forgets half the finished tasks, scraped all through
  it: ready, the prune's length and rows a second (from the log), `/metrics`
  p99 during it over p99 at rest (also leaving out the scrapes during the
  start-up quick_check), polls per second, the WAL after it, and the load
  average before and after (the machine is shared: compare runs of one
  command, not absolute times).
- then, in this process on the last run's file, the store's old queries (as
  they were before the day-scale work) against today's methods: ratios.

Redis (`--backend redis`, a redis-server started here): the same finished
tasks written with `RedisTaskStore.restore` (what the scripts leave), the
unfinished ones created on the simulator; bytes per finished task; the
exporter on it through HTTP like SQLite's (ready, `/metrics`, `/status` under
load, the task API's list pages); the poll path in batches of 50 (`due`, then
`apply` for each); the exporter's start-up prune of half the finished tasks,
scraped through; a few reads in-process. The old layout's bytes per finished
task are measured in the same run by writing `--old-sample` tasks with the
store module as it was (`git show REV:exporter/store/redis.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from http.client import HTTPException
from pathlib import Path
from types import ModuleType
from typing import Any

import requests

from bench.common import (
    Exporter,
    KeptAliveClient,
    machine,
    quantile,
    slow_simulator,
    table,
    wait_until,
)
from exporter.api.auth import TOKEN_ENV
from exporter.model import DiscoveredTask, Finish, Status, Task, TaskUpdate
from exporter.simulator import Simulator
from exporter.store.base import FinishLabels, TaskEvent
from exporter.store.sqlite import _COLUMNS, PRUNE_DUTY_CYCLE, SqliteTaskStore

KEY = "sk-bench-day-scale"
TOKEN = "bench-day-scale-token-0123456789abcdef"
DAY = 86400.0
MODELS = (  # (model, kind, share)
    ("flux-pro", "image", 0.3),
    ("flux-schnell", "image", 0.2),
    ("dall-e-3", "image", 0.15),
    ("midjourney", "image", 0.15),
    ("gpt-image-1", "image", 0.1),
    ("veo-3", "video", 0.07),
    ("sora-2", "video", 0.03),
)
ENDS = (  # (status, share)
    (Status.COMPLETED, 0.85),
    (Status.FAILED, 0.10),
    (Status.CANCELLED, 0.02),
    (Status.EXPIRED, 0.02),
    (Status.TIMEOUT, 0.01),
)
ERRORS = (
    ("content_policy", "Your request was rejected as a result of our safety system."),
    ("upstream_error", "The upstream provider returned an error: 503 Service Unavailable"),
    ("timeout", "Generation timed out after 600 seconds"),
)
# The revision whose store is "before" (the last one before the day-scale work).
OLD_REVISION = "485ffb0"


def ms(seconds: float) -> float:
    return seconds * 1e3


# ---- the day's tasks ---------------------------------------------------------------


def pick(rng: random.Random, choices: tuple[tuple[Any, ...], ...]) -> tuple[Any, ...]:
    roll, acc = rng.random(), 0.0
    for choice in choices:
        acc += choice[-1]
        if roll < acc:
            return choice
    return choices[-1]


def finished_tasks(count: int, now: float, seed: int = 1) -> Iterator[tuple[Task, list[TaskEvent]]]:
    """`count` finished tasks over the last 24 h, IDs in sorted order."""
    rng = random.Random(seed)
    ids = sorted(f"img_{rng.getrandbits(96):024x}" for _ in range(count))
    for task_id in ids:
        model, kind, _ = pick(rng, MODELS)
        status = pick(rng, ENDS)[0]
        duration = rng.lognormvariate(4.0 if kind == "image" else 5.5, 0.5)
        finished_at = now - rng.uniform(0, DAY)
        created = finished_at - duration
        discovered = created + 0.4
        reason = message = None
        if status is Status.FAILED:
            reason, message = rng.choice(ERRORS)
        task = Task(
            task_id=task_id if kind == "image" else "vid_" + task_id[4:],
            source="file",
            model=model,
            poll_url=None if kind == "image" else f"/v1/tasks/vid_{task_id[4:]}",
            status=status,
            discovered_at=discovered,
            next_poll_at=finished_at,
            created=created,
            first_seen=discovered + 0.3,
            last_polled=finished_at,
            processing_seen=created + 2.0,
            attempts=rng.randint(3, 12),
            consecutive_errors=0,
            finished_at=finished_at,
            duration_seconds=round(duration, 3) if status is Status.COMPLETED else None,
            reason=reason,
            error_message=message,
        )
        events = [
            TaskEvent(discovered + 0.3, Status.PENDING, Status.UNKNOWN),
            TaskEvent(created + 2.0, Status.PROCESSING, Status.PENDING),
            TaskEvent(finished_at, status, Status.PROCESSING),
        ]
        yield task, events


def create_unfinished(sim: Simulator, count: int, now: float, seed: int = 2) -> list[Task]:
    """Tasks the simulator knows, unfinished for hours (time scale 0.01)."""
    rng = random.Random(seed)
    tasks = []
    for _ in range(count):
        model, kind, _ = pick(rng, MODELS)
        answer = sim.create_task(model=model, kind=kind)
        created = now - rng.uniform(0, 600)
        status = Status.PROCESSING if rng.random() < 0.8 else Status.PENDING
        tasks.append(
            Task(
                task_id=str(answer["task_id"]),
                source="file",
                model=model,
                poll_url=str(answer["poll_url"]),
                status=status,
                discovered_at=created + 0.4,
                next_poll_at=now + rng.uniform(0, 600),
                created=created,
                first_seen=created + 0.7,
                last_polled=now - rng.uniform(0, 30),
                processing_seen=created + 2.0 if status is Status.PROCESSING else None,
                attempts=rng.randint(1, 6),
                consecutive_errors=0,
            )
        )
    return tasks


# ---- SQLite ----------------------------------------------------------------------------


def seed_sqlite(path: Path, finished: int, unfinished: list[Task], now: float) -> None:
    """Rows straight into the store's tables; its triggers keep the counts."""
    store = SqliteTaskStore(path, integrity_check=False)
    db = store._db
    # Seeding only: a page cache that holds the indexes, no fsync.
    db.execute("PRAGMA cache_size=-1000000")
    db.execute("PRAGMA synchronous=OFF")
    columns = _COLUMNS.split(", ")
    insert = f"INSERT INTO tasks ({_COLUMNS}) VALUES ({', '.join('?' for _ in columns)})"
    event = "INSERT INTO task_events (task_id, at, previous, status) VALUES (?, ?, ?, ?)"

    def rows(task: Task) -> tuple[Any, ...]:
        values = [getattr(task, name) for name in columns]
        values[columns.index("status")] = task.status.value
        return tuple(values)

    chunk: list[tuple[Task, list[TaskEvent]]] = []

    def flush() -> None:
        db.execute("BEGIN")
        db.executemany(insert, [rows(task) for task, _ in chunk])
        db.executemany(
            event,
            [
                (task.task_id, e.at, e.previous.value, e.status.value)
                for task, events in chunk
                for e in events
            ],
        )
        db.execute("COMMIT")
        chunk.clear()

    for item in finished_tasks(finished, now):
        chunk.append(item)
        if len(chunk) == 50_000:
            flush()
    chunk += [(task, []) for task in unfinished]
    flush()
    store.checkpoint()
    store.close()


def exporter_on(
    workdir: Path,
    path: Path,
    sim_url: str,
    retention: float,
    duty_cycle: float = PRUNE_DUTY_CYCLE,
) -> Exporter:
    store = {"path": str(path), "retention_seconds": retention, "prune_duty_cycle": duty_cycle}
    return bench_exporter(workdir, sim_url, store)


def bench_exporter(workdir: Path, sim_url: str, store: dict[str, Any]) -> Exporter:
    """An exporter on the simulator with this `store` section, its task API on."""
    exporter = Exporter(
        workdir, {"api": {"base_url": sim_url}, "store": store, "log_level": "info"}, KEY
    )
    exporter.env[TOKEN_ENV] = TOKEN
    return exporter


def scrapes(url: str, count: int, pause: float = 0.02) -> list[float]:
    client = KeptAliveClient(url)
    result = []
    for _ in range(count):
        result.append(client.timed("/metrics"))
        time.sleep(pause)
    return result


def reload_status(
    url: str, clients: int, pause: float, loading: Any, stop: Any, latencies: Any
) -> None:
    """In a process of its own: `clients` threads reloading /status (`pause`
    seconds between a client's loads) until `stop`; their latencies to `latencies`."""
    seen: list[float] = []
    done = threading.Event()

    def client() -> None:
        pages = KeptAliveClient(url)
        while not done.is_set():
            seen.append(pages.timed("/status"))
            loading.set()
            if pause:
                done.wait(pause)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    stop.wait()
    done.set()
    for thread in threads:
        thread.join(120)
    latencies.put(seen)


@contextlib.contextmanager
def status_load(url: str, clients: int, pause: float = 0.0) -> Iterator[list[float]]:
    """`clients` reloading /status (`pause` seconds between a client's loads) from
    another process, as browsers would: clients in this one would share its
    interpreter lock with the scrapes timed here and stretch them (by 4x to 6x
    under an unpaced load). Yields a list that holds their latencies on exit."""
    context = multiprocessing.get_context("spawn")
    loading, stop, latencies = context.Event(), context.Event(), context.Queue()
    process = context.Process(
        target=reload_status, args=(url, clients, pause, loading, stop, latencies), daemon=True
    )
    process.start()
    seen: list[float] = []
    try:
        assert loading.wait(60), "the /status clients did not start"
        yield seen
    finally:
        stop.set()
        seen.extend(latencies.get(timeout=300))
        process.join(60)


def requests_sent(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=60).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("lemondata_api_requests_total{")
    )


def api_lists(url: str, deep_after: str) -> list[list[object]]:
    client = KeptAliveClient(url, headers={"Authorization": f"Bearer {TOKEN}"})
    rows: list[list[object]] = []
    for query in (
        "status=completed",
        "model=veo-3",
        "status=failed&model=sora-2",
        "status=processing",
        "status=timeout&model=veo-3",
        f"status=completed&cursor={deep_after}",
        f"model=veo-3&cursor={deep_after}",
        f"cursor={deep_after}",
    ):
        times = [client.timed(f"/api/v1/tasks?{query}&limit=100") for _ in range(20)]
        rows.append([f"`/api/v1/tasks?{query}`", ms(quantile(times, 0.5)), ms(max(times))])
    return rows


def web_phase(args: argparse.Namespace, exporter: Exporter, deep_after: str) -> dict[str, Any]:
    """A started exporter at rest: `/metrics` alone, under an unpaced and a paced
    `/status` load, the task API's list pages, RSS."""
    rest = scrapes(exporter.url, args.scrapes)
    with status_load(exporter.url, args.clients) as pages:
        loaded = scrapes(exporter.url, args.scrapes)
    with status_load(exporter.url, args.clients, 1.0) as paced_pages:
        paced = scrapes(exporter.url, args.scrapes)
    return {
        "rest": rest,
        "lists": api_lists(exporter.url, deep_after),
        "rss": exporter.rss_bytes(),
        "rows": [
            [
                "`/metrics` p50 / p99 ms at rest",
                f"{ms(quantile(rest, 0.5)):.1f} / {ms(quantile(rest, 0.99)):.1f}",
            ],
            [
                f"`/metrics` p50 / p99 ms, {args.clients} clients reloading `/status`"
                " without pause",
                f"{ms(quantile(loaded, 0.5)):.1f} / {ms(quantile(loaded, 0.99)):.1f}"
                f" ({quantile(loaded, 0.99) / quantile(rest, 0.99):.2f}x p99 at rest)",
            ],
            [
                f"`/metrics` p50 / p99 ms, {args.clients} clients reloading `/status` every second",
                f"{ms(quantile(paced, 0.5)):.1f} / {ms(quantile(paced, 0.99)):.1f}"
                f" ({quantile(paced, 0.99) / quantile(rest, 0.99):.2f}x p99 at rest;"
                f" `/status` p99 {ms(quantile(paced_pages, 0.99)):.1f})",
            ],
            [
                "`/status` p50 / p99 ms (the clients without pause)",
                f"{ms(quantile(pages, 0.5)):.1f} / {ms(quantile(pages, 0.99)):.1f}"
                f" ({len(pages)} loads)",
            ],
        ],
    }


def log_time(line: str) -> float:
    stamp = line.split(" ", 1)[0]
    return datetime.fromisoformat(stamp).timestamp()


def load() -> str:
    """The machine's load averages over 1, 5 and 15 minutes (what `uptime` shows)."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def through_prune(exporter: Exporter) -> dict[str, Any]:
    """Starts `exporter` (whose retention makes its start-up prune forget half the
    finished tasks) and scrapes `/metrics` all through that prune."""
    during: list[tuple[float, float]] = []  # (when, latency)
    stop = threading.Event()

    def scrape_through_prune() -> None:
        client = KeptAliveClient(exporter.url)
        while not stop.is_set():
            at = time.monotonic()
            try:
                status, _ = client.get("/metrics")
            except (OSError, HTTPException):  # not listening yet
                time.sleep(0.01)
                continue
            if status == 200:
                during.append((at, time.monotonic() - at))
            time.sleep(0.02)

    scraper = threading.Thread(target=scrape_through_prune, daemon=True)
    scraper.start()
    try:
        ready = exporter.start(ready_timeout=600)
        sent_start = requests_sent(exporter.url), time.monotonic()
        wait_until(lambda: "forgot" in exporter.log_text(), 3600, "the start-up prune")
        sent_end = requests_sent(exporter.url), time.monotonic()
        stop.set()
        scraper.join(120)
        log = exporter.log_text()
    finally:
        stop.set()
        exporter.stop()
    listening = next(line for line in log.splitlines() if "listening on" in line)
    forgot = next(line for line in log.splitlines() if "forgot" in line)
    # A store file over 128 MiB is checked (PRAGMA quick_check, every page) in the
    # background just after start: scrapes until it ends share the CPU with it too.
    checked = [line for line in log.splitlines() if "quick_check ok" in line]
    wall_to_monotonic = time.monotonic() - time.time()
    settled = log_time(checked[0]) + wall_to_monotonic if checked else 0.0
    return {
        "ready": ready,
        "pruned": int(re.search(r"forgot (\d+)", forgot).group(1)),  # type: ignore[union-attr]
        "seconds": log_time(forgot) - log_time(listening),
        "polls_during": (sent_end[0] - sent_start[0]) / (sent_end[1] - sent_start[1]),
        # The first scrape of a fresh process pays for its start; left out.
        "window": [latency for at, latency in during[1:] if at <= sent_end[1]],
        "after_check": [latency for at, latency in during[1:] if settled < at <= sent_end[1]],
    }


def prune_run(
    args: argparse.Namespace, seeded: Path, workdir: Path, sim_url: str, duty_cycle: float
) -> dict[str, Any]:
    """On a copy of the seeded file: `/metrics` at rest (nothing due), then the
    exporter restarted with a 12 h retention, so that its start-up prune forgets
    half the finished tasks, and `/metrics` scraped all through it."""
    workdir.mkdir(parents=True)
    path = workdir / "store.db"
    shutil.copy(seeded, path)
    load_before = load()
    exporter = exporter_on(workdir / "rest", path, sim_url, 2 * DAY, duty_cycle)
    exporter.start(ready_timeout=600)
    try:
        before = requests_sent(exporter.url), time.monotonic()
        rest = scrapes(exporter.url, args.baseline_scrapes)
        after = requests_sent(exporter.url), time.monotonic()
        rest_rate = (after[0] - before[0]) / (after[1] - before[1])
    finally:
        exporter.stop()
    counts = SqliteTaskStore(path, integrity_check=False)
    total_before = sum(counts.count_by_status().values())
    counts.close()
    exporter = exporter_on(workdir / "prune", path, sim_url, DAY / 2, duty_cycle)
    found = through_prune(exporter)
    wal = Path(f"{path}-wal")
    pruned, seconds, window = found["pruned"], found["seconds"], found["window"]
    after_check = found["after_check"]
    result = {
        "duty_cycle": duty_cycle,
        "load": f"{load_before} / {load()}",
        "rest": rest,
        "window": window,
        "ratio": quantile(window, 0.99) / quantile(rest, 0.99),
        "after_check": after_check,
        "ratio_after_check": quantile(after_check, 0.99) / quantile(rest, 0.99),
        "pruned": pruned,
        "total_before": total_before,
        "seconds": seconds,
        "ready": found["ready"],
        "rates": (rest_rate, found["polls_during"]),
        "wal": wal.stat().st_size if wal.exists() else 0,
        "path": path,
    }
    print(
        f"sqlite: prune run (duty cycle {duty_cycle}): {pruned} in {seconds:.1f} s, /metrics"
        f" p99 {ms(quantile(rest, 0.99)):.1f} ms at rest, {ms(quantile(window, 0.99)):.1f} ms"
        f" during ({result['ratio']:.2f}x; {result['ratio_after_check']:.2f}x after the"
        f" quick_check), load {result['load']}",
        flush=True,
    )
    return result


def prune_rows(runs: list[dict[str, Any]]) -> list[list[object]]:
    rows: list[list[object]] = []
    for n, run in enumerate(runs, 1):
        rest, window = run["rest"], run["window"]
        rows.append(
            [
                n,
                run["duty_cycle"],
                run["load"],
                f"{ms(quantile(rest, 0.5)):.1f} / {ms(quantile(rest, 0.99)):.1f}",
                f"{ms(quantile(window, 0.5)):.1f} / {ms(quantile(window, 0.99)):.1f} / "
                f"{ms(max(window, default=0)):.1f} ({len(window)})",
                f"{run['ratio']:.2f}x",
                f"{ms(quantile(run['after_check'], 0.99)):.1f} ({run['ratio_after_check']:.2f}x)",
                f"{run['pruned']:,} of {run['total_before']:,}",
                f"{run['seconds']:.0f} s ({run['pruned'] / run['seconds']:,.0f}/s)",
                f"{run['ready']:.2f}",
                f"{run['rates'][0]:.2f} / {run['rates'][1]:.2f}",
                f"{run['wal'] / 2**20:.2f}",
            ]
        )
    return rows


PRUNE_HEADER = [
    "run",
    "duty cycle",
    "load avg before / after (1, 5, 15 min)",
    "`/metrics` at rest p50 / p99 ms",
    "during the prune p50 / p99 / longest ms (scrapes)",
    "p99 during / at rest",
    "p99 during, after the start-up quick_check ms (/ at rest)",
    "pruned",
    "prune (rows/s)",
    "ready s",
    "polls/s at rest / during",
    "WAL after MB",
]


def run_sqlite(args: argparse.Namespace, workdir: Path) -> str:
    now = time.time()
    sim = slow_simulator(KEY, retention_seconds=10 * DAY)
    sim.start()
    out = []
    try:
        started = time.monotonic()
        unfinished = create_unfinished(sim, args.unfinished, now)
        path = workdir / "store.db"
        seed_sqlite(path, args.tasks - args.unfinished, unfinished, now)
        size = path.stat().st_size
        print(
            f"sqlite: seeded {args.tasks} tasks in {time.monotonic() - started:.0f} s, "
            f"{size / 2**20:.0f} MiB ({size / args.tasks:.0f} B a task)",
            flush=True,
        )
        deep_after = sorted(t.task_id for t in unfinished)[len(unfinished) // 2]
        # -- at rest
        exporter = exporter_on(workdir / "rest", path, sim.url, 2 * DAY)
        ready = exporter.start(ready_timeout=600)
        first_answer = exporter.serving_after
        try:
            web = web_phase(args, exporter, deep_after)
        finally:
            exporter.stop()
        print(f"sqlite: rest done, ready {ready:.2f} s, load {load()}", flush=True)
        # -- start-up prunes of half the finished tasks, each on a copy of that file;
        # the duty cycles alternate so that the machine's noise falls on each alike.
        runs = [
            prune_run(args, path, workdir / f"prune-{n}", sim.url, duty_cycle)
            for n, duty_cycle in enumerate(
                duty_cycle for _ in range(args.prune_runs) for duty_cycle in args.duty_cycle
            )
        ]
        old_vs_new = compare_queries(runs[-1]["path"])
        pruned_total = runs[-1]["total_before"] - runs[-1]["pruned"]
    finally:
        sim.stop()
    out.append(
        f"SQLite: {args.tasks:,} tasks ({args.unfinished:,} unfinished), file "
        f"{size / 2**20:.0f} MiB ({size / args.tasks:.0f} B a task, events included)\n"
    )
    out.append(
        table(
            ["", "value"],
            [
                ["first HTTP answer s", first_answer],
                ["ready s", ready],
                ["RSS after the rest phase MB", web["rss"] / 2**20],
                *web["rows"],
            ],
        )
    )
    out.append(
        "\nStart-up prune of half the finished tasks, each run on a fresh copy of the"
        " seeded file, with its own `/metrics` baseline at rest just before:\n"
    )
    out.append(table(PRUNE_HEADER, prune_rows(runs)))
    out.append("\nTask API list pages (limit 100, 20 requests each):\n")
    out.append(table(["query", "p50 ms", "max ms"], web["lists"]))
    out.append(
        f"\nOld queries against today's methods, in-process on the same file "
        f"(after the last prune: {pruned_total:,} tasks):\n"
    )
    out.append(table(["query", "before ms", "now ms", "ratio"], old_vs_new))
    return "\n".join(out)


# The store's queries before the day-scale work (exporter/store/sqlite.py at OLD_REVISION).
OLD_QUERIES: dict[str, str] = {
    "model_summaries (counts)": "SELECT model, SUM(finished_at IS NULL), SUM(finished_at IS NOT"
    " NULL), SUM(status = 'failed') FROM tasks GROUP BY model ORDER BY model LIMIT 1000",
    "model_summaries (medians)": "WITH d AS (SELECT model, duration_seconds AS v, ROW_NUMBER()"
    " OVER (PARTITION BY model ORDER BY duration_seconds) AS n, COUNT(*) OVER (PARTITION BY"
    " model) AS c FROM tasks WHERE status = 'completed' AND duration_seconds IS NOT NULL)"
    " SELECT model, AVG(v) FROM d WHERE n IN ((c + 1) / 2, (c + 2) / 2) GROUP BY model",
    "latest_finished (20 failures)": f"SELECT {_COLUMNS} FROM tasks NOT INDEXED WHERE"
    " finished_at IS NOT NULL AND status IN ('failed', 'expired', 'timeout')"
    " ORDER BY finished_at DESC, task_id LIMIT 20",
    "models() at start-up": "SELECT DISTINCT model FROM tasks NOT INDEXED WHERE model IS NOT"
    " NULL LIMIT 1000",
}


def compare_queries(path: Path) -> list[list[object]]:
    """Each old query (read without the new indexes where it matters: NOT INDEXED
    reproduces the old plans' full reads) against today's method."""
    store = SqliteTaskStore(path, integrity_check=False)
    db = store._db
    # Seeding only: a page cache that holds the indexes, no fsync.
    db.execute("PRAGMA cache_size=-1000000")
    db.execute("PRAGMA synchronous=OFF")

    def best(call: Callable[[], object], repeat: int = 3) -> float:
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return min(times)

    def fresh_summaries() -> object:
        store._medians_at = -float("inf")
        return store.model_summaries()

    now_calls: dict[str, Callable[[], object]] = {
        "model_summaries (counts)": lambda: store.model_summaries(),
        "model_summaries (medians)": fresh_summaries,
        "latest_finished (20 failures)": lambda: store.latest_finished(
            (Status.FAILED, Status.EXPIRED, Status.TIMEOUT), 20
        ),
        "models() at start-up": store.models,
    }
    rows: list[list[object]] = []
    for name, query in OLD_QUERIES.items():
        old = best(lambda q=query: db.execute(q).fetchall(), 1)  # type: ignore[misc]
        new = best(now_calls[name])
        rows.append([name, ms(old), ms(new), f"{old / new:.0f}x"])
    store.close()
    return rows


# ---- Redis -----------------------------------------------------------------------------


def old_redis_module() -> ModuleType:
    source = subprocess.run(
        ["git", "show", f"{OLD_REVISION}:exporter/store/redis.py"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout
    spec_path = Path(tempfile.mkdtemp(prefix="old-redis-")) / "old_redis_store.py"
    spec_path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_redis_store", spec_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class EitherLayoutUpdate:
    """A `TaskUpdate` both stores read: the current one its `task` and `finish`, the
    old one the task's fields on the update itself (as updates were then)."""

    def __init__(self, update: TaskUpdate) -> None:
        self.task = update.task
        self.finish = update.finish

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)


def write_through_scripts(store: Any, tasks: list[tuple[Task, list[TaskEvent]]]) -> None:
    """add + apply for each change, as polling would (for the old layout)."""
    for task, events in tasks:
        store.add(
            [DiscoveredTask(task.task_id, task.source, task.model, task.poll_url)],
            task.discovered_at,
        )
        for event in events:
            finish = (
                Finish(event.status, task.duration_seconds, error_message=task.error_message)
                if event.status is task.status and task.finished_at is not None
                else None
            )
            polled = replace(
                task,
                status=event.status,
                next_poll_at=event.at + 5,
                consecutive_errors=0,
                last_polled=event.at,
                finished_at=event.at if finish else None,
                duration_seconds=finish.duration if finish else None,
                error_message=finish.error_message if finish else None,
                last_error=None,
                progress=None,
                progress_at=None,
            )
            update = EitherLayoutUpdate(TaskUpdate(polled, finish))
            store.apply(task.task_id, update, event.at, task.reason)


def used_memory(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def poll_batches(store: Any, now: float, rounds: int, batch: int) -> list[list[object]]:
    """The poll path in `batch`-task batches, as a replica's cycle runs it: `due`
    (picks and leases the most overdue), then `apply` for each (every other task
    finishes, the rest are put off by an hour). p50 / p99 / max ms per batch."""
    due_times, apply_times = [], []
    at = now + 3600.0  # every unfinished task is due
    for _ in range(rounds):
        started = time.perf_counter()
        tasks = store.due(at, batch)
        due_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        for n, task in enumerate(tasks):
            finish = Finish(Status.COMPLETED, 42.0) if n % 2 else None
            after = replace(
                task,
                status=Status.COMPLETED if finish else Status.PROCESSING,
                next_poll_at=at + 3600.0,
                consecutive_errors=0,
                last_polled=at,
                finished_at=at if finish else None,
                duration_seconds=finish.duration if finish else None,
            )
            update = TaskUpdate(after, finish)
            labels = FinishLabels(task.model or "", Status.COMPLETED.value) if finish else None
            store.apply(task.task_id, update, at, None, labels)
        apply_times.append(time.perf_counter() - started)

    def cells(times: list[float]) -> list[object]:
        return [ms(quantile(times, 0.5)), ms(quantile(times, 0.99)), ms(max(times))]

    return [
        [f"`due` ({batch} tasks, leased)", *cells(due_times)],
        [f"`apply` x {batch} (half of them finishing)", *cells(apply_times)],
    ]


def run_redis(args: argparse.Namespace, workdir: Path) -> str:
    from exporter.store.redis import PRUNE_BATCH, RedisTaskStore
    from tests.harness import RedisServer

    (workdir / "redis").mkdir(parents=True, exist_ok=True)
    server = RedisServer(workdir / "redis").start()
    sim = slow_simulator(KEY, retention_seconds=10 * DAY)
    sim.start()
    try:
        client = server.client()
        now = time.time()
        # Before/after bytes per finished task, same tasks, same server.
        sample = list(finished_tasks(args.old_sample, now, seed=7))
        old = old_redis_module().RedisTaskStore(server.url, prefix="old:", client=client)
        base = used_memory(client)
        write_through_scripts(old, sample)
        old_bytes = (used_memory(client) - base) / len(sample)
        client.flushdb()
        new = RedisTaskStore(server.url, prefix="new:", client=client)
        base = used_memory(client)
        write_through_scripts(new, sample)
        new_bytes = (used_memory(client) - base) / len(sample)
        client.flushdb()
        # The day: finished tasks restored, unfinished ones created on the simulator
        # (the exporter below polls them), as for SQLite.
        store = RedisTaskStore(server.url, prefix="lemondata:", client=client)
        base = used_memory(client)
        started = time.monotonic()
        batch: list[tuple[Task, list[TaskEvent]]] = []
        for item in finished_tasks(args.tasks - args.unfinished, now):
            batch.append(item)
            if len(batch) == 5000:
                store.restore(batch)
                batch = []
        store.restore(batch)
        unfinished = create_unfinished(sim, args.unfinished, now)
        for start in range(0, len(unfinished), 5000):
            store.restore(
                [
                    (task, [TaskEvent(task.first_seen or now, task.status, Status.UNKNOWN)])
                    for task in unfinished[start : start + 5000]
                ]
            )
        seeded = time.monotonic() - started
        day_bytes = used_memory(client) - base
        print(f"redis: seeded {args.tasks} in {seeded:.0f} s, load {load()}", flush=True)
        deep_after = sorted(t.task_id for t in unfinished)[len(unfinished) // 2]

        def timed(call: Callable[[], object], repeat: int = 20) -> tuple[float, float]:
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                call()
                times.append(time.perf_counter() - started)
            return ms(quantile(times, 0.5)), ms(max(times))

        def fresh_summaries() -> object:
            store._medians_at = -float("inf")
            return store.model_summaries()

        reads = [
            [
                "latest_finished (20 failures)",
                *timed(
                    lambda: store.latest_finished(
                        (Status.FAILED, Status.EXPIRED, Status.TIMEOUT), 20
                    )
                ),
            ],
            ["model_summaries (medians recomputed)", *timed(fresh_summaries, 5)],
            [
                "count_by_status + oldest_active (a scrape's reads)",
                *timed(
                    lambda: (
                        store.count_by_status(),
                        store.oldest_active(),
                        store.oldest_processing_by_model(),
                    )
                ),
            ],
        ]
        # Through the exporter's web server, as for SQLite.
        exporter = redis_exporter(workdir / "redis-rest", server.url, sim.url, 2 * DAY)
        ready = exporter.start(ready_timeout=600)
        first_answer = exporter.serving_after
        try:
            web = web_phase(args, exporter, deep_after)
        finally:
            exporter.stop()
        print(f"redis: HTTP done, load {load()}", flush=True)
        polls = poll_batches(store, now, args.poll_batches, 50)
        # The exporter's start-up prune of half the finished tasks, scraped through.
        load_before = load()
        exporter = redis_exporter(workdir / "redis-prune", server.url, sim.url, DAY / 2)
        found = through_prune(exporter)
        after_prune = used_memory(client) - base
        prune_load = f"{load_before} / {load()}"
    finally:
        sim.stop()
        server.stop()
    window = found["window"]
    rows: list[list[Any]] = [
        [
            "bytes per finished task, old layout (same tasks, written through the scripts)",
            old_bytes,
        ],
        [
            "bytes per finished task, now (same tasks)",
            f"{new_bytes:.0f} ({old_bytes / new_bytes:.2f}x less)",
        ],
        [f"memory for the day ({args.tasks:,} tasks) MB", day_bytes / 2**20],
        ["seeding s (restore, pipelined; unfinished ones created on the simulator)", seeded],
        ["first HTTP answer / ready s", f"{first_answer:.2f} / {ready:.2f}"],
        ["RSS of the exporter MB", web["rss"] / 2**20],
        *web["rows"],
        [
            f"start-up prune of {found['pruned']:,} finished tasks s"
            f" ({PRUNE_BATCH} a script, duty cycle {PRUNE_DUTY_CYCLE})",
            f"{found['seconds']:.1f} ({found['pruned'] / found['seconds']:,.0f}/s)",
        ],
        ["ready s, with that prune due", found["ready"]],
        [
            f"`/metrics` during that prune: {len(window)} scrapes, p50 / p99 / longest ms",
            f"{ms(quantile(window, 0.5)):.1f} / {ms(quantile(window, 0.99)):.1f} / "
            f"{ms(max(window, default=0)):.1f}"
            f" ({quantile(window, 0.99) / quantile(web['rest'], 0.99):.2f}x p99 at rest;"
            f" load {prune_load})",
        ],
        ["memory after the prune MB", after_prune / 2**20],
    ]
    return (
        f"Redis ({args.tasks:,} tasks):\n\n"
        + table(["", "value"], rows)
        + "\n\nTask API list pages through HTTP (limit 100, 20 requests each):\n\n"
        + table(["query", "p50 ms", "max ms"], web["lists"])
        + f"\n\nThe poll path in-process, {args.poll_batches} batches of 50 at"
        f" {args.tasks:,} tasks:\n\n"
        + table(["", "p50 ms", "p99 ms", "max ms"], polls)
        + "\n\nOther reads, in-process (p50 / max of 20, ms):\n\n"
        + table(["read", "p50 ms", "max ms"], reads)
    )


def redis_exporter(workdir: Path, redis_url: str, sim_url: str, retention: float) -> Exporter:
    store = {"backend": "redis", "redis_url": redis_url, "retention_seconds": retention}
    return bench_exporter(workdir, sim_url, store)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1_500_000)
    parser.add_argument("--unfinished", type=int, default=100_000)
    parser.add_argument("--backend", nargs="+", default=["sqlite", "redis"])
    parser.add_argument("--scrapes", type=int, default=300)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--old-sample", type=int, default=20_000)
    parser.add_argument(
        "--poll-batches", type=int, default=200, help="Redis: due/apply batches of 50 timed"
    )
    parser.add_argument(
        "--baseline-scrapes",
        type=int,
        default=1000,
        help="SQLite: scrapes at rest before each prune run (its p99 is the ratio's base)",
    )
    parser.add_argument(
        "--prune-runs", type=int, default=2, help="SQLite: prunes per duty cycle (noise)"
    )
    parser.add_argument(
        "--duty-cycle",
        type=float,
        nargs="+",
        default=[PRUNE_DUTY_CYCLE],
        help="SQLite: store.prune_duty_cycle of the prune runs (e.g. 0.5 0.25: alternated)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-day-"))
    parts = [
        f"Machine: {machine()}",
        f"Command: python -m bench.day_scale {' '.join(sys.argv[1:])}",
    ]
    try:
        if "sqlite" in args.backend:
            parts.append(run_sqlite(args, workdir))
        if "redis" in args.backend:
            parts.append(run_redis(args, workdir))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n\n".join(parts))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
