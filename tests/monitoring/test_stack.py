"""The monitoring bundle against real servers: simulator, exporter, Alertmanager, Prometheus.

Everything runs on loopback, on free ports, in a temporary folder:

- the simulator (in this process, time x60) and a feeder thread that creates
  tasks on it and appends them to the file the exporter watches;
- the exporter (`python -m exporter run`) polling the simulator;
- a webhook receiver (a tiny HTTP server in this process) collecting the
  notifications of
- a real Alertmanager, started from a copy of alertmanager/alertmanager.yml with
  the webhook URLs pointed here and the group timers shortened;
- a real Prometheus, started from a copy of prometheus/prometheus.yml (targets
  and intervals swapped) and the rules rendered by the same generator as the
  shipped ones with only the `for:` durations and the range windows shortened,
  so the rule logic under test is the shipped one.

Every rule loads and evaluates, and nothing fires while tasks flow normally
(the dashboards' queries run in test_dashboards_live.py). The alert scenarios
(faults, firing and resolving, inhibition) are in test_alert_scenarios.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import yaml

from monitoring.config import BundleConfig
from monitoring.rules import render as render_rules
from tests.harness import alertmanager_process, free_port, process, wait_for
from tests.monitoring.support import (
    ALERTMANAGER_CONFIG,
    PROMETHEUS_CONFIG,
    REPO,
    load_yaml,
    require_tool,
    rule_files,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(290)]

T = TypeVar("T")

# Durations in the test copy of the rules: `for:` and range windows divided by
# this, so 5m becomes 15s (monitoring.rules.render(..., shorten=)).
SHORTEN_FACTOR = 20
SCRAPE_INTERVAL = "1s"
TIME_SCALE = 60.0
API_KEY = "sk-sim"
IMAGE_MODELS = ("flux-pro", "flux-schnell", "dall-e-3")
VIDEO_MODELS = ("veo-3",)
TASKS_PER_SECOND = 3.0

# ---- small servers and helpers ---------------------------------------------------------


def wait_until(
    condition: Callable[[], T | None],
    timeout: float,
    what: str | Callable[[], str],
    every: float = 0.5,
) -> T:
    """The first truthy result of `condition`; fails after `timeout` seconds."""
    result: T = wait_for(condition, timeout, what, every, tolerate=(KeyError, ValueError))
    return result


@dataclass
class Notification:
    receiver_path: str
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]


@dataclass
class Webhook:
    """Collects Alertmanager webhook notifications, one entry per alert."""

    notifications: list[Notification] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with webhook.lock:
                    for alert in body["alerts"]:
                        webhook.notifications.append(
                            Notification(
                                self.path, alert["status"], alert["labels"], alert["annotations"]
                            )
                        )
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def received(self, alertname: str, status: str) -> list[Notification]:
        with self.lock:
            return [
                n
                for n in self.notifications
                if n.labels.get("alertname") == alertname and n.status == status
            ]

    def names(self) -> set[str]:
        with self.lock:
            return {n.labels.get("alertname", "") for n in self.notifications}


class Feeder:
    """Creates tasks on the simulator and appends them to the exporter's task file.

    Outcomes are forced so that alerts depend on the scenario, not on chance:
    every task completes, except those of `failing_model` while it is set.
    """

    def __init__(self, simulator: Any, path: Path) -> None:
        self.simulator = simulator
        self.path = path
        self.failing_model: str | None = None
        self.created = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="feeder", daemon=True)

    def _loop(self) -> None:
        models = [(m, "image") for m in IMAGE_MODELS] + [(m, "video") for m in VIDEO_MODELS]
        while not self._stop.is_set():
            model, kind = models[self.created % len(models)]
            if model == self.failing_model:
                forced = {"outcome": "failed", "reason": "content_policy"}
            else:
                forced = {"outcome": "completed"}
            body = self.simulator.create_task(model, kind, lost=False, **forced)
            line = {"task_id": body["task_id"], "model": model, "poll_url": body.get("poll_url")}
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")
            self.created += 1
            self._stop.wait(1.0 / TASKS_PER_SECOND)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Stack:
    prometheus: str
    simulator: Any
    feeder: Feeder
    webhook: Webhook
    logs: dict[str, Path]

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = requests.get(
            f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10
        )
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def prometheus_alerts(self, state: str = "firing") -> list[dict[str, Any]]:
        body = requests.get(f"{self.prometheus}/api/v1/alerts", timeout=10).json()
        return [a for a in body["data"]["alerts"] if a["state"] == state]

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        return [a for a in self.prometheus_alerts() if a["labels"]["alertname"] == alertname]

    def set_faults(self, faults: dict[str, Any]) -> None:
        """Through the simulator's admin endpoint, as in docs/monitoring.md."""
        response = requests.put(f"{self.simulator.url}/_sim/faults", json=faults, timeout=10)
        response.raise_for_status()

    def log_tails(self) -> str:
        parts = []
        for name, path in self.logs.items():
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
            parts.append(f"--- {name} ---\n" + "\n".join(lines))
        return "\n".join(parts)


