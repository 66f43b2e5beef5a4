"""The recording and alerting rules, generated from a `BundleConfig`.

    render(config) -> {"prometheus/rules/lemondata-exporter.recording.yml": text, ...}

Every knob comes from monitoring/config.py: the selector that finds the
exporter's series, the topology labels every aggregation keeps, the runbook URL
pattern, the dashboard URL annotation, the SLO objectives, and every threshold
and `for:` by name (`THRESHOLDS` and `FOR_DURATIONS` below document each key and
its default; an unknown key is an error).

`build(config, shorten=N)` gives the same rules with every range window and
`for:` divided by N (the names stay): the live alert scenarios run the shipped
logic on a time scale a test can wait for.

Design, after kubernetes-mixin and node-mixin:

- Aggregations are `by (<topology labels>, ...)`, so namespaces and clusters
  never mix; alerts about one exporter process also keep `instance` and `pod`.
- Severities as kube-prometheus uses them: `critical` pages (tasks are failing
  or cannot be watched at all), `warning` is a ticket, `info` never notifies a
  person by itself.
- Availability and latency SLOs per model, with multi-window, multi-burn-rate
  alerts (SRE workbook, chapter 5): four window pairs under one alert name,
  told apart by the `long` and `short` labels, as kubernetes-mixin's
  KubeAPIErrorBudgetBurn does. Availability counts from the store-wide totals
  (`lemondata_store_*`), which survive crashes; only `class="service"`
  failures, expiries and timeouts spend budget.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from monitoring.config import BundleConfig, parse_selector
from monitoring.yaml_text import to_yaml

RECORDING_FILE = "prometheus/rules/lemondata-exporter.recording.yml"
ALERTS_FILE = "prometheus/rules/lemondata-exporter.alerts.yml"
RULE_FILES = (RECORDING_FILE, ALERTS_FILE)

# Labels that tell one exporter process from another, beyond the topology.
INSTANCE_LABELS = ("instance", "pod")

# The SLI windows recorded for both SLOs (rule names end in _rate<window>).
SLI_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


@dataclass(frozen=True)
class BurnWindow:
    """One multi-window pair: both windows' error ratio above factor x budget."""

    long: str
    short: str
    factor: float
    severity: str


# The SRE workbook's table (chapter 5, "Alerting on SLOs", multiwindow,
# multi-burn-rate): 2 % of a 30-day budget in 1 h pages, 5 % in 6 h and 10 %
# in 1 d or 3 d open a ticket.
BURN_WINDOWS = (
    BurnWindow("1h", "5m", 14.4, "critical"),
    BurnWindow("6h", "30m", 6.0, "warning"),
    BurnWindow("1d", "2h", 3.0, "warning"),
    BurnWindow("3d", "6h", 1.0, "warning"),
)

# Every threshold: name -> (default, meaning). Set in the bundle config under
# `thresholds:`.
THRESHOLDS: dict[str, tuple[float, str]] = {
    "not_polling_seconds": (180, "LemonDataExporterNotPolling: seconds since the last poll cycle"),
    "restarts": (2, "LemonDataExporterRestarting: more start-time changes than this in 1 h"),
    "poll_lag_seconds": (60, "LemonDataPollLagHigh: how long the most overdue task was due"),
    "api_down_seconds": (
        300,
        "LemonDataAPIDown: seconds without a usable answer (the probe asks once a minute "
        "when nothing else is sent)",
    ),
    "api_error_ratio": (
        0.25,
        "LemonDataAPIErrorRatioHigh: share of status requests that fail (404 and 429 left out)",
    ),
    "rate_limited_ratio": (
        0.5,
        "LemonDataAPIRateLimited: share of status requests answered 429 over 15 minutes",
    ),
    "rate_limit_remaining_ratio": (
        0.1,
        "LemonDataRateLimitBudgetLow: share of X-RateLimit-Limit still remaining",
    ),
    "api_latency_p95_seconds": (
        2.5,
        "LemonDataAPILatencyHigh: 95th percentile of status request latency",
    ),
    "low_volume_min_errors": (
        5,
        "LemonDataTasksFailingLowVolume: budget-spending finishes of one model in 1 h",
    ),
    "low_volume_error_ratio": (
        0.5,
        "LemonDataTasksFailingLowVolume: their share of the model's finishes in 1 h (and 30 m)",
    ),
    "user_failure_ratio": (
        0.5,
        "LemonDataUserFailuresHigh: share of a model's finishes failed by the caller in 1 h",
    ),
    "user_failure_min_count": (10, "LemonDataUserFailuresHigh: user failures of one model in 1 h"),
    "stuck_factor": (
        3,
        "LemonDataTaskStuckProcessing: oldest processing task older than this times the "
        "model's p95 time to completion (1 d)",
    ),
    "stuck_min_seconds": (
        600,
        "LemonDataTaskStuckProcessing: never below this many seconds",
    ),
    "stuck_no_history_seconds": (
        3600,
        "LemonDataTaskStuckProcessing: the limit for a model without completions in 1 d",
    ),
    "waiting_seconds": (
        900,
        "LemonDataTasksStuckWaiting: age of the oldest task not yet processing",
    ),
}

