"""The Grafana dashboards of the monitoring bundle, built with grafana-foundation-sdk.

Two dashboards, rendered from a `BundleConfig`:

- dashboards/lemondata-tasks.json: backlog, throughput, failures (user vs
  service), the SLOs and time to completion;
- dashboards/lemondata-exporter.json: the exporter replicas and the upstream API.

The SDK's builders and models (a Grafana 11 build) make the JSON, so panel,
variable and query fields are Grafana's own schema. Render with

    python -m monitoring [--config FILE] [--out DIR]

Rules of the queries, so that no panel shows a stale or made-up number:

- Stat panels and tables are instant queries: gauges as they are now, counts
  as `increase(...[$__range])` over the dashboard's time range, never the last
  point of a range query.
- Task counts come from the store-wide totals (`lemondata:store_*:max`,
  recorded by the bundle's rules): they survive crashes and restarts, and one
  replica group counts once.
- Ratios divide by `(... > 0)` and quantiles end in `>= 0`, so an idle model is
  a missing cell ("no data"), never NaN.
- Per-replica series are filtered by the exporter selector and the `job` and
  `instance` variables (`cluster` too when multi-cluster is on); recorded
  series carry no `instance` and are filtered by the topology variables only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import heatmap as heatmap_model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from monitoring import rules
from monitoring.config import BundleConfig

TASKS_FILE = "dashboards/lemondata-tasks.json"
EXPORTER_FILE = "dashboards/lemondata-exporter.json"
PROVISIONING_FILE = "grafana/provisioning/dashboards/dashboards.yml"
DATASOURCE_FILE = "grafana/provisioning/datasources/prometheus.yml"
# The exemplar label the exporter puts the task ID in (exporter/metrics/recorder.py).
EXEMPLAR_LABEL = "task_id"

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
GRAFANA = model.DataSourceRef(type_val="grafana", uid="-- Grafana --")
PER_MINUTE = "suffix: /min"
TIMES = "suffix:x"  # a burn rate: times the rate that spends exactly the budget
NO_DATA = "no data"

# Recorded by the bundle's rules (monitoring/rules.py): store-wide totals per
# replica group and the SLIs per model over the standard windows.
STORE_FINISHED = rules.FINISHED_STORE
STORE_FAILURES = rules.FAILURES_STORE
AVAILABILITY_ERRORS = "lemondata_slo:availability_errors:ratio_rate{window}"
LATENCY_ERRORS = "lemondata_slo:latency_errors:ratio_rate{window}"
# Burn-rate windows drawn (from the recorded ones), and the burn rates at which
# the rules' fastest pair pages and the next one opens a ticket (14.4: budget
# gone in about 2 days, 6: in 5).
BURN_WINDOWS = tuple(w for w in rules.SLI_WINDOWS if w in ("5m", "1h", "6h", "1d", "3d"))
FAST_BURN = rules.BURN_WINDOWS[0].factor
SLOW_BURN = rules.BURN_WINDOWS[1].factor

# Availability errors that are not `failed` tasks: the task never got a result.
LOST = 'status=~"expired|timeout"'
SERVICE = 'class="service"'
USER = 'class="user"'
COUNTED = 'status!="cancelled"'
COMPLETED = 'status="completed"'
NOT_FOUND = 'kind!="not_found"'


# Alert thresholds drawn on the panels that show the same quantity, by the
# names of the rules' `thresholds:` knobs; a user's knob wins over the default.
def alert_threshold(config: BundleConfig, name: str) -> float:
    """The alert threshold `name` under `config` (monitoring/rules.py documents each)."""
    return float(config.thresholds.get(name, rules.THRESHOLDS[name][0]))


# ---- selectors ------------------------------------------------------------------------


@dataclass(frozen=True)
class Selectors:
    """Label matchers (without braces) for the queries of one rendering."""

    raw: str  # per-replica series: selector, topology variables, instance
    recorded: str  # recorded series (no instance): topology variables only

    @property
    def raw_model(self) -> str:
        return _join(self.raw, 'model=~"$model"')

    @property
    def recorded_model(self) -> str:
        return _join(self.recorded, 'model=~"$model"')


def _join(*parts: str) -> str:
    return ", ".join(part for part in parts if part)


def topology_variables(config: BundleConfig) -> list[tuple[str, str]]:
    """(variable name, label) of the topology variables, outermost first."""
    cluster = [("cluster", config.cluster_label)] if config.multi_cluster else []
    return [*cluster, ("job", "job")]


def selectors(config: BundleConfig) -> Selectors:
    variables = topology_variables(config)
    # The recording rules keep only the topology labels (and `model`): a variable
    # over another label cannot filter recorded series.
    kept = [(n, label) for n, label in variables if label in config.topology_labels]
    return Selectors(
        raw=_join(
            config.selector,
            *(f'{label}=~"${n}"' for n, label in variables),
            'instance=~"$instance"',
        ),
        recorded=_join(*(f'{label}=~"${n}"' for n, label in kept)),
    )


# ---- PromQL ---------------------------------------------------------------------------


def increase(metric: str, matchers: str, window: str = "$__range") -> str:
    return f"increase({metric}{{{matchers}}}[{window}])"


def ratio(numerator: str, denominator: str) -> str:
    """numerator / denominator, absent (not NaN, not Inf) where the denominator is 0."""
    return f"{numerator} / ({denominator} > 0)"


def quantile(q: float, bucket: str, matchers: str, by: str, window: str) -> str:
    """A quantile of a `_bucket` counter; `>= 0` drops the NaN of an empty histogram."""
    grouping = ", ".join(["le", *([by] if by else [])])
    return (
        f"histogram_quantile({q}, sum by ({grouping}) "
        f"(rate({bucket}{{{matchers}}}[{window}]))) >= 0"
    )


def availability_errors(rm: str, window: str, by: str = "") -> str:
    """Finished tasks that spend the availability budget: service failures, expiries, timeouts."""
    group = f" by ({by})" if by else ""
    return (
        f"sum{group} ({increase(STORE_FAILURES, _join(rm, SERVICE), window)}"
        f" or {increase(STORE_FINISHED, _join(rm, LOST), window)})"
    )


def counted_finishes(rm: str, window: str, by: str = "") -> str:
    """Finished tasks the SLIs count: every finish except cancellations."""
    group = f" by ({by})" if by else ""
    return f"sum{group} ({increase(STORE_FINISHED, _join(rm, COUNTED), window)})"


def _le(seconds: float) -> str:
    # The bucket bound as the rules match it: 120 or 120.0, whichever was ingested.
    return f'le=~"{rules.le_matcher(seconds)}"'


def latency_errors_ratio(config: BundleConfig, m: str, window: str) -> str:
    """Share of completed tasks slower than their model class's SLO threshold."""
    slo = config.slo
    bucket = "lemondata_task_duration_seconds_bucket"
    completed = _join(m, COMPLETED)
    image = _join(completed, f'model!~"{slo.video_models}"', _le(slo.latency_threshold_seconds))
    video = _join(
        completed, f'model=~"{slo.video_models}"', _le(slo.video_latency_threshold_seconds)
    )
    fast = f"sum({increase(bucket, image, window)} or {increase(bucket, video, window)})"
    total = f"sum({increase('lemondata_task_duration_seconds_count', completed, window)})"
    return f"({total} - {fast}) / ({total} > 0)"


