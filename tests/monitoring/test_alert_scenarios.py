"""Alert scenarios, live: real exporters, simulators, Prometheus and Alertmanager.

The rules and the Alertmanager configuration are rendered by the same
generator as the shipped ones, from a bundle config with non-default knobs
(another selector, a cluster label on every series) and with every range
window and `for:` divided by SHORTEN (`monitoring.rules.render(..., shorten=)`):
1 h becomes 1 min, 5 m becomes 5 s. So the logic under test is the shipped
logic, at a pace a test can wait for.

Two exporters, each with its own simulator, are scraped under one job and
told apart by a `namespace` label, as two deployments would be:

- `api`: watches no task but a few. Its scenarios change the API for everyone
  and run one after the other: one single 401 (no page), an outage then
  recovery (LemonDataAPIDown pages and resolves with no task left), a bad key
  for a while then fixed (one page, resolved after the fix, the task and API
  alerts it causes inhibited in Alertmanager).
- `tasks`: its scenarios start with the stack and run meanwhile: a model at
  30 tasks an hour (scaled: one every 2 s) failing completely (fires, then
  resolves once it succeeds again), a burst of content-policy failures (no
  availability page; an info alert that reaches no webhook), a task stuck in
  processing (fires, resolves when it finishes).

Alertmanager starts before Prometheus, and Prometheus resends every second.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from monitoring import alertmanager, rules
from monitoring.config import BundleConfig
from tests.harness import alertmanager_process, free_port, parse_metrics, process, total
from tests.monitoring.support import REPO, require_tool
from tests.monitoring.test_stack import Notification, Webhook, ready, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SHORTEN = 60
API_KEY = "sk-scenario"
JOB = "ld-live"
CLUSTER = "live-1"
LIVE = BundleConfig(
    selector=f'job="{JOB}"',
    thresholds={
        # Seconds are not shortened: these are scaled-down values that keep the
        # shipped order of events: a rejected key (for: 5m, here 5 s) fires
        # before the API counts as down (300 s + 1m, here 10 s + 1 s), so
        # Alertmanager already holds the cause when the echo arrives.
        "api_down_seconds": 10,
        "waiting_seconds": 6,
        "stuck_no_history_seconds": 8,
        "stuck_min_seconds": 3,
        "not_polling_seconds": 30,
    },
)
GOOD_MODEL = "flux-schnell"
LOW_VOLUME_MODEL = "flux-pro"
POLICY_MODEL = "dall-e-3"
STUCK_MODEL = "seedream-4"


def write_task(path: Path, body: dict[str, Any], model: str) -> None:
    line = {"task_id": body["task_id"], "model": model, "poll_url": body.get("poll_url")}
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


class TaskScenarios:
    """Feeds the `tasks` exporter: background traffic and the three task scenarios."""

    def __init__(self, simulator: Any, path: Path) -> None:
        self.simulator = simulator
        self.path = path
        self.low_volume_failing = True
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="task-scenarios", daemon=True)

    def create(self, model: str, **plan: Any) -> None:
        plan.setdefault("pending_seconds", 0.2)
        plan.setdefault("processing_seconds", 0.5)
        body = self.simulator.create_task(model, "image", lost=False, **plan)
        write_task(self.path, body, model)

    def _loop(self) -> None:
        # The task stuck in processing: far longer than the no-history limit,
        # then it completes.
        self.create(STUCK_MODEL, outcome="completed", processing_seconds=25)
        tick = 0
        while not self._stop.wait(0.5):
            tick += 1
            self.create(GOOD_MODEL, outcome="completed")
            if tick % 4 == 0:  # 30 an hour, scaled: one every 2 s
                if self.low_volume_failing:
                    self.create(LOW_VOLUME_MODEL, outcome="failed", reason="upstream_error")
                else:
                    self.create(LOW_VOLUME_MODEL, outcome="completed")
            if tick <= 30:  # a burst of refused prompts: 30 in 15 s, then none
                self.create(POLICY_MODEL, outcome="failed", reason="content_policy")
            elif tick % 4 == 2:
                self.create(POLICY_MODEL, outcome="completed")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():  # not started if the stack failed to come up
            self._thread.join(5)


@dataclass
class Live:
    prometheus: str
    alertmanager: str
    simulators: dict[str, Any]
    exporters: dict[str, str]
    task_files: dict[str, Path]
    scenarios: TaskScenarios
    webhook: Webhook
    logs: dict[str, Path]
    marks: dict[str, int] = field(default_factory=dict)

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = requests.get(
            f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10
        ).json()
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def firing(self, alertname: str, **labels: str) -> list[dict[str, Any]]:
        body = requests.get(f"{self.prometheus}/api/v1/alerts", timeout=10).json()
        return [
            a
            for a in body["data"]["alerts"]
            if a["state"] == "firing"
            and a["labels"]["alertname"] == alertname
            and all(a["labels"].get(k) == v for k, v in labels.items())
        ]

    def am_alerts(self, alertname: str) -> list[dict[str, Any]]:
        response = requests.get(
            f"{self.alertmanager}/api/v2/alerts",
            params={"filter": f'alertname="{alertname}"'},
            timeout=10,
        )
        result: list[dict[str, Any]] = response.json()
        return result

    def notes(
        self, alertname: str, status: str, since: int = 0, **labels: str
    ) -> list[Notification]:
        with self.webhook.lock:
            notes = self.webhook.notifications[since:]
        return [
            n
            for n in notes
            if n.labels.get("alertname") == alertname
            and n.status == status
            and all(n.labels.get(k) == v for k, v in labels.items())
        ]

    def mark(self, name: str) -> int:
        with self.webhook.lock:
            self.marks[name] = len(self.webhook.notifications)
        return self.marks[name]

    def set_faults(self, namespace: str, faults: dict[str, Any]) -> None:
        url = self.simulators[namespace].url
        requests.put(f"{url}/_sim/faults", json=faults, timeout=10).raise_for_status()

    def exporter_metrics(self, namespace: str) -> Any:
        text = requests.get(f"{self.exporters[namespace]}/metrics", timeout=5).text
        return parse_metrics(text)

    def described(self) -> str:
        body = requests.get(f"{self.prometheus}/api/v1/alerts", timeout=10).json()
        firing = sorted(
            f"{a['labels']['alertname']}{{{a['labels'].get('namespace')},"
            f"{a['labels'].get('model', '')}}}:{a['state']}"
            for a in body["data"]["alerts"]
        )
        with self.webhook.lock:
            notes = [
                f"{n.labels.get('alertname')}/{n.labels.get('namespace')}/{n.status}"
                for n in self.webhook.notifications
            ]
        tails = []
        for name, path in self.logs.items():
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[-8:]
            tails.append(f"--- {name} ---\n" + "\n".join(lines))
        return f"alerts: {firing}\nnotified: {notes}\n" + "\n".join(tails)

    def wait(self, what: str, condition: Any, timeout: float = 60) -> Any:
        return wait_until(condition, timeout, lambda: f"{what}\n{self.described()}", every=0.25)


def exporter_config(folder: Path, simulator_url: str, task_file: Path) -> Path:
    path = folder / "exporter.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "api": {"base_url": simulator_url, "timeout_seconds": 2},
                "polling": {
                    "strategy": "fixed",
                    "cycle_interval_seconds": 0.25,
                    "task_interval_seconds": 0.5,
                    "requests_per_second": 40,
                    "backoff_base_seconds": 0.5,
                    "backoff_max_seconds": 1,
                    "probe_interval_seconds": 1,
                },
                "store": {"path": str(folder / "store.db")},
                "discovery": {"interval_seconds": 0.25, "files": [{"path": str(task_file)}]},
            }
        ),
        encoding="utf-8",
    )
    return path


def prometheus_config(folder: Path, exporters: dict[str, int], alertmanager_port: int) -> Path:
    rules_dir = folder / "rules"
    rules_dir.mkdir()
    for relative, text in rules.render(LIVE, shorten=SHORTEN).items():
        (rules_dir / Path(relative).name).write_text(text, encoding="utf-8")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_dir / "*.yml")],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]
        },
        "scrape_configs": [
            {
                "job_name": JOB,
                "scrape_timeout": "1s",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{port}"],
                        "labels": {"cluster": CLUSTER, "namespace": namespace},
                    }
                    for namespace, port in exporters.items()
                ],
            }
        ],
    }
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def alertmanager_config(path: Path, webhook_url: str) -> None:
    config = alertmanager.config(LIVE)
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook_url + "/" + hook["url"].rstrip("/").rsplit("/", 1)[-1]
    for route in [config["route"], *config["route"]["routes"]]:
        route.update(group_wait="1s", group_interval="1s")
        route.pop("repeat_interval", None)
    config["route"]["repeat_interval"] = "1h"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


@pytest.fixture(scope="module", name="live")
def _live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    prometheus_bin = require_tool("prometheus", hint="Debian package prometheus")
    alertmanager_bin = require_tool(
        "prometheus-alertmanager", "alertmanager", hint="Debian package prometheus-alertmanager"
    )
    from exporter.simulator import Simulator, SimulatorSettings

    tmp = tmp_path_factory.mktemp("scenarios")
    logs: dict[str, Path] = {}
    webhook = Webhook()
    webhook_url = webhook.start()
    simulators = {
        namespace: Simulator(
            SimulatorSettings(
                port=0, api_keys=(API_KEY,), seed=11, lost_fraction=0.0, float_timestamps=True
            )
        )
        for namespace in ("api", "tasks")
    }
    ports = {name: free_port() for name in ("prometheus", "alertmanager", "api", "tasks")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    task_files = {}
    env = dict(os.environ, LEMONDATA_API_KEY=API_KEY, PYTHONPATH=str(REPO))
    am_config = tmp / "alertmanager.yml"
    alertmanager_config(am_config, webhook_url)
    prom_config = prometheus_config(
        tmp, {ns: ports[ns] for ns in ("api", "tasks")}, ports["alertmanager"]
    )
    for simulator in simulators.values():
        simulator.start()
    scenarios = TaskScenarios(simulators["tasks"], tmp / "tasks-tasks.jsonl")
    live = Live(
        urls["prometheus"],
        urls["alertmanager"],
        simulators,
        {ns: urls[ns] for ns in ("api", "tasks")},
        task_files,
        scenarios,
        webhook,
        logs,
    )
    try:
        with contextlib.ExitStack() as running:
            running.enter_context(
                alertmanager_process(alertmanager_bin, am_config, tmp, ports["alertmanager"], logs)
            )
            for namespace in ("api", "tasks"):
                folder = tmp / namespace
                folder.mkdir()
                task_file = tmp / f"tasks-{namespace}.jsonl"
                task_file.touch()
                task_files[namespace] = task_file
                config = exporter_config(folder, simulators[namespace].url, task_file)
                running.enter_context(
                    process(
                        f"exporter-{namespace}",
                        [
                            sys.executable,
                            "-m",
                            "exporter",
                            "run",
                            f"--config.file={config}",
                            f"--web.listen-address=127.0.0.1:{ports[namespace]}",
                        ],
                        logs,
                        folder,
                        env=env,
                    )
                )
            for namespace in ("api", "tasks"):
                wait_until(lambda ns=namespace: ready(f"{urls[ns]}/-/ready"), 30, namespace)
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
            scenarios.start()
            yield live
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{live.described()}") from None
    finally:
        scenarios.stop()
        for simulator in simulators.values():
            simulator.stop()
        webhook.stop()


# ---- the api exporter: one scenario after the other ---------------------------------------


def test_rules_are_healthy_and_keep_the_cluster_label(live: Live) -> None:
    def healthy() -> list[dict[str, Any]] | None:
        body = requests.get(f"{live.prometheus}/api/v1/rules", timeout=10).json()
        found = [r for g in body["data"]["groups"] for r in g["rules"]]
        ok = found and all(r["health"] == "ok" for r in found)
        return found if ok else None

    found = live.wait("every rule evaluating with health ok", healthy, 30)
    assert len(found) == sum(
        len(g["rules"]) for groups in rules.build(LIVE).values() for g in groups
    )
    # Every recorded series that exists carries the cluster label through its aggregation.
    live.wait(
        "the store totals recorded",
        lambda: live.query('lemondata:store_tasks_finished:max{namespace="tasks"}'),
    )
    for rule in (r for r in found if r["type"] == "recording"):
        for series in live.query(rule["name"]):
            assert series["metric"].get("cluster") == CLUSTER, (rule["name"], series["metric"])


def test_one_single_401_does_not_page(live: Live) -> None:
    live.mark("single-401")
    before = total(live.exporter_metrics("api"), "lemondata_api_errors_total", kind="unauthorized")
    live.set_faults("api", {"unauthorized": 1.0})
    try:
        live.wait(
            "the exporter to get a 401",
            lambda: (
                total(
                    live.exporter_metrics("api"), "lemondata_api_errors_total", kind="unauthorized"
                )
                > before
            ),
            20,
        )
    finally:
        live.set_faults("api", {})
    seen = total(live.exporter_metrics("api"), "lemondata_api_errors_total", kind="unauthorized")
    assert 1 <= seen - before <= 2
    # The next good answer (the probe, within a second) clears the state.
    live.wait(
        "the account state back to ok",
        lambda: total(live.exporter_metrics("api"), "lemondata_api_account_state", state="ok") == 1,
        20,
    )
    live.wait(
        "Prometheus to see the account state ok again",
        lambda: live.query(f'lemondata_api_account_state{{job="{JOB}", state="ok"}} == 1'),
        20,
    )
    # Checked again after the outage scenario, which gives the `for:` time to pass.


def test_api_outage_pages_and_resolves_with_no_tasks_left(live: Live) -> None:
    start = live.mark("outage")
    assert live.task_files["api"].read_text() == "", "the api exporter watches no task"
    live.set_faults("api", {"http_503": 1.0})
    try:
        note = live.wait(
            "APIDown paged",
            lambda: live.notes("LemonDataAPIDown", "firing", start, namespace="api"),
        )[0]
        assert note.receiver_path == "/critical"
        assert note.labels["cluster"] == CLUSTER
        assert note.annotations["runbook_url"].endswith("#lemondataapidown")
    finally:
        live.set_faults("api", {})
    # Only probes answer now: no task to poll.
    live.wait(
        "APIDown resolved",
        lambda: live.notes("LemonDataAPIDown", "resolved", start, namespace="api"),
    )
    assert not live.firing("LemonDataAPIDown", namespace="api")
    metrics = live.exporter_metrics("api")
    assert total(metrics, "lemondata_tasks") == 0
    assert total(metrics, "lemondata_api_probes_total") > 0


def test_the_single_401_never_paged(live: Live) -> None:
    window = max(10, int(time.monotonic() - live.scenarios.started) + 5)
    ever = live.query(
        f'max_over_time(ALERTS{{alertname="LemonDataAPIKeyRejected", alertstate="firing"}}'
        f"[{window}s])"
    )
    assert not ever
    assert not live.notes("LemonDataAPIKeyRejected", "firing", live.marks["single-401"])


def test_a_bad_key_pages_once_inhibits_what_it_causes_and_resolves(live: Live) -> None:
    start = live.mark("bad-key")
    live.set_faults("api", {"unauthorized": 1.0})
    try:
        # Tasks that cannot be polled while the key is bad: they wait, unanswered.
        for _ in range(3):
            body = live.simulators["api"].create_task(
                GOOD_MODEL,
                "image",
                lost=False,
                outcome="completed",
                pending_seconds=0.2,
                processing_seconds=0.5,
            )
            write_task(live.task_files["api"], body, GOOD_MODEL)
        note = live.wait(
            "KeyRejected paged",
            lambda: live.notes("LemonDataAPIKeyRejected", "firing", start, namespace="api"),
        )[0]
        assert note.receiver_path == "/critical"
        assert "rejected the API key" in note.annotations["description"]
        # What the bad key causes fires in Prometheus, and is muted in Alertmanager.
        for caused in ("LemonDataAPIDown", "LemonDataTasksStuckWaiting"):
            live.wait(f"{caused} firing", lambda c=caused: live.firing(c, namespace="api"))

            def inhibited(c: str = caused) -> bool:
                found = [a for a in live.am_alerts(c) if a["labels"].get("namespace") == "api"]
                return bool(found) and all(a["status"]["inhibitedBy"] for a in found)

            live.wait(f"{caused} inhibited in Alertmanager", inhibited, 20)
    finally:
        live.set_faults("api", {})
    live.wait(
        "KeyRejected resolved",
        lambda: live.notes("LemonDataAPIKeyRejected", "resolved", start, namespace="api"),
    )
    assert len(live.notes("LemonDataAPIKeyRejected", "firing", start)) == 1, "one page"
    for caused in ("LemonDataAPIDown", "LemonDataTasksStuckWaiting"):
        assert not live.notes(caused, "firing", start, namespace="api"), f"{caused} not muted"
    # The tasks are polled again and finish.
    live.wait(
        "the api exporter's tasks to finish",
        lambda: total(live.exporter_metrics("api"), "lemondata_tasks_finished_total") >= 3,
    )


# ---- the tasks exporter: started with the stack, checked now ---------------------------------


def test_a_low_volume_model_failing_completely_fires_and_resolves(live: Live) -> None:
    live.wait(
        "LowVolume firing",
        lambda: live.firing("LemonDataTasksFailingLowVolume", model=LOW_VOLUME_MODEL),
        90,
    )

    def paged() -> list[Notification]:
        return [
            n
            for n in live.webhook.notifications
            if n.status == "firing"
            and n.receiver_path == "/critical"
            and n.labels.get("model") == LOW_VOLUME_MODEL
        ]

    # The page is LowVolume's, or the fast burn's when a 5-minute window
    # (5 s here) held a finish; the fast burn then mutes LowVolume.
    note = live.wait("a page for the failing model", paged)[0]
    assert note.labels["alertname"] in (
        "LemonDataTasksFailingLowVolume",
        "LemonDataAvailabilityBudgetBurn",
    )
    live.scenarios.low_volume_failing = False
    live.wait(
        "LowVolume and the fast burn to end",
        lambda: (
            not live.firing("LemonDataTasksFailingLowVolume", model=LOW_VOLUME_MODEL)
            and not live.firing(
                "LemonDataAvailabilityBudgetBurn", model=LOW_VOLUME_MODEL, severity="critical"
            )
        ),
        90,
    )
    resolved = live.notes(note.labels["alertname"], "resolved", model=LOW_VOLUME_MODEL)
    if not resolved:
        live.wait(
            "the page resolved at the webhook",
            lambda: live.notes(note.labels["alertname"], "resolved", model=LOW_VOLUME_MODEL),
        )
    assert not live.firing("LemonDataTasksFailingLowVolume", model=GOOD_MODEL)


def test_a_burst_of_content_policy_failures_pages_no_one(live: Live) -> None:
    live.wait(
        "the info alert for refused prompts",
        lambda: live.firing("LemonDataUserFailuresHigh", model=POLICY_MODEL),
        90,
    )
    info = [
        a
        for a in live.am_alerts("LemonDataUserFailuresHigh")
        if a["labels"].get("model") == POLICY_MODEL
    ]
    assert info and info[0]["receivers"][0]["name"] == "lemondata-null"
    assert not [n for n in live.webhook.notifications if n.labels.get("model") == POLICY_MODEL]
    for alert in ("LemonDataAvailabilityBudgetBurn", "LemonDataTasksFailingLowVolume"):
        ever = live.query(
            f'max_over_time(ALERTS{{alertname="{alert}", model="{POLICY_MODEL}"}}[5m])'
        )
        assert not ever, alert
    ratio = live.query(f'lemondata_slo:availability_errors:ratio_rate1h{{model="{POLICY_MODEL}"}}')
    assert ratio and float(ratio[0]["value"][1]) == 0


def test_a_task_stuck_in_processing_fires_and_resolves(live: Live) -> None:
    live.wait(
        "StuckProcessing fired",
        lambda: live.notes("LemonDataTaskStuckProcessing", "firing", model=STUCK_MODEL),
        60,
    )
    live.wait(
        "StuckProcessing resolved when the task finished",
        lambda: live.notes("LemonDataTaskStuckProcessing", "resolved", model=STUCK_MODEL),
        60,
    )
    assert not live.firing("LemonDataTaskStuckProcessing", model=GOOD_MODEL)
