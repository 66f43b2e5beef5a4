"""promtool unit tests of the rules, generated from the same `BundleConfig`.

    render(config) -> {"prometheus/tests/lemondata-exporter.test.yml": text, ...}

Inputs follow the knobs: series carry labels that match the configured
selector and topology, values sit on either side of the configured thresholds,
evaluation times follow the configured `for:`, and expected annotations are the
rules' own templates filled in. So a user who changes a knob re-renders and the
tests still prove every alert fires where it should and stays quiet where it
should.

Every alert gets at least one case where it fires and one where it stays quiet.
The burn-rate alerts get, for every window pair: a constant error ratio just
above the pair's burn rate (fires), the same burst ended one short window ago
(quiet: the short window resets the alert), and a ratio below it (quiet). Which
other pairs fire in each case is computed by `expected_burns`, a small model of
rate() and `for:` over the generated series.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.config import DEFAULT_DURATION_BUCKETS
from exporter.metrics.recorder import API_LATENCY_BUCKETS
from monitoring.config import BundleConfig, parse_selector
from monitoring.rules import (
    ALERTS_FILE,
    BURN_WINDOWS,
    FOR_DURATIONS,
    RECORDING_FILE,
    BurnWindow,
    Rules,
    seconds,
)
from monitoring.yaml_text import to_yaml

TESTS_FILE = "prometheus/tests/lemondata-exporter.test.yml"
SLO_TESTS_FILE = "prometheus/tests/lemondata-exporter.slo.test.yml"
SLO_LONG_TESTS_FILE = "prometheus/tests/lemondata-exporter.slo-long.test.yml"

# The exporter's own bucket bounds: test series must use the bounds it serves.
DURATION_BUCKETS = DEFAULT_DURATION_BUCKETS

TOPOLOGY_EXAMPLES = {"cluster": "eu-1", "namespace": "monitoring", "job": "lemondata-exporter"}
INSTANCE = "10.0.0.7:9847"
IMAGE_MODEL = "flux-pro"
OTHER_MODEL = "flux-schnell"
VIDEO_MODEL = "veo-3"


@dataclass(frozen=True)
class SloPlan:
    """Sample step and evaluation interval (minutes) of one burn-rate test file.

    The 1 d and 3 d pairs would need days of samples: their plan samples every
    5 minutes (their short windows, 2 h and 6 h, stay well sampled). Pairs whose
    long window exceeds 1 h run on less data than it holds. Evaluations stay within the
    5-minute lookback, so alerts always see the last recorded ratio.
    """

    step: int
    every: int
    clip_long_windows: bool = False

    def round_up(self, samples: int) -> int:
        ticks = self.every // self.step
        return -(-samples // ticks) * ticks


SHORT_PLAN = SloPlan(step=1, every=1, clip_long_windows=True)
LONG_PLAN = SloPlan(step=5, every=5, clip_long_windows=True)


class TestInputError(ValueError):
    """A selector for which no example label value could be made."""


def _matches(op: str, pattern: str, value: str) -> bool:
    if op == "=":
        return value == pattern
    if op == "!=":
        return value != pattern
    hit = re.fullmatch(pattern, value) is not None
    return hit if op == "=~" else not hit


def example_labels(config: BundleConfig) -> dict[str, str]:
    """Labels of a series the selector selects, with every topology label set."""
    labels = {
        label: TOPOLOGY_EXAMPLES.get(label, f"example-{label}") for label in config.topology_labels
    }
    matchers = parse_selector(config.selector)
    for label, op, pattern in matchers:
        if op == "=":
            labels[label] = pattern
        elif op == "=~" and not _matches(op, pattern, labels.get(label, "")):
            candidate = re.sub(r"\.\*|\.\+|\^|\$", "", pattern).split("|")[0]
            candidate = re.sub(r"[()\\]", "", candidate) or "x"
            labels[label] = candidate
    for label, op, pattern in matchers:
        if not _matches(op, pattern, labels.get(label, "")):
            raise TestInputError(
                f"no example value for {label}{op}{pattern!r}: write the selector with = or a "
                "simpler regular expression"
            )
    return labels


def series_name(metric: str, labels: Mapping[str, str]) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{metric}{{{inner}}}"


def fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def counter(segments: Sequence[tuple[int, float]], start: float = 0.0) -> str:
    """Values, one a minute, of a counter rising at `rate` per minute for `minutes`."""
    parts = []
    value = start
    first = True
    for minutes, rate in segments:
        if minutes <= 0:
            continue
        if first:
            parts.append(f"{fmt(value)}+{fmt(rate)}x{minutes}")
            value += rate * minutes
            first = False
        else:
            value += rate
            parts.append(f"{fmt(value)}+{fmt(rate)}x{minutes - 1}")
            value += rate * (minutes - 1)
    return " ".join(parts)


def gauge(segments: Sequence[tuple[int, float]]) -> str:
    """Values, one a minute, holding `value` for `minutes` each."""
    return " ".join(f"{fmt(value)}x{minutes - 1}" for minutes, value in segments if minutes > 0)


def le_label(bound: float) -> str:
    """A bucket bound as prometheus-client writes the `le` label ("120.0", "+Inf")."""
    return "+Inf" if bound == math.inf else repr(float(bound))


def minutes(duration: str) -> int:
    return math.ceil(seconds(duration) / 60)


@dataclass
class Case:
    """One promtool test: input series and alert checks."""

    name: str
    series: list[tuple[str, str]]
    checks: list[tuple[int, str, list[dict[str, Any]]]]
    interval: str = "1m"

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "interval": self.interval,
            "input_series": [{"series": s, "values": v} for s, v in self.series],
            "alert_rule_test": [
                {"eval_time": f"{t}m", "alertname": name, "exp_alerts": alerts}
                for t, name, alerts in self.checks
            ],
        }


TEMPLATE = re.compile(r"\{\{ \$labels\.(\w+) \}\}")
# `{{ with $labels.x }} ... {{ . }} ... {{ end }}`: the inner text, with the
# value, only when the label is there.
WITH = re.compile(r"\{\{ with \$labels\.(\w+) \}\}(.*?)\{\{ end \}\}")


def rendered(text: str, labels: Mapping[str, str]) -> str:
    """An annotation as Prometheus renders it for an alert with `labels`."""

    def with_block(match: re.Match[str]) -> str:
        value = labels.get(match.group(1), "")
        return match.group(2).replace("{{ . }}", value) if value else ""

    return TEMPLATE.sub(lambda m: labels.get(m.group(1), ""), WITH.sub(with_block, text))


class Generator:
    def __init__(self, config: BundleConfig) -> None:
        self.config = config
        self.rules = Rules(config)
        self.alerts = [rule for group in self.rules.alerting_groups() for rule in group["rules"]]
        self.base = example_labels(config)
        self.inst = {**self.base, "instance": INSTANCE}

    # ---- expectations ------------------------------------------------------------------

    def expect(self, name: str, labels: Mapping[str, str], **match: str) -> dict[str, Any]:
        """The alert `name` (the rule whose labels include `match`) with these labels."""
        rules = [
            rule
            for rule in self.alerts
            if rule["alert"] == name and all(rule["labels"].get(k) == v for k, v in match.items())
        ]
        assert len(rules) == 1, (name, match, len(rules))
        rule = rules[0]
        exp_labels = {**labels, **rule["labels"]}
        annotations = {key: rendered(text, exp_labels) for key, text in rule["annotations"].items()}
        return {"exp_labels": exp_labels, "exp_annotations": annotations}

    def t(self, name: str) -> float:
        return self.rules.threshold_value(name)

    def f(self, name: str) -> int:
        """A `for:` in whole minutes."""
        return minutes(self.config.for_durations.get(name, _for_default(name)))

    def topo(self, **extra: str) -> dict[str, str]:
        return {**{k: self.base[k] for k in self.config.topology_labels}, **extra}

    def topo_i(self, **extra: str) -> dict[str, str]:
        return {**self.topo(), "instance": INSTANCE, **extra}

    # ---- cases ---------------------------------------------------------------------------

    def gauge_case(
        self,
        alert: str,
        metric: str,
        labels: Mapping[str, str],
        low: float,
        high: float,
        expected: Mapping[str, str],
        *,
        delay: int = 0,
        extra: Sequence[tuple[str, str]] = (),
        match: Mapping[str, str] | None = None,
    ) -> Case:
        """A gauge low for 5 m, high long enough to fire, then low again."""
        hold = self.f(alert) + delay + 5
        keep = self.keep(alert)
        values = gauge([(5, low), (hold, high), (keep + 20, low)])
        fire = 5 + delay + self.f(alert) + 2
        checks = [
            (4, alert, []),
            (fire, alert, [self.expect(alert, expected, **(match or {}))]),
            (5 + hold + keep + 3, alert, []),
        ]
        if keep:  # still firing just after the cause ended
            checks.insert(2, (5 + hold + 1, alert, [self.expect(alert, expected, **(match or {}))]))
        return Case(
            f"{alert}: {metric} from {fmt(low)} to {fmt(high)} fires after its for:, resolves",
            [(series_name(metric, labels), values), *extra],
            checks,
        )

    def keep(self, alert: str) -> int:
        """keep_firing_for of `alert` in whole minutes (0 without)."""
        key = f"{alert}.keep_firing_for"
        return self.f(key) if key in FOR_DURATIONS else 0

    def exporter_cases(self) -> list[Case]:
        cases = []
        up_labels = self.inst
        cases.append(
            self.gauge_case("LemonDataExporterDown", "up", up_labels, 1, 0, dict(up_labels))
        )
        absent_labels = {
            label: value for label, op, value in parse_selector(self.config.selector) if op == "="
        }
        stranger = {**self.base, "job": "not-the-exporter-xyz", "instance": INSTANCE}
        absent_ok = all(
            not _matches(op, pattern, stranger.get(label, ""))
            for label, op, pattern in parse_selector(self.config.selector)
            if label == "job"
        )
        wait = self.f("LemonDataExporterAbsent")
        absent_series = (
            [(series_name("up", stranger), gauge([(wait + 10, 1)]))] if absent_ok else []
        )
        cases.append(
            Case(
                "LemonDataExporterAbsent: no target matches the selector",
                absent_series or [(series_name("some_other_metric", {"x": "1"}), "1x40")],
                [
                    (max(0, wait - 2), "LemonDataExporterAbsent", []),
                    (
                        wait + 2,
                        "LemonDataExporterAbsent",
                        [self.expect("LemonDataExporterAbsent", absent_labels)],
                    ),
                ],
            )
        )
        cases.append(
            Case(
                "LemonDataExporterAbsent: the exporter is scraped",
                [(series_name("up", up_labels), gauge([(wait + 10, 1)]))],
                [(wait + 2, "LemonDataExporterAbsent", [])],
            )
        )
        # Not polling: the last cycle's timestamp stops moving at minute 5.
        threshold = self.t("not_polling_seconds")
        since = math.floor(threshold / 60) + 1
        fire = 5 + since + self.f("LemonDataExporterNotPolling") + 2
        stamp = series_name("lemondata_last_poll_cycle_timestamp_seconds", self.inst)
        stamp_values = f"0+60x5 300x{fire + 10}"
        for tasks, severity in ((0, "warning"), (3, "critical")):
            other = "critical" if severity == "warning" else "warning"
            tasks_series = series_name("lemondata_tasks", {**self.inst, "status": "processing"})
            cases.append(
                Case(
                    f"LemonDataExporterNotPolling: polling stops with {tasks} tasks waiting",
                    [(stamp, stamp_values), (tasks_series, gauge([(fire + 10, tasks)]))],
                    [
                        (5 + since - 1, "LemonDataExporterNotPolling", []),
                        (
                            fire,
                            "LemonDataExporterNotPolling",
                            [
                                self.expect(
                                    "LemonDataExporterNotPolling", self.topo_i(), severity=severity
                                )
                            ],
                        ),
                    ],
                )
            )
            del other
        # Restarting: the start time changes every `gap` minutes.
        restarts = int(self.t("restarts"))
        gap = max(1, min(10, 50 // (restarts + 1)))
        starts = " ".join(f"{1000 + 100 * k}x{gap - 1}" for k in range(restarts + 2))
        start_series = series_name("process_start_time_seconds", self.inst)
        cases.append(
            Case(
                f"LemonDataExporterRestarting: {restarts + 1} restarts in an hour fire, "
                f"{restarts} do not",
                [(start_series, starts + f" {1000 + 100 * (restarts + 1)}x80")],
                [
                    (gap * restarts + 1, "LemonDataExporterRestarting", []),
                    (
                        gap * (restarts + 1) + 1,
                        "LemonDataExporterRestarting",
                        [self.expect("LemonDataExporterRestarting", self.inst)],
                    ),
                    (gap * (restarts + 1) + 70, "LemonDataExporterRestarting", []),
                ],
            )
        )
        lag = self.t("poll_lag_seconds")
        cases.append(
            self.gauge_case(
                "LemonDataPollLagHigh",
                "lemondata_poll_lag_seconds",
                self.inst,
                lag / 2,
                lag * 2,
                self.topo_i(),
            )
        )
        # Discovery errors every minute for a while.
        hold = self.f("LemonDataDiscoveryFailing") + 5
        source = {**self.inst, "source": "file"}
        cases.append(
            Case(
                "LemonDataDiscoveryFailing: errors every minute fire, none resolve",
                [
                    (
                        series_name("lemondata_discovery_errors_total", source),
                        counter([(5, 0), (hold, 1), (30, 0)]),
                    )
                ],
                [
                    (4, "LemonDataDiscoveryFailing", []),
                    (
                        5 + hold - 2,
                        "LemonDataDiscoveryFailing",
                        [self.expect("LemonDataDiscoveryFailing", self.topo_i(source="file"))],
                    ),
                    (5 + hold + 15, "LemonDataDiscoveryFailing", []),
                ],
            )
        )
        wait = self.f("LemonDataModelLabelOverflow")
        cases.append(
            Case(
                "LemonDataModelLabelOverflow: a task counted under other fires for an hour",
                [
                    (
                        series_name("lemondata_model_label_overflow_total", self.inst),
                        counter([(5, 0), (1, 1), (90, 0)]),
                    )
                ],
                [
                    (4, "LemonDataModelLabelOverflow", []),
                    (
                        7 + wait,
                        "LemonDataModelLabelOverflow",
                        [self.expect("LemonDataModelLabelOverflow", self.topo_i())],
                    ),
                    (80, "LemonDataModelLabelOverflow", []),
                ],
            )
        )
        return cases

    def upstream_cases(self) -> list[Case]:
        cases = []
        threshold = self.t("api_down_seconds")
        since = math.floor(threshold / 60) + 1
        wait = self.f("LemonDataAPIDown")
        fire = 5 + since + wait + 1
        last = series_name("lemondata_api_last_answer_timestamp_seconds", self.inst)
        up = series_name("lemondata_api_up", self.inst)
        back = fire + 5
        cases.append(
            Case(
                "LemonDataAPIDown: no usable answer for longer than api_down_seconds, then back "
                "(by a probe, with no task to poll)",
                [
                    (last, f"0+60x5 300x{back - 6} {back * 60}+60x30"),
                    (up, gauge([(5, 1), (back - 5, 0), (30, 1)])),
                ],
                [
                    (5 + since - 2, "LemonDataAPIDown", []),
                    (fire, "LemonDataAPIDown", [self.expect("LemonDataAPIDown", self.topo_i())]),
                    (back + self.keep("LemonDataAPIDown") + 1, "LemonDataAPIDown", []),
                ],
            )
        )
        cases.append(
            Case(
                "LemonDataAPIDown: no answer ever since the start",
                [(up, gauge([(wait + 10, 0)]))],
                [(wait + 3, "LemonDataAPIDown", [self.expect("LemonDataAPIDown", self.topo_i())])],
            )
        )
        cases.append(
            Case(
                "LemonDataAPIDown: some requests fail but answers keep coming",
                [(last, "0+60x40"), (up, gauge([(5, 1), (36, 0)]))],
                [(30, "LemonDataAPIDown", [])],
            )
        )
        for alert, state in (
            ("LemonDataAPIKeyRejected", "key_rejected"),
            ("LemonDataAPIQuotaExhausted", "quota_exhausted"),
        ):
            labels = {**self.inst, "state": state}
            cases.append(
                self.gauge_case(alert, "lemondata_api_account_state", labels, 0, 1, self.topo_i())
            )
            cases.append(
                Case(
                    f"{alert}: one rejected answer, cleared by the next good one, does not fire",
                    [
                        (
                            series_name("lemondata_api_account_state", labels),
                            gauge([(5, 0), (1, 1), (30, 0)]),
                        )
                    ],
                    [(t, alert, []) for t in (5, 6, 5 + self.f(alert), 5 + self.f(alert) + 1)],
                )
            )
        # Error ratio: 60 requests a minute, a share of them failing.
        for alert, kind, ratio_name, window in (
            ("LemonDataAPIErrorRatioHigh", "server_error", "api_error_ratio", 5),
            ("LemonDataAPIRateLimited", "rate_limited", "rate_limited_ratio", 15),
        ):
            ratio = self.t(ratio_name)
            high = round(60 * (ratio + (1 - ratio) / 2))
            low = math.floor(60 * ratio / 2)
            hold = window + self.f(alert) + 5
            requests = series_name("lemondata_api_requests_total", {**self.inst, "code": "200"})
            for errors, fires in ((high, True), (low, False)):
                errors_series = series_name(
                    "lemondata_api_errors_total", {**self.inst, "kind": kind}
                )
                cases.append(
                    Case(
                        f"{alert}: {errors} of 60 requests a minute are {kind}",
                        [
                            (requests, counter([(5 + hold + 30, 60)])),
                            (errors_series, counter([(5, 0), (hold, errors), (30, 0)])),
                        ],
                        [
                            (4, alert, []),
                            (5 + hold, alert, [self.expect(alert, self.topo())] if fires else []),
                            (5 + hold + window + 5, alert, []),
                        ],
                    )
                )
        # 429s do not count as API errors.
        cases.append(
            Case(
                "LemonDataAPIErrorRatioHigh: 429s the exporter handles are no API errors",
                [
                    (
                        series_name("lemondata_api_requests_total", {**self.inst, "code": "200"}),
                        counter([(40, 60)]),
                    ),
                    (
                        series_name(
                            "lemondata_api_errors_total", {**self.inst, "kind": "rate_limited"}
                        ),
                        counter([(40, 50)]),
                    ),
                ],
                [(30, "LemonDataAPIErrorRatioHigh", [])],
            )
        )
        remaining = self.t("rate_limit_remaining_ratio")
        cases.append(
            self.gauge_case(
                "LemonDataRateLimitBudgetLow",
                "lemondata_api_rate_limit_remaining",
                self.inst,
                600,
                math.floor(600 * remaining / 2),
                self.topo_i(),
                extra=[(series_name("lemondata_api_rate_limit_limit", self.inst), "600x80")],
            )
        )
        cases.extend(self.latency_cases())
        return cases

    def latency_cases(self) -> list[Case]:
        alert = "LemonDataAPILatencyHigh"
        threshold = self.t("api_latency_p95_seconds")
        above = [b for b in API_LATENCY_BUCKETS if b >= threshold]
        if len(above) < 2:
            raise TestInputError("api_latency_p95_seconds must be below 10 s for the tests")
        slow_bound = above[1]  # observations in (above[0], above[1]]: p95 above the threshold
        fast_bound = API_LATENCY_BUCKETS[0]
        hold = 10 + self.f(alert) + 5
        cases = []
        for bound, fires in ((slow_bound, True), (fast_bound, False)):
            series = [
                (
                    series_name(
                        "lemondata_api_request_duration_seconds_bucket",
                        {**self.inst, "le": fmt(le) if le != math.inf else "+Inf"},
                    ),
                    counter([(hold + 20, 60 if le >= bound else 0)]),
                )
                for le in (*API_LATENCY_BUCKETS, math.inf)
            ]
            cases.append(
                Case(
                    f"{alert}: every request takes up to {fmt(bound)} s",
                    series,
                    [(hold, alert, [self.expect(alert, self.topo())] if fires else [])],
                )
            )
        return cases

    def task_cases(self) -> list[Case]:
        cases = []
        # A model with 30 tasks an hour, every one failing for the service's fault.
        alert = "LemonDataTasksFailingLowVolume"
        rate = 0.5
        need = math.ceil(self.t("low_volume_min_errors") / rate)
        fire = 5 + need + 3 + self.f(alert)
        hold = fire + 5
        m = {**self.inst, "model": IMAGE_MODEL}

        def store(
            status_rates: Mapping[str, Sequence[tuple[int, float]]],
            failure_rates: Mapping[tuple[str, str], Sequence[tuple[int, float]]],
            labels: Mapping[str, str],
        ) -> list[tuple[str, str]]:
            out = [
                (
                    series_name("lemondata_store_tasks_finished_total", {**labels, "status": s}),
                    counter(segments),
                )
                for s, segments in status_rates.items()
            ]
            out += [
                (
                    series_name(
                        "lemondata_store_task_failures_total",
                        {**labels, "reason": reason, "class": klass},
                    ),
                    counter(segments),
                )
                for (reason, klass), segments in failure_rates.items()
            ]
            return out

        failing = [(5, 0), (hold, rate), (90, 0)]
        good_after = [(5 + hold, 0), (90, 2 * rate)]
        cases.append(
            Case(
                f"{alert}: 30 tasks an hour, all failing, fire; healthy again, resolve",
                store(
                    {"failed": failing, "completed": good_after, "expired": [(hold + 95, 0)]},
                    {
                        ("upstream_error", "service"): failing,
                        ("content_policy", "user"): [(hold + 95, 0)],
                    },
                    m,
                ),
                [
                    (5 + need - 3, alert, []),
                    (fire, alert, [self.expect(alert, self.topo(model=IMAGE_MODEL))]),
                    (5 + hold + 35, alert, []),
                ],
            )
        )
        cases.append(
            Case(
                f"{alert}: 30 tasks an hour, all refused for their prompt: the caller's fault",
                store(
                    {"failed": failing, "completed": [(hold + 95, 0)]},
                    {
                        ("content_policy", "user"): failing,
                        ("upstream_error", "service"): [(hold + 95, 0)],
                    },
                    m,
                ),
                [(fire, alert, [])],
            )
        )
        # The caller's failures: info only.
        alert = "LemonDataUserFailuresHigh"
        ratio = self.t("user_failure_ratio")
        count = self.t("user_failure_min_count")
        user_rate = max(1.0, count / 30)
        fire = 5 + math.ceil(count / user_rate) + 3 + self.f(alert)
        hold = fire + 5
        for share, fires in (((ratio + 1) / 2, True), (ratio / 2, False)):
            completed = user_rate * (1 - share) / share
            cases.append(
                Case(
                    f"{alert}: {share:.0%} of finished tasks refused for the caller's request",
                    store(
                        {
                            "failed": [(5, 0), (hold, user_rate)],
                            "completed": [(5, 0), (hold, completed)],
                        },
                        {("content_policy", "user"): [(5, 0), (hold, user_rate)]},
                        m,
                    ),
                    [
                        (4, alert, []),
                        (
                            fire,
                            alert,
                            [self.expect(alert, self.topo(model=IMAGE_MODEL))] if fires else [],
                        ),
                    ],
                )
            )
        cases.extend(self.stuck_cases())
        waiting = self.t("waiting_seconds")
        cases.append(
            self.gauge_case(
                "LemonDataTasksStuckWaiting",
                "lemondata_task_oldest_age_seconds",
                {**self.inst, "status": "pending"},
                waiting / 3,
                waiting * 2,
                self.topo(),
            )
        )
        return cases

    def stuck_cases(self) -> list[Case]:
        alert = "LemonDataTaskStuckProcessing"
        factor = self.t("stuck_factor")
        floor = self.t("stuck_min_seconds")
        no_history = self.t("stuck_no_history_seconds")
        cases = []
        m = {**self.inst, "model": IMAGE_MODEL}
        age_series = series_name("lemondata_task_processing_oldest_age_seconds", m)
        wait = self.f(alert)
        # Without history: the fallback limit.
        start = math.floor(no_history / 60) + 1
        fire = 5 + start + wait + 2
        cases.append(
            Case(
                f"{alert}: a task of a model without history older than {fmt(no_history)} s",
                [(age_series, f"0x5 0+60x{fire + 5}")],
                [
                    (5 + start - 2, alert, []),
                    (fire, alert, [self.expect(alert, self.topo(model=IMAGE_MODEL))]),
                ],
            )
        )
        # With history: completions in (lo, hi]; p95 interpolated in that bucket.
        lo, hi = 300.0, 450.0
        p95 = lo + 0.95 * (hi - lo)
        limit = max(factor * p95, floor)
        start = math.floor(limit / 60) + 1
        fire = 30 + start + wait + 2
        history = [
            (
                series_name(
                    "lemondata_task_duration_seconds_bucket",
                    {**m, "status": "completed", "le": le_label(le)},
                ),
                counter([(fire + 10, 2 if le >= hi else 0)]),
            )
            for le in (*DURATION_BUCKETS, math.inf)
        ]
        cases.append(
            Case(
                f"{alert}: older than {fmt(factor)} x the model's p95 ({fmt(p95)} s)",
                [*history, (age_series, f"0x30 0+60x{fire - 20}")],
                [
                    (30 + start - 2, alert, []),
                    (fire, alert, [self.expect(alert, self.topo(model=IMAGE_MODEL))]),
                ],
            )
        )
        return cases

    # ---- burn rates -----------------------------------------------------------------------

    def burn_cases(self, pairs: Sequence[BurnWindow], plan: SloPlan) -> list[Case]:
        """Three cases per window pair and SLI; `plan` sets the sample and evaluation steps."""
        cases = []
        slo = self.config.slo
        step = plan.step
        for sli, objective in (
            ("availability", slo.availability_objective),
            ("latency", slo.latency_objective),
        ):
            budget = 1 - objective
            alert = f"LemonData{sli.capitalize()}BudgetBurn"
            for burn in pairs:
                pair = f"{burn.long}/{burn.short}"
                long_n = minutes(self.rules.window(burn.long)) // step
                short_n = minutes(self.rules.window(burn.short)) // step
                margin = 2 * plan.every // step
                end = long_n + (self.burn_for(burn) + 2 * plan.every) // step
                if plan.clip_long_windows and long_n * step > 60:
                    # rate() over a window longer than the data uses the data there
                    # is: enough to keep the long window above the limit after the
                    # short one has cleared (the second scenario).
                    end = min(
                        end,
                        max(
                            3 * (short_n + margin) + margin,
                            (self.burn_for(burn) + 2 * plan.every) // step,
                        ),
                    )
                end = plan.round_up(end)
                high = min(0.99, 1.5 * burn.factor * budget)
                low = 0.4 * burn.factor * budget
                scenarios = [
                    (
                        True,
                        f"{pair}: error ratio {high:.4g} (1.5 x burn rate {fmt(burn.factor)})",
                        [(end, high)],
                    ),
                    (
                        False,
                        f"{pair}: the same, ended {burn.short} ago",
                        [(end - short_n - margin, high), (short_n + margin, 0.0)],
                    ),
                    (
                        False,
                        f"{pair}: error ratio {low:.4g} (0.4 x burn rate {fmt(burn.factor)})",
                        [(end, low)],
                    ),
                ]
                if burn.factor * budget >= 0.99:
                    scenarios = scenarios[2:]  # an objective this loose never burns this fast
                for fires, title, phases in scenarios:
                    firing = self.expected_burns(phases, budget, end, plan)
                    assert (burn in firing) == fires, (alert, title, firing)
                    cases.append(
                        Case(
                            f"{alert} {title}",
                            self.sli_series(sli, IMAGE_MODEL, phases),
                            [
                                (
                                    end * step,
                                    alert,
                                    [
                                        self.expect(
                                            alert, self.topo(model=IMAGE_MODEL), long=b.long
                                        )
                                        for b in firing
                                    ],
                                )
                            ],
                            interval=f"{step}m",
                        )
                    )
            if sli == "latency" and BURN_WINDOWS[0] in pairs:
                # The video class has its own latency threshold.
                burn = BURN_WINDOWS[0]
                end = plan.round_up(
                    minutes(burn.long) // step + (self.burn_for(burn) + 2 * plan.every) // step
                )
                phases = [(end, min(0.99, 1.5 * burn.factor * budget))]
                firing = self.expected_burns(phases, budget, end, plan)
                cases.append(
                    Case(
                        f"{alert}: a video model slower than the video threshold",
                        self.sli_series("latency", VIDEO_MODEL, phases),
                        [
                            (
                                end * step,
                                alert,
                                [
                                    self.expect(alert, self.topo(model=VIDEO_MODEL), long=b.long)
                                    for b in firing
                                ],
                            )
                        ],
                        interval=f"{step}m",
                    )
                )
        return cases

    def burn_for(self, burn: BurnWindow) -> int:
        return minutes(self.rules.for_(f"burn_{burn.long}"))

    def sli_series(
        self, sli: str, model: str, phases: Sequence[tuple[int, float]]
    ) -> list[tuple[str, str]]:
        """Counters with 100 finishes a sample, `ratio` of them spending budget, per phase."""
        total = 100.0
        bad = [(m, total * r) for m, r in phases]
        good = [(m, total * (1 - r)) for m, r in phases]
        everything = [(m, total) for m, _ in phases]
        labels = {**self.inst, "model": model}
        if sli == "availability":
            return [
                (
                    series_name(
                        "lemondata_store_tasks_finished_total", {**labels, "status": "completed"}
                    ),
                    counter(good),
                ),
                (
                    series_name(
                        "lemondata_store_tasks_finished_total", {**labels, "status": "failed"}
                    ),
                    counter(bad),
                ),
                (
                    series_name(
                        "lemondata_store_task_failures_total",
                        {**labels, "reason": "upstream_error", "class": "service"},
                    ),
                    counter(bad),
                ),
            ]
        slo = self.config.slo
        threshold = (
            slo.video_latency_threshold_seconds
            if model == VIDEO_MODEL
            else slo.latency_threshold_seconds
        )
        completed = {**labels, "status": "completed"}
        return [
            (
                series_name(
                    "lemondata_task_duration_seconds_bucket",
                    {**completed, "le": le_label(threshold)},
                ),
                counter(good),
            ),
            (series_name("lemondata_task_duration_seconds_count", completed), counter(everything)),
        ]

    def expected_burns(
        self, phases: Sequence[tuple[int, float]], budget: float, end: int, plan: SloPlan
    ) -> list[BurnWindow]:
        """The pairs firing at sample `end`, by a model of rate() and `for:` on these series.

        Both range semantics (Prometheus 2: the window's first sample included;
        3: excluded) must agree, so the test holds on either promtool. Pairs whose
        short window holds fewer than three samples or evaluations are left out
        of the plan's files.
        """
        # Nor may a case sit on a limit, where float rounding decides: the
        # answer must not change when the limits move by 2 %.
        results = [
            [b for b in BURN_WINDOWS if self._fires(b, phases, budget * k, end, plan, closed)]
            for closed in (True, False)
            for k in (0.98, 1.02)
        ]
        assert all(r == results[0] for r in results), ("ambiguous burn-rate case", phases, results)
        return results[0]

    def _fires(
        self,
        burn: BurnWindow,
        phases: Sequence[tuple[int, float]],
        budget: float,
        end: int,
        plan: SloPlan,
        closed: bool,
    ) -> bool:
        step = plan.step
        bad = [0.0]
        for length, ratio in phases:
            for _ in range(length):
                bad.append(bad[-1] + ratio)
        # totals rise by 1 a sample: the ratio is (bad[b] - bad[a]) / (b - a)
        long_n = minutes(self.rules.window(burn.long)) // step
        short_n = minutes(self.rules.window(burn.short)) // step
        if short_n * step < 3 * plan.every:
            return False  # the recorded short-window ratio is unreliable at this plan
        limit = burn.factor * round(budget, 6)

        def ratio(window: int, at: int) -> float | None:
            first = max(0, at - window + (0 if closed else 1))
            if at - first < 1:
                return None
            return (bad[at] - bad[first]) / (at - first)

        def cond(at: int) -> bool:
            values = [ratio(long_n, at), ratio(short_n, at)]
            return all(v is not None and v > limit for v in values)

        active_since = None
        for tick in range(0, end + 1, plan.every // step):
            if not cond(tick):
                active_since = None
            elif active_since is None:
                active_since = tick
        return active_since is not None and (end - active_since) * step >= self.burn_for(burn)

    # ---- documents ------------------------------------------------------------------------

    def documents(self) -> dict[str, dict[str, Any]]:
        rule_files = [
            f"../rules/{RECORDING_FILE.rsplit('/', 1)[1]}",
            f"../rules/{ALERTS_FILE.rsplit('/', 1)[1]}",
        ]
        plain = [*self.exporter_cases(), *self.upstream_cases(), *self.task_cases()]
        return {
            TESTS_FILE: {
                "rule_files": rule_files,
                "evaluation_interval": "1m",
                "tests": [case.document() for case in plain],
            },
            SLO_TESTS_FILE: {
                "rule_files": rule_files,
                "evaluation_interval": f"{SHORT_PLAN.every}m",
                "tests": [
                    case.document() for case in self.burn_cases(BURN_WINDOWS[:2], SHORT_PLAN)
                ],
            },
            SLO_LONG_TESTS_FILE: {
                "rule_files": rule_files,
                "evaluation_interval": f"{LONG_PLAN.every}m",
                "tests": [case.document() for case in self.burn_cases(BURN_WINDOWS[2:], LONG_PLAN)],
            },
        }


def _for_default(name: str) -> str:
    from monitoring.rules import FOR_DURATIONS

    return FOR_DURATIONS[name][0]


HEADER = """\
# Generated by `python -m monitoring` from monitoring/rule_tests.py and the bundle
# config: promtool unit tests of prometheus/rules/. Run them with
#   promtool test rules prometheus/tests/*.yml
"""


def documents(config: BundleConfig) -> dict[str, dict[str, Any]]:
    """Test file path -> its promtool document (rule_files relative to the file)."""
    return Generator(config).documents()


def render(config: BundleConfig) -> dict[str, str]:
    return {path: HEADER + to_yaml(doc) for path, doc in documents(config).items()}


def pointed_at(
    docs: Mapping[str, dict[str, Any]], rule_files: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """The same tests reading `rule_files` instead (e.g. a PrometheusRule's groups)."""
    files = list(rule_files)
    return {
        path.rsplit("/", 1)[1].removesuffix(".yml"): {**doc, "rule_files": files}
        for path, doc in docs.items()
    }