# ---- panels ---------------------------------------------------------------------------


def query(
    expr: str, legend: str = "", ref: str = "A", *, exemplar: bool = False
) -> prometheus.Dataquery:
    """A range query, for time series panels; `exemplar` also asks for the task IDs
    the exporter attaches to the histogram's observations (drawn as points whose
    data link opens the task's page, see `datasource_provisioning`)."""
    built = (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend or "__auto")
        .ref_id(ref)
        .range()
        .datasource(DATASOURCE)
    )
    return built.exemplar(True) if exemplar else built


def instant(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    """An instant query: the value now (or over `$__range`), for stats and tables."""
    return (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend or "__auto")
        .ref_id(ref)
        .instant()
        .datasource(DATASOURCE)
    )


def refs(*queries: tuple[str, str], exemplar: bool = False) -> list[prometheus.Dataquery]:
    return [
        query(expr, legend, chr(ord("A") + i), exemplar=exemplar)
        for i, (expr, legend) in enumerate(queries)
    ]


def steps(*pairs: tuple[str, float | None]) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps(
            [
                # rounded: 1 - 0.99 is 0.010000000000000009 in binary floating point
                model.Threshold(color=color, value=None if value is None else round(value, 9))
                for color, value in pairs
            ]
        )
    )


GREEN = (("green", None),)

NO_DATA_MAPPING = model.SpecialValueMap(
    options=model.DashboardSpecialValueMapOptions(
        match=model.SpecialValueMatch.NULL_AND_NAN,
        result=model.ValueMappingResult(text=NO_DATA, color="text", index=0),
    )
)


def value_mapping(values: dict[str, tuple[str, str]]) -> model.ValueMap:
    """Value -> (text, color)."""
    return model.ValueMap(
        options={
            value: model.ValueMappingResult(text=text, color=color, index=i)
            for i, (value, (text, color)) in enumerate(values.items())
        }
    )


UP_MAPPING = value_mapping({"0": ("DOWN", "red"), "1": ("UP", "green")})


def timeseries_panel(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    stack: bool = False,
    bars: bool = False,
    alert_at: Sequence[tuple[str, float]] = (),
    max_value: float | None = None,
) -> timeseries.Panel:
    """A time series; `alert_at` draws (color, value) threshold lines."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .targets(list(targets))
        .color_scheme(dash.FieldColor().mode(model.FieldColorModeId.PALETTE_CLASSIC))
        .draw_style(common.GraphDrawStyle.BARS if bars else common.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(60 if bars else (25 if stack else 10))
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
        .stacking(
            common_builders.StackingConfig()
            .group("A")
            .mode(common.StackingMode.NORMAL if stack else common.StackingMode.NONE)
        )
        .thresholds(steps(*GREEN, *alert_at))
        .thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(
                common.GraphThresholdsStyleMode.LINE
                if alert_at
                else common.GraphThresholdsStyleMode.OFF
            )
        )
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    if max_value is not None:
        panel.max(max_value)
    return panel


def stat_panel(
    title: str,
    description: str,
    unit: str,
    expr: str,
    *,
    legend: str = "",
    thresholds: Sequence[tuple[str, float | None]] = GREEN,
    mappings: Sequence[model.ValueMapping] = (),
    no_value: str = NO_DATA,
) -> stat.Panel:
    """A single value from an instant query; "no data" (not a stale value) when there is none."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .with_target(instant(expr, legend))
        .thresholds(steps(*thresholds))
        .color_scheme(dash.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
        .mappings([*mappings, NO_DATA_MAPPING])
        .no_value(no_value)
        .color_mode(
            common.BigValueColorMode.BACKGROUND if mappings else common.BigValueColorMode.VALUE
        )
        .graph_mode(common.BigValueGraphMode.NONE)
        .justify_mode(common.BigValueJustifyMode.AUTO)
        .orientation(common.VizOrientation.AUTO)
        .text_mode(common.BigValueTextMode.AUTO)
        .wide_layout(True)
        .show_percent_change(False)
        .reduce_options(
            common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False).fields("")
        )
    )


