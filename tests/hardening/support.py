"""Helpers for the hardening tests: the simulator as a process, a scraper, /proc readings."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.e2e.harness import Samples, free_port, parse_metrics, total, wait_for

KEY = "sk-hardening-test-key-7f3a9c"
IMAGE_MODELS = ("flux-pro", "flux-schnell", "dall-e-3", "midjourney")
VIDEO_MODELS = ("veo-3", "sora-2")


class SimulatorProcess:
    """`python -m exporter simulate` on a free loopback port."""

    def __init__(
        self,
        workdir: Path,
        *,
        time_scale: float = 60.0,
        seed: int = 5,
        lost_fraction: float = 0.02,
        faults: dict[str, Any] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "simulator.log"
        command = [
            sys.executable,
            "-m",
            "exporter",
            "simulate",
            "--web.listen-address",
            f"127.0.0.1:{self.port}",
            "--api-key",
            KEY,
            "--time-scale",
            str(time_scale),
            "--seed",
            str(seed),
            "--rate-limit-per-minute",
            "0",
            "--retention-seconds",
            "100000000",
            "--lost-fraction",
            str(lost_fraction),
            "--log-level",
            "warning",
        ]
        for name, value in (faults or {}).items():
            command += ["--fault", f"{name}={json.dumps(value)}"]
        self.proc = subprocess.Popen(
            command, stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT
        )
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {KEY}"
        wait_for(self._healthy, 30, "the simulator")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"simulator exited: {self.log_path.read_text()}")
        return requests.get(f"{self.url}/_sim/health", timeout=2).status_code == 200

    def set_faults(self, faults: dict[str, Any]) -> None:
        requests.put(f"{self.url}/_sim/faults", json=faults, timeout=5).raise_for_status()

    def ground_truth(self) -> list[dict[str, Any]]:
        tasks: list[dict[str, Any]] = requests.get(
            f"{self.url}/_sim/ground_truth", timeout=30
        ).json()["tasks"]
        return tasks

    def create(self, kind: str, model: str) -> dict[str, Any]:
        response = self.session.post(
            f"{self.url}/v1/{kind}s/generations", json={"model": model, "prompt": "x"}, timeout=10
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def create_tasks(
    sim: SimulatorProcess,
    task_file: Path,
    count: int,
    *,
    seed: int = 1,
    video_share: float = 0.2,
    per_second: float | None = None,
) -> list[str]:
    """Create tasks like an application and append them to the watched file.

    Videos and half of the images are announced with their poll_url (the
    unified path, with `updated`); the other images by bare ID (image path).
    """
    rng = random.Random(seed)
    ids = []
    with task_file.open("a") as handle:
        for _ in range(count):
            if rng.random() < video_share:
                kind, model = "video", rng.choice(VIDEO_MODELS)
            else:
                kind, model = "image", rng.choice(IMAGE_MODELS)
            body = sim.create(kind, model)
            ids.append(str(body["task_id"]))
            if kind == "image" and rng.random() < 0.5:
                handle.write(f"{body['task_id']}\n")
            else:
                line = {"task_id": body["task_id"], "model": model, "poll_url": body["poll_url"]}
                handle.write(json.dumps(line) + "\n")
            handle.flush()
            if per_second:
                time.sleep(1.0 / per_second)
    return ids


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Scrape:
    at: float  # monotonic
    latency: float
    samples: Samples
    rss: float
    healthy: int


@dataclass
class Scraper:
    """Scrapes /metrics (and /-/healthy) every `interval` seconds in a thread."""

    url: str
    pid: int
    interval: float = 0.25
    scrapes: list[Scrape] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def once(self, session: requests.Session) -> Scrape:
        started = time.monotonic()
        response = session.get(f"{self.url}/metrics", timeout=30)
        latency = time.monotonic() - started
        response.raise_for_status()
        healthy = session.get(f"{self.url}/-/healthy", timeout=30).status_code
        return Scrape(started, latency, parse_metrics(response.text), rss_mib(self.pid), healthy)

    def baseline(self, count: int = 10) -> float:
        """Median scrape latency of `count` scrapes, taken before the load starts."""
        session = requests.Session()
        latencies = []
        for _ in range(count):
            latencies.append(self.once(session).latency)
            time.sleep(0.05)
        return statistics.median(latencies)

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            try:
                self.scrapes.append(self.once(session))
            except (requests.RequestException, OSError) as exc:
                self.failures.append(f"{time.monotonic():.1f}: {type(exc).__name__}: {exc}")
            self._stop.wait(self.interval)

    def start(self) -> Scraper:
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def latest(self) -> Samples:
        return self.scrapes[-1].samples if self.scrapes else {}

    def value(self, name: str, **labels: str) -> float:
        return total(self.latest(), name, **labels)

    def since(self, started: float) -> list[Scrape]:
        return [s for s in self.scrapes if s.at >= started]


def store_rows(path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM tasks")]


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
