"""The status page in headless Chromium: it renders live data, and hostile error text stays text.

Skipped when Chromium is missing on a developer's machine; a failure when CI is set.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest
import requests

import exporter.simulator.faults as simulator_faults
from exporter.simulator import Simulator
from tests.api.conftest import chromium_or_skip
from tests.api.test_status_page import Dom
from tests.harness import ExporterProcess, wait_for

pytestmark = pytest.mark.integration

# What a compromised or buggy upstream could send as a task's error: markup that
# would run a script, add an element or close the table if it were not escaped.
HOSTILE = (
    "<script>document.title='pwned';document.body.setAttribute('data-pwned','1')</script>"
    '<img src=x id="injected-img" onerror="document.title=\'pwned\'">'
    '</td></tr></table><h1 id="injected">injected heading</h1>'
    " & more: " + "padding " * 100
)


def chromium(url: str, *mode: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                chromium_or_skip(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                *mode,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_status_page_in_chromium(
    sim: Simulator,
    exporter: ExporterProcess,
    client: requests.Session,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    chromium_or_skip()
    # The simulator's own hostile-error fault, with our text as its only choice.
    monkeypatch.setattr(simulator_faults, "HOSTILE_ERRORS", (HOSTILE,))
    sim.set_faults({"hostile_error_text": {"probability": 1.0, "huge_probability": 0.0}})
    try:
        failing = sim.create_task(model="dall-e-3", reason="unknown", pending_seconds=1)
        waiting = sim.create_task(model="flux-pro", pending_seconds=3600)
        tasks = [
            {"task_id": failing["task_id"], "model": "dall-e-3", "poll_url": failing["poll_url"]},
            {"task_id": waiting["task_id"], "model": "flux-pro"},
        ]
        url = f"{exporter.url}/api/v1/tasks"
        assert client.post(url, json={"tasks": tasks}, timeout=5).status_code == 201
        detail = wait_for(
            lambda: (
                (d := client.get(f"{url}/{failing['task_id']}", timeout=5).json())["status"]
                == "failed"
                and d
            ),
            30,
            "the failing task to fail",
        )
    finally:
        sim.set_faults({})
    assert detail["error_message"] == HOSTILE  # the API gives it whole

    dom_text = chromium(f"{exporter.url}/status", "--dump-dom")
    dom = Dom(dom_text)
    visible = "".join(dom.text)
    # It renders, with live data: both registered tasks are on it.
    assert "Task status" in visible and "Tasks by status" in visible
    assert str(waiting["task_id"]) in visible and str(failing["task_id"]) in visible
    assert "In flight" in visible and "dall-e-3" in visible
    # The hostile text is text: visible as written (cut), no element came from it.
    assert "<script>document.title='pwned'" in visible
    assert '<h1 id="injected">injected heading</h1>' in visible
    assert "\u2026" in visible and "padding " * 40 not in visible
    assert "script" not in dom.tags()
    assert "img" not in dom.tags()
    assert not {"injected", "injected-img"} & dom.ids()
    assert "pwned" not in dom_text.split("<title>")[1].split("</title>")[0]
    assert not any("data-pwned" in attrs for _, attrs in dom.elements)
    assert sum(1 for tag, _ in dom.elements if tag == "h1") == 1

    # And it draws: a screenshot of a real page, not an error page.
    shot = tmp_path / "status.png"
    chromium(f"{exporter.url}/status", f"--screenshot={shot}", "--window-size=1200,1400")
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 20_000

    # The landing page links to it.
    landing = Dom(chromium(f"{exporter.url}/", "--dump-dom"))
    assert any(attrs.get("href") == "status" for tag, attrs in landing.elements if tag == "a")
    client.delete(f"{url}/{waiting['task_id']}", timeout=5)
