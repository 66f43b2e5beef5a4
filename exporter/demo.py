"""`lemondata-exporter demo`: everything a newcomer needs, with no API key.

Starts the simulator, a feeder that creates tasks on it the way an
application would (and appends each new task to a watched file), and the
exporter, which discovers them from that file. Live metrics within a minute.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import threading
from pathlib import Path

import requests
from pydantic import SecretStr

from exporter.config import DEFAULT_LISTEN_ADDRESS, parse_config
from exporter.logsetup import setup_logging
from exporter.simulator import Simulator, SimulatorSettings

log = logging.getLogger(__name__)
DEMO_KEY = "sk-demo-local-only"
DEMO_MODELS = (
    ("image", "flux-pro"),
    ("image", "flux-schnell"),
    ("image", "dall-e-3"),
    ("image", "midjourney"),
    ("image", "gpt-image-1"),
    ("video", "veo-3"),
)


class TaskFeeder:
    """Creates tasks on an API and appends them, as JSON lines, to a file."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        path: Path,
        rate: float,
        models: tuple[tuple[str, str], ...] = DEMO_MODELS,
        seed: int | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._path = path
        self._interval = 1.0 / rate
        self._models = models
        self._random = random.Random(seed)
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {api_key}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="feeder", daemon=True)
        self.created = 0

    def create_one(self) -> dict[str, object]:
        kind, model = self._random.choice(self._models)
        response = self._session.post(
            f"{self._base_url}/v1/{kind}s/generations",
            json={"model": model, "prompt": "a lemon tree at dawn"},
            timeout=10,
        )
        response.raise_for_status()
        body: dict[str, object] = response.json()
        line = {"task_id": body["task_id"], "model": model, "poll_url": body.get("poll_url")}
        with self._path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
        self.created += 1
        return body

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.create_one()
            except requests.RequestException as exc:
                log.warning("feeder: could not create a task: %s", type(exc).__name__)
            self._stop.wait(self._random.expovariate(1.0 / self._interval))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def positive(text: str) -> float:
    """argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be above 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from exporter.cli import add_listen_flag

    add_listen_flag(parser, DEFAULT_LISTEN_ADDRESS, "exporter address (default %(default)s)")
    parser.add_argument(
        "--time-scale",
        type=positive,
        default=10.0,
        help="simulated seconds per real second (default %(default)s)",
    )
    parser.add_argument(
        "--tasks-per-second",
        type=positive,
        default=1.0,
        help="how fast the feeder creates tasks (default %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the store and the task file go (default: a temporary folder)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for a repeatable run")


def run(args: argparse.Namespace) -> int:
    from exporter.config import ConfigError
    from exporter.serve import serve
    from exporter.web.security import load_web_security

    try:
        web_security = load_web_security(getattr(args, "web_config_file", None))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    setup_logging(args.log_level, args.log_format)
    with tempfile.TemporaryDirectory(prefix="lemondata-demo-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(
                f"--data-dir {data_dir}: cannot create it: {exc.strerror}; "
                "choose a writable folder or leave --data-dir out",
                file=sys.stderr,
            )
            return 2
        task_file = data_dir / "tasks.jsonl"
        task_file.touch()  # watched from the start: no "does not exist" warning
        simulator = Simulator(
            SimulatorSettings(
                port=0, api_keys=(DEMO_KEY,), time_scale=args.time_scale, seed=args.seed
            )
        )
        simulator.start()
        feeder = TaskFeeder(
            simulator.url, DEMO_KEY, task_file, args.tasks_per_second, seed=args.seed
        )
        feeder.start()
        config = parse_config(
            {
                "api": {"base_url": simulator.url},
                "polling": {
                    "cycle_interval_seconds": 0.5,
                    "task_interval_seconds": 1.0,
                    "requests_per_second": 20,
                },
                "store": {"path": str(data_dir / "store.db")},
                "discovery": {"interval_seconds": 1.0, "files": [{"path": str(task_file)}]},
            },
            "demo",
        )
        log.info(
            "demo: simulator at %s (time x%g), tasks appended to %s",
            simulator.url,
            args.time_scale,
            task_file,
        )
        try:
            return serve(
                config,
                SecretStr(DEMO_KEY),
                args.listen_address,
                "demo",
                web_security=web_security,
            )
        finally:
            feeder.stop()
            simulator.stop()
