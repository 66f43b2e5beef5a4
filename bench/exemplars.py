"""What the task-ID exemplars cost: /metrics at 100k tasks, text and OpenMetrics,
exemplars on against a baseline without, in the same run.

    python -m bench.exemplars [--tasks 100000] [--scrapes 200]

One SQLite store holds `--tasks` tasks (a fifth unfinished, the rest finished,
over five models). Two agents are built on it in this process, as `run`
builds them (`agent.Agent`, not started: nothing polls): both record the same
`--tasks` finishes and pending times through `Recorder.task_update`, the
poll path's entry, one with the task IDs (exemplars on every observation)
and one without (no exemplars: the baseline). Then `/metrics` is asked of
each agent's WSGI app (what the HTTP server calls; no network in the figure),
with `Accept: text/plain` (Prometheus text, which has no exemplars) and with
`Accept: application/openmetrics-text` (what Prometheus asks for), the four
kinds interleaved scrape by scrape so drift of the machine hits them alike.

Printed: the time to record a finish, and the scrape times (median, p99) and
sizes, with their ratios to the baseline.
"""

from __future__ import annotations

import argparse
import io
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bench.common import machine, quantile, table
from exporter.agent import Agent
from exporter.config import parse_config
from exporter.metrics.static_labels import serving_registry
from exporter.model import FINISHED_STATUSES, DiscoveredTask, Finish, Status, Task, TaskUpdate
from exporter.store.sqlite import SqliteTaskStore
from exporter.web.server import build_app

MODELS = ("flux-pro", "dall-e-3", "midjourney", "gpt-image-1", "veo-3")
TEXT = "text/plain"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def fill(path: Path, count: int) -> list[tuple[str, str]]:
    """`count` tasks in the store: (task ID, model) of each; a fifth stay unfinished."""
    store = SqliteTaskStore(path)
    now = time.time()
    rng = random.Random(1)
    tasks = [(f"task_{n:07d}_{rng.getrandbits(64):016x}", rng.choice(MODELS)) for n in range(count)]
    for start in range(0, count, 5000):
        store.add(
            [
                DiscoveredTask(task_id, "file", model)
                for task_id, model in tasks[start : start + 5000]
            ],
            now,
        )
    store.close()
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE tasks SET created = ? - abs(random() % 3600), first_seen = ?, last_polled = ?,"
            " status = CASE WHEN abs(random() % 5) = 0 THEN 'processing' ELSE 'completed' END",
            (now, now, now),
        )
        db.execute(
            "UPDATE tasks SET finished_at = ?, duration_seconds = abs(random() % 600)"
            " WHERE status = 'completed'",
            (now,),
        )
    return tasks


def updates(tasks: list[tuple[str, str]]) -> list[tuple[str, str, TaskUpdate, str | None]]:
    """For each task, the finish the poll path would record (and its pending time)."""
    rng = random.Random(2)
    now = time.time()
    statuses = [s for s in FINISHED_STATUSES if s is not Status.COMPLETED]
    out = []
    for task_id, model in tasks:
        status = Status.COMPLETED if rng.random() < 0.85 else rng.choice(statuses)
        duration = rng.lognormvariate(3.5, 0.8)
        task = Task(
            task_id,
            "bench",
            model,
            None,
            status,
            discovered_at=now - duration,
            next_poll_at=now,
            created=now - duration,
            first_seen=now - duration,
            last_polled=now,
            processing_seen=now - duration / 2,
            finished_at=now,
            duration_seconds=duration,
        )
        finish = Finish(status, duration, True, 0.0, None)
        update = TaskUpdate(task, finish, pending_seconds=rng.lognormvariate(1.0, 1.0))
        reason = "upstream_error" if status is Status.FAILED else None
        out.append((task_id, model, update, reason))
    return out


def agent(store_path: Path) -> Agent:
    config = parse_config(
        {"api": {"base_url": "http://127.0.0.1:9"}, "store": {"path": str(store_path)}},
        "bench",
    )
    return Agent(config, SecretStr("sk-bench-exemplars"))


def record(
    agents: dict[str, Agent], work: list[tuple[str, str, TaskUpdate, str | None]]
) -> dict[str, float]:
    """Seconds per finish recorded (count, failure, duration, pending), by agent; the
    two record in alternate chunks, so drift of the machine hits them alike."""
    spent = dict.fromkeys(agents, 0.0)
    for start in range(0, len(work), 1000):
        chunk = work[start : start + 1000]
        for name, built in agents.items():
            ids = name != "baseline"
            began = time.perf_counter()
            for task_id, model, update, reason in chunk:
                built.recorder.task_update(model, update, reason, None, task_id if ids else None)
            spent[name] += time.perf_counter() - began
    return {name: seconds / len(work) for name, seconds in spent.items()}


def scrape(app: WSGIApp, accept: str) -> tuple[float, bytes, str]:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/metrics",
        "QUERY_STRING": "",
        "HTTP_ACCEPT": accept,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "9847",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
    }
    headers: dict[str, str] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]], *_: Any) -> None:
        assert status.startswith("200"), status
        headers.update(response_headers)

    started = time.perf_counter()
    body = b"".join(app(environ, start_response))
    return time.perf_counter() - started, body, headers["Content-Type"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-exemplars-"))
    path = workdir / "store.db"
    tasks = fill(path, args.tasks)
    work = updates(tasks)
    agents = {"baseline": agent(path), "exemplars": agent(path)}
    # Both record once after a first scrape, so no increment waits for its zeros.
    apps = {name: build_app(serving_registry(a.registry, {}), a) for name, a in agents.items()}
    for app in apps.values():
        scrape(app, TEXT)
    record_times = record(agents, work)
    kinds = [(name, accept) for name in agents for accept in (TEXT, OPENMETRICS)]
    times: dict[tuple[str, str], list[float]] = {kind: [] for kind in kinds}
    sizes: dict[tuple[str, str], int] = {}
    for _ in range(args.scrapes):
        for kind in kinds:
            seconds, body, content_type = scrape(apps[kind[0]], kind[1])
            times[kind].append(seconds)
            sizes[kind] = len(body)
            assert content_type.startswith(kind[1].split(";")[0]), content_type
            assert (b' # {task_id="' in body) == (kind == ("exemplars", OPENMETRICS)), kind
            assert b"_created" not in body
    base = {accept: quantile(times[("baseline", accept)], 0.5) for accept in (TEXT, OPENMETRICS)}
    rows = []
    for name, accept in kinds:
        median = quantile(times[(name, accept)], 0.5)
        rows.append(
            [
                name,
                "OpenMetrics" if accept == OPENMETRICS else "text",
                median * 1e3,
                quantile(times[(name, accept)], 0.99) * 1e3,
                median / base[accept],
                median / base[TEXT],
                sizes[(name, accept)],
            ]
        )
    print(f"\n{machine()}")
    print(
        f"{args.tasks} tasks in the store, {len(work)} finishes recorded, "
        f"{args.scrapes} scrapes each\n"
    )
    print(
        table(
            ["recording", "µs per finish", "ratio to baseline"],
            [
                [name, seconds * 1e6, seconds / record_times["baseline"]]
                for name, seconds in record_times.items()
            ],
        )
    )
    print()
    print(
        table(
            [
                "recorder",
                "format",
                "/metrics median ms",
                "p99 ms",
                "ratio to baseline, same format",
                "ratio to baseline text",
                "bytes",
            ],
            rows,
        )
    )
    for built in agents.values():
        built.store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
