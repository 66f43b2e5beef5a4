"""Adaptive polling: poll a task rarely while its finish is unlikely, densely when it is likely.

The request budget, not CPU, is what runs out: the account's rate limit is
shared with the application. So each poll should be spent where a finish is
likely. Per model, a small histogram of how long finished tasks took
(created -> finish) says where that is:

- The *dense region* of a model is the set of durations, densest first, that
  holds `coverage` of its finishes (a highest-density region). A task whose
  age is inside it is polled every `dense_interval` (chosen so that finishes
  there are seen within the freshness target).
- Before the dense region (queued, just started) the next poll is where the
  dense region begins, at most `max_interval` away.
- Past every usual duration the task backs off: the gap grows with its age
  (`tail_fraction` of it), up to `max_interval`.
- When the answer has a rising `progress`, two readings give a finish
  estimate; the task sleeps until shortly before it.
- With fewer than `min_samples` finished tasks of a model nothing is known:
  every poll is `dense_interval` apart, as with fixed polling.

Finishes that fall outside the dense region are seen later than the target;
`coverage` keeps them below the target's share (95 %). The histograms are
bounded (`BIN_COUNT` bins per model, `max_models` models, old finishes weigh
less and less) and are saved in the store, so a restart keeps what was learnt.

Everything but `DurationLearner` (which holds the histograms) is pure.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from exporter.config import PollingConfig

# Histogram bins of durations: bin 0 is [0, 0.1 s), bin i >= 1 is
# [0.1 * 1.1**(i - 1), 0.1 * 1.1**i): 10 % wide, up to ~5 h; the last bin is open.
BIN_FIRST_EDGE = 0.1
BIN_GROWTH = 1.1
BIN_COUNT = 128
_LOG_GROWTH = math.log(BIN_GROWTH)
LOWER_EDGES: tuple[float, ...] = (
    0.0,
    *(BIN_FIRST_EDGE * BIN_GROWTH ** (i - 1) for i in range(1, BIN_COUNT)),
)
UPPER_EDGES: tuple[float, ...] = tuple(BIN_FIRST_EDGE * BIN_GROWTH**i for i in range(BIN_COUNT))
_WIDTHS = tuple(hi - lo for lo, hi in zip(LOWER_EDGES, UPPER_EDGES, strict=True))
STATS_FORMAT = 1

# Share of finishes to be seen within the freshness target.
FRESHNESS_QUANTILE = 0.95


def bin_of(seconds: float) -> int:
    if seconds < BIN_FIRST_EDGE:
        return 0
    index = 1 + int(math.log(seconds / BIN_FIRST_EDGE) / _LOG_GROWTH)
    return min(index, BIN_COUNT - 1)


def dense_interval(task_interval: float, freshness_target: float, cycle_interval: float) -> float:
    """Time between polls of a task whose finish is likely.

    A finish is seen up to one poll interval plus one cycle (due tasks are
    picked once per cycle) after it happens, so the interval is the target
    less a cycle, and never longer than `task_interval`.
    """
    return max(cycle_interval, min(task_interval, freshness_target - cycle_interval))


@dataclass(frozen=True, slots=True)
class ScheduleParams:
    dense_interval: float
    max_interval: float = 60.0
    # Past the usual durations, the gap between polls is this share of the task's age.
    tail_fraction: float = 0.2


@dataclass(frozen=True, slots=True)
class DurationView:
    """What a model's histogram says, ready for per-poll decisions (immutable)."""

    samples: float
    cdf: tuple[float, ...]  # cdf[i]: share of finishes before LOWER_EDGES[i]; cdf[BIN_COUNT] = 1
    dense: tuple[bool, ...]  # per bin: inside the dense region
    next_dense: tuple[int, ...]  # per bin: first dense bin at or after it, -1 if none

    def finished_by(self, age: float) -> float:
        """Share of this model's tasks finished at `age` (linear within a bin)."""
        return _cdf_at(self.cdf, age)

    def quantile(self, share: float) -> float:
        """The duration below which `share` of the finishes fall (bin resolution)."""
        for i in range(BIN_COUNT):
            if self.cdf[i + 1] >= share:
                return UPPER_EDGES[i]
        return UPPER_EDGES[-1]


