"""The knobs of the monitoring bundle: one place for what users change.

Rules, their promtool inputs, the dashboards and the Kubernetes objects are all
rendered from a `BundleConfig`. The defaults are what the committed files under
prometheus/, dashboards/ and deploy/kubernetes/base/ hold; a user writes only
the knobs they change into a YAML file (see monitoring/bundle.example.yaml) and
renders again:

    python -m monitoring --config my-bundle.yaml --out my-bundle/

Names follow the kubernetes-mixin and node-mixin config layers (`selector`,
`clusterLabel`, `showMultiCluster`, `runbookURLPattern`) so that people who
know those find their way.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class _Knobs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MATCHER = re.compile(r'\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def parse_selector(selector: str) -> list[tuple[str, str, str]]:
    """(label, operator, value) of PromQL matchers written without braces."""
    matchers = []
    position = 0
    text = selector.strip()
    while position < len(text):
        match = MATCHER.match(text, position)
        if not match:
            raise ValueError(f"cannot parse selector {selector!r} at {text[position:]!r}")
        label, op, value = match.groups()
        matchers.append((label, op, value.encode().decode("unicode_escape")))
        position = match.end()
    return matchers


Duration = Annotated[str, Field(pattern=r"^([0-9]+(ms|s|m|h|d|w|y))+$")]
Ratio = Annotated[float, Field(gt=0, lt=1)]


class SLO(_Knobs):
    """Service-level objectives over `window` (the error budget's period)."""

    # Share of finished tasks that end `completed` or failed by the caller's own
    # fault (class="user"); service failures, expiries and timeouts spend budget.
    availability_objective: Ratio = 0.99
    # Share of completed tasks that finish within the model class's threshold.
    latency_objective: Ratio = 0.95
    # Latency thresholds in seconds, per model class: a model is `video` when
    # its label matches `video_models` (a PromQL regular expression).
    latency_threshold_seconds: Annotated[float, Field(gt=0)] = 120.0
    video_latency_threshold_seconds: Annotated[float, Field(gt=0)] = 600.0
    video_models: str = ".*(video|veo|kling|sora|runway|hailuo|wan).*"
    window: Duration = "30d"


class BundleConfig(_Knobs):
    """Everything a user may change in the rendered rules and dashboards."""

    # PromQL label matchers (without braces) that select the exporter's series.
    selector: str = 'job=~".*lemondata.*"'
    # Labels that identify where an exporter runs; aggregations keep them
    # (`sum by (<topology>, ...)`), so namespaces and clusters stay apart.
    topology_labels: tuple[str, ...] = ("cluster", "namespace", "job")
    # The label that tells clusters apart, and whether dashboards get a
    # `cluster` variable for it.
    cluster_label: str = "cluster"
    multi_cluster: bool = False
    # `{alert}` is replaced by the alert's name; the link goes in the
    # `runbook_url` annotation of every alert.
    runbook_url_pattern: str = "https://github.com/lemondata-exporter/lemondata-exporter/blob/main/docs/runbook.md#{alert_lower}"
    # Added to every alert as the `dashboard_url` annotation when not empty.
    dashboard_url: str = ""
    # Grafana: the folder the Kubernetes ConfigMaps ask the sidecar for, and a
    # prefix for dashboard uids (two bundles in one Grafana need two prefixes).
    grafana_folder: str = "LemonData"
    # Where people's browsers reach the exporter: the exemplar data link of the
    # Grafana data source opens `<exporter_url>/status/tasks/<task_id>`.
    exporter_url: Annotated[str, Field(pattern=r"^https?://[^\s]+[^/\s]$")] = (
        "http://localhost:9847"
    )
    dashboard_uid_prefix: str = "lemondata"
    # Every alert threshold and `for:` by name; the rule generator documents
    # each key and its default. Unknown keys are an error there, not here.
    thresholds: dict[str, float] = Field(default_factory=dict)
    for_durations: dict[str, Duration] = Field(default_factory=dict)
    slo: SLO = SLO()

    @field_validator("selector")
    @classmethod
    def _selector_parses(cls, selector: str) -> str:
        parse_selector(selector)  # a ValueError names the part that does not parse
        return selector


class BundleConfigError(ValueError):
    """A bundle config file that cannot be used; the message names file and field."""


def load(path: Path | None) -> BundleConfig:
    """The defaults, with the knobs in `path` (YAML) applied when given."""
    if path is None:
        return BundleConfig()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise BundleConfigError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleConfigError(f"{path}: expected a mapping of knobs at the top level")
    try:
        return BundleConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise BundleConfigError(f"{path}: {problems}") from exc
