"""The exporter (a subprocess) with its proxy in front of the simulator."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import requests

from exporter.simulator import Simulator
from tests.harness import ExporterProcess, by_label, free_port, total, wait_for
from tests.harness.fixtures import KEY, exporter_config

pytestmark = pytest.mark.integration  # every test here starts a server

USER_KEY = "sk-application-own-key-9876543210"  # the application's, not the exporter's
MODELS = ("flux-pro", "dall-e-3", "veo-3")


def test_tasks_created_through_the_proxy_are_polled_to_the_end(
    simulator: Simulator,
    tmp_path: Path,
) -> None:
    simulator._keys = frozenset({KEY, USER_KEY})  # two keys of one account
    port = free_port()
    config = exporter_config(simulator.url, tmp_path)
    config["proxy"] = {"enabled": True, "listen_address": f"127.0.0.1:{port}"}
    config["log_level"] = "debug"
    exporter = ExporterProcess(tmp_path, config, KEY).start()
    proxy = f"http://127.0.0.1:{port}"
    created: list[str] = []
    try:
        with requests.Session() as app:
            app.headers["Authorization"] = f"Bearer {USER_KEY}"
            for number in range(24):
                model = MODELS[number % len(MODELS)]
                path = "/v1/videos/generations" if model == "veo-3" else "/v1/images/generations"
                answer = app.post(proxy + path, json={"model": model, "prompt": "p"}, timeout=10)
                assert answer.status_code == 200, answer.text
                created.append(answer.json()["task_id"])
            # Other paths pass through and register nothing.
            status = app.get(f"{proxy}/v1/images/generations/{created[0]}", timeout=10)
            assert status.status_code == 200 and status.json()["task_id"] == created[0]
            refused = requests.post(
                proxy + "/v1/images/generations",
                json={"model": "flux-pro"},
                headers={"Authorization": "Bearer sk-wrong"},
                timeout=10,
            )
            assert refused.status_code == 401  # the caller's key went upstream as it was

        def all_finished() -> bool:
            samples = exporter.metrics()
            return total(samples, "lemondata_tasks_finished_total") == len(created)

        wait_for(all_finished, 90, "every proxied task to finish", every=0.5)
        samples = exporter.metrics()
    finally:
        exporter.terminate()
    truth = [t for t in simulator.ground_truth()]
    assert sorted(str(t["id"]) for t in truth) == sorted(created)
    assert total(samples, "lemondata_tasks_discovered_total", source="proxy") == len(created)
    truth_status = Counter(str(t["status"]) for t in truth)
    finished = {
        k: v for k, v in by_label(samples, "lemondata_tasks_finished_total", "status").items() if v
    }
    assert finished == {status: float(n) for status, n in truth_status.items()}
    by_model = by_label(samples, "lemondata_tasks_finished_total", "model")
    assert {m: n for m, n in by_model.items() if n} == {m: 8.0 for m in MODELS}
    # The application's key is in neither the log (debug level) nor the store.
    assert "proxy POST /v1/images/generations" in exporter.log_text()
    assert USER_KEY not in exporter.log_text()
    for path in tmp_path.glob("store.db*"):
        assert USER_KEY.encode() not in path.read_bytes()