def _cdf_at(cdf: tuple[float, ...] | list[float], age: float) -> float:
    if age <= 0:
        return 0.0
    i = bin_of(age)
    within = 1.0 if i == BIN_COUNT - 1 else min(1.0, (age - LOWER_EDGES[i]) / _WIDTHS[i])
    return cdf[i] + within * (cdf[i + 1] - cdf[i])


@dataclass(frozen=True, slots=True)
class Shape:
    """A histogram's shares per bin, cumulative shares, and hazard per bin (pure)."""

    weight: float  # finishes it holds
    mass: tuple[float, ...]
    cdf: tuple[float, ...]
    hazard: tuple[float, ...]  # finishes per second among tasks still running, per bin


def shape_of(counts: list[float], resolution: float) -> Shape:
    """`resolution`: the poll interval where finishes are likely; hazards are
    averaged over at least that long, as no decision is finer than one poll."""
    # Smooth over neighbouring bins ([1, 2, 1] / 4, in log-duration): a few
    # dozen samples are spiky, and the region should not have holes.
    smooth = [
        (
            (counts[i - 1] if i > 0 else 0.0)
            + 2 * counts[i]
            + (counts[i + 1] if i + 1 < BIN_COUNT else 0.0)
        )
        / 4
        for i in range(BIN_COUNT)
    ]
    total = sum(smooth) or 1.0
    mass = [value / total for value in smooth]
    cdf = [0.0]
    for value in mass:
        cdf.append(cdf[-1] + value)
    cdf[-1] = 1.0
    hazard = []
    for i in range(BIN_COUNT):
        centre = (LOWER_EDGES[i] + UPPER_EDGES[i]) / 2
        window = max(_WIDTHS[i], resolution)
        low = max(0.0, centre - window / 2)
        share = _cdf_at(cdf, low + window) - _cdf_at(cdf, low)
        alive = 1.0 - _cdf_at(cdf, low)
        hazard.append(share / window / alive if share > 0 and alive > 1e-9 else 0.0)
    return Shape(sum(counts), tuple(mass), tuple(cdf), tuple(hazard))


def hazard_threshold(shapes: list[Shape], coverage: float) -> float:
    """The hazard above which bins are dense, so that `coverage` of all finishes
    (every model, weighted by its finishes) fall into dense bins.

    A poll at age t is paid by every task still running then, and pays off for
    those finishing then: per finish covered, a dense bin costs 1 / hazard polls.
    Taking bins by hazard, highest first, over all models at once, covers the
    most finishes per poll (it skips the start of a wide range and rare early
    failures, and covers a slow tail cheaply, since few tasks are still running).
    """
    total = sum(s.weight for s in shapes)
    if total <= 0:
        return 0.0
    ranked = sorted(
        ((h, s.weight * m) for s in shapes for h, m in zip(s.hazard, s.mass, strict=True) if h > 0),
        reverse=True,
    )
    covered = 0.0
    for hazard, weight in ranked:
        covered += weight
        if covered >= coverage * total:
            return hazard
    return 0.0


def build_view(shape: Shape, threshold: float) -> DurationView:
    dense = tuple(h > 0 and h >= threshold for h in shape.hazard)
    next_dense = [-1] * BIN_COUNT
    following = -1
    for i in range(BIN_COUNT - 1, -1, -1):
        if dense[i]:
            following = i
        next_dense[i] = following
    return DurationView(shape.weight, shape.cdf, dense, tuple(next_dense))


@dataclass(frozen=True, slots=True)
class Eta:
    """When progress should reach 100, and how far off that may be (seconds from now)."""

    seconds: float
    error: float