# Every `for:`: alert name (or burn window) -> (default, why). Set in the bundle
# config under `for_durations:`.
FOR_DURATIONS: dict[str, tuple[str, str]] = {
    "LemonDataExporterDown": ("5m", "a few failed scrapes are normal during a rollout"),
    "LemonDataExporterAbsent": ("15m", "service discovery may be empty while redeploying"),
    "LemonDataExporterNotPolling": ("5m", "on top of the not_polling_seconds threshold"),
    "LemonDataExporterRestarting": ("0m", "the window (1 h) already spans the restarts"),
    "LemonDataPollLagHigh": ("10m", "lag after a burst of new tasks drains by itself"),
    "LemonDataDiscoveryFailing": ("15m", "a file being rewritten may fail one read"),
    "LemonDataModelLabelOverflow": ("0m", "the window (1 h) already holds the evidence"),
    "LemonDataAPIDown": ("1m", "on top of the api_down_seconds threshold"),
    "LemonDataAPIKeyRejected": ("5m", "one 401 clears with the next good answer"),
    "LemonDataAPIQuotaExhausted": ("5m", "one 402 clears with the next good answer"),
    # keep_firing_for: an alert that mutes others (Alertmanager inhibit rules)
    # holds this long after its cause ends, so that what it muted resolves
    # first instead of paging for a moment.
    "LemonDataAPIKeyRejected.keep_firing_for": ("5m", "outlive the alerts it mutes"),
    "LemonDataAPIQuotaExhausted.keep_firing_for": ("5m", "outlive the alerts it mutes"),
    "LemonDataAPIDown.keep_firing_for": ("2m", "outlive the alerts it mutes"),
    "LemonDataAPIErrorRatioHigh": ("10m", "short error bursts are retried"),
    "LemonDataAPIRateLimited": ("15m", "the exporter slows down on 429s by itself"),
    "LemonDataRateLimitBudgetLow": ("5m", "one busy minute is no trend"),
    "LemonDataAPILatencyHigh": ("15m", "latency spikes are common upstream"),
    "burn_1h": ("2m", "burn-rate pair 1h/5m (kubernetes-mixin's choice)"),
    "burn_6h": ("15m", "burn-rate pair 6h/30m"),
    "burn_1d": ("1h", "burn-rate pair 1d/2h"),
    "burn_3d": ("3h", "burn-rate pair 3d/6h"),
    "LemonDataTasksFailingLowVolume": ("5m", "the count threshold already needs time"),
    "LemonDataUserFailuresHigh": ("30m", "informational only"),
    "LemonDataTaskStuckProcessing": ("5m", "the age threshold already needs time"),
    "LemonDataTasksStuckWaiting": ("5m", "the age threshold already needs time"),
}

FINISHED_STORE = "lemondata:store_tasks_finished:max"
FAILURES_STORE = "lemondata:store_task_failures:max"

COMPLETED = 'status="completed"'
EXPIRED_OR_TIMEOUT = 'status=~"expired|timeout"'
NOT_CANCELLED = 'status!="cancelled"'
SERVICE_FAULT = 'class="service"'
NOT_ANSWER_ERRORS = 'kind!~"not_found|rate_limited"'
RATE_LIMITED = 'kind="rate_limited"'
WAITING = 'status=~"unknown|pending"'
KEY_REJECTED = 'state="key_rejected"'
QUOTA_EXHAUSTED = 'state="quota_exhausted"'

# The exporter's label of an account (with `accounts:` configured; absent
# otherwise). Alerts about an account keep it, so they name the account and one
# account's trouble neither hides behind nor mutes another's.
ACCOUNT = "account"
OF_ACCOUNT = "{{ with $labels.account }} (account {{ . }}){{ end }}"

UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


class RuleConfigError(ValueError):
    """A threshold or `for:` key the rules do not know."""


def seconds(duration: str) -> int:
    """Seconds of a Prometheus duration made of d/h/m/s parts ("1h30m")."""
    parts = re.findall(r"(\d+)([dhms])", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"unsupported duration {duration!r}")
    return sum(int(n) * UNITS[u] for n, u in parts)


