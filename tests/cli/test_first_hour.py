"""What a new operator meets in the first hour of `run`: watched files and the landing page."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pytest
import requests

from exporter.simulator import Simulator, SimulatorSettings
from tests.harness import ExporterProcess, total, wait_for

pytestmark = pytest.mark.integration
KEY = "sk-first-hour"
TOKEN = "token-first-hour-0123456789"


def config(tmp_path: Path, base_url: str = "http://127.0.0.1:9", **extra: Any) -> dict[str, Any]:
    return {
        "api": {"base_url": base_url},
        "polling": {"cycle_interval_seconds": 0.2, "task_interval_seconds": 0.5},
        "store": {"path": str(tmp_path / "store.db")},
        "discovery": {"interval_seconds": 0.2},
        **extra,
    }


def test_a_missing_watched_file_is_reported_once_and_counted(tmp_path: Path) -> None:
    missing = tmp_path / "taks.jsonl"  # a typo
    bad = tmp_path / "bad.jsonl"
    bad.write_text("# header\n\nnot a valid id!\n")
    files = [{"path": str(missing)}, {"path": str(bad), "name": "bad"}]
    exporter = ExporterProcess(
        tmp_path, config(tmp_path, discovery={"interval_seconds": 0.2, "files": files}), KEY
    ).start()
    try:
        wait_for(
            lambda: (
                total(exporter.metrics(), "lemondata_discovery_errors_total", source="bad") >= 1
            ),
            30,
            "the bad line counted",
        )
        samples = exporter.metrics()
        # Discovery keeps running (cycles pass); the missing file stays reported once.
        cycles = total(samples, "lemondata_poll_cycles_total")
        wait_for(
            lambda: total(exporter.metrics(), "lemondata_poll_cycles_total") >= cycles + 5,
            30,
            "more cycles",
        )
        samples = exporter.metrics()
    finally:
        assert exporter.terminate() == 0
    assert total(samples, "lemondata_discovery_errors_total", source="file") == 1
    assert total(samples, "lemondata_discovery_errors_total", source="bad") == 1
    log = exporter.log_text()
    assert log.count(f"{missing} does not exist") == 1
    assert (
        f"discovery file: {missing} does not exist; tasks appended to it are read once it "
        "appears (is the path in discovery.files right?)"
    ) in log
    assert f"discovery bad: {bad}: line 3: not a valid task ID" in log


def _hint(page: str) -> str:
    start = page.find('<p class="hint">')
    return page[start : page.index("</p>", start)] if start >= 0 else ""


def test_the_landing_hint_names_what_is_configured(tmp_path: Path) -> None:
    watched = tmp_path / "tasks.jsonl"
    settings = config(
        tmp_path,
        discovery={"interval_seconds": 0.2, "files": [{"path": str(watched)}]},
        proxy={"enabled": True, "listen_address": "127.0.0.1:0"},
    )
    exporter = ExporterProcess(tmp_path, settings, KEY)
    exporter.env["LEMONDATA_EXPORTER_TOKEN"] = TOKEN
    exporter.start()
    try:
        hint = _hint(requests.get(f"{exporter.url}/", timeout=5).text)
    finally:
        assert exporter.terminate() == 0
    assert "`" not in hint
    assert html.unescape(hint) == (
        '<p class="hint"><strong>No tasks are tracked yet, so task metrics will not move. '
        f"Tasks come from the file <code>{watched}</code> (it does not exist yet), create calls "
        "through the proxy on <code>127.0.0.1:0</code> and the task API "
        "(<code>lemondata-exporter track ID</code> or POST /api/v1/tasks); they show here "
        "once your application adds some.</strong>"
    )


def test_no_source_at_all_says_how_to_add_one(tmp_path: Path) -> None:
    exporter = ExporterProcess(tmp_path, config(tmp_path), KEY).start()
    try:
        hint = _hint(requests.get(f"{exporter.url}/", timeout=5).text)
    finally:
        assert exporter.terminate() == 0
    assert "nothing is configured to add any" in hint
    assert "<code>discovery.files</code>" in hint and "<code>proxy.enabled: true</code>" in hint


def test_no_hint_once_the_configured_tasks_have_finished(tmp_path: Path) -> None:
    simulator = Simulator(
        SimulatorSettings(port=0, api_keys=(KEY,), time_scale=600.0, seed=5, lost_fraction=0.0)
    )
    simulator.start()
    try:
        task = simulator.create_task(model="flux-schnell", kind="image")
        tasks = [{"id": str(task["task_id"]), "poll_url": str(task["poll_url"])}]
        exporter = ExporterProcess(tmp_path, config(tmp_path, simulator.url, tasks=tasks), KEY)
        exporter.start()
        try:
            wait_for(
                lambda: total(exporter.metrics(), "lemondata_tasks_finished_total") == 1,
                30,
                "the task finished",
            )
            page = requests.get(f"{exporter.url}/", timeout=5).text
        finally:
            assert exporter.terminate() == 0
    finally:
        simulator.stop()
    assert _hint(page) == ""
    assert "No tasks are tracked" not in exporter.log_text()
