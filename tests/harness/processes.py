"""Real processes on loopback: the exporter, the simulator, redis-server, any server binary.

Each is started on a free port, waited for by polling its readiness, and
stopped with SIGTERM, then SIGKILL if it does not go.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import yaml

from tests.harness.metrics import Samples, parse_metrics
from tests.harness.net import free_port, wait_for

SIMULATOR_KEY = "sk-hardening-test-key-7f3a9c"


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> int:
    """SIGTERM, then SIGKILL after `timeout` seconds; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(5)


@contextlib.contextmanager
def process(
    name: str, args: list[str], logs: dict[str, Path], folder: Path, **kw: Any
) -> Iterator[subprocess.Popen[bytes]]:
    """`args` running in `folder` with its output in `folder/name.log`, stopped on exit."""
    log_path = folder / f"{name}.log"
    logs[name] = log_path
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=folder, **kw)
    try:
        yield proc
    finally:
        stop(proc)


@contextlib.contextmanager
def alertmanager_process(
    binary: str, config: Path, folder: Path, port: int, logs: dict[str, Path]
) -> Iterator[str]:
    """A single Alertmanager (no cluster) on `port` with `config`, waited for; its URL."""
    url = f"http://127.0.0.1:{port}"
    args = [
        binary,
        f"--config.file={config}",
        f"--storage.path={folder / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    with process("alertmanager", args, logs, folder):
        wait_for(
            lambda: requests.get(f"{url}/-/ready", timeout=2).status_code == 200,
            30,
            "Alertmanager",
        )
        yield url


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
            wait_for(self.ready, 30, lambda: f"exporter ready (log: {self.log_text()[-2000:]})")
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
        api_key: str = SIMULATOR_KEY,
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
            api_key,
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
        self.session.headers["Authorization"] = f"Bearer {api_key}"
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
        stop(self.proc, 15)


class RedisServer:
    """A throwaway redis-server (the Debian package) on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        assert binary is not None
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--protected-mode",
                "yes",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis.from_url(self.url)
        try:
            wait_for(
                self._pong(client), 10, self._failed, every=0.05, tolerate=(redis.ConnectionError,)
            )
        finally:
            client.close()
        return self

    def _pong(self, client: redis.Redis) -> Any:
        def pong() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(self._failed())
            return bool(client.ping())

        return pong

    def _failed(self) -> str:
        log = (self.workdir / "redis.log").read_text(errors="replace")
        return f"redis-server to start: {log}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def require_redis_server() -> None:
    """Skip without redis-server, except in CI, where it must be there."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing (scripts/test.sh installs it)")
        pytest.skip("redis-server is not installed")
