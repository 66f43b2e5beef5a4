"""Requests per finished task and detection delay: adaptive vs fixed 3 s polling.

    python -m bench.requests_per_task [--hours 2] [--real-scale 10] [--skip-real]

1. Discrete-event runs (`bench.des`): the agent's real poll path on a
   simulated clock, over one seeded workload (`bench.workload`: a mix of
   models, most 30-120 s, a tenth videos, failures, lost tasks). The first
   hour is the warm-up (adaptive polling learns from those tasks); tasks
   created after it are measured: requests spent on them per finished task,
   and the delay between their finish (the simulator's ground truth) and the
   agent storing it. Every configuration sees exactly the same tasks.
   Then the same with the request budget short: 8.3 requests/s (half of the
   default tier's 1,000/min, from X-RateLimit headers) and more tasks.
2. One real run: the simulator (time scale `--real-scale`) and two exporter
   subprocesses, fixed and adaptive, watching the same tasks, every interval
   of their configs divided by the scale. Delays are read from each
   exporter's store (when it saw the finish) against the simulator's ground
   truth, and multiplied back by the scale.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import des
from bench.common import Exporter, machine, quantile, table, wait_until
from bench.workload import T0, make_workload
from exporter.simulator import Simulator, SimulatorSettings

KEY = "sk-bench-requests-per-task"
WARMUP = 3600.0
TAIL = 900.0  # tasks created in the last 15 min are not measured (they might not finish)
BASE = {"max_wait_seconds": 1800, "requests_per_second": 1000}

# (label, polling config) - the first one is the baseline of the ratios.
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("fixed 3 s", {"strategy": "fixed", "task_interval_seconds": 3, "cycle_interval_seconds": 1}),
    (
        "adaptive, target 3 s",
        {"strategy": "adaptive", "freshness_target_seconds": 3, "cycle_interval_seconds": 0.25},
    ),
    (
        "adaptive, fixed's knobs",
        {"strategy": "adaptive", "task_interval_seconds": 3, "cycle_interval_seconds": 1},
    ),
    ("fixed 5 s (default knobs)", {"strategy": "fixed"}),
    ("adaptive (default knobs)", {"strategy": "adaptive"}),
]
SHORT_BUDGET = {"requests_per_second": 20, "rate_limit_reserve_ratio": 0.5}


def des_section(hours: float, seed: int) -> tuple[str, dict[str, Any]]:
    end = T0 + hours * 3600
    workload = make_workload(seed=seed, duration_seconds=hours * 3600, arrivals_per_second=1.0)
    results = []
    for label, polling in CONFIGS:
        started = time.monotonic()
        result = des.run(
            label,
            workload,
            {**BASE, **polling},
            measure_from=T0 + WARMUP,
            measure_until=end - TAIL,
            end=end,
            seed=seed,
        )
        print(f"  {label}: {result.summary()} ({time.monotonic() - started:.0f} s)", flush=True)
        results.append(result)
    base = results[0]
    rows = []
    for r in results:
        rows.append(
            [
                r.label,
                r.tasks,
                r.per_task,
                r.per_task / base.per_task,
                r.quantile(0.5),
                r.quantile(0.95),
                r.quantile(0.95) / base.quantile(0.95),
                r.quantile(0.99),
                r.missed,
            ]
        )
    text = table(
        [
            "polling",
            "tasks",
            "requests/task",
            "ratio",
            "delay p50 s",
            "delay p95 s",
            "p95 ratio",
            "delay p99 s",
            "missed",
        ],
        rows,
    )
    path_rows = []
    for r in results[:3]:
        for path, (count, spent, delays) in sorted(r.by_path.items()):
            path_rows.append(
                [
                    r.label,
                    path,
                    count,
                    spent / count,
                    quantile(delays, 0.5),
                    quantile(delays, 0.95),
                    quantile(delays, 0.99),
                ]
            )
    text += "\n\nBy status path:\n\n" + table(
        ["polling", "path", "tasks", "requests/task", "p50 s", "p95 s", "p99 s"], path_rows
    )
    data = {"full_budget": [r.summary() for r in results]}

    # The budget too short: more tasks, 1,000/min account limit, half left to the application.
    busy = make_workload(seed=seed + 1, duration_seconds=hours * 3600, arrivals_per_second=0.8)
    short = []
    for label, polling in CONFIGS[:2]:
        result = des.run(
            label,
            busy,
            {**BASE, **polling, **SHORT_BUDGET},
            measure_from=T0 + WARMUP,
            measure_until=end - TAIL,
            end=end,
            limit_per_minute=1000,
            seed=seed,
        )
        print(f"  short budget, {label}: {result.summary()}", flush=True)
        short.append(result)
    text += "\n\nBudget short (0.8 tasks/s, 8.3 requests/s allowed by the headers):\n\n" + table(
        ["polling", "tasks", "requests/task", "delay p50 s", "delay p95 s", "delay p99 s"],
        [
            [r.label, r.tasks, r.per_task, r.quantile(0.5), r.quantile(0.95), r.quantile(0.99)]
            for r in short
        ],
    )
    data["short_budget"] = [r.summary() for r in short]
    return text, data


def real_config(
    sim_url: str, workdir: Path, tasks_file: Path, scale: float, strategy: str
) -> dict[str, Any]:
    """One exporter's config for the real section, every interval divided by `scale`."""
    scaled = {
        "cycle_interval_seconds": 0.25,
        "task_interval_seconds": 3 if strategy == "fixed" else 5,
        "max_wait_seconds": 1800,
        "backoff_base_seconds": 2,
        "backoff_max_seconds": 300,
        "max_interval_seconds": 30,
        "freshness_target_seconds": 3,
    }
    return {
        "api": {"base_url": sim_url, "max_connections": 8},
        "polling": {
            **{k: v / scale for k, v in scaled.items()},
            "strategy": strategy,
            "requests_per_second": 1000,
        },
        "store": {"path": str(workdir / strategy / "store.db")},
        "discovery": {"interval_seconds": 2 / scale, "files": [{"path": str(tasks_file)}]},
        "log_level": "warning",
    }


