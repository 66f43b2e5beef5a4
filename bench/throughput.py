"""Throughput ceiling: the most status polls per second one agent sustains.

    python -m bench.throughput [--tasks 3000] [--seconds 20] [--connections 4 8 16]

The simulator runs as a subprocess (no rate limit, time scale 0.01 so every
task stays unfinished) and the exporter as another, with no request budget
to speak of (10,000/s) and `fixed` polling every 10 ms, so every task is
always due: it polls as fast as it can. For each `api.max_connections`, polls
per second are read from `lemondata_api_requests_total` over `--seconds`,
with the CPU each process used meanwhile (100 % = one core; CPython runs
one thread at a time, so a process tops out near one core). A bare client
(`requests` from 8 threads in this process) against the same simulator shows
what the simulator alone can answer.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.common import Exporter, machine, start_simulator, table

KEY = "sk-bench-throughput"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def requests_total(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "lemondata_api_requests"
        for sample in family.samples
        if sample.name == "lemondata_api_requests_total"
    )


def bare_client(urls: list[str], seconds: float, threads: int = 8) -> float:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {KEY}"
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def loop(index: int) -> None:
        i = index
        while time.monotonic() < stop:
            session.get(urls[i % len(urls)], timeout=10)
            counts[index] += 1
            i += threads

    workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, nargs="+", default=[4, 8, 16])
    args = parser.parse_args()
    sim, sim_url = start_simulator(KEY)
    workdir = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    rows: list[list[object]] = []
    try:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {KEY}"
        lines, urls = [], []
        for n in range(args.tasks):
            answer = session.post(
                f"{sim_url}/v1/images/generations", json={"model": "flux-pro"}, timeout=10
            ).json()
            lines.append(
                f'{{"task_id": "{answer["task_id"]}", "poll_url": "{answer["poll_url"]}"}}'
            )
            urls.append(sim_url + answer["poll_url"])
            if n % 2:  # half on the image path
                lines[-1] = answer["task_id"]
                urls[-1] = f"{sim_url}/v1/images/generations/{answer['task_id']}"
        tasks_file = workdir / "tasks.jsonl"
        tasks_file.write_text("\n".join(lines) + "\n")

        sim_cpu, own_cpu = cpu_seconds(sim.pid), time.process_time()
        started = time.monotonic()
        rate = bare_client(urls, args.seconds)
        elapsed = time.monotonic() - started
        rows.append(
            [
                "bare requests, 8 threads",
                rate,
                100 * (time.process_time() - own_cpu) / elapsed,
                100 * (cpu_seconds(sim.pid) - sim_cpu) / elapsed,
            ]
        )
        print(rows[-1], flush=True)

        for connections in args.connections:
            exporter = Exporter(
                workdir / f"agent-{connections}",
                {
                    "api": {"base_url": sim_url, "max_connections": connections},
                    "polling": {
                        "strategy": "fixed",
                        "task_interval_seconds": 0.01,
                        "cycle_interval_seconds": 0.1,
                        "requests_per_second": 10000,
                    },
                    "store": {"path": str(workdir / f"store-{connections}.db")},
                    "discovery": {"files": [{"path": str(tasks_file)}]},
                    "log_level": "warning",
                },
                KEY,
            )
            exporter.start()
            try:
                assert exporter.proc is not None
                time.sleep(5)  # discovery done, connections open
                before = requests_total(exporter.url)
                agent_cpu, sim_cpu = cpu_seconds(exporter.proc.pid), cpu_seconds(sim.pid)
                started = time.monotonic()
                time.sleep(args.seconds)
                elapsed = time.monotonic() - started
                polls = requests_total(exporter.url) - before
                rows.append(
                    [
                        f"agent, max_connections {connections}",
                        polls / elapsed,
                        100 * (cpu_seconds(exporter.proc.pid) - agent_cpu) / elapsed,
                        100 * (cpu_seconds(sim.pid) - sim_cpu) / elapsed,
                    ]
                )
                print(rows[-1], flush=True)
            finally:
                exporter.stop()
    finally:
        sim.terminate()
        sim.wait(10)
    print(
        f"Machine: {machine()}\n\n{args.tasks} tasks, {args.seconds:.0f} s per row\n\n"
        + table(["client", "polls/s", "client CPU %", "simulator CPU %"], rows)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
