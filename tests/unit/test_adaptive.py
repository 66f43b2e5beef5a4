"""Adaptive polling: the pure schedule, the learner, and how `decide` uses them."""

import random
import threading

import pytest
from prometheus_client import CollectorRegistry

from exporter.classify import ReasonClassifier
from exporter.loops import build_poller
from exporter.metrics.recorder import Recorder
from exporter.model import (
    DiscoveredTask,
    OutcomeKind,
    PollOutcome,
    Status,
    StatusReport,
    Task,
)
from exporter.poller.adaptive import (
    LOWER_EDGES,
    UPPER_EDGES,
    AdaptiveSchedule,
    DurationLearner,
    Eta,
    ScheduleParams,
    bin_of,
    dense_interval,
    next_delay,
    progress_eta,
)
from exporter.poller.cycle import CycleSettings
from exporter.poller.ratelimit import RequestBudget
from exporter.poller.transitions import PollPolicy, decide
from exporter.store.sqlite import SqliteTaskStore
from tests.harness.updates import polled

PARAMS = ScheduleParams(dense_interval=3.0, max_interval=60.0, tail_fraction=0.2)
NOW = 1_700_000_000.0


def learner_with(samples: dict[str, list[float]], **options: float) -> DurationLearner:
    learner = DurationLearner(resolution=3.0, refresh_every=1, **options)  # type: ignore[arg-type]
    for model, durations in samples.items():
        for duration in durations:
            learner.observe(model, duration)
    return learner


def uniform(low: float, high: float, count: int, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(low, high) for _ in range(count)]


def test_bins_are_ten_percent_wide_and_cover_hours() -> None:
    assert bin_of(0.0) == 0 and bin_of(0.05) == 0
    for seconds in (0.1, 1.0, 33.3, 600.0, 3600.0):
        i = bin_of(seconds)
        assert LOWER_EDGES[i] <= seconds < UPPER_EDGES[i]
        assert UPPER_EDGES[i] / LOWER_EDGES[i] == pytest.approx(1.1)
    assert UPPER_EDGES[-2] > 4 * 3600
    assert bin_of(1e9) == len(LOWER_EDGES) - 1


def test_dense_interval_keeps_the_target_and_never_exceeds_the_task_interval() -> None:
    assert dense_interval(task_interval=5, freshness_target=5, cycle_interval=1) == 4
    assert dense_interval(task_interval=3, freshness_target=5, cycle_interval=1) == 3
    assert dense_interval(task_interval=5, freshness_target=3, cycle_interval=0.25) == 2.75
    assert dense_interval(task_interval=5, freshness_target=0.5, cycle_interval=1) == 1


def test_without_history_every_poll_is_dense() -> None:
    assert next_delay(None, 0.0, None, PARAMS) == 3.0
    assert next_delay(None, 500.0, None, PARAMS) == 3.0
    learner = learner_with({"m": uniform(30, 60, 10)})  # fewer than min_samples
    assert learner.view("m") is None


def test_rare_while_unlikely_dense_when_likely_backing_off_when_overdue() -> None:
    view = learner_with({"m": uniform(30, 60, 400)}).view("m")
    assert view is not None
    # Just created: the next poll is where finishes start, not 3 s later.
    first = next_delay(view, 1.0, None, PARAMS)
    assert 25 <= 1.0 + first <= 31
    # Inside the usual range: every dense interval.
    assert next_delay(view, 40.0, None, PARAMS) == 3.0
    assert next_delay(view, 58.0, None, PARAMS) == 3.0
    # Far beyond it: a growing gap, capped.
    assert next_delay(view, 150.0, None, PARAMS) == pytest.approx(30.0)
    assert next_delay(view, 1000.0, None, PARAMS) == 60.0


def test_long_waits_are_capped_by_max_interval() -> None:
    view = learner_with({"video": uniform(300, 400, 400)}).view("video")
    assert view is not None
    assert next_delay(view, 2.0, None, PARAMS) == 60.0
    assert next_delay(view, 250.0, None, PARAMS) == pytest.approx(
        LOWER_EDGES[bin_of(300)] - 250, abs=30
    )


def test_progress_extrapolates_and_its_error_shrinks_with_the_span() -> None:
    # 10 % at t=100, 30 % at t=110: 2 %/s, 70 % to go -> 35 s.
    eta = progress_eta(10, NOW + 100, 30, NOW + 110, NOW + 110)
    assert eta is not None
    assert eta.seconds == pytest.approx(35.0)
    longer = progress_eta(10, NOW + 100, 70, NOW + 130, NOW + 130)
    assert longer is not None and longer.seconds == pytest.approx(15.0)
    assert longer.error / longer.seconds < eta.error / eta.seconds
    # Answers read a little after `updated`: that time is gone already.
    later = progress_eta(10, NOW + 100, 30, NOW + 110, NOW + 115)
    assert later is not None and later.seconds == pytest.approx(30.0)
    # Nothing to extrapolate from.
    assert progress_eta(None, None, 30, NOW, NOW) is None
    assert progress_eta(30, NOW, 30, NOW + 5, NOW + 5) is None  # no gain
    assert progress_eta(10, NOW, 100, NOW + 5, NOW + 5) is None
    assert progress_eta(0, NOW, 1, NOW + 2, NOW + 2) is None  # too coarse to say anything