def table_panel(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    columns: dict[str, tuple[str, str]],
    hide: Sequence[str] = ("Time",),
) -> table.Panel:
    """An instant table merged on its labels; `columns` maps a frame field to (name, unit)."""
    panel = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit("none")
        .targets([target.format(PromQueryFormat.TABLE) for target in targets])
        .thresholds(steps(*GREEN))
        .no_value("-")
        .cell_height(common.TableCellHeight.SM)
        .show_header(True)
        .align(common.FieldTextAlignment.AUTO)
        .with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            model.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": dict.fromkeys(hide, True),
                    "renameByName": {field: name for field, (name, _) in columns.items()},
                },
            )
        )
    )
    for field, (_, unit) in columns.items():
        panel.override_by_name(field, [model.DynamicConfigValue(id_val="unit", value=unit)])
    return panel


def heatmap_panel(
    title: str, description: str, y_unit: str, target: prometheus.Dataquery
) -> heatmap.Panel:
    return (
        heatmap.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit("short")
        .with_target(target.format(PromQueryFormat.HEATMAP))
        .calculate(False)
        .cell_gap(1)
        .color(
            heatmap.HeatmapColorOptions()
            .mode(heatmap_model.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .fill("dark-orange")
            .scale(heatmap_model.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
            .reverse(False)
        )
        .filter_values(heatmap.FilterValueRange().le(1e-9))
        .rows_frame(heatmap.RowsHeatmapOptions().layout(common.HeatmapCellLayout.AUTO))
        .show_legend()
        .y_axis(heatmap.YAxisConfig().unit(y_unit).reverse(False))
        .exemplars_color("rgba(255,0,255,0.7)")
    )


# ---- dashboards -----------------------------------------------------------------------


AnyPanel = timeseries.Panel | stat.Panel | table.Panel | heatmap.Panel


class Board:
    """A dashboard being built: numbers panels, lays them out left to right in rows of 24."""

    def __init__(self, config: BundleConfig, key: str, title: str, description: str) -> None:
        self.config = config
        self.next_id = 1
        self.builder = (
            dash.Dashboard(title)
            .uid(f"{config.dashboard_uid_prefix}-{key}")
            .description(description)
            .tags(["lemondata", "lemondata-exporter"])
            .editable()
            .tooltip(model.DashboardCursorSync.CROSSHAIR)
            .time("now-3h", "now")
            .timezone("browser")
            .refresh("30s")
            .fiscal_year_start_month(0)
            .live_now(False)
            .week_start("")
            .version(1)
            .link(
                dash.DashboardLink("LemonData dashboards")
                .type(model.DashboardLinkType.DASHBOARDS)
                .tags(["lemondata"])
                .as_dropdown(False)
                .include_vars(True)
                .keep_time(True)
                .icon("external link")
                .target_blank(False)
                .tooltip("")
                .url("")
            )
            .annotation(
                dash.AnnotationQuery()
                .name("Annotations & Alerts")
                .datasource(GRAFANA)
                .enable(True)
                .hide(True)
                .icon_color("rgba(0, 211, 255, 1)")
                .type("dashboard")
                .built_in(1)
            )
            .variables(variables(config))
        )

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str) -> None:
        self.builder.with_row(dash.Row(title).id(self._id()))

    def add(self, panel: AnyPanel, w: int, h: int) -> None:
        """Adds `panel`, `w` columns wide and `h` rows high, after the last one."""
        self.builder.with_panel(panel.id(self._id()).span(w).height(h))

    def build(self) -> model.Dashboard:
        return self.builder.build()


def variables(config: BundleConfig) -> list[cogbuilder.Builder[model.VariableModel]]:
    """datasource, the topology variables (cluster when multi-cluster, job), instance, model."""

    def query_variable(name: str, label: str, expr: str) -> dash.QueryVariable:
        return (
            dash.QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE)
            .query(expr)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
            .regex("")
            .hide(model.VariableHide.DONT_HIDE)
        )

    found: list[cogbuilder.Builder[model.VariableModel]] = [
        dash.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .regex("")
        .hide(model.VariableHide.DONT_HIDE)
    ]
    outer: list[str] = []
    for name, label in [*topology_variables(config), ("instance", "instance")]:
        matchers = _join(config.selector, *outer)
        found.append(
            query_variable(
                name,
                name.capitalize(),
                f"label_values(lemondata_exporter_build_info{{{matchers}}}, {label})",
            )
        )
        outer.append(f'{label}=~"${name}"')
    found.append(
        query_variable(
            "model",
            "Model",
            f"label_values(lemondata_store_tasks_finished_total{{{selectors(config).raw}}}, model)",
        )
    )
    return found


