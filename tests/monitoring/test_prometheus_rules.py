"""The rules: one source, promtool checks and unit tests, conventions, knobs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring import rule_tests, rules
from monitoring.__main__ import render
from monitoring.config import SLO, BundleConfig
from tests.monitoring.support import (
    PROMETHEUS_CONFIG,
    REPO,
    RULE_TESTS_DIR,
    RUNBOOK_BASE,
    alerts,
    documented_metrics,
    load_yaml,
    metric_names,
    recorded_names,
    require_tool,
    rule_files,
)
from tests.monitoring.support import (
    rules as all_rules,
)

PROMTOOL_HINT = "Debian package prometheus"

# Knobs a user might change, all at once: another selector and topology,
# other thresholds, `for:` and objectives, a dashboard link.
CUSTOM = BundleConfig(
    selector='job="ld-prod", team="ml"',
    topology_labels=("cluster", "namespace", "job", "team"),
    multi_cluster=True,
    runbook_url_pattern="https://wiki.example.com/runbooks/{alert}",
    dashboard_url="https://grafana.example.com/d/lemondata",
    thresholds={
        "api_down_seconds": 600,
        "poll_lag_seconds": 120,
        "low_volume_min_errors": 8,
        "stuck_no_history_seconds": 1800,
        "api_latency_p95_seconds": 1,
        "restarts": 4,
        "user_failure_ratio": 0.7,
    },
    for_durations={"LemonDataAPIKeyRejected": "10m", "burn_1h": "5m", "LemonDataAPIDown": "3m"},
    slo=SLO(availability_objective=0.995, latency_objective=0.97, latency_threshold_seconds=60),
)


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    tool = require_tool("promtool", hint=PROMTOOL_HINT)
    return subprocess.run(
        [tool, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def promtool_test_files(files: list[Path], cwd: Path) -> None:
    """`promtool test rules`, one process per file, side by side (the SLO files take a while)."""
    tool = require_tool("promtool", hint=PROMTOOL_HINT)
    procs = [
        subprocess.Popen(
            [tool, "test", "rules", str(path)],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for path in files
    ]
    failures = []
    for path, proc in zip(files, procs, strict=True):
        output, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            failures.append(f"{path.name}:\n{output[-6000:]}")
    assert not failures, "\n".join(failures)


def write(files: dict[str, str], root: Path) -> None:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text, encoding="utf-8")


# ---- one source --------------------------------------------------------------------------


def test_committed_files_equal_a_fresh_render() -> None:
    files = render(BundleConfig())
    stale = [path for path, text in files.items() if (REPO / path).read_text("utf-8") != text]
    assert not stale, f"differ from a fresh render: {stale}; run `python -m monitoring`"
    rendered_tests = {p for p in files if p.startswith("prometheus/tests/")}
    committed_tests = {str(p.relative_to(REPO)) for p in RULE_TESTS_DIR.glob("*.yml")}
    assert committed_tests == rendered_tests


@pytest.mark.integration
def test_check_names_a_file_that_differs(tmp_path: Path) -> None:
    write(render(BundleConfig()), tmp_path)
    run = [sys.executable, "-m", "monitoring", "--out", str(tmp_path), "--check"]
    clean = subprocess.run(run, cwd=REPO, capture_output=True, text=True, check=False)
    assert clean.returncode == 0, clean.stderr
    edited = tmp_path / rules.ALERTS_FILE
    edited.write_text(edited.read_text("utf-8").replace("for: 5m", "for: 6m", 1), "utf-8")
    stale = subprocess.run(run, cwd=REPO, capture_output=True, text=True, check=False)
    assert stale.returncode == 1
    assert rules.ALERTS_FILE in stale.stderr
    assert rules.RECORDING_FILE not in stale.stderr


@pytest.mark.integration
def test_a_config_file_changes_the_render(tmp_path: Path) -> None:
    knobs = tmp_path / "bundle.yaml"
    knobs.write_text(
        yaml.safe_dump({"selector": 'job="ld-prod"', "thresholds": {"poll_lag_seconds": 99}})
    )
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "monitoring", "--config", str(knobs), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    text = (out / rules.ALERTS_FILE).read_text("utf-8")
    assert 'lemondata_poll_lag_seconds{job="ld-prod"}) > 99' in text
    prometheus_rule = (out / "deploy/kubernetes/base/prometheusrule.yaml").read_text("utf-8")
    assert 'job="ld-prod"' in prometheus_rule


@pytest.mark.integration
def test_unknown_knobs_are_refused(tmp_path: Path) -> None:
    knobs = tmp_path / "bundle.yaml"
    knobs.write_text(yaml.safe_dump({"thresholds": {"poll_lag": 99}}))
    result = subprocess.run(
        [sys.executable, "-m", "monitoring", "--config", str(knobs), "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "poll_lag" in result.stderr


# ---- promtool ------------------------------------------------------------------------------


@pytest.mark.integration
def test_promtool_check_rules() -> None:
    files = [str(path.relative_to(REPO)) for path in rule_files()]
    assert files, "no rule files in prometheus/rules"
    result = promtool("check", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_promtool_check_config() -> None:
    result = promtool("check", "config", str(PROMETHEUS_CONFIG.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_promtool_unit_tests() -> None:
    files = sorted(RULE_TESTS_DIR.glob("*.yml"))
    assert files, "no promtool tests in prometheus/tests"
    promtool_test_files(files, REPO)


@pytest.mark.integration
def test_non_default_knobs_pass_promtool_and_their_own_tests(tmp_path: Path) -> None:
    files = render(CUSTOM)
    write(files, tmp_path)
    rule_paths = [str(tmp_path / path) for path in rules.RULE_FILES]
    result = promtool("check", "rules", *rule_paths)
    assert result.returncode == 0, result.stdout + result.stderr
    promtool_test_files(sorted((tmp_path / "prometheus/tests").glob("*.yml")), tmp_path)


def _aggregations(expr: str) -> list[str]:
    return re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr)


@pytest.mark.parametrize("config", [BundleConfig(), CUSTOM], ids=["default", "custom"])
def test_aggregations_keep_the_topology(config: BundleConfig) -> None:
    for group in (*rules.Rules(config).recording_groups(), *rules.Rules(config).alerting_groups()):
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            for labels in _aggregations(rule["expr"]):
                kept = {label.strip() for label in labels.split(",")}
                assert set(config.topology_labels) <= kept, f"{name}: by ({labels})"
            assert "without" not in rule["expr"], name


def test_custom_selector_is_in_every_selector() -> None:
    """Raw and recorded series alike: two bundles with their own selectors in one
    Prometheus never read (and record again) each other's series."""
    groups = rules.Rules(CUSTOM).recording_groups() + rules.Rules(CUSTOM).alerting_groups()
    recorded = {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}
    series = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)(\{[^}]*\})?")
    for group in groups:
        for rule in group["rules"]:
            for metric, matchers in series.findall(rule["expr"]):
                if metric in recorded or metric.startswith("lemondata_") or metric == "up":
                    assert matchers.startswith('{job="ld-prod", team="ml"'), (metric, rule)