def test_progress_sleeps_until_shortly_before_the_expected_finish() -> None:
    view = learner_with({"m": uniform(30, 120, 400)}).view("m")
    eta = Eta(seconds=40.0, error=6.0)
    # Inside the dense region, progress decides: earliest finish (34 s) + most of an interval.
    assert next_delay(view, 50.0, eta, PARAMS) == pytest.approx(34 + 0.8 * 3)
    # Finish imminent: dense.
    assert next_delay(view, 50.0, Eta(1.0, 0.5), PARAMS) == 3.0
    # Before the dense region, the earlier of the two wins.
    assert next_delay(view, 2.0, Eta(5.0, 1.0), PARAMS) == pytest.approx(4 + 0.8 * 3)
    # Capped like any other wait.
    assert next_delay(view, 50.0, Eta(500.0, 50.0), PARAMS) == 60.0


def test_one_hazard_threshold_for_all_models_skips_costly_rare_early_failures() -> None:
    # Videos: 3 % fail while queued (spread over 5-40 s), the rest take 300-400 s.
    video = uniform(5, 40, 12, seed=2) + uniform(300, 400, 388, seed=3)
    image = uniform(30, 60, 400, seed=4)
    learner = learner_with({"video": video, "image": image}, coverage=0.97)
    video_view, image_view = learner.view("video"), learner.view("image")
    assert video_view is not None and image_view is not None
    assert not any(video_view.dense[bin_of(s)] for s in (10.0, 20.0, 30.0))
    assert all(video_view.dense[bin_of(s)] for s in (320.0, 360.0, 395.0))
    assert all(image_view.dense[bin_of(s)] for s in (32.0, 45.0, 58.0))
    # The start of a video is one long wait (capped), not a poll every 3 s.
    assert next_delay(video_view, 2.0, None, PARAMS) == 60.0


def test_finish_chance_ranks_tasks_near_their_end_first() -> None:
    schedule = AdaptiveSchedule(learner_with({"m": uniform(30, 60, 400)}), PARAMS)
    early = schedule.finish_chance("m", 10.0, 13.0)
    late = schedule.finish_chance("m", 52.0, 55.0)
    assert 0.0 <= early < 0.05 < late <= 1.0
    assert schedule.finish_chance("m", None, 13.0) == 1.0  # never answered
    assert schedule.finish_chance("other", 10.0, 13.0) == 1.0  # nothing known


def test_learner_is_bounded_forgets_slowly_and_survives_a_restart() -> None:
    learner = DurationLearner(max_models=3, max_weight=100, refresh_every=1)
    for model in ("a", "b", "c"):
        for duration in uniform(10, 20, 40):
            learner.observe(model, duration)
    learner.observe("d", 5.0)  # "a", "b" and "c" weigh the same: one of them goes
    assert len(learner.models()) == 3 and "d" in learner.models()
    for duration in uniform(50, 60, 200):
        learner.observe("b", duration)
    view = learner.view("b")
    assert view is not None and view.samples <= 100
    assert view.finished_by(30.0) < 0.1  # the old 10-20 s runs have faded
    saved = learner.dump()
    assert saved and all(text is None or text.startswith("{") for text in saved.values())
    assert learner.dump() == {}  # only what changed since
    restored = DurationLearner(refresh_every=1, min_samples=1)
    assert restored.load({k: v for k, v in saved.items() if v is not None}) == len(
        [v for v in saved.values() if v is not None]
    )
    again = restored.view("b")
    assert again is not None and again.cdf == view.cdf
    assert restored.load({"x": "not json", "y": '{"format": 99, "bins": []}'}) == 0
    learner.observe("m", float("nan"))
    learner.observe("m", -1.0)
    assert "m" not in learner.models()


def task(**changes: object) -> Task:
    values: dict[str, object] = dict(
        task_id="img_1",
        source="config",
        model="m",
        poll_url=None,
        status=Status.PROCESSING,
        discovered_at=NOW - 50,
        next_poll_at=NOW,
        created=NOW - 50,
    )
    values.update(changes)
    return Task(**values)  # type: ignore[arg-type]


def report(status: str, **fields: object) -> PollOutcome:
    return PollOutcome(OutcomeKind.REPORT, 200, StatusReport(status=status, **fields))  # type: ignore[arg-type]


class RecordingPlanner:
    def __init__(self, answer: float) -> None:
        self.answer = answer
        self.calls: list[tuple[str | None, float, Eta | None]] = []

    def delay(self, model: str | None, age: float, eta: Eta | None) -> float:
        self.calls.append((model, age, eta))
        return self.answer

    def last_eta(self) -> Eta | None:
        return self.calls[-1][2]