def duration(total: int) -> str:
    """The shortest Prometheus duration for `total` seconds (0 is "0s")."""
    if total == 0:
        return "0s"
    text = ""
    for unit, size in UNITS.items():
        if total >= size:
            count, total = divmod(total, size)
            text += f"{count}{unit}"
    return text


def number(value: float) -> str:
    """A threshold as PromQL and people write it: 300, not 300.0."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def selector_labels(selector: str) -> tuple[str, ...]:
    """The label names a selector's matchers test, in order."""
    return tuple(dict.fromkeys(label for label, _, _ in parse_selector(selector)))


def le_matcher(value: float) -> str:
    """A regular expression for the `le` label of a bucket bound, in either format."""
    if float(value).is_integer():
        return rf"{int(value)}(\\.0)?"
    return re.escape(repr(float(value))).replace("\\", "\\\\")


class Rules:
    """The rule groups for one config; `shorten` divides every window and `for:`."""

    def __init__(self, config: BundleConfig, shorten: int = 1) -> None:
        unknown = set(config.thresholds) - set(THRESHOLDS)
        unknown |= {f"for_durations.{k}" for k in set(config.for_durations) - set(FOR_DURATIONS)}
        if unknown:
            raise RuleConfigError(f"unknown knobs: {', '.join(sorted(unknown))}")
        if config.multi_cluster and config.cluster_label not in config.topology_labels:
            # Aggregations keep only the topology labels: the clusters would merge.
            raise RuleConfigError(
                f"cluster_label {config.cluster_label!r} must be one of topology_labels "
                f"{list(config.topology_labels)} when multi_cluster is on"
            )
        self.config = config
        self.shorten = shorten
        # Recorded series keep the selector's labels too, so that rules reading
        # them can select this bundle's series again: two bundles in one
        # Prometheus then never read (and re-record) each other's.
        kept = [label for label in selector_labels(config.selector) if label not in INSTANCE_LABELS]
        self.topology = (
            *config.topology_labels,
            *(label for label in kept if label not in config.topology_labels),
        )
        self.instance = (*self.topology, *(i for i in INSTANCE_LABELS if i not in self.topology))

    # ---- small builders ------------------------------------------------------------

    def threshold(self, name: str) -> str:
        return number(self.config.thresholds.get(name, THRESHOLDS[name][0]))

    def threshold_value(self, name: str) -> float:
        return float(self.config.thresholds.get(name, THRESHOLDS[name][0]))

    def for_(self, name: str) -> str:
        return self.window(self.config.for_durations.get(name, FOR_DURATIONS[name][0]), floor=0)

    def window(self, text: str, floor: int = 1) -> str:
        """A range window (or `for:`), shortened for tests."""
        total = seconds(text)
        if self.shorten == 1 or total == 0:
            return duration(total)
        return duration(max(floor, total // self.shorten))

    def sel(self, metric: str, *matchers: str) -> str:
        """A selector of the exporter's own series."""
        parts = [m for m in (self.config.selector.strip(), *matchers) if m]
        return f"{metric}{{{', '.join(parts)}}}"

    def by(self, *extra: str, instance: bool = False) -> str:
        labels = [*(self.instance if instance else self.topology)]
        labels += [label for label in extra if label not in labels]
        return f"by ({', '.join(labels)})"

    def on(self, *extra: str, instance: bool = False) -> str:
        return "on" + self.by(*extra, instance=instance)[2:]

    def alert(
        self,
        name: str,
        expr: str,
        severity: str,
        summary: str,
        description: str,
        *,
        for_key: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        annotations = {
            "summary": summary,
            "description": " ".join(description.split()),
            "runbook_url": self.config.runbook_url_pattern.format(
                alert=name, alert_lower=name.lower()
            ),
        }
        if self.config.dashboard_url:
            annotations["dashboard_url"] = self.config.dashboard_url
        rule: dict[str, Any] = {"alert": name, "expr": expr, "for": self.for_(for_key or name)}
        keep = f"{name}.keep_firing_for"
        if keep in FOR_DURATIONS:
            rule["keep_firing_for"] = self.for_(keep)
        rule["labels"] = {"severity": severity, **(labels or {})}
        rule["annotations"] = annotations
        return rule

    def where(self, *, instance: bool = False) -> str:
        """The exporter an alert is about, for annotations: its job (and instance)."""
        label = "job" if "job" in self.topology or not self.topology else self.topology[-1]
        text = f"{{{{ $labels.{label} }}}}"
        if instance:
            text += " on {{ $labels.instance }}"
        return text

    # ---- recording rules -----------------------------------------------------------

    def recording_groups(self) -> list[dict[str, Any]]:
        r = self
        w5 = r.window("5m")
        by_account = r.by(ACCOUNT, instance=True)
        per_instance = [
            (
                "instance_model_status:lemondata_tasks_finished:rate5m",
                f"sum {r.by('model', 'status', instance=True)} "
                f"(rate({r.sel('lemondata_tasks_finished_total')}[{w5}]))",
            ),
            (
                "instance_model_reason:lemondata_task_failures:rate5m",
                f"sum {r.by('model', 'reason', 'class', instance=True)} "
                f"(rate({r.sel('lemondata_task_failures_total')}[{w5}]))",
            ),
            (
                "instance_model:lemondata_task_duration_seconds_bucket:rate5m",
                f"sum {r.by('model', 'le', instance=True)} "
                f"(rate({r.sel('lemondata_task_duration_seconds_bucket', COMPLETED)}"
                f"[{w5}]))",
            ),
            (
                "instance_model:lemondata_task_pending_seconds_bucket:rate5m",
                f"sum {r.by('model', 'le', instance=True)} "
                f"(rate({r.sel('lemondata_task_pending_seconds_bucket')}[{w5}]))",
            ),
            (
                "instance_code:lemondata_api_requests:rate5m",
                f"sum {r.by('code', ACCOUNT, instance=True)} "
                f"(rate({r.sel('lemondata_api_requests_total')}[{w5}]))",
            ),
            (
                "instance_kind:lemondata_api_errors:rate5m",
                f"sum {r.by('kind', ACCOUNT, instance=True)} "
                f"(rate({r.sel('lemondata_api_errors_total')}[{w5}]))",
            ),
            (
                "instance:lemondata_api_request_duration_seconds_bucket:rate5m",
                f"sum {r.by('le', instance=True)} "
                f"(rate({r.sel('lemondata_api_request_duration_seconds_bucket')}[{w5}]))",
            ),
            (
                "instance:lemondata_api_rate_limit_remaining:ratio",
                f"max {by_account} ({r.sel('lemondata_api_rate_limit_remaining')})\n"
                f"/ max {by_account} ({r.sel('lemondata_api_rate_limit_limit')} > 0)",
            ),
        ]
        store = [
            (
                FINISHED_STORE,
                f"max {r.by('model', 'status')} ({r.sel('lemondata_store_tasks_finished_total')})",
            ),
            (
                FAILURES_STORE,
                f"max {r.by('model', 'reason', 'class')} "
                f"({r.sel('lemondata_store_task_failures_total')})",
            ),
            (
                "model:lemondata_task_duration_seconds:p95_rate1d",
                f"histogram_quantile(0.95, sum {r.by('model', 'le')} "
                f"(rate({r.sel('lemondata_task_duration_seconds_bucket', COMPLETED)}"
                f"[{r.window('1d')}])))",
            ),
        ]
        availability = [
            (f"lemondata_slo:availability_errors:ratio_rate{w}", self.availability_sli(w))
            for w in SLI_WINDOWS
        ]
        latency = [
            (f"lemondata_slo:latency_errors:ratio_rate{w}", self.latency_sli(w))
            for w in SLI_WINDOWS
        ]

        def group(name: str, rules: Sequence[tuple[str, str]]) -> dict[str, Any]:
            return {
                "name": name,
                "rules": [{"record": record, "expr": expr} for record, expr in rules],
            }

        return [
            group("lemondata-exporter.recording", per_instance),
            group("lemondata-exporter.store", store),
            group("lemondata-exporter.slo-availability", availability),
            group("lemondata-exporter.slo-latency", latency),
        ]

    def availability_sli(self, window: str) -> str:
        """Share of a model's finished tasks (cancelled left out) that spend budget.

        Expired and timed-out tasks and `class="service"` failures spend it;
        completed tasks and the caller's own failures (`class="user"`) do not.
        Counted from the store-wide totals, so a crash loses nothing.
        """
        w = self.window(window)
        by = self.by("model")
        return (
            f"sum {by} (\n"
            f"  rate({self.sel(FINISHED_STORE, EXPIRED_OR_TIMEOUT)}[{w}])\n"
            f"  or rate({self.sel(FAILURES_STORE, SERVICE_FAULT)}[{w}])\n"
            f")\n"
            f"/ sum {by} (rate({self.sel(FINISHED_STORE, NOT_CANCELLED)}[{w}]))"
        )

    def latency_sli(self, window: str) -> str:
        """Share of a model's completed tasks slower than its class's threshold."""
        slo = self.config.slo
        w = self.window(window)
        by = self.by("model")
        parts = []
        classes = (
            ("!~", slo.latency_threshold_seconds),
            ("=~", slo.video_latency_threshold_seconds),
        )
        for op, threshold in classes:
            model = f'model{op}"{slo.video_models}"'
            bucket = self.sel(
                "lemondata_task_duration_seconds_bucket",
                'status="completed"',
                model,
                f'le=~"{le_matcher(threshold)}"',
            )
            count = self.sel("lemondata_task_duration_seconds_count", 'status="completed"', model)
            parts.append(
                f"(\n  1 - sum {by} (rate({bucket}[{w}]))\n  / sum {by} (rate({count}[{w}]))\n)"
            )
        return "\n or\n".join(parts)

    # ---- alerting rules --------------------------------------------------------------

    def exporter_alerts(self) -> list[dict[str, Any]]:
        r = self
        up = r.sel("up")
        unfinished = r.sel("lemondata_tasks", 'status=~"unknown|pending|processing"')
        since_cycle = (
            f"time() - max {r.by(instance=True)} "
            f"({r.sel('lemondata_last_poll_cycle_timestamp_seconds')})"
            f" > {r.threshold('not_polling_seconds')}"
        )
        waiting = f"sum {r.by()} ({unfinished}) > 0"
        where = r.where(instance=True)
        not_polling_text = (
            f"The last poll cycle of {where} ended more than "
            f"{r.threshold('not_polling_seconds')} s ago. The exporter answers scrapes but no "
            "longer polls tasks, so every task metric it serves is frozen."
        )
        return [
            r.alert(
                "LemonDataExporterDown",
                f"{up} == 0",
                "warning",
                "lemondata-exporter {{ $labels.instance }} is down",
                f"Prometheus has failed to scrape {where} for "
                f"{r.for_('LemonDataExporterDown')}. Tasks are not watched from there; the "
                "store keeps them, so nothing is lost if it comes back before they expire.",
            ),
            r.alert(
                "LemonDataExporterAbsent",
                f"absent({up})",
                "warning",
                "No lemondata-exporter target is scraped",
                f"Prometheus has no scrape target matching {{{r.config.selector}}}. Either the "
                "scrape configuration lost the exporter or its service discovery finds no "
                "replica.",
            ),
            r.alert(
                "LemonDataExporterNotPolling",
                f"({since_cycle})\nunless {r.on()} ({waiting})",
                "warning",
                "lemondata-exporter {{ $labels.instance }} has stopped polling",
                not_polling_text + " No task is waiting, so nothing is at risk yet.",
            ),
            r.alert(
                "LemonDataExporterNotPolling",
                f"({since_cycle})\nand {r.on()} ({waiting})",
                "critical",
                "lemondata-exporter {{ $labels.instance }} has stopped polling with tasks waiting",
                not_polling_text + " Tasks are waiting: their outcomes go unseen and they may "
                "expire upstream before anyone looks.",
            ),
            r.alert(
                "LemonDataExporterRestarting",
                f"changes({r.sel('process_start_time_seconds')}[{r.window('1h')}])"
                f" > {r.threshold('restarts')}",
                "warning",
                "lemondata-exporter {{ $labels.instance }} keeps restarting",
                f"The exporter process on {where} has started more than "
                f"{r.threshold('restarts')} times in the last hour (its start time changed). "
                "It crashes, is killed for memory, or fails its liveness probe.",
            ),
            r.alert(
                "LemonDataPollLagHigh",
                f"max {r.by(instance=True)} ({r.sel('lemondata_poll_lag_seconds')})"
                f" > {r.threshold('poll_lag_seconds')}",
                "warning",
                "lemondata-exporter {{ $labels.instance }} is falling behind with its polls",
                f"In the poll cycles of {where} the most overdue task has been due for more "
                f"than {r.threshold('poll_lag_seconds')} s for "
                f"{r.for_('LemonDataPollLagHigh')}. The request budget is too small for the "
                "number of tasks, so statuses and durations are seen late.",
            ),
            r.alert(
                "LemonDataDiscoveryFailing",
                f"sum {r.by('source', instance=True)} "
                f"(increase({r.sel('lemondata_discovery_errors_total')}[{r.window('10m')}])) > 0",
                "warning",
                "Task discovery from {{ $labels.source }} keeps failing on {{ $labels.instance }}",
                f"Discovery source {{{{ $labels.source }}}} of {where} has reported errors "
                "(unreadable file or bad lines) in every 10 minutes for "
                f"{r.for_('LemonDataDiscoveryFailing')}. Tasks it should have found may not be "
                "watched.",
            ),
            r.alert(
                "LemonDataModelLabelOverflow",
                f"sum {r.by(instance=True)} (increase("
                f"{r.sel('lemondata_model_label_overflow_total')}[{r.window('1h')}])) > 0",
                "warning",
                "lemondata-exporter {{ $labels.instance }} counts tasks under model other",
                f"{where} has seen more distinct models than metrics.max_models and counted "
                'finished tasks of the newest ones under model="other" in the last hour. '
                "Their per-model alerts and panels are merged.",
            ),
        ]

    def upstream_alerts(self) -> list[dict[str, Any]]:
        r = self
        by_i = r.by(ACCOUNT, instance=True)
        on_i = r.on(ACCOUNT, instance=True)
        by_a = r.by(ACCOUNT)
        last = r.sel("lemondata_api_last_answer_timestamp_seconds")
        where = r.where(instance=True) + OF_ACCOUNT
        account = "lemondata_api_account_state"
        requests = f"sum {by_a} ({r.sel('instance_code:lemondata_api_requests:rate5m')})"
        latency_window = r.window("10m")
        return [
            r.alert(
                "LemonDataAPIDown",
                f"(time() - max {by_i} ({last}) > {r.threshold('api_down_seconds')})\n"
                f"or\n(max {by_i} ({r.sel('lemondata_api_up')}) == 0 unless {on_i} {last})",
                "critical",
                "The LemonData API is unreachable from {{ $labels.instance }}",
                f"{where} has had no usable answer from the LemonData API for more than "
                f"{r.threshold('api_down_seconds')} s (timeouts, connection errors, 5xx or "
                "unusable bodies), probes included. Task statuses are not being updated.",
            ),
            r.alert(
                "LemonDataAPIKeyRejected",
                f"max {by_i} ({r.sel(account, KEY_REJECTED)}) == 1",
                "critical",
                "The LemonData API rejects the key of {{ $labels.instance }}",
                f"The LemonData API has rejected the API key of {where} (401/403) and no answer "
                f"has proved it good since, for {r.for_('LemonDataAPIKeyRejected')}. No task can "
                "be watched until the key is fixed; the exporter probes slowly and clears the "
                "state on the first good answer.",
            ),
            r.alert(
                "LemonDataAPIQuotaExhausted",
                f"max {by_i} ({r.sel(account, QUOTA_EXHAUSTED)}) == 1",
                "critical",
                "The LemonData account of {{ $labels.instance }} has no quota left",
                f"The LemonData API has answered {where} with 402 (insufficient or exceeded "
                f"quota) and no answer has proved otherwise since, for "
                f"{r.for_('LemonDataAPIQuotaExhausted')}. The application using the account "
                "cannot create tasks either.",
            ),
            r.alert(
                "LemonDataAPIErrorRatioHigh",
                f"sum {by_a} "
                f"({r.sel('instance_kind:lemondata_api_errors:rate5m', NOT_ANSWER_ERRORS)})\n"
                f"/ {requests}\n> {r.threshold('api_error_ratio')}",
                "warning",
                "Many LemonData API status requests fail",
                f"More than {r.threshold('api_error_ratio')} of the status requests sent by "
                f"{r.where()}{OF_ACCOUNT} failed or got an unusable answer (404 for expired "
                f"tasks and 429 left out) for {r.for_('LemonDataAPIErrorRatioHigh')}.",
            ),
            r.alert(
                "LemonDataAPIRateLimited",
                f"sum {by_a} (rate({r.sel('lemondata_api_errors_total', RATE_LIMITED)}"
                f"[{r.window('15m')}]))\n"
                f"/ sum {by_a} (rate({r.sel('lemondata_api_requests_total')}"
                f"[{r.window('15m')}]))\n> {r.threshold('rate_limited_ratio')}",
                "warning",
                "The LemonData API keeps rate-limiting {{ $labels.job }}",
                f"More than {r.threshold('rate_limited_ratio')} of the status requests of "
                f"{r.where()}{OF_ACCOUNT} have been answered 429 over 15 minutes, for "
                f"{r.for_('LemonDataAPIRateLimited')}, although the exporter slows down on "
                "429s and low X-RateLimit-Remaining. Something else spends the account's "
                "per-minute budget.",
            ),
            r.alert(
                "LemonDataRateLimitBudgetLow",
                f"{r.sel('instance:lemondata_api_rate_limit_remaining:ratio')}"
                f" < {r.threshold('rate_limit_remaining_ratio')}",
                "warning",
                "The LemonData account of {{ $labels.instance }} is close to its rate limit",
                f"Less than {r.threshold('rate_limit_remaining_ratio')} of the account's "
                f"per-minute request limit was left in the answers seen by {where}, for "
                f"{r.for_('LemonDataRateLimitBudgetLow')} (the gauges vanish once their reset "
                "time has passed). The application sharing the account risks 429s.",
            ),
            r.alert(
                "LemonDataAPILatencyHigh",
                f"histogram_quantile(0.95, sum {r.by('le')} "
                f"(rate({r.sel('lemondata_api_request_duration_seconds_bucket')}"
                f"[{latency_window}])))\n> {r.threshold('api_latency_p95_seconds')}",
                "warning",
                "LemonData API status requests of {{ $labels.job }} are slow",
                f"The 95th percentile of status request latency of {r.where()} has been above "
                f"{r.threshold('api_latency_p95_seconds')} s for "
                f"{r.for_('LemonDataAPILatencyHigh')}. Polls take longer, and the API may be "
                "close to failing.",
            ),
        ]

    def task_alerts(self) -> list[dict[str, Any]]:
        r = self
        slo = r.config.slo
        alerts: list[dict[str, Any]] = []
        for sli, objective, name, what in (
            (
                "availability",
                slo.availability_objective,
                "LemonDataAvailabilityBudgetBurn",
                "failed for the service's fault, expired or timed out",
            ),
            (
                "latency",
                slo.latency_objective,
                "LemonDataLatencyBudgetBurn",
                "completed slower than their threshold",
            ),
        ):
            budget = 1 - objective
            for burn in BURN_WINDOWS:
                limit = f"({number(burn.factor)} * {number(round(budget, 6))})"
                alerts.append(
                    r.alert(
                        name,
                        f"{r.sel(f'lemondata_slo:{sli}_errors:ratio_rate{burn.long}')} "
                        f"> {limit}\nand\n"
                        f"{r.sel(f'lemondata_slo:{sli}_errors:ratio_rate{burn.short}')} "
                        f"> {limit}",
                        burn.severity,
                        f"{{{{ $labels.model }}}} tasks burn the {sli} error budget fast"
                        if burn.severity == "critical"
                        else f"{{{{ $labels.model }}}} tasks burn the {sli} error budget",
                        f"Over the last {burn.long} and the last {burn.short}, more "
                        f"{{{{ $labels.model }}}} tasks of {r.where()} {what} than "
                        f"{number(burn.factor)} times the budget of the {objective:g} "
                        f"objective allows: at this rate the {slo.window} budget is gone in "
                        f"{r.budget_gone(burn.factor)}.",
                        for_key=f"burn_{burn.long}",
                        labels={"long": burn.long, "short": burn.short},
                    )
                )
        spent = (
            f"increase({r.sel(FINISHED_STORE, EXPIRED_OR_TIMEOUT)}[{r.window('1h')}])\n"
            f"  or increase({r.sel(FAILURES_STORE, SERVICE_FAULT)}[{r.window('1h')}])"
        )
        ratio = r.threshold("low_volume_error_ratio")
        alerts.append(
            r.alert(
                "LemonDataTasksFailingLowVolume",
                f"sum {r.by('model')} (\n  {spent}\n) >= {r.threshold('low_volume_min_errors')}\n"
                f"and {r.on('model')} {r.sel('lemondata_slo:availability_errors:ratio_rate1h')}"
                f" >= {ratio}\n"
                f"unless {r.on('model')} "
                f"{r.sel('lemondata_slo:availability_errors:ratio_rate30m')} < {ratio}",
                "critical",
                "{{ $labels.model }} tasks keep failing",
                f"At least {r.threshold('low_volume_min_errors')} {{{{ $labels.model }}}} tasks "
                f"of {r.where()} failed for the service's fault, expired or timed out in the "
                f"last hour, {ratio} or more of those that finished, and the last 30 minutes "
                "are no better. It catches models with too few tasks for the burn-rate alerts.",
            )
        )
        user_failures = r.sel(FAILURES_STORE, 'class="user"')
        alerts.append(
            r.alert(
                "LemonDataUserFailuresHigh",
                f"sum {r.by('model')} "
                f"(increase({user_failures}[{r.window('1h')}]))"
                f" >= {r.threshold('user_failure_min_count')}\n"
                f"and {r.on('model')} sum {r.by('model')} (rate({user_failures}"
                f"[{r.window('1h')}]))\n"
                f"/ sum {r.by('model')} (rate({r.sel(FINISHED_STORE, NOT_CANCELLED)}"
                f"[{r.window('1h')}]))\n> {r.threshold('user_failure_ratio')}",
                "info",
                "Many {{ $labels.model }} tasks are refused for their prompt or parameters",
                f"More than {r.threshold('user_failure_ratio')} of the {{{{ $labels.model }}}} "
                f"tasks of {r.where()} that finished in the last hour failed by the caller's "
                "own request (content policy, invalid parameters). Not an outage: they spend "
                "no error budget. Tell the team that sends them.",
            )
        )
        oldest = f"max {r.by('model')} ({r.sel('lemondata_task_processing_oldest_age_seconds')})"
        usual = (
            f"clamp_min({r.threshold('stuck_factor')} * "
            f"({r.sel('model:lemondata_task_duration_seconds:p95_rate1d')} >= 0), "
            f"{r.threshold('stuck_min_seconds')})"
        )
        fallback = f"0 * {oldest} + {r.threshold('stuck_no_history_seconds')}"
        alerts.append(
            r.alert(
                "LemonDataTaskStuckProcessing",
                f"{oldest}\n> {r.on('model')}\n({usual}\n or {r.on('model')} {fallback})",
                "warning",
                "A {{ $labels.model }} task is stuck in processing",
                f"The oldest {{{{ $labels.model }}}} task of {r.where()} still processing "
                f"is older than {r.threshold('stuck_factor')} times what the model's tasks "
                f"took at the 95th percentile over the last day (at least "
                f"{r.threshold('stuck_min_seconds')} s; "
                f"{r.threshold('stuck_no_history_seconds')} s without history). It will only "
                "time out much later.",
            )
        )
        alerts.append(
            r.alert(
                "LemonDataTasksStuckWaiting",
                f"max {r.by()} "
                f"({r.sel('lemondata_task_oldest_age_seconds', WAITING)})"
                f" > {r.threshold('waiting_seconds')}",
                "warning",
                "Tasks of {{ $labels.job }} have been waiting too long to start",
                f"The oldest task of {r.where()} that is still pending (or not yet answered "
                f"by the API) was created more than {r.threshold('waiting_seconds')} s ago.",
            )
        )
        return alerts

    def budget_gone(self, factor: float) -> str:
        days = seconds(self.config.slo.window) / 86400 / factor
        return f"{days * 24:.0f} hours" if days < 2 else f"{days:.0f} days"

    def alerting_groups(self) -> list[dict[str, Any]]:
        return [
            {"name": "lemondata-exporter.exporter", "rules": self.exporter_alerts()},
            {"name": "lemondata-exporter.upstream", "rules": self.upstream_alerts()},
            {"name": "lemondata-exporter.tasks", "rules": self.task_alerts()},
        ]


def build(config: BundleConfig, shorten: int = 1) -> dict[str, list[dict[str, Any]]]:
    """Rule file path -> its groups."""
    rules = Rules(config, shorten)
    return {RECORDING_FILE: rules.recording_groups(), ALERTS_FILE: rules.alerting_groups()}


# ---- text ------------------------------------------------------------------------------


HEADER = """\
# Generated by `python -m monitoring` from monitoring/rules.py and the bundle
# config. Do not edit: change a knob and render again (docs/monitoring.md).
"""


def knob_table(config: BundleConfig) -> str:
    """The thresholds and `for:` in effect, as a comment block."""
    lines = ["#", "# thresholds (bundle config `thresholds:`):"]
    for name, (default, meaning) in THRESHOLDS.items():
        value = number(config.thresholds.get(name, default))
        lines.append(f"#   {name} = {value}: {meaning}")
    lines.append("# for: durations (bundle config `for_durations:`):")
    for name in FOR_DURATIONS:
        value = config.for_durations.get(name, FOR_DURATIONS[name][0])
        lines.append(f"#   {name} = {value}")
    slo = config.slo
    lines.append(
        f"# SLOs: availability {slo.availability_objective:g}, latency "
        f"{slo.latency_objective:g} within {number(slo.latency_threshold_seconds)} s "
        f"({number(slo.video_latency_threshold_seconds)} s for video models), "
        f"over {slo.window}"
    )
    return "\n".join(lines) + "\n"


def render(config: BundleConfig, shorten: int = 1) -> dict[str, str]:
    """Rule file path (relative to the output root) -> file text."""
    files = {}
    for path, groups in build(config, shorten).items():
        header = HEADER + (knob_table(config) if path == ALERTS_FILE else "")
        files[path] = header + to_yaml({"groups": groups})
    return files


def groups_in_order(files: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every group of rendered rule files, recording rules first."""
    groups: list[dict[str, Any]] = []
    for path in RULE_FILES:
        if path in files:
            groups.extend(yaml.safe_load(files[path])["groups"])
    return groups