def test_labels_of_the_selector_are_kept_by_recording_rules() -> None:
    config = BundleConfig(selector='tenant="a", job=~"ld.*"', topology_labels=("job",))
    assert rules.selector_labels('a="x=y", b!~"c", job="j"') == ("a", "b", "job")
    assert rules.Rules(config).topology == ("job", "tenant")


def test_custom_annotations() -> None:
    for rule in (r for g in rules.Rules(CUSTOM).alerting_groups() for r in g["rules"]):
        annotations = rule["annotations"]
        assert annotations["runbook_url"] == f"https://wiki.example.com/runbooks/{rule['alert']}"
        assert annotations["dashboard_url"] == "https://grafana.example.com/d/lemondata"


def test_shortened_rules_keep_names_and_divide_windows() -> None:
    normal = rules.build(BundleConfig())
    short = rules.build(BundleConfig(), shorten=60)
    for path, groups in normal.items():
        for group, short_group in zip(groups, short[path], strict=True):
            for rule, short_rule in zip(group["rules"], short_group["rules"], strict=True):
                assert rule.get("alert") == short_rule.get("alert")
                assert rule.get("record") == short_rule.get("record")
    fast = next(
        r
        for g in short[rules.ALERTS_FILE]
        for r in g["rules"]
        if r["alert"] == "LemonDataAPIKeyRejected"
    )
    assert fast["for"] == "5s"
    record = next(
        r
        for g in short[rules.RECORDING_FILE]
        for r in g["rules"]
        if r["record"] == "lemondata_slo:availability_errors:ratio_rate1h"
    )
    assert "[1m]" in record["expr"]