def progress_eta(
    anchor: float | None,
    anchor_at: float | None,
    progress: float,
    progress_at: float,
    now: float,
    margin: float = 0.15,
) -> Eta | None:
    """Extrapolates progress linearly from an earlier reading; None if that says nothing.

    The error counts the rounding of progress (whole percents: the rate, and
    the reading itself, which may be almost a percent further) and of
    timestamps (whole seconds), plus `margin` of the remaining time for
    progress that is not linear.
    """
    if anchor is None or anchor_at is None:
        return None
    elapsed = progress_at - anchor_at
    gained = progress - anchor
    if elapsed <= 0 or gained <= 0 or progress >= 100:
        return None
    eta = max(0.0, (100.0 - progress) * elapsed / gained - (now - progress_at))
    error = eta * (margin + 1.0 / gained + 1.0 / elapsed) + elapsed / gained
    return Eta(eta, error) if error < eta else None


def next_delay(
    view: DurationView | None,
    age: float,
    eta: Eta | None,
    params: ScheduleParams,
) -> float:
    """Seconds until the next poll of an unfinished task of age `age` (pure)."""
    dense = params.dense_interval
    if view is None:
        by_history = dense
        in_dense = True
    else:
        i = bin_of(max(0.0, age))
        in_dense = view.dense[i]
        if in_dense:
            by_history = dense
        elif view.next_dense[i] >= 0:
            by_history = LOWER_EDGES[view.next_dense[i]] - age
        else:  # running longer than usual: back off with age
            by_history = params.tail_fraction * age
    if eta is not None:
        # The earliest plausible finish, plus most of a dense interval: a finish
        # then is seen within the interval, a later one by the next polls.
        by_progress = eta.seconds - eta.error + 0.8 * dense
        # Inside the dense region progress is the sharper guide; elsewhere the earlier wins.
        wait = by_progress if in_dense else min(by_progress, by_history)
    else:
        wait = by_history
    return min(max(wait, dense), max(params.max_interval, dense))


class Planner(Protocol):
    """What `transitions.decide` asks when scheduling the next poll of a healthy task."""

    def delay(self, model: str | None, age: float, eta: Eta | None) -> float: ...


class DurationLearner:
    """Per-model histograms of how long finished tasks took. Thread-safe; bounded.

    When a model's weight passes `max_weight` every bin is halved, so recent
    finishes count more and a change of the model's speed is learnt. Beyond
    `max_models` the model with the least weight is forgotten. The dense
    regions of all models are recomputed together after every
    `refresh_every` finishes (they share one hazard threshold).
    """

    def __init__(
        self,
        *,
        resolution: float = 3.0,
        coverage: float = 0.97,
        min_samples: int = 30,
        max_weight: float = 2000.0,
        max_models: int = 200,
        refresh_every: int = 20,
    ) -> None:
        self.resolution = resolution
        self.coverage = coverage
        self.min_samples = min_samples
        self._max_weight = max_weight
        self._max_models = max_models
        self._refresh_every = refresh_every
        self._counts: dict[str, list[float]] = {}
        self._views: dict[str, DurationView] = {}
        self._since_refresh = 0
        self._stale = False
        self._dirty: set[str] = set()
        self._lock = threading.Lock()

    @staticmethod
    def key(model: str | None) -> str:
        return (model or "")[:128]

    def observe(self, model: str | None, duration: float) -> None:
        if not math.isfinite(duration) or duration < 0:
            return
        key = self.key(model)
        with self._lock:
            counts = self._counts.get(key)
            if counts is None:
                if len(self._counts) >= self._max_models:
                    self._forget_lightest()
                counts = self._counts[key] = [0.0] * BIN_COUNT
            counts[bin_of(duration)] += 1.0
            weight = sum(counts)
            if weight > self._max_weight:
                counts[:] = [c / 2 for c in counts]
            self._dirty.add(key)
            self._since_refresh += 1
            # A model that just became known is used at once.
            if self._since_refresh >= self._refresh_every or (
                key not in self._views and weight >= self.min_samples
            ):
                self._stale = True

    def _forget_lightest(self) -> None:
        lightest = min(self._counts, key=lambda k: sum(self._counts[k]))
        del self._counts[lightest]
        self._dirty.add(lightest)
        self._stale = True

    def _refresh(self) -> None:
        shapes = {
            key: shape_of(counts, self.resolution)
            for key, counts in self._counts.items()
            if sum(counts) >= self.min_samples
        }
        threshold = hazard_threshold(list(shapes.values()), self.coverage)
        self._views = {key: build_view(shape, threshold) for key, shape in shapes.items()}
        self._since_refresh = 0
        self._stale = False

    def view(self, model: str | None) -> DurationView | None:
        """The model's view, or None while fewer than `min_samples` finishes are known."""
        with self._lock:
            if self._stale:
                self._refresh()
            return self._views.get(self.key(model))

    def views(self) -> Mapping[str, DurationView]:
        """Every model's view as of now: a snapshot, never changed afterwards
        (a refresh builds a new mapping)."""
        with self._lock:
            if self._stale:
                self._refresh()
            return MappingProxyType(self._views)

    def models(self) -> list[str]:
        with self._lock:
            return list(self._counts)

    # Persistence: one JSON text per model, {"format": 1, "bins": [[index, weight], ...]}.

    def dump(self, only_changed: bool = True) -> dict[str, str | None]:
        """Texts of changed models (None: forgotten) since the last dump."""
        with self._lock:
            keys = set(self._dirty) if only_changed else set(self._counts) | self._dirty
            self._dirty.clear()
            result: dict[str, str | None] = {}
            for key in keys:
                counts = self._counts.get(key)
                if counts is None:
                    result[key] = None
                    continue
                bins = [[i, round(c, 4)] for i, c in enumerate(counts) if c > 0]
                result[key] = json.dumps({"format": STATS_FORMAT, "bins": bins})
            return result

    def load(self, stored: dict[str, str]) -> int:
        """Takes saved texts (unreadable ones are skipped); returns how many were used."""
        loaded = 0
        for key, text in list(stored.items())[: self._max_models]:
            try:
                data = json.loads(text)
                if data.get("format") != STATS_FORMAT:
                    continue
                counts = [0.0] * BIN_COUNT
                for index, weight in data["bins"]:
                    if 0 <= int(index) < BIN_COUNT and float(weight) > 0:
                        counts[int(index)] = min(float(weight), self._max_weight)
            except (ValueError, TypeError, KeyError, AttributeError):
                continue
            with self._lock:
                self._counts[key[:128]] = counts
                self._stale = True
            loaded += 1
        return loaded