def test_decide_asks_the_planner_for_healthy_answers_only() -> None:
    planner = RecordingPlanner(17.0)
    policy = PollPolicy(task_interval=5, max_wait=600, backoff_base=2)
    update = decide(task(), report("processing", created=NOW - 50), NOW, policy, 0.5, planner)
    assert update.task.next_poll_at == NOW + 17
    assert planner.calls == [("m", 50.0, None)]
    failing = decide(task(), PollOutcome(OutcomeKind.SERVER_ERROR, 503), NOW, policy, 0.0, planner)
    assert failing.task.next_poll_at == NOW + 1  # backoff, not the planner
    done = decide(task(), report("completed", created=NOW - 50), NOW, policy, 0.5, planner)
    assert done.finish is not None and len(planner.calls) == 1
    fixed = decide(task(), report("processing"), NOW, PollPolicy(task_interval=5), 0.5)
    assert fixed.task.next_poll_at == NOW + 5


def test_decide_anchors_progress_at_the_first_reading_and_extrapolates() -> None:
    planner = RecordingPlanner(3.0)
    policy = PollPolicy(task_interval=5)
    first = decide(
        task(), report("processing", progress=10, updated=NOW - 1), NOW, policy, 0, planner
    )
    assert (first.task.progress, first.task.progress_at) == (10, NOW - 1)
    assert planner.last_eta() is None
    anchored = task(progress=first.task.progress, progress_at=first.task.progress_at)
    second = decide(
        anchored, report("processing", progress=50, updated=NOW + 19), NOW + 20, policy, 0, planner
    )
    assert (second.task.progress, second.task.progress_at) == (10, NOW - 1)  # the anchor stays
    eta = planner.last_eta()
    assert eta is not None and eta.seconds == pytest.approx(50 * 20 / 40 - 1)
    # Progress going back (a retry upstream) starts a new anchor.
    back = decide(anchored, report("processing", progress=5), NOW + 30, policy, 0, planner)
    assert (back.task.progress, back.task.progress_at) == (5, NOW + 30)
    # `updated` in the future is not used as the reading's time.
    ahead = decide(
        task(), report("processing", progress=10, updated=NOW + 99), NOW, policy, 0, planner
    )
    assert ahead.task.progress_at == NOW


class ProcessingClient:
    def __init__(self) -> None:
        self.polled: list[str] = []

    def fetch_status(self, task_id: str, poll_url: str | None = None) -> PollOutcome:
        self.polled.append(task_id)
        return report("processing")


class NoWaitBudget(RequestBudget):
    def acquire(self, stop: threading.Event) -> bool:
        return True


def test_a_short_budget_polls_the_tasks_most_likely_finished_first() -> None:
    learner = learner_with({"m": uniform(30, 60, 400)})
    schedule = AdaptiveSchedule(learner, PARAMS)
    store = SqliteTaskStore(":memory:")
    now = NOW
    ages = {"young1": 10.0, "old1": 55.0, "young2": 12.0, "old2": 57.0, "new": 5.0}
    store.add([DiscoveredTask(task_id, "x", "m") for task_id in ages if task_id != "new"], now - 60)
    store.add([DiscoveredTask("new", "x", "m")], now - 1)
    for task_id, age in ages.items():
        if task_id == "new":
            continue  # never answered: nothing known, so it goes first
        update = polled(
            Status.PROCESSING,
            next_poll_at=now - 10 if task_id.startswith("young") else now - 1,
            created=now - age,
            model="m",
            first_seen=now - age,
            processing_seen=now - age,
            last_polled=now - 3,
        )
        assert store.apply(task_id, update, now - 3, None)
    classifier = ReasonClassifier([])
    client = ProcessingClient()
    cycle = build_poller(
        store,
        client,
        classifier,
        Recorder(
            CollectorRegistry(),
            duration_buckets=[1],
            pending_buckets=[1],
            max_models=5,
            reasons=classifier.reasons,
            budget_rps=3,
        ),
        NoWaitBudget(3),
        PollPolicy(task_interval=3),
        CycleSettings(workers=1, batch_size=3),
        clock=lambda: now,
        schedule=schedule,
    ).cycle
    try:
        result = cycle.run_once()
    finally:
        cycle.stop()
    # The young ones are the most overdue, but the least likely to have finished.
    assert sorted(client.polled) == ["new", "old1", "old2"]
    assert result.lag == pytest.approx(10.0)  # the deferred, most overdue task says so


def test_a_plan_is_a_snapshot_later_finishes_do_not_change() -> None:
    learner = learner_with({"m": uniform(30, 60, 400)})
    schedule = AdaptiveSchedule(learner, PARAMS)
    plan = schedule.plan()
    before = plan.delay("m", 5.0, None)
    for _ in range(400):  # the model turns fast
        schedule.observe_finish("m", 2.0)
    assert plan.delay("m", 5.0, None) == before  # the decision already taken stays
    assert schedule.plan().delay("m", 5.0, None) != before
    assert plan.delay("unknown-model", 5.0, None) == PARAMS.dense_interval