# ---- conventions ------------------------------------------------------------------------


def test_prometheus_config_loads_every_rule_file() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    patterns = config["rule_files"]
    loaded = {path for pattern in patterns for path in PROMETHEUS_CONFIG.parent.glob(pattern)}
    assert loaded == set(rule_files())


@pytest.mark.parametrize("alert", alerts(), ids=lambda rule: rule["alert"])
def test_alert_conventions(alert: dict[str, Any]) -> None:
    name = str(alert["alert"])
    assert re.fullmatch(r"LemonData[A-Z][A-Za-z]+", name)
    labels = alert["labels"]
    assert labels.get("severity") in ("critical", "warning", "info")
    annotations = alert["annotations"]
    for key in ("summary", "description"):
        assert len(str(annotations.get(key, "")).split()) >= 4, f"{name}: {key} too short"
    assert annotations.get("runbook_url") == RUNBOOK_BASE + name.lower()
    assert "for" in alert, f"{name} needs a for: duration"
    # Values are shown by the dashboards; annotations say what crossed which line.
    assert "$value" not in str(annotations)


def test_alert_rules_are_unique() -> None:
    keys = [(a["alert"], a["labels"].get("severity"), a["labels"].get("long")) for a in alerts()]
    assert len(keys) == len(set(keys))


def test_every_knob_is_listed_at_the_top_of_the_alerts_file() -> None:
    header = (REPO / rules.ALERTS_FILE).read_text("utf-8").split("groups:", 1)[0]
    for knob in (*rules.THRESHOLDS, *rules.FOR_DURATIONS):
        assert f"#   {knob} = " in header, knob


def _unit_cases() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    cases = []
    for path in sorted(RULE_TESTS_DIR.glob("*.yml")):
        for test in load_yaml(path)["tests"]:
            cases.extend((test, case) for case in test.get("alert_rule_test", []))
    return cases


def _rule_key(rule: dict[str, Any]) -> str:
    long = rule["labels"].get("long")
    severity = rule["labels"]["severity"]
    return f"{rule['alert']}/{long}" if long else f"{rule['alert']}/{severity}"


@pytest.mark.parametrize("alert", alerts(), ids=_rule_key)
def test_every_alert_rule_has_a_firing_and_a_quiet_unit_test(alert: dict[str, Any]) -> None:
    def selects(expected: dict[str, Any]) -> bool:
        labels = expected["exp_labels"]
        return all(labels.get(k) == v for k, v in alert["labels"].items())

    cases = [case for _, case in _unit_cases() if case["alertname"] == alert["alert"]]
    assert any(any(selects(e) for e in case.get("exp_alerts") or []) for case in cases), (
        "no test where it fires"
    )
    assert any(not any(selects(e) for e in case.get("exp_alerts") or []) for case in cases), (
        "no test where it stays quiet"
    )


def test_every_burn_window_pair_has_its_three_cases() -> None:
    names = [test["name"] for test, _ in _unit_cases()]
    for sli in ("Availability", "Latency"):
        for burn in rules.BURN_WINDOWS:
            pair = f"LemonData{sli}BudgetBurn {burn.long}/{burn.short}:"
            assert sum(name.startswith(pair) for name in set(names)) == 3, pair