@dataclass(frozen=True, slots=True)
class PlanSnapshot:
    """The `Planner` `transitions.decide` gets: what the schedule knew at one
    moment, as values (pure)."""

    views: Mapping[str, DurationView]
    params: ScheduleParams

    def delay(self, model: str | None, age: float, eta: Eta | None) -> float:
        return next_delay(self.views.get(DurationLearner.key(model)), age, eta, self.params)


class AdaptiveSchedule:
    """Adaptive polling: the learner and its parameters; snapshots for `decide`,
    finish chances for the poll cycle's order."""

    def __init__(self, learner: DurationLearner, params: ScheduleParams) -> None:
        self.learner = learner
        self.params = params

    def plan(self) -> PlanSnapshot:
        """What the schedule knows now, for one decision."""
        return PlanSnapshot(self.learner.views(), self.params)

    def observe_finish(self, model: str | None, duration: float) -> None:
        self.learner.observe(model, duration)

    def finish_chance(self, model: str | None, age_then: float | None, age_now: float) -> float:
        """Chance that a task unfinished at `age_then` has finished by `age_now`.

        1 when nothing is known (never polled, or a model without history):
        such tasks go first when the budget is short.
        """
        view = self.learner.view(model)
        if view is None or age_then is None:
            return 1.0
        before = view.finished_by(age_then)
        remaining = 1.0 - before
        if remaining <= 1e-9:
            return 1.0
        return max(0.0, min(1.0, (view.finished_by(age_now) - before) / remaining))


def build_schedule(polling: PollingConfig) -> AdaptiveSchedule | None:
    """The schedule a config asks for; None for fixed polling."""
    if polling.strategy != "adaptive":
        return None
    interval = dense_interval(
        polling.task_interval_seconds,
        polling.freshness_target_seconds,
        polling.cycle_interval_seconds,
    )
    return AdaptiveSchedule(
        DurationLearner(resolution=interval),
        ScheduleParams(interval, max_interval=polling.max_interval_seconds),
    )
