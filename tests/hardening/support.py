"""Helpers for the hardening tests: the simulator as a process, a scraper, /proc readings."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.harness import Samples, SimulatorProcess, parse_metrics, total
from tests.harness.processes import SIMULATOR_KEY

__all__ = ["SimulatorProcess"]  # the hardening tests' simulator, from the harness

KEY = SIMULATOR_KEY
IMAGE_MODELS = ("flux-pro", "flux-schnell", "dall-e-3", "midjourney")
VIDEO_MODELS = ("veo-3", "sora-2")


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