def write_alertmanager_config(path: Path, webhook_url: str) -> None:
    config = load_yaml(ALERTMANAGER_CONFIG)
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook_url + "/" + hook["url"].rstrip("/").rsplit("/", 1)[-1]
    routes = [config["route"], *config["route"].get("routes", [])]
    for route in routes:
        route.update(group_wait="1s", group_interval="1s")
        route.pop("repeat_interval", None)
    config["route"]["repeat_interval"] = "1h"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def write_prometheus_config(
    folder: Path, prometheus_port: int, exporter_port: int, alertmanager_port: int
) -> Path:
    config = load_yaml(PROMETHEUS_CONFIG)
    config["global"].update(scrape_interval=SCRAPE_INTERVAL, evaluation_interval=SCRAPE_INTERVAL)
    addresses = {
        "exporter": f"127.0.0.1:{exporter_port}",
        "localhost": f"127.0.0.1:{prometheus_port}",
        "alertmanager": f"127.0.0.1:{alertmanager_port}",
    }

    def local(targets: list[str]) -> list[str]:
        return [addresses[target.split(":")[0]] for target in targets]

    for job in config["scrape_configs"]:
        job.update(scrape_interval=SCRAPE_INTERVAL, scrape_timeout=SCRAPE_INTERVAL)
        for static in job["static_configs"]:
            static["targets"] = local(static["targets"])
    for manager in config["alerting"]["alertmanagers"]:
        for static in manager["static_configs"]:
            static["targets"] = local(static["targets"])
    rules_dir = folder / "rules"
    rules_dir.mkdir()
    for relative, text in render_rules(BundleConfig(), shorten=SHORTEN_FACTOR).items():
        (rules_dir / Path(relative).name).write_text(text, "utf-8")
    config_path = folder / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return config_path


def ready(url: str) -> bool:
    return requests.get(url, timeout=2).status_code == 200


@pytest.fixture(scope="module", name="stack")
def _stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin = require_tool("prometheus", hint="Debian package prometheus")
    alertmanager_bin = require_tool(
        "prometheus-alertmanager", "alertmanager", hint="Debian package prometheus-alertmanager"
    )
    from exporter.simulator import Simulator, SimulatorSettings

    tmp = tmp_path_factory.mktemp("stack")
    logs: dict[str, Path] = {}
    ports = {name: free_port() for name in ("prometheus", "alertmanager", "exporter")}
    webhook = Webhook()
    webhook_url = webhook.start()
    simulator = Simulator(
        SimulatorSettings(
            port=0,
            api_keys=(API_KEY,),
            time_scale=TIME_SCALE,
            seed=7,
            retention_seconds=36000,
            lost_fraction=0.0,
        )
    )
    simulator.start()
    task_file = tmp / "tasks.jsonl"
    task_file.touch()
    feeder = Feeder(simulator, task_file)

    exporter_config = tmp / "exporter.yaml"
    exporter_config.write_text(
        yaml.safe_dump(
            {
                "api": {"base_url": simulator.url, "timeout_seconds": 2},
                "polling": {
                    "cycle_interval_seconds": 0.5,
                    "task_interval_seconds": 1,
                    "requests_per_second": 12,
                    "backoff_max_seconds": 4,
                },
                "store": {"path": str(tmp / "store.db")},
                "discovery": {"interval_seconds": 0.5, "files": [{"path": str(task_file)}]},
            }
        ),
        encoding="utf-8",
    )
    am_config = tmp / "alertmanager.yml"
    write_alertmanager_config(am_config, webhook_url)
    prom_config = write_prometheus_config(
        tmp, ports["prometheus"], ports["exporter"], ports["alertmanager"]
    )
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    env = dict(os.environ, LEMONDATA_API_KEY=API_KEY, PYTHONPATH=str(REPO))
    stack = Stack(urls["prometheus"], simulator, feeder, webhook, logs)
    try:
        with contextlib.ExitStack() as running:
            # Alertmanager first, so Prometheus can deliver from its first evaluation.
            running.enter_context(
                alertmanager_process(alertmanager_bin, am_config, tmp, ports["alertmanager"], logs)
            )
            running.enter_context(
                process(
                    "exporter",
                    [
                        sys.executable,
                        "-m",
                        "exporter",
                        "run",
                        f"--config.file={exporter_config}",
                        f"--web.listen-address=127.0.0.1:{ports['exporter']}",
                    ],
                    logs,
                    tmp,
                    env=env,
                )
            )
            wait_until(lambda: ready(f"{urls['exporter']}/-/healthy"), 30, "the exporter")
            feeder.start()
            running.enter_context(
                process(
                    "prometheus",
                    [
                        prometheus_bin,
                        f"--config.file={prom_config}",
                        f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                        f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
                        "--rules.alert.resend-delay=1s",
                    ],
                    logs,
                    tmp,
                )
            )
            wait_until(lambda: ready(f"{urls['prometheus']}/-/ready"), 30, "Prometheus")
            yield stack
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.log_tails()}") from None
    finally:
        feeder.stop()
        simulator.stop()
        webhook.stop()


def rule_health(stack: Stack) -> dict[str, tuple[str, str]]:
    body = requests.get(f"{stack.prometheus}/api/v1/rules", timeout=10).json()
    return {
        rule["name"]: (rule["health"], rule.get("lastError", ""))
        for group in body["data"]["groups"]
        for rule in group["rules"]
    }


def test_every_rule_loads_and_evaluates(stack: Stack) -> None:
    shipped = {
        rule.get("alert") or rule.get("record")
        for path in rule_files()
        for group in load_yaml(path)["groups"]
        for rule in group["rules"]
    }

    def all_ok() -> dict[str, tuple[str, str]] | None:
        health = rule_health(stack)
        return health if all(h == "ok" for h, _ in health.values()) else None

    health = wait_until(
        all_ok, 30, lambda: f"every rule to evaluate with health ok: {rule_health(stack)}"
    )
    assert set(health) == shipped


def test_no_alert_while_tasks_flow_normally(stack: Stack) -> None:
    wait_until(lambda: stack.feeder.created > 30, 30, "tasks to be created")
    time.sleep(3)
    firing = [a["labels"]["alertname"] for a in stack.prometheus_alerts()]
    pending = [a["labels"]["alertname"] for a in stack.prometheus_alerts("pending")]
    assert not firing and not pending, (firing, pending)
    assert not stack.webhook.names()