def tasks_dashboard(config: BundleConfig) -> model.Dashboard:
    sel = selectors(config)
    s, m, rm = sel.raw, sel.raw_model, sel.recorded_model
    slo = config.slo
    waiting_alert = alert_threshold(config, "waiting_seconds")
    # An availability error ratio above budget x factor: what the burn-rate alerts see.
    budget = 1 - slo.availability_objective
    image_slow = slo.latency_threshold_seconds
    video_slow = slo.video_latency_threshold_seconds
    board = Board(
        config,
        "tasks",
        "LemonData tasks",
        "Asynchronous image and video generation tasks on the LemonData API, as watched by "
        "lemondata-exporter: backlog, throughput, failures, service levels and time to "
        "completion.",
    )

    board.row("Now")
    board.add(
        stat_panel(
            "Waiting",
            "Tasks not started yet, now: pending upstream, or not yet answered by the API "
            "(status unknown). All models: the task gauge has no model label.",
            "short",
            f'sum(lemondata_tasks{{{s}, status=~"unknown|pending"}})',
        ),
        w=4,
        h=4,
    )
    board.add(
        stat_panel(
            "Running",
            "Tasks the API reports as processing, now. All models.",
            "short",
            f'sum(lemondata_tasks{{{s}, status="processing"}})',
        ),
        w=4,
        h=4,
    )
    board.add(
        stat_panel(
            "Oldest waiting task",
            "Age (now - created) of the oldest task still pending or not yet answered, now. "
            f"LemonDataTasksStuckWaiting fires above {waiting_alert:g} s.",
            "s",
            f'max(lemondata_task_oldest_age_seconds{{{s}, status=~"unknown|pending"}})',
            thresholds=(("green", None), ("orange", waiting_alert / 3), ("red", waiting_alert)),
        ),
        w=4,
        h=4,
    )
    board.add(
        stat_panel(
            "Finished",
            "Tasks that reached a finished status (completed, failed, cancelled, expired, "
            "timeout) in the dashboard's time range, selected models. Counted by the store, "
            "so a crashed or restarted replica loses none.",
            "short",
            f"sum({increase(STORE_FINISHED, rm)})",
        ),
        w=4,
        h=4,
    )
    board.add(
        stat_panel(
            "Failure ratio",
            "Share of the tasks finished in the time range that failed by the service's "
            "fault, expired or timed out (the availability SLO's errors); cancelled tasks are "
            "left out, the caller's own failures count as good (see user vs service below). "
            f"Orange above the error budget ({budget:.2%}), red above {FAST_BURN:g} times it.",
            "percentunit",
            ratio(availability_errors(rm, "$__range"), counted_finishes(rm, "$__range")),
            thresholds=(("green", None), ("orange", budget), ("red", FAST_BURN * budget)),
        ),
        w=4,
        h=4,
    )
    board.add(
        stat_panel(
            "p95 time to completion",
            "95th percentile of created -> completed over the time range, selected models "
            f"together. Orange above the latency SLO's threshold for image models "
            f"({image_slow:g} s), red above the one for video models ({video_slow:g} s).",
            "s",
            quantile(
                0.95,
                "lemondata_task_duration_seconds_bucket",
                _join(m, COMPLETED),
                "",
                "$__range",
            ),
            thresholds=(("green", None), ("orange", image_slow), ("red", video_slow)),
        ),
        w=4,
        h=4,
    )

    board.row("Service level")
    window = slo.window
    availability_ratio = ratio(availability_errors(rm, window), counted_finishes(rm, window))
    latency_ratio = latency_errors_ratio(config, m, window)
    budget_steps = (("red", None), ("orange", 0.0), ("green", 0.25))
    board.add(
        stat_panel(
            f"Availability, last {window}",
            "Share of the tasks finished in the SLO window (or as far back as Prometheus "
            "keeps data) that completed or failed by the caller's own fault (class user); "
            "service failures, expiries and timeouts are "
            f"errors, cancellations are not counted. Objective {slo.availability_objective:.2%}.",
            "percentunit",
            f"1 - ({availability_ratio})",
            thresholds=(("red", None), ("green", slo.availability_objective)),
        ),
        w=6,
        h=4,
    )
    board.add(
        stat_panel(
            "Availability error budget left",
            f"Share of the availability error budget ({1 - slo.availability_objective:.2%} of "
            f"the tasks over {window}) not yet spent; below 0 the objective is missed.",
            "percentunit",
            f"1 - ({availability_ratio}) / {1 - slo.availability_objective:g}",
            thresholds=budget_steps,
        ),
        w=6,
        h=4,
    )
    board.add(
        stat_panel(
            f"Latency, last {window}",
            "Share of the tasks completed in the SLO window within their model class's "
            f"threshold: {slo.latency_threshold_seconds:g} s, or "
            f"{slo.video_latency_threshold_seconds:g} s for video models. "
            f"Objective {slo.latency_objective:.2%}.",
            "percentunit",
            f"1 - ({latency_ratio})",
            thresholds=(("red", None), ("green", slo.latency_objective)),
        ),
        w=6,
        h=4,
    )
    board.add(
        stat_panel(
            "Latency error budget left",
            f"Share of the latency error budget ({1 - slo.latency_objective:.2%} of the "
            f"completed tasks over {window}) not yet spent; below 0 the objective is missed.",
            "percentunit",
            f"1 - ({latency_ratio}) / {1 - slo.latency_objective:g}",
            thresholds=budget_steps,
        ),
        w=6,
        h=4,
    )
    for kind, recorded, objective in (
        ("Availability", AVAILABILITY_ERRORS, slo.availability_objective),
        ("Latency", LATENCY_ERRORS, slo.latency_objective),
    ):
        board.add(
            timeseries_panel(
                f"{kind} burn rate",
                f"How fast the {kind.lower()} error budget burns, for the worst selected model, "
                "over several windows: 1 spends exactly the budget in the SLO window. The "
                f"lines at {SLOW_BURN:g} and {FAST_BURN:g} are where the multi-window "
                "burn-rate alerts ticket and page.",
                TIMES,
                refs(
                    *(
                        (
                            f"max({recorded.format(window=w)}{{{rm}}}) / {1 - objective:g}",
                            w,
                        )
                        for w in BURN_WINDOWS
                    )
                ),
                alert_at=(("orange", SLOW_BURN), ("red", FAST_BURN)),
            ),
            w=12,
            h=8,
        )
    burn_windows = ("1h", "6h", "3d")
    burn_targets = [
        instant(
            f"max by (model) ({recorded.format(window=w)}{{{rm}}}) / {1 - objective:g} >= 0",
            ref=chr(ord("A") + i),
        )
        for i, (recorded, objective, w) in enumerate(
            (recorded, objective, w)
            for recorded, objective in (
                (AVAILABILITY_ERRORS, slo.availability_objective),
                (LATENCY_ERRORS, slo.latency_objective),
            )
            for w in burn_windows
        )
    ]
    board.add(
        table_panel(
            "Burn rate per model",
            "Per model, how fast each error budget burns now over 1 h, 6 h and 3 days "
            "(1 spends exactly the budget in the SLO window). A model with nothing finished "
            "in a window has no value there.",
            burn_targets,
            columns={
                "model": ("Model", "none"),
                **{
                    f"Value #{chr(ord('A') + i)}": (f"{kind} {w}", TIMES)
                    for i, (kind, w) in enumerate(
                        (kind, w) for kind in ("Availability", "Latency") for w in burn_windows
                    )
                },
            },
        ),
        w=24,
        h=8,
    )

    board.row("Throughput and failures")
    board.add(
        timeseries_panel(
            "Tasks waiting and running",
            "Unfinished tasks in the exporters' stores by last seen status: unknown (not yet "
            "answered), pending, processing. All models.",
            "short",
            refs(
                (
                    "sum by (status) "
                    f'(lemondata_tasks{{{s}, status=~"unknown|pending|processing"}})',
                    "{{status}}",
                )
            ),
            stack=True,
        ),
        w=12,
        h=8,
    )
    board.add(
        timeseries_panel(
            "Finished per minute by status",
            "Tasks that reached each finished status, per minute, selected models. Counted "
            "by the store: every replica, across restarts and crashes.",
            PER_MINUTE,
            refs(
                (
                    f"sum by (status) (rate({STORE_FINISHED}{{{rm}}}[$__rate_interval])) * 60",
                    "{{status}}",
                )
            ),
            stack=True,
        ),
        w=12,
        h=8,
    )
    board.add(
        timeseries_panel(
            "Failure ratio per model",
            "Per model, the share of finished tasks (cancelled left out) that failed by the "
            "service's fault, expired or timed out, over 5 minutes: the availability SLI's "
            f"errors. The lines are {SLOW_BURN:g} and {FAST_BURN:g} times the error budget, "
            "where the burn-rate alerts ticket and page when longer windows agree.",
            "percentunit",
            refs(
                (
                    f"max by (model) ({AVAILABILITY_ERRORS.format(window='5m')}{{{rm}}}) >= 0",
                    "{{model}}",
                )
            ),
            alert_at=(("orange", SLOW_BURN * budget), ("red", FAST_BURN * budget)),
            max_value=1,
        ),
        w=12,
        h=8,
    )
    board.add(
        timeseries_panel(
            "Failures per minute by reason",
            "Failed tasks per minute by the reason classified from their error text, "
            "selected models. A sudden band is a burst of one reason.",
            PER_MINUTE,
            refs(
                (
                    f"sum by (reason) (rate({STORE_FAILURES}{{{rm}}}[$__rate_interval])) * 60",
                    "{{reason}}",
                )
            ),
            stack=True,
            bars=True,
        ),
        w=12,
        h=8,
    )
    board.add(
        timeseries_panel(
            "Failures per minute: user vs service",
            "Who caused the failures, per minute: `user` (the caller's prompt or parameters: "
            "content policy, invalid request) or `service` (the API or its providers); "
            "expired and timed-out tasks are the service's too. Only service failures spend "
            "the availability budget and page.",
            PER_MINUTE,
            refs(
                (
                    f"sum by (class) (rate({STORE_FAILURES}{{{rm}}}[$__rate_interval])) * 60",
                    "{{class}}",
                ),
                (
                    f"sum(rate({STORE_FINISHED}{{{rm}, {LOST}}}[$__rate_interval])) * 60",
                    "service (expired, timeout)",
                ),
            ),
            stack=True,
            bars=True,
        ),
        w=12,
        h=8,
    )
    board.add(
        timeseries_panel(
            "Oldest processing task per model",
            "Age (now - created) of the oldest task in processing, per model. A line that "
            "keeps climbing is a task stuck upstream, long before it times out.",
            "s",
            refs(
                (
                    f"max by (model) (lemondata_task_processing_oldest_age_seconds{{{m}}})",
                    "{{model}}",
                )
            ),
        ),
        w=12,
        h=8,
    )
    board.add(
        table_panel(
            "Models over the time range",
            "One line per model over the dashboard's time range: finished tasks, failure "
            "ratio (as the Failure ratio stat: the service's failures, expiries and "
            "timeouts; cancelled left out), failures by class, and time to completion "
            "(p50, p95). A model with nothing to measure has an empty cell, never NaN.",
            [
                instant(f"sum by (model) ({increase(STORE_FINISHED, rm)})", ref="A"),
                instant(
                    ratio(
                        availability_errors(rm, "$__range", "model"),
                        counted_finishes(rm, "$__range", "model"),
                    ),
                    ref="B",
                ),
                instant(
                    f"sum by (model) ({increase(STORE_FAILURES, _join(rm, SERVICE))})",
                    ref="C",
                ),
                instant(
                    f"sum by (model) ({increase(STORE_FAILURES, _join(rm, USER))})",
                    ref="D",
                ),
                *(
                    instant(
                        quantile(
                            q,
                            "lemondata_task_duration_seconds_bucket",
                            _join(m, COMPLETED),
                            "model",
                            "$__range",
                        ),
                        ref=ref,
                    )
                    for q, ref in ((0.5, "E"), (0.95, "F"))
                ),
            ],
            columns={
                "model": ("Model", "none"),
                "Value #A": ("Finished", "short"),
                "Value #B": ("Failure ratio", "percentunit"),
                "Value #C": ("Service failures", "short"),
                "Value #D": ("User failures", "short"),
                "Value #E": ("p50 time to completion", "s"),
                "Value #F": ("p95 time to completion", "s"),
            },
        ),
        w=24,
        h=8,
    )

    board.row("Time to completion")
    board.add(
        timeseries_panel(
            "Time to completion per model (p50, p90, p99)",
            "Quantiles of created -> completed for tasks that completed recently, per model. "
            "Failed and timed-out tasks are not included. The lines are the latency SLO's "
            f"thresholds: {image_slow:g} s for image models, {video_slow:g} s for video models.",
            "s",
            refs(
                *(
                    (
                        quantile(
                            q,
                            "lemondata_task_duration_seconds_bucket",
                            _join(m, COMPLETED),
                            "model",
                            "$__rate_interval",
                        ),
                        f"p{round(q * 100)} {{{{model}}}}",
                    )
                    for q in (0.5, 0.9, 0.99)
                ),
                exemplar=True,
            ),
            alert_at=(("orange", image_slow), ("red", video_slow)),
        ),
        w=12,
        h=9,
    )
    board.add(
        heatmap_panel(
            "Time to completion distribution",
            "How many tasks completed in each duration bucket per interval, selected models. "
            "A band moving up means tasks getting slower.",
            "s",
            query(
                "sum by (le) (increase(lemondata_task_duration_seconds_bucket"
                f'{{{m}, status="completed"}}[$__rate_interval]))',
                "{{le}}",
                exemplar=True,
            ),
        ),
        w=12,
        h=9,
    )
    board.add(
        timeseries_panel(
            "Time pending per model (p50, p90)",
            "Quantiles of created -> first seen processing, per model: how long tasks wait in "
            "the upstream queue before they start.",
            "s",
            refs(
                *(
                    (
                        quantile(
                            q,
                            "lemondata_task_pending_seconds_bucket",
                            m,
                            "model",
                            "$__rate_interval",
                        ),
                        f"p{round(q * 100)} {{{{model}}}}",
                    )
                    for q in (0.5, 0.9)
                ),
                exemplar=True,
            ),
        ),
        w=12,
        h=8,
    )
    board.add(
        timeseries_panel(
            "Oldest unfinished task by status",
            "Age (now - created) of the oldest task in each unfinished status. All models. "
            "The red line is the threshold of LemonDataTasksStuckWaiting (unknown and pending).",
            "s",
            refs((f"max by (status) (lemondata_task_oldest_age_seconds{{{s}}})", "{{status}}")),
            alert_at=(("red", waiting_alert),),
        ),
        w=12,
        h=8,
    )
    board.add(
        timeseries_panel(
            "Duration uncertainty (p50, p90)",
            "For durations measured without the API's `updated` field: half the gap between "
            "the last poll that saw the task unfinished and the first that saw it finished, "
            "the most the measured duration can be off. All models.",
            "s",
            refs(
                *(
                    (
                        quantile(
                            q,
                            "lemondata_task_duration_uncertainty_seconds_bucket",
                            s,
                            "",
                            "$__rate_interval",
                        ),
                        f"p{round(q * 100)}",
                    )
                    for q in (0.5, 0.9)
                )
            ),
        ),
        w=12,
        h=8,
    )
    return board.build()


