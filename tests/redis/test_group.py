"""Three replicas sharing one Redis and one simulator; one is SIGKILLed mid-run.

Tasks come in through every entry point (the stream, each replica's proxy, the
task API). Every task must be finished exactly once across the group, the
replicas' counters must add up to the simulator's ground truth, and the group
must stay within one request budget.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from exporter.simulator import Simulator, SimulatorSettings
from tests.harness import (
    ExporterProcess,
    RedisServer,
    Samples,
    by_label,
    free_port,
    total,
    wait_for,
)

KEY = "sk-group-exporter-key-0123456789"
USER_KEY = "sk-group-application-key-987654"
TOKEN = "group-test-api-token-0123456789abcdef"
BUDGET = 30.0  # requests per second, for the whole group
PREFIX = "g:"
STREAM = "g:tasks"
MODELS = (
    ("image", "flux-schnell"),
    ("image", "dall-e-3"),
    ("image", "flux-pro"),
    ("video", "veo-3"),
)
STATUS_KINDS = ("status_image", "status_image_alias", "status_task", "status_video")
FINISHED = ("completed", "failed", "cancelled", "expired", "timeout")


def replica_config(sim_url: str, redis_url: str, name: str, proxy_port: int) -> dict[str, Any]:
    return {
        "api": {"base_url": sim_url, "max_connections": 8, "timeout_seconds": 5},
        "polling": {
            "cycle_interval_seconds": 0.2,
            "task_interval_seconds": 0.3,
            "requests_per_second": BUDGET,
            "max_wait_seconds": 120,
            "backoff_base_seconds": 0.2,
            "backoff_max_seconds": 2,
        },
        "store": {
            "backend": "redis",
            "redis_url": redis_url,
            "redis_prefix": PREFIX,
            "replica_id": name,
            "lease_seconds": 3,
        },
        "discovery": {
            "interval_seconds": 0.2,
            "redis_stream": {"stream": STREAM, "claim_idle_seconds": 2},
        },
        "proxy": {"enabled": True, "listen_address": f"127.0.0.1:{proxy_port}"},
        "log_level": "info",
    }


def status_requests(sim: Simulator) -> int:
    kinds = sim.request_counts()["by_path_kind"]
    return sum(int(kinds.get(kind, 0)) for kind in STATUS_KINDS)


def finished_by(client: redis.Redis) -> dict[str, str | None]:
    """Every task in the store and the replica whose terminal record won."""
    result = {}
    for key in client.scan_iter(match=f"{PREFIX}t:*", count=500):
        result[key.removeprefix(f"{PREFIX}t:")] = client.hget(key, "fb")
    return result


class Entries:
    """Creates tasks on the simulator and hands them in through each entry point."""

    def __init__(
        self,
        sim: Simulator,
        redis_client: redis.Redis,
        replicas: dict[str, ExporterProcess],
        proxies: dict[str, str],
    ) -> None:
        self.sim = sim
        self.proxies = proxies
        self.redis = redis_client
        self.replicas = replicas
        self.created: dict[str, str] = {}  # task ID -> entry point
        self.number = 0

    def next_model(self) -> tuple[str, str]:
        self.number += 1
        return MODELS[self.number % len(MODELS)]

    def _task(self, entry: str) -> dict[str, Any]:
        kind, model = self.next_model()
        task = self.sim.create_task(model=model, kind=kind)  # type: ignore[arg-type]
        self.created[str(task["task_id"])] = entry
        return {"task_id": task["task_id"], "model": model, "poll_url": task["poll_url"]}

    def through_stream(self, count: int) -> None:
        for _ in range(count):
            self.redis.xadd(STREAM, self._task("stream"))

    def through_proxy(self, name: str, count: int) -> None:
        with requests.Session() as app:
            app.headers["Authorization"] = f"Bearer {USER_KEY}"
            for _ in range(count):
                kind, model = self.next_model()
                path = f"/v1/{'videos' if kind == 'video' else 'images'}/generations"
                answer = app.post(self.proxies[name] + path, json={"model": model}, timeout=10)
                assert answer.status_code == 200, answer.text
                self.created[answer.json()["task_id"]] = f"proxy:{name}"

    def through_api(self, name: str, count: int) -> None:
        tasks = [self._task(f"api:{name}") for _ in range(count)]
        answer = requests.post(
            f"{self.replicas[name].url}/api/v1/tasks",
            data=json.dumps({"tasks": tasks}),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            timeout=10,
        )
        assert answer.status_code in (200, 201), answer.text


def leases(client: redis.Redis, owner: str) -> int:
    return sum(
        1 for key in client.scan_iter(match=f"{PREFIX}t:*") if client.hget(key, "o") == owner
    )


def peak_rate(samples: list[tuple[float, int]]) -> float:
    """The highest request rate over any window of at least 4 s."""
    rates = []
    for i, (at, count) in enumerate(samples):
        for later_at, later_count in samples[i + 1 :]:
            if later_at - at >= 4:
                rates.append((later_count - count) / (later_at - at))
                break
    assert rates, samples
    return max(rates)


def summed(scrapes: list[Samples], name: str, label: str) -> Counter[str]:
    result: Counter[str] = Counter()
    for samples in scrapes:
        for value, count in by_label(samples, name, label).items():
            result[value] += int(count)
    return result


def counted_as_won(replicas: dict[str, ExporterProcess], client: redis.Redis) -> Any:
    """Each replica's finished counter equals the terminal records it won."""

    def check() -> dict[str, Samples] | None:
        winners = Counter(finished_by(client).values())
        final = {name: replica.metrics() for name, replica in replicas.items()}
        counted = {name: total(final[name], "lemondata_tasks_finished_total") for name in final}
        return final if all(counted[name] == winners[name] for name in final) else None

    return check


