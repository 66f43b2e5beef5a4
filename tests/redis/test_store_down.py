"""Redis goes away under a running exporter and comes back: /metrics keeps
answering with lemondata_store_up 0, health and the task API say why with
503 (liveness stays 200: a restart would not help), and everything resumes
by itself once Redis is back."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from exporter.api.auth import TOKEN_ENV
from tests.api.support import AUTH, TOKEN
from tests.hardening.support import KEY
from tests.harness import ExporterProcess, RedisServer, require_redis_server, total, wait_for

pytestmark = pytest.mark.integration


def register(exporter: ExporterProcess, *ids: str) -> requests.Response:
    body = {"tasks": [{"task_id": task_id} for task_id in ids]}
    return requests.post(f"{exporter.url}/api/v1/tasks", json=body, headers=AUTH, timeout=10)


def health(exporter: ExporterProcess, path: str = "/-/healthy") -> requests.Response:
    return requests.get(f"{exporter.url}{path}", timeout=5)


def test_redis_down_and_back(tmp_path: Path) -> None:
    require_redis_server()
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis").start()
    config = {
        "api": {"base_url": "http://127.0.0.1:9", "timeout_seconds": 1},
        "polling": {"cycle_interval_seconds": 0.2, "task_interval_seconds": 0.5},
        "store": {"backend": "redis", "redis_url": server.url, "lease_seconds": 5},
        "log_level": "info",
    }
    exporter = ExporterProcess(tmp_path, config, KEY)
    exporter.env[TOKEN_ENV] = TOKEN
    exporter.start()
    try:
        assert register(exporter, "task-1", "task-2").status_code == 201
        server.stop()
        wait_for(lambda: health(exporter).status_code == 503, 30, "health 503 without Redis")
        assert "Redis" in health(exporter).text or "redis" in health(exporter).text
        metrics = requests.get(f"{exporter.url}/metrics", timeout=10)
        assert metrics.status_code == 200
        assert "process_resident_memory_bytes" in metrics.text
        assert total(exporter.metrics(), "lemondata_store_up") == 0
        answer = register(exporter, "task-3")
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "store_unavailable"
        assert requests.get(f"{exporter.url}/-/ready", timeout=5).status_code == 503
        # A restart cannot bring Redis back: the liveness probe's path stays 200.
        assert health(exporter, "/-/live").status_code == 200

        server.start()
        wait_for(lambda: health(exporter).status_code == 200, 60, "health back with Redis")
        assert total(exporter.metrics(), "lemondata_store_up") == 1
        assert register(exporter, "task-4").status_code == 201
        log = exporter.log_text()
        assert "Traceback" not in log, log[-3000:]
        assert len([line for line in log.splitlines() if "task store" in line]) <= 6, log
    finally:
        exporter.terminate()
        server.stop()