def exporter_dashboard(config: BundleConfig) -> model.Dashboard:
    s = selectors(config).raw
    poll_lag_alert = alert_threshold(config, "poll_lag_seconds")
    not_polling_alert = alert_threshold(config, "not_polling_seconds")
    api_down_alert = alert_threshold(config, "api_down_seconds")
    api_error_alert = alert_threshold(config, "api_error_ratio")
    budget_low_alert = alert_threshold(config, "rate_limit_remaining_ratio")
    api_latency_alert = alert_threshold(config, "api_latency_p95_seconds")
    board = Board(
        config,
        "exporter",
        "LemonData exporter and API health",
        "Health of the lemondata-exporter replicas and of the LemonData API they poll: "
        "scrapes, poll cycles, account state, request codes, errors, latency and rate limits.",
    )

    board.row("Exporter")
    board.add(
        stat_panel(
            "Exporter up",
            "Whether Prometheus could scrape each exporter replica at its last scrape (the "
            "`up` series). LemonDataExporterDown fires after some minutes down.",
            "none",
            f"sum by (instance) (up{{{s}}})",
            legend="{{instance}}",
            thresholds=(("red", None), ("green", 1)),
            mappings=(UP_MAPPING,),
        ),
        w=6,
        h=4,
    )
    board.add(
        stat_panel(
            "Since last poll cycle",
            "Seconds since each replica last finished a poll cycle, now. "
            f"LemonDataExporterNotPolling fires above {not_polling_alert:g} s.",
            "s",
            f"time() - max by (instance) (lemondata_last_poll_cycle_timestamp_seconds{{{s}}})",
            legend="{{instance}}",
            thresholds=(("green", None), ("orange", poll_lag_alert), ("red", not_polling_alert)),
        ),
        w=6,
        h=4,
    )
    board.add(
        table_panel(
            "Version",
            "The version each replica runs (lemondata_exporter_build_info), now.",
            [instant(f"sum by (job, instance, version) (lemondata_exporter_build_info{{{s}}})")],
            columns={
                "job": ("Job", "none"),
                "instance": ("Instance", "none"),
                "version": ("Version", "none"),
            },
            hide=("Time", "Value"),
        ),
        w=12,
        h=4,
    )
    board.add(
        timeseries_panel(
            "Poll lag",
            "In the last poll cycle of each replica, how long the most overdue task had been "
            "due. It grows when the request budget is too small for the number of tasks. "
            "The red line is the threshold of LemonDataPollLagHigh.",
            "s",
            refs((f"max by (instance) (lemondata_poll_lag_seconds{{{s}}})", "{{instance}}")),
            alert_at=(("red", poll_lag_alert),),
        ),
        w=12,
        h=8,
    )
    board.add(
        timeseries_panel(
            "Poll cycle duration (p50, p99)",
            "Wall time of one poll cycle per replica.",
            "s",
            refs(
                *(
                    (
                        quantile(
                            q,
                            "lemondata_poll_cycle_duration_seconds_bucket",
                            s,
                            "instance",
                            "$__rate_interval",
                        ),
                        f"p{round(q * 100)} {{{{instance}}}}",
                    )
                    for q in (0.5, 0.99)
                )
            ),
        ),
        w=12,
        h=8,
    )
    board.add(
        timeseries_panel(
            "Poll cycles per minute",
            "Poll cycles run per minute by each replica. Zero means the poller has stopped.",
            PER_MINUTE,
            refs(
                (
                    f"sum by (instance) (rate(lemondata_poll_cycles_total{{{s}}}"
                    "[$__rate_interval])) * 60",
                    "{{instance}}",
                )
            ),
        ),
        w=8,
        h=8,
    )
    board.add(
        timeseries_panel(
            "Discovery per minute",
            "New tasks added to the stores per minute by each discovery source, failed "
            "discovery reads (unreadable file, bad line), and tasks offered but not tracked "
            "(store full, or a malformed entry).",
            PER_MINUTE,
            refs(
                (
                    f"sum by (source) (rate(lemondata_tasks_discovered_total{{{s}}}"
                    "[$__rate_interval])) * 60",
                    "discovered {{source}}",
                ),
                (
                    f"sum by (source) (rate(lemondata_discovery_errors_total{{{s}}}"
                    "[$__rate_interval])) * 60",
                    "errors {{source}}",
                ),
                (
                    f"sum by (source, reason) (rate(lemondata_tasks_rejected_total{{{s}}}"
                    "[$__rate_interval])) * 60",
                    "rejected {{source}} ({{reason}})",
                ),
            ),
        ),
        w=8,
        h=8,
    )
    board.add(
        timeseries_panel(
            "Exporter memory",
            "Resident memory of each exporter process.",
            "bytes",
            refs((f"sum by (instance) (process_resident_memory_bytes{{{s}}})", "{{instance}}")),
        ),
        w=8,
        h=8,
    )

    board.row("Upstream API")
    board.add(
        stat_panel(
            "API up",
            "Whether the latest status requests of each replica got a usable answer (a "
            "status, 404 task-not-found, or 429), now. Kept current by a probe when there is "
            "nothing to poll. LemonDataAPIDown fires after some minutes down.",
            "none",
            f"min by (instance) (lemondata_api_up{{{s}}})",
            legend="{{instance}}",
            thresholds=(("red", None), ("green", 1)),
            mappings=(UP_MAPPING,),
        ),
        w=4,
        h=4,
    )
    board.add(
        stat_panel(
            "Account state",
            "The API account as the exporters see it now: OK, KEY REJECTED after a 401/403, "
            "QUOTA EXHAUSTED after a 402. A problem holds until an answer about a task "
            "proves the key works.",
            "none",
            f'max(lemondata_api_account_state{{{s}, state="key_rejected"}})'
            f' + 2 * max(lemondata_api_account_state{{{s}, state="quota_exhausted"}})',
            thresholds=(("green", None), ("red", 1)),
            mappings=(
                value_mapping(
                    {
                        "0": ("OK", "green"),
                        "1": ("KEY REJECTED", "red"),
                        "2": ("QUOTA EXHAUSTED", "red"),
                        "3": ("KEY REJECTED, QUOTA EXHAUSTED", "red"),
                    }
                ),
            ),
        ),
        w=4,
        h=4,
    )
    board.add(
        stat_panel(
            "Since last API answer",
            "Seconds since any replica last got a usable answer from the API, now. It stays "
            "small while the API answers, even with nothing to poll (the probe). "
            f"LemonDataAPIDown fires above {api_down_alert:g} s.",
            "s",
            f"time() - max(lemondata_api_last_answer_timestamp_seconds{{{s}}})",
            thresholds=(("green", None), ("orange", api_down_alert / 2), ("red", api_down_alert)),
        ),
        w=4,
        h=4,
    )
    board.add(
        stat_panel(
            "API error ratio",
            "Share of the status requests sent in the time range that failed or got an "
            "unusable answer (404 for expired tasks left out). "
            f"LemonDataAPIErrorRatioHigh fires above {api_error_alert:.0%} over a shorter "
            "window.",
            "percentunit",
            ratio(
                f"sum({increase('lemondata_api_errors_total', _join(s, NOT_FOUND))})",
                f"sum({increase('lemondata_api_requests_total', s)})",
            ),
            thresholds=(("green", None), ("orange", api_error_alert / 5), ("red", api_error_alert)),
        ),
        w=4,
        h=4,
    )
    board.add(
        stat_panel(
            "Rate limit left",
            "Share of the account's per-minute request limit left in the last answer with "
            "rate-limit headers (lowest replica); no window once its reset time has passed. "
            f"LemonDataRateLimitBudgetLow fires under {budget_low_alert:.0%}.",
            "percentunit",
            f"min(lemondata_api_rate_limit_remaining{{{s}}}"
            f" / (lemondata_api_rate_limit_limit{{{s}}} > 0))",
            thresholds=(
                ("red", None),
                ("orange", budget_low_alert),
                ("green", budget_low_alert * 2.5),
            ),
            no_value="no window",
        ),
        w=4,
        h=4,
    )
    board.add(
        stat_panel(
            "Rate limit resets in",
            "Seconds until the account's rate-limit window resets (X-RateLimit-Reset); no "
            "window once it has passed, so never a time in the past.",
            "s",
            f"max(lemondata_api_rate_limit_reset_timestamp_seconds{{{s}}}) - time()",
            no_value="no window",
        ),
        w=4,
        h=4,
    )
    board.add(
        timeseries_panel(
            "Status requests by code",
            "Status requests sent upstream per second by HTTP code, probes included; `none` "
            "means no response came.",
            "reqps",
            refs(
                (
                    f"sum by (code) (rate(lemondata_api_requests_total{{{s}}}[$__rate_interval]))",
                    "{{code}}",
                )
            ),
            stack=True,
        ),
        w=12,
        h=8,
    )
    board.add(
        timeseries_panel(
            "API errors by kind",
            "Failed or unusable status requests per second by kind: unauthorized (401), "
            "payment_required (402), rate_limited (429), server_error (5xx), timeout, "
            "connection, ...",
            "reqps",
            refs(
                (
                    f"sum by (kind) (rate(lemondata_api_errors_total{{{s}}}[$__rate_interval]))",
                    "{{kind}}",
                )
            ),
            stack=True,
        ),
        w=12,
        h=8,
    )
    board.add(
        timeseries_panel(
            "Request latency (p50, p90, p99)",
            "Latency of the status requests, all replicas together. The red line is the p95 "
            "threshold of LemonDataAPILatencyHigh.",
            "s",
            refs(
                *(
                    (
                        quantile(
                            q,
                            "lemondata_api_request_duration_seconds_bucket",
                            s,
                            "",
                            "$__rate_interval",
                        ),
                        f"p{round(q * 100)}",
                    )
                    for q in (0.5, 0.9, 0.99)
                )
            ),
            alert_at=(("red", api_latency_alert),),
        ),
        w=8,
        h=8,
    )
    board.add(
        timeseries_panel(
            "Rate limit: remaining and limit",
            "X-RateLimit-Remaining against X-RateLimit-Limit of the last response that had "
            "them, per replica, while that window lasts. The account's budget is shared with "
            "the application that creates the tasks.",
            "short",
            refs(
                (
                    f"min by (instance) (lemondata_api_rate_limit_remaining{{{s}}})",
                    "remaining {{instance}}",
                ),
                (
                    f"max by (instance) (lemondata_api_rate_limit_limit{{{s}}})",
                    "limit {{instance}}",
                ),
            ),
        ),
        w=8,
        h=8,
    )
    board.add(
        timeseries_panel(
            "Requests sent and budget",
            "Status requests per second sent by each replica against its configured budget "
            "(polling.requests_per_second) and the rate it allows itself now (lowered when "
            "the account runs low).",
            "reqps",
            refs(
                (
                    f"sum by (instance) (rate(lemondata_api_requests_total{{{s}}}"
                    "[$__rate_interval]))",
                    "sent {{instance}}",
                ),
                (
                    f"sum by (instance) (lemondata_poll_budget_requests_per_second{{{s}}})",
                    "budget {{instance}}",
                ),
                (
                    f"sum by (instance) (lemondata_poll_allowed_requests_per_second{{{s}}})",
                    "allowed {{instance}}",
                ),
            ),
        ),
        w=8,
        h=8,
    )
    return board.build()


