"""Several accounts through the real path: the agent (a subprocess) with three keys
against the simulator serving them as separate accounts.

team-a polls freely; team-b's key has a tiny limit of its own (3 requests a
minute, which its loop keeps to from the X-RateLimit headers); team-c's key
is revoked (401). team-a's tasks
must finish as if the others were not there, and every account's series must
carry its own `account` label.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from exporter.simulator import Simulator, SimulatorSettings
from exporter.track import track_task
from tests.harness import ExporterProcess, by_label, free_port, parse_metrics, total, wait_for
from tests.harness.fixtures import TIME_SCALE, exporter_config

pytestmark = pytest.mark.integration  # every test here starts servers

KEYS = {
    "team-a": "sk-accounts-team-a-0123456789",
    "team-b": "sk-accounts-team-b-0123456789",
    "team-c": "sk-accounts-team-c-0123456789",
}
STRANGER = "sk-accounts-not-configured-01234"  # the simulator takes it; the exporter does not
TOKEN = "task-api-token-for-the-accounts-test"
FINISHED = ("completed", "failed", "cancelled", "expired")
MODELS = (("image", "flux-pro"), ("image", "dall-e-3"), ("video", "veo-3"))


@pytest.fixture
def accounts_simulator() -> Iterator[Simulator]:
    sim = Simulator(
        SimulatorSettings(
            port=0,
            api_keys=(*KEYS.values(), STRANGER),
            time_scale=TIME_SCALE,
            seed=17,
            lost_fraction=0.0,
            rate_limit_per_minute=0,  # the stranger: no limit
            # Each team's key is an account of its own; only team-b's is limited.
            key_limits={KEYS["team-a"]: 0, KEYS["team-b"]: 3, KEYS["team-c"]: 0},
        )
    )
    sim.start()
    yield sim
    sim.stop()


def config(sim: Simulator, workdir: Path, proxy_port: int) -> dict[str, Any]:
    settings = exporter_config(sim.url, workdir, requests_per_second=50)
    settings["accounts"] = [
        {"name": name, "key_env": f"KEY_{name.upper().replace('-', '_')}"} for name in KEYS
    ]
    settings["discovery"]["files"] = [
        {"path": str(workdir / f"{name}.jsonl"), "name": name.replace("-", "_"), "account": name}
        for name in ("team-a", "team-b")
    ]
    settings["proxy"] = {"enabled": True, "listen_address": f"127.0.0.1:{proxy_port}"}
    return settings


def create(sim: Simulator, account: str, count: int) -> list[dict[str, Any]]:
    tasks = []
    for number in range(count):
        kind, model = MODELS[number % len(MODELS)]
        created = sim.create_task(model=model, kind=kind, key=KEYS[account])
        tasks.append(
            {"task_id": created["task_id"], "model": model, "poll_url": created["poll_url"]}
        )
    return tasks


def append(path: Path, tasks: list[dict[str, Any]]) -> None:
    with path.open("a") as handle:
        for task in tasks:
            handle.write(json.dumps(task) + "\n")


def register(exporter: ExporterProcess, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{exporter.url}/api/v1/tasks",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )


def test_one_account_in_trouble_never_slows_another(
    accounts_simulator: Simulator, tmp_path: Path
) -> None:
    sim = accounts_simulator
    proxy_port = free_port()
    exporter = ExporterProcess(tmp_path, config(sim, tmp_path, proxy_port))
    exporter.env["LEMONDATA_EXPORTER_TOKEN"] = TOKEN
    for name, key in KEYS.items():
        exporter.env[f"KEY_{name.upper().replace('-', '_')}"] = key
    sim.revoke_key(KEYS["team-c"])
    exporter.start()
    try:
        # team-a: half from its file, half over the task API naming the account.
        team_a = create(sim, "team-a", 40)
        append(tmp_path / "team-a.jsonl", team_a[:20])
        added = register(exporter, {"tasks": [{**t, "account": "team-a"} for t in team_a[20:]]})
        assert added.status_code == 201, added.text
        team_b = create(sim, "team-b", 10)
        append(tmp_path / "team-b.jsonl", team_b)
        team_c = create(sim, "team-c", 10)
        assert register(exporter, {"tasks": [{**t, "account": "team-c"} for t in team_c[1:]]}).ok
        # The `track` client names the account too.
        tracked_c = str(team_c[0]["task_id"])
        assert track_task(tracked_c, account="team-c", url=exporter.url, token=TOKEN)
        # An account nobody configured is refused, and says which field.
        refused = register(exporter, {"task_id": "img_x", "account": "team-z"})
        assert refused.status_code == 400
        assert refused.json()["error"] == {
            "code": "unknown_account",
            "message": "account: not one of the configured accounts",
        }
        # The proxy: a create call with team-b's key registers its task under team-b;
        # one with a key of no configured account is forwarded, its task not tracked.
        proxy = f"http://127.0.0.1:{proxy_port}/v1/images/generations"
        by_b = requests.post(
            proxy,
            json={"model": "flux-pro", "prompt": "x"},
            headers={"Authorization": f"Bearer {KEYS['team-b']}"},
            timeout=10,
        )
        by_stranger = requests.post(
            proxy,
            json={"model": "flux-pro", "prompt": "x"},
            headers={"Authorization": f"Bearer {STRANGER}"},
            timeout=10,
        )
        assert by_b.status_code == 200 and by_stranger.status_code == 200
        assert (
            by_stranger.json()["task_id"] != by_b.json()["task_id"]
        )  # the stranger got its answer
        a_ids = {t["task_id"] for t in team_a}

        def team_a_done() -> bool:
            truth = [t for t in sim.ground_truth() if t["id"] in a_ids]
            if sum(1 for t in truth if t["status"] in FINISHED) < len(a_ids):
                return False
            samples = exporter.metrics()
            return total(samples, "lemondata_tasks_finished_total", account="team-a") == len(a_ids)

        wait_for(team_a_done, 90, "team-a's tasks to finish and be counted", every=0.5)
        proxied = requests.get(
            f"{exporter.url}/api/v1/tasks/{by_b.json()['task_id']}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=5,
        )
        by_track = requests.get(
            f"{exporter.url}/api/v1/tasks/{tracked_c}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=5,
        )
        stranger = requests.get(
            f"{exporter.url}/api/v1/tasks/{by_stranger.json()['task_id']}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=5,
        )
        wait_for(
            lambda: (
                total(
                    exporter.metrics(),
                    "lemondata_poll_allowed_requests_per_second",
                    account="team-b",
                )
                < 1
            ),
            30,
            "team-b to keep to its own small limit",
        )
        text = exporter.metrics_text()
        healthy = requests.get(f"{exporter.url}/-/healthy", timeout=5)
    finally:
        exporter.terminate()
    samples = parse_metrics(text)
    assert proxied.status_code == 200 and proxied.json()["account"] == "team-b"
    assert stranger.status_code == 404
    assert by_track.status_code == 200 and by_track.json()["account"] == "team-c"
    assert total(samples, "lemondata_proxy_unmatched_key_creates_total") == 1
    assert total(samples, "lemondata_tasks_rejected_total", source="api", reason="account") == 1
    # team-a: every task seen finishing, at its own pace: no 429 or 401 of its own, and
    # finishes seen within a few of its polls (task_interval_seconds 0.5; about 0.3 s
    # on average here), far below the minute team-b waits for its window.
    requests_a = by_label_where(samples, "lemondata_api_requests_total", "code", account="team-a")
    assert requests_a.get("429", 0) == 0 and requests_a.get("401", 0) == 0
    detected = total(samples, "lemondata_task_detection_delay_seconds_count", account="team-a")
    assert detected > 0
    mean_delay = (
        total(samples, "lemondata_task_detection_delay_seconds_sum", account="team-a") / detected
    )
    assert mean_delay < 5.0, mean_delay
    assert total(samples, "lemondata_api_account_state", account="team-a", state="ok") == 1
    # team-b keeps to its own small limit (X-RateLimit headers: 3 a minute) and team-a
    # to its budget; team-c's key is rejected, none of its tasks finished.
    allowed = by_label(samples, "lemondata_poll_allowed_requests_per_second", "account")
    assert allowed["team-b"] < 1 and allowed["team-a"] == 50, allowed
    assert total(samples, "lemondata_api_rate_limit_limit", account="team-b") == 3
    assert total(samples, "lemondata_api_requests_total", account="team-c", code="401") > 0
    assert (
        total(samples, "lemondata_api_account_state", account="team-c", state="key_rejected") == 1
    )
    assert total(samples, "lemondata_tasks_finished_total", account="team-c") == 0
    assert total(samples, "lemondata_poll_budget_requests_per_second", account="team-b") == 50
    # Every per-account series carries one of the configured names; shared ones none.
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("lemondata_api_requests", "lemondata_tasks_finished", "lemondata_api_up"):
        accounts = {s.labels.get("account") for s in families[name].samples}
        assert accounts <= set(KEYS) and "team-a" in accounts, (name, accounts)
    assert all("account" not in s.labels for s in families["lemondata_tasks_discovered"].samples)
    assert by_label(samples, "lemondata_tasks_discovered_total", "source")["team_a"] == 20
    # The store's gauge, per account: team-b's 10 from its file and 1 from the proxy.
    tracked = by_label(samples, "lemondata_tasks", "account")
    assert tracked == {"team-a": 40, "team-b": 11, "team-c": 10}, tracked
    assert total(samples, "lemondata_tasks", account="team-c", status="unknown") == 10
    assert healthy.status_code == 200, healthy.text
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result
    log = exporter.log_text()
    assert "account team-c: the API rejects the API key" in log
    assert not any(key in log for key in (*KEYS.values(), STRANGER))


def by_label_where(samples: Any, name: str, label: str, **where: str) -> dict[str, float]:
    result: dict[str, float] = {}
    for (sample_name, labels), value in samples.items():
        found = dict(labels)
        if sample_name == name and all(found.get(k) == v for k, v in where.items()):
            result[found[label]] = result.get(found[label], 0.0) + value
    return result
