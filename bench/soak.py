"""Soak benchmark: the exporter against the simulator, with faults, for a long time.

Not a test: it runs for `--minutes` (default 30), then prints and writes a
table with one row per `--row-seconds` window:

- tasks created by the feeder and finished according to the exporter;
- the exporter's resident memory (VmRSS) and open file descriptors, from /proc;
- latency of `/metrics` (scraped every second): p50, p99 and max;
- poll lag (`lemondata_poll_lag_seconds`): the largest value seen, and the share
  of scrapes where a task had been due for longer than its poll interval;
- status requests per second and API errors in the window.

Both the simulator and the exporter are subprocesses on loopback; a feeder in
this process creates tasks on the simulator and appends them to the file the
exporter watches. A mix of the simulator's faults is on the whole time, and a
short 503 burst comes every few minutes. At the end the exporter's finished
tasks are compared with the simulator's ground truth.

    python bench/soak.py --minutes 10 --out /tmp/soak.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import free_port, wait_for

KEY = "sk-soak-benchmark-key"
MODELS = (
    ("image", "flux-pro"),
    ("image", "flux-schnell"),
    ("image", "dall-e-3"),
    ("image", "midjourney"),
    ("video", "veo-3"),
)
# Low-probability faults of every family; bursts come on top of these.
FAULT_MIX: dict[str, Any] = {
    "unknown_status": 0.02,
    "status_backwards": 0.02,
    "bad_timestamps": 0.02,
    "hostile_error_text": {"probability": 0.2, "huge_probability": 0.05},
    "rate_limit_429": 0.01,
    "http_500": 0.01,
    "http_502": 0.01,
    "html_error": 0.01,
    "malformed_json": 0.01,
    "huge_body": {"probability": 0.005, "size_bytes": 20_000_000},
    "wrong_content_type": 0.02,
    "timeout": {"probability": 0.002, "seconds": 8},
    "reset": 0.01,
    "drip": {"probability": 0.002, "interval_seconds": 0.05},
    "slow": {"probability": 0.02, "delay_seconds": 0.5},
}


def wait_up(url: str, timeout: float = 30.0) -> None:
    wait_for(lambda: requests.get(url, timeout=1).status_code == 200, timeout, url)


def proc_status(pid: int) -> tuple[float, int]:
    """(resident memory in MiB, open file descriptors) of a process."""
    rss = 0.0
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def samples(text: str) -> dict[str, float]:
    """Metric name -> sum over its label sets (enough for the figures here)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def by_status(text: str) -> dict[str, float]:
    """`lemondata_tasks` by its status label."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "lemondata_tasks":
            for sample in family.samples:
                out[sample.labels["status"]] = sample.value
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Window:
    start: float
    scrape_ms: list[float] = field(default_factory=list)
    scrape_failures: int = 0
    lag: list[float] = field(default_factory=list)
    created: int = 0


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.sim_port = free_port()
        self.exp_port = free_port()
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"
        self.exp_url = f"http://127.0.0.1:{self.exp_port}"
        self.task_file = workdir / "tasks.jsonl"
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.window = Window(time.monotonic())
        self.rows: list[dict[str, Any]] = []
        self.created = 0
        self.create_errors = 0
        self.procs: list[subprocess.Popen[bytes]] = []
        self.rng = random.Random(args.seed)

    # ---- processes -------------------------------------------------------------

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "LEMONDATA_API_KEY"}
        sim_log = (self.workdir / "simulator.log").open("ab")
        self.procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "exporter",
                    "simulate",
                    "--web.listen-address",
                    f"127.0.0.1:{self.sim_port}",
                    "--api-key",
                    KEY,
                    "--time-scale",
                    str(self.args.time_scale),
                    "--seed",
                    str(self.args.seed),
                    "--rate-limit-per-minute",
                    "0",
                    "--retention-seconds",
                    "100000000",
                    "--log-level",
                    "warning",
                ],
                env=env,
                stdout=sim_log,
                stderr=subprocess.STDOUT,
            )
        )
        wait_up(f"{self.sim_url}/_sim/health")
        config = {
            "api": {"base_url": self.sim_url, "max_connections": 16, "timeout_seconds": 3},
            "polling": {
                "cycle_interval_seconds": 0.5,
                "task_interval_seconds": self.args.task_interval,
                "requests_per_second": self.args.requests_per_second,
                "max_wait_seconds": 600,
                "backoff_base_seconds": 0.5,
                "backoff_max_seconds": 5,
            },
            "store": {"path": str(self.workdir / "store.db"), "retention_seconds": 600},
            "discovery": {"interval_seconds": 1, "files": [{"path": str(self.task_file)}]},
            "log_level": "warning",
        }
        config_path = self.workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        self.exp_log_path = self.workdir / "exporter.log"
        self.exporter = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "run",
                "--config.file",
                str(config_path),
                "--web.listen-address",
                f"127.0.0.1:{self.exp_port}",
            ],
            env={**env, "LEMONDATA_API_KEY": KEY},
            stdout=self.exp_log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append(self.exporter)
        wait_up(f"{self.exp_url}/-/ready")
        self.set_faults(FAULT_MIX)

    def set_faults(self, faults: dict[str, Any]) -> None:
        requests.put(f"{self.sim_url}/_sim/faults", json=faults, timeout=5).raise_for_status()

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    # ---- threads ---------------------------------------------------------------

    def feed(self) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {KEY}"
        interval = 1.0 / self.args.tasks_per_second
        with self.task_file.open("a") as handle:
            while not self.stop.wait(self.rng.expovariate(1.0 / interval)):
                kind, model = self.rng.choice(MODELS)
                try:
                    response = session.post(
                        f"{self.sim_url}/v1/{kind}s/generations",
                        json={"model": model, "prompt": "soak"},
                        timeout=5,
                    )
                    response.raise_for_status()
                    body = response.json()
                except (requests.RequestException, ValueError):
                    self.create_errors += 1  # a burst window also refuses creates
                    continue
                if kind == "image" and self.rng.random() < 0.5:
                    line = str(body["task_id"])
                else:
                    line = json.dumps(
                        {"task_id": body["task_id"], "model": model, "poll_url": body["poll_url"]}
                    )
                handle.write(line + "\n")
                handle.flush()
                with self.lock:
                    self.created += 1
                    self.window.created += 1

    def scrape(self) -> None:
        session = requests.Session()
        next_at = time.monotonic()
        while not self.stop.is_set():
            next_at += 1.0
            started = time.monotonic()
            try:
                response = session.get(f"{self.exp_url}/metrics", timeout=10)
                elapsed = (time.monotonic() - started) * 1000
                lag = samples(response.text).get("lemondata_poll_lag_seconds", 0.0)
                with self.lock:
                    self.window.scrape_ms.append(elapsed)
                    self.window.lag.append(lag)
            except requests.RequestException:
                with self.lock:
                    self.window.scrape_failures += 1
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def bursts(self) -> None:
        every = self.args.burst_every_minutes * 60
        while not self.stop.wait(every):
            self.set_faults({**FAULT_MIX, "http_503": {"burst_seconds": 10}})

    # ---- figures ---------------------------------------------------------------

    def close_window(self, previous: dict[str, float]) -> dict[str, float]:
        now = time.monotonic()
        with self.lock:
            window, self.window = self.window, Window(now)
        text = requests.get(f"{self.exp_url}/metrics", timeout=10).text
        current = samples(text)
        status = by_status(text)
        rss, fds = proc_status(self.exporter.pid)
        seconds = now - window.start
        requests_sent = current.get("lemondata_api_requests_total", 0) - previous.get(
            "lemondata_api_requests_total", 0
        )
        errors = current.get("lemondata_api_errors_total", 0) - previous.get(
            "lemondata_api_errors_total", 0
        )
        row = {
            "minute": round((now - self.started) / 60, 1),
            "created": window.created,
            "finished": int(current.get("lemondata_tasks_finished_total", 0)),
            "active": int(sum(status.get(s, 0) for s in ("unknown", "pending", "processing"))),
            "rss_mib": round(rss, 1),
            "fds": fds,
            "scrape_p50_ms": round(percentile(window.scrape_ms, 0.5), 1),
            "scrape_p99_ms": round(percentile(window.scrape_ms, 0.99), 1),
            "scrape_max_ms": round(max(window.scrape_ms, default=float("nan")), 1),
            "scrape_failures": window.scrape_failures,
            "lag_max_s": round(max(window.lag, default=0.0), 2),
            "lag_over_interval_pct": round(
                100
                * sum(1 for lag in window.lag if lag > self.args.task_interval)
                / max(1, len(window.lag)),
                1,
            ),
            "requests_per_s": round(requests_sent / seconds, 1),
            "api_errors": int(errors),
        }
        self.rows.append(row)
        print(" | ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        return current

    def run(self) -> int:
        self.start()
        self.started = time.monotonic()
        threads = [
            threading.Thread(target=target, daemon=True)
            for target in (self.feed, self.scrape, self.bursts)
        ]
        for thread in threads:
            thread.start()
        previous: dict[str, float] = {}
        end = self.started + self.args.minutes * 60
        try:
            while time.monotonic() < end:
                time.sleep(min(self.args.row_seconds, max(0.0, end - time.monotonic())))
                if self.exporter.poll() is not None:
                    print(f"the exporter exited with {self.exporter.returncode}", file=sys.stderr)
                    return 1
                previous = self.close_window(previous)
            self.stop.set()
            self.set_faults({})
            verdict = self.drain()
        finally:
            self.stop.set()
            self.close()
        self.write(verdict)
        return 0 if verdict["ok"] else 1

    def drain(self) -> dict[str, Any]:
        """Faults off, wait until every created task is finished, compare with the truth."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            counts = by_status(requests.get(f"{self.exp_url}/metrics", timeout=10).text)
            if sum(counts.get(s, 0) for s in ("unknown", "pending", "processing")) == 0:
                break
            time.sleep(1)
        truth = requests.get(f"{self.sim_url}/_sim/ground_truth", timeout=30).json()["tasks"]
        truth_status = Counter(str(t["status"]) for t in truth)
        text = requests.get(f"{self.exp_url}/metrics", timeout=10).text
        finished: Counter[str] = Counter()
        for family in text_string_to_metric_families(text):
            if family.name == "lemondata_tasks_finished":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        finished[sample.labels["status"]] += int(sample.value)
        with sqlite3.connect(self.workdir / "store.db") as db:
            integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        return {
            "ok": self.exporter.poll() is None and integrity == "ok",
            "created": self.created,
            "create_errors": self.create_errors,
            "truth": dict(sorted(truth_status.items())),
            "exporter_finished": dict(sorted(finished.items())),
            "store_integrity": integrity,
        }

    def write(self, verdict: dict[str, Any]) -> None:
        headers = list(self.rows[0]) if self.rows else []
        lines = [
            f"Soak run: {self.args.minutes} min, {self.created} tasks, "
            f"{self.args.tasks_per_second}/s, time scale {self.args.time_scale}, "
            f"budget {self.args.requests_per_second} req/s, "
            f"{platform.python_version()}, {os.cpu_count()} CPUs",
            "",
            "| " + " | ".join(headers) + " |",
            "| " + " | ".join("---" for _ in headers) + " |",
        ]
        lines += ["| " + " | ".join(str(row[h]) for h in headers) + " |" for row in self.rows]
        if self.rows:
            all_rss = [row["rss_mib"] for row in self.rows]
            lines += [
                "",
                f"RSS first/last/max MiB: {all_rss[0]} / {all_rss[-1]} / {max(all_rss)}; "
                f"FDs first/last: {self.rows[0]['fds']} / {self.rows[-1]['fds']}; "
                f"scrape p99 median over windows: "
                f"{statistics.median(r['scrape_p99_ms'] for r in self.rows)} ms",
            ]
        lines += ["", f"End state: {json.dumps(verdict)}"]
        text = "\n".join(lines) + "\n"
        print(text)
        if self.args.out:
            Path(self.args.out).write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--row-seconds", type=float, default=60.0, help="one table row per this")
    parser.add_argument("--tasks-per-second", type=float, default=3.0)
    parser.add_argument("--time-scale", type=float, default=60.0)
    parser.add_argument("--task-interval", type=float, default=0.5)
    parser.add_argument("--requests-per-second", type=float, default=60.0)
    parser.add_argument("--burst-every-minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="", help="also write the table to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="lemondata-soak-"))
    print(f"work folder: {workdir}", flush=True)
    try:
        return Soak(args, workdir).run()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