@pytest.mark.integration
def test_three_replicas_finish_every_task_once_within_one_budget(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    sim = Simulator(
        SimulatorSettings(
            port=0, api_keys=(KEY, USER_KEY), time_scale=60, seed=21, rate_limit_per_minute=0
        )
    )
    sim.start()
    replicas: dict[str, ExporterProcess] = {}
    proxies: dict[str, str] = {}
    for name in ("r1", "r2", "r3"):
        workdir = tmp_path / name
        workdir.mkdir()
        port = free_port()
        process = ExporterProcess(
            workdir, replica_config(sim.url, redis_server.url, name, port), KEY
        )
        proxies[name] = f"http://127.0.0.1:{port}"
        process.env["LEMONDATA_EXPORTER_TOKEN"] = TOKEN
        replicas[name] = process
    entries = Entries(sim, redis_client, replicas, proxies)
    created = entries.created
    samples: list[tuple[float, int]] = []

    try:
        for process in replicas.values():
            process.start()
        started = time.monotonic()
        entries.through_stream(30)
        entries.through_proxy("r1", 15)
        entries.through_proxy("r3", 15)
        entries.through_api("r2", 15)
        entries.through_api("r3", 15)
        # Mid-run: r3 holds leases on tasks it is polling, and may have stream
        # entries read but not yet acknowledged.
        wait_for(lambda: leases(redis_client, "r3"), 30, "r3 to hold a lease", every=0.05)
        before_kill = replicas["r3"].metrics()
        replicas["r3"].kill()
        leased_by_r3 = leases(redis_client, "r3")
        entries.through_stream(30)  # only the survivors are there to read these

        def all_done() -> bool:
            samples.append((time.monotonic(), status_requests(sim)))
            truth = sim.ground_truth()
            if len(truth) != len(created) or any(t["status"] not in FINISHED for t in truth):
                return False
            markers = finished_by(redis_client)
            return len(markers) == len(created) and all(markers.values())

        wait_for(all_done, 120, "every task to be finished by the group", every=0.5)
        # Models first known since the start show their zeros in one scrape
        # before their counts (docs/metrics.md); the last counters settle after
        # the last record: wait until each survivor counts what it won.
        survivors = {name: replicas[name] for name in ("r1", "r2")}
        final = wait_for(counted_as_won(survivors, redis_client), 30, "the counters to settle")
    finally:
        for process in replicas.values():
            process.kill()
        sim.stop()
    elapsed = time.monotonic() - started

    # Every task was registered once, whatever the entry point.
    truth = sim.ground_truth()
    assert sorted(str(t["id"]) for t in truth) == sorted(created)
    sources = Counter(entry.split(":")[0] for entry in created.values())
    assert sources == {"stream": 60, "proxy": 30, "api": 30}
    discovered = summed(
        [*final.values(), before_kill], "lemondata_tasks_discovered_total", "source"
    )
    # r3's last scrape may miss a few it added after it; never more than there are.
    assert discovered["proxy"] == 30 and discovered["api"] == 30
    assert discovered["stream"] <= 60

    # Exactly once: one terminal record per task, and each survivor counted exactly
    # the tasks whose record it won.
    markers = finished_by(redis_client)
    winners = Counter(markers.values())
    for name in ("r1", "r2"):
        assert total(final[name], "lemondata_tasks_finished_total") == winners[name]
    assert total(before_kill, "lemondata_tasks_finished_total") <= winners["r3"]
    assert winners["r1"] > 0 and winners["r2"] > 0

    # The group's counters plus what the killed replica finished equal the truth.
    truth_status = Counter(str(t["status"]) for t in truth)
    statuses = summed(list(final.values()), "lemondata_tasks_finished_total", "status")
    for task_id, winner in markers.items():
        if winner == "r3":
            statuses[str(redis_client.hget(f"{PREFIX}t:{task_id}", "st"))] += 1
    assert {k: v for k, v in statuses.items() if v} == dict(truth_status)

    # One budget for the group: no window of 4 s went past it (plus the burst).
    peak = peak_rate(samples)
    assert peak <= BUDGET * 1.1 + BUDGET / 4, f"peak {peak:.1f} req/s over the budget {BUDGET}"
    assert peak >= BUDGET * 0.6, f"peak {peak:.1f} req/s: the budget was never reached"
    print(
        f"group: {len(created)} tasks in {elapsed:.1f} s, finished by {dict(winners)}, "
        f"{leased_by_r3} leased by r3 when it was killed, peak {peak:.1f} req/s "
        f"(budget {BUDGET}), {status_requests(sim)} status requests"
    )