def real_section(scale: float, minutes: float, seed: int) -> tuple[str, dict[str, Any]]:
    """Both exporters against one simulator, every interval divided by `scale`."""
    warmup = WARMUP / 2
    duration = warmup + minutes * 60
    sim = Simulator(
        SimulatorSettings(
            port=0, api_keys=(KEY,), time_scale=scale, seed=seed, rate_limit_per_minute=0
        )
    )
    sim.start()
    workdir = Path(tempfile.mkdtemp(prefix="bench-rpt-"))
    tasks_file = workdir / "tasks.jsonl"
    tasks_file.touch()

    exporters = {
        name: Exporter(workdir / name, real_config(sim.url, workdir, tasks_file, scale, name), KEY)
        for name in ("fixed", "adaptive")
    }
    try:
        for exporter in exporters.values():
            exporter.start()
        start = time.time() + 0.5
        workload = make_workload(
            seed=seed, duration_seconds=duration, arrivals_per_second=0.5, time_scale=scale, start=0
        )
        created: dict[str, float] = {}
        stop = threading.Event()

        def feed() -> None:
            with tasks_file.open("a") as handle:
                for task in workload:
                    delay = start + task.plan.created - time.time()
                    if delay > 0 and stop.wait(delay):
                        return
                    answer = sim.create_task(model=task.plan.model, kind=task.plan.kind)
                    task_id = str(answer["task_id"])
                    created[task_id] = start + task.plan.created
                    line: Any = task_id
                    if task.unified:
                        line = json.dumps(
                            {
                                "task_id": task_id,
                                "model": task.plan.model,
                                "poll_url": answer["poll_url"],
                            }
                        )
                    else:
                        line = json.dumps({"task_id": task_id, "model": task.plan.model})
                    handle.write(line + "\n")
                    handle.flush()

        feeder = threading.Thread(target=feed, daemon=True)
        cpu_before = {name: e.cpu_seconds() for name, e in exporters.items()}
        feeder.start()
        feeder.join()
        finishing = ("completed", "failed", "cancelled")
        wait_until(
            lambda: all(
                t["status"] != "pending" and t["status"] != "processing" for t in sim.ground_truth()
            ),
            3600 / scale + 120,
            "the simulator's tasks to end",
        )
        time.sleep(120 / scale)  # let the slowest exporter see the last finishes
        cpu = {name: e.cpu_seconds() - cpu_before[name] for name, e in exporters.items()}
        truth = {str(t["id"]): t for t in sim.ground_truth()}
        rows = []
        data: dict[str, Any] = {"scale": scale}
        measured_from = start + warmup / scale
        for name, exporter in exporters.items():
            with sqlite3.connect(exporter.workdir / "store.db") as db:
                stored = {
                    row[0]: row[1:]
                    for row in db.execute(
                        "SELECT task_id, status, finished_at, attempts FROM tasks"
                    )
                }
            delays = []
            spent = 0
            count = 0
            missed = 0
            for task_id, t in truth.items():
                if t["status"] not in finishing or created.get(task_id, 0) < measured_from:
                    continue
                if task_id not in stored:
                    missed += 1
                    continue
                status, finished_at, attempts = stored[task_id]
                count += 1
                spent += attempts
                if status not in finishing or finished_at is None:
                    missed += 1
                    continue
                delays.append((finished_at - float(t["finished_at"])) * scale)
            rows.append(
                [
                    name,
                    count,
                    spent / count,
                    quantile(delays, 0.5),
                    quantile(delays, 0.95),
                    quantile(delays, 0.99),
                    missed,
                    cpu[name],
                ]
            )
            data[name] = {
                "tasks": count,
                "requests_per_task": spent / count,
                "p50": quantile(delays, 0.5),
                "p95": quantile(delays, 0.95),
                "p99": quantile(delays, 0.99),
                "missed": missed,
                "cpu_seconds": cpu[name],
            }
        ratio = data["adaptive"]["requests_per_task"] / data["fixed"]["requests_per_task"]
        text = table(
            [
                "polling",
                "tasks",
                "requests/task",
                "delay p50 s",
                "delay p95 s",
                "delay p99 s",
                "missed",
                "CPU s",
            ],
            rows,
        )
        text += f"\n\nrequests ratio adaptive/fixed: {ratio:.2f}"
        data["ratio"] = ratio
        stop.set()
        return text, data
    finally:
        for exporter in exporters.values():
            exporter.stop()
        sim.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=2.0, help="simulated hours per DES run")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--real-scale", type=float, default=10.0)
    parser.add_argument("--real-minutes", type=float, default=20.0, help="measured, simulated")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--skip-des", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    args = parser.parse_args()
    random.seed(args.seed)
    report = [f"Machine: {machine()}"]
    if not args.skip_des:
        print("discrete-event runs", flush=True)
        text, _ = des_section(args.hours, args.seed)
        report.append(text)
    if not args.skip_real:
        print(f"real run, time scale {args.real_scale}", flush=True)
        text, _ = real_section(args.real_scale, args.real_minutes, args.seed)
        report.append("Real run (simulator + 2 exporters):\n\n" + text)
    output = "\n\n".join(report)
    print(output)
    if args.out:
        args.out.write_text(output + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
