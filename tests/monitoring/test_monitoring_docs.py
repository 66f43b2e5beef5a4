"""docs/runbook.md and docs/monitoring.md cover every alert, and their links resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.monitoring.support import MONITORING_DOC, RUNBOOK, alerts, recorded_names

ALERT_NAMES = [alert["alert"] for alert in alerts()]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", markdown, re.M)}


@pytest.mark.parametrize("name", ALERT_NAMES)
def test_runbook_has_a_section_per_alert(name: str) -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    assert name.lower() in anchors(text)
    section = text.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
    for part in ("**Meaning.**", "**Check.**", "**Act.**"):
        assert part in section, f"{name}: no {part}"


def test_runbook_threshold_table_lists_every_alert() -> None:
    table = RUNBOOK.read_text(encoding="utf-8").split("## Thresholds", 1)[1].split("\n## ")[0]
    for name in ALERT_NAMES:
        assert f"[{name}](#{name.lower()})" in table


def test_monitoring_doc_lists_every_alert_with_its_runbook_link() -> None:
    text = MONITORING_DOC.read_text(encoding="utf-8")
    for name in ALERT_NAMES:
        assert f"[{name}](runbook.md#{name.lower()})" in text


@pytest.mark.parametrize("doc", [RUNBOOK, MONITORING_DOC], ids=lambda p: p.name)
def test_links_resolve(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)]+)\)", text):
        if target.startswith("http"):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part) if file_part else doc
        assert linked.exists(), f"{doc.name}: {target}"
        if anchor:
            assert anchor in anchors(linked.read_text(encoding="utf-8")), f"{doc.name}: {target}"


def test_monitoring_doc_names_every_recording_rule() -> None:
    text = MONITORING_DOC.read_text(encoding="utf-8")
    for name in recorded_names():
        assert f"`{name}`" in text, name
