"""Real processes on loopback for end-to-end tests: the exporter as a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except (requests.RequestException, OSError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(
        value
        for (sample_name, sample_labels), value in samples.items()
        if sample_name == name and set(labels.items()) <= set(sample_labels)
    )


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    result: dict[str, float] = defaultdict(float)
    for (sample_name, sample_labels), value in samples.items():
        if sample_name == name:
            result[dict(sample_labels)[label]] += value
    return dict(result)


class ExporterProcess:
    """`python -m exporter run` with a config written from a dict."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        api_key: str | None = None,
        port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Settings come from `config` (and what a test adds to env), not the caller's shell.
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k != "LEMONDATA_API_KEY" and not k.startswith("LEMONDATA_EXPORTER_")
        }
        if api_key is not None:
            self.env["LEMONDATA_API_KEY"] = api_key
        self.log_path = workdir / "exporter.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_args: list[str] = []  # more flags for `run`, e.g. --web.config.file

    def start(self, wait_ready: bool = True) -> ExporterProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "run",
                "--config.file",
                str(self.config_path),
                "--web.listen-address",
                f"127.0.0.1:{self.port}",
                *self.extra_args,
            ],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if wait_ready:
            wait_for(self.ready, 30, f"exporter ready (log: {self.log_text()[-2000:]})")
        return self

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"exporter exited {self.proc.returncode}: {self.log_text()}")
        return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200

    def metrics_text(self) -> str:
        response = requests.get(f"{self.url}/metrics", timeout=5)
        response.raise_for_status()
        return response.text

    def metrics(self) -> Samples:
        return parse_metrics(self.metrics_text())

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)