def to_json(board: model.Dashboard) -> str:
    return json.dumps(board, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def provisioning(config: BundleConfig) -> str:
    """Grafana's file provider for the dashboards, into the configured folder."""
    folder = json.dumps(config.grafana_folder)  # a JSON string is a YAML string
    return f"""\
# Rendered by `python -m monitoring` (monitoring/dashboards.py); do not edit.
# Loads the dashboards (dashboards/*.json, mounted at /var/lib/grafana/dashboards
# by docker-compose.yml) into the folder of the bundle's `grafana_folder` knob.
apiVersion: 1

providers:
  - name: lemondata
    folder: {folder}
    type: file
    disableDeletion: false
    allowUiUpdates: false
    updateIntervalSeconds: 30
    options:
      path: /var/lib/grafana/dashboards
      foldersFromFilesStructure: false
"""


def datasource_provisioning(config: BundleConfig) -> str:
    """Grafana's Prometheus data source for the docker-compose stack, with the
    exemplar data link: an exemplar's `task_id` opens the exporter's page of that
    task (`/status/tasks/{id}`, open without the API token like /status)."""
    url = json.dumps(f"{config.exporter_url}/status/tasks/${{__value.raw}}")
    return f"""\
# Rendered by `python -m monitoring` (monitoring/dashboards.py); do not edit.
# Grafana data source for the docker-compose stack: the Prometheus service.
# The dashboards choose their data source through the `datasource` variable,
# which defaults to this one. An exemplar's task_id links to the exporter's
# page of that task, at the bundle's `exporter_url` knob.
apiVersion: 1

datasources:
  - name: Prometheus
    uid: prometheus
    type: prometheus
    access: proxy
    url: http://prometheus:9090
    isDefault: true
    editable: false
    jsonData:
      timeInterval: 15s
      exemplarTraceIdDestinations:
        - name: {EXEMPLAR_LABEL}
          url: {url}
          urlDisplayLabel: Task page
"""


def render(config: BundleConfig) -> dict[str, str]:
    """Output path -> text: both dashboards and Grafana's provisioning files for them."""
    return {
        TASKS_FILE: to_json(tasks_dashboard(config)),
        EXPORTER_FILE: to_json(exporter_dashboard(config)),
        PROVISIONING_FILE: provisioning(config),
        DATASOURCE_FILE: datasource_provisioning(config),
    }