def test_rules_use_only_documented_metrics() -> None:
    documented, prefixes = documented_metrics()
    known = documented | recorded_names() | {"up"}
    for rule in all_rules():
        unknown = {
            name
            for name in metric_names(rule["expr"])
            if name not in known and not name.startswith(prefixes)
        }
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: {unknown}"


def test_recording_rule_names_follow_the_convention() -> None:
    for name in recorded_names():
        level, metric, operations = name.split(":")
        assert level and operations, name
        assert "lemondata" in level or metric.startswith("lemondata_"), name


def test_the_shared_recording_rule_names_exist() -> None:
    names = recorded_names()
    assert {"lemondata:store_tasks_finished:max", "lemondata:store_task_failures:max"} <= names
    for sli in ("availability", "latency"):
        for window in rules.SLI_WINDOWS:
            assert f"lemondata_slo:{sli}_errors:ratio_rate{window}" in names


def test_generated_test_inputs_match_the_selector() -> None:
    labels = rule_tests.example_labels(CUSTOM)
    assert labels["job"] == "ld-prod" and labels["team"] == "ml"
    assert rule_tests.example_labels(BundleConfig())["job"] == "lemondata-exporter"


def test_a_cluster_label_outside_the_topology_is_refused() -> None:
    config = BundleConfig(cluster_label="region", multi_cluster=True)
    with pytest.raises(rules.RuleConfigError, match="region"):
        rules.render(config)
    custom = BundleConfig(
        cluster_label="region", multi_cluster=True, topology_labels=("region", "job")
    )
    text = rules.render(custom)[rules.RECORDING_FILE]
    assert "by (region, job, model, status)" in text


@pytest.mark.integration
def test_the_example_bundle_config_renders(tmp_path: Path) -> None:
    example = REPO / "monitoring" / "bundle.example.yaml"
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "monitoring", "--config", str(example), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    text = (out / rules.ALERTS_FILE).read_text("utf-8")
    assert 'lemondata_api_up{job="lemondata-exporter", namespace="ml"}' in text
    assert "> 600" in text


@pytest.mark.integration
def test_with_several_accounts_alerts_name_the_account(tmp_path: Path) -> None:
    """One account's rejected key fires for that account alone, named in the alert,
    while another account's answers keep the exporter's API alerts quiet for it."""
    config = BundleConfig()
    generator = rule_tests.Generator(config)
    base = {**rule_tests.example_labels(config), "instance": rule_tests.INSTANCE}

    def series(metric: str, values: str, **labels: str) -> dict[str, str]:
        inner = ", ".join(f'{k}="{v}"' for k, v in {**base, **labels}.items())
        return {"series": f"{metric}{{{inner}}}", "values": values}

    state = "lemondata_api_account_state"
    test = {
        "rule_files": [str(REPO / path) for path in rules.RULE_FILES],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    series(state, "1x20", account="team-c", state="key_rejected"),
                    series(state, "0x20", account="team-a", state="key_rejected"),
                    series("lemondata_api_up", "0x20", account="team-c"),
                    series("lemondata_api_up", "1x20", account="team-a"),
                    series("lemondata_api_last_answer_timestamp_seconds", "0x20", account="team-c"),
                    series(
                        "lemondata_api_last_answer_timestamp_seconds", "0+60x20", account="team-a"
                    ),
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "15m",
                        "alertname": "LemonDataAPIKeyRejected",
                        "exp_alerts": [
                            generator.expect(
                                "LemonDataAPIKeyRejected", {**base, "account": "team-c"}
                            )
                        ],
                    },
                    {
                        "eval_time": "15m",
                        "alertname": "LemonDataAPIDown",
                        "exp_alerts": [
                            generator.expect("LemonDataAPIDown", {**base, "account": "team-c"})
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "accounts.test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False), encoding="utf-8")
    promtool_test_files([path], tmp_path)
    description = generator.expect("LemonDataAPIKeyRejected", {**base, "account": "team-c"})[
        "exp_annotations"
    ]["description"]
    assert "(account team-c)" in description
