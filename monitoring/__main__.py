"""Render the monitoring bundle: `python -m monitoring [--config FILE] [--out DIR] [--check]`.

Writes, under DIR (default: the repository root):

- prometheus/rules/*.yml         recording and alerting rules (monitoring/rules.py)
- prometheus/tests/*.yml         their promtool unit tests (monitoring/rule_tests.py)
- alertmanager/alertmanager.yml  routing and inhibition (monitoring/alertmanager.py)
- dashboards/*.json              the dashboards (monitoring/dashboards.py, when present)
- deploy/kubernetes/base/prometheusrule.yaml, dashboards.yaml   (monitoring/kubernetes.py)

from the knobs in FILE (YAML, see monitoring/config.py; defaults without it).
With --check nothing is written: it exits 1 and names every file under DIR that
differs from a fresh render.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from monitoring import alertmanager, kubernetes, rule_tests, rules
from monitoring.config import BundleConfig, BundleConfigError, load

REPO = Path(__file__).resolve().parents[1]

Renderer = Callable[[BundleConfig], dict[str, str]]


def dashboards_renderer() -> Renderer | None:
    """The dashboards' `render`, when monitoring/dashboards.py provides one."""
    try:
        from monitoring import dashboards
    except ModuleNotFoundError as exc:
        if exc.name != "monitoring.dashboards":
            raise  # a dependency of the dashboards is missing: say so
        return None
    render: Renderer | None = getattr(dashboards, "render", None)
    return render


def committed_dashboards(root: Path = REPO) -> dict[str, str]:
    """dashboards/*.json as committed: what the ConfigMaps hold without a dashboards render."""
    return {
        f"{kubernetes.DASHBOARDS_DIR}/{path.name}": path.read_text(encoding="utf-8")
        for path in sorted((root / kubernetes.DASHBOARDS_DIR).glob("*.json"))
    }


def render(config: BundleConfig) -> dict[str, str]:
    """Every file of the bundle: path relative to the output root -> text."""
    files: dict[str, str] = {}
    rule_files = rules.render(config)
    files.update(rule_files)
    files.update(rule_tests.render(config))
    files.update(alertmanager.render(config))
    render_dashboards = dashboards_renderer()
    # Hook: once monitoring/dashboards.py has `render`, the dashboards and their
    # ConfigMaps follow the config too; until then the ConfigMaps hold the
    # committed dashboards, unchanged.
    dashboard_files = render_dashboards(config) if render_dashboards else {}
    files.update(dashboard_files)
    files.update(
        kubernetes.render(
            rule_files, dashboard_files or committed_dashboards(), config.grafana_folder
        )
    )
    return files


def stale(files: dict[str, str], out: Path) -> list[str]:
    return kubernetes.stale_files(files, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monitoring",
        description="Render the monitoring bundle (rules, their tests, Alertmanager "
        "configuration, dashboards, Kubernetes objects) from one config.",
    )
    parser.add_argument("--config", type=Path, help="bundle config (YAML); defaults without")
    parser.add_argument("--out", type=Path, default=REPO, help="output root (default: the repo)")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 naming files that differ"
    )
    args = parser.parse_args(argv)
    try:
        config = load(args.config)
        files = render(config)
    except (BundleConfigError, rules.RuleConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        differing = stale(files, args.out)
        for relative in differing:
            print(f"differs from a fresh render: {relative}", file=sys.stderr)
        if differing:
            print("render again: python -m monitoring", file=sys.stderr)
        return 1 if differing else 0
    for relative, text in files.items():
        target = args.out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"wrote {relative}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
