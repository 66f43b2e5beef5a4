"""Pure lifecycle: planning and the state at a given time."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.simulator.lifecycle import (
    NO_OVERRIDES,
    PlanOverrides,
    TaskPlan,
    ground_truth,
    make_task_id,
    observe,
    plan_task,
)
from exporter.simulator.models import CANCEL_MESSAGE, ERROR_MESSAGES, PROFILES, REASONS

T0 = 1_700_000_000.0
ORDER = {"pending": 0, "processing": 1, "completed": 2, "failed": 2, "cancelled": 2}


def make_plan(
    seed: int = 1,
    model: str = "flux-pro",
    time_scale: float = 1.0,
    lost_fraction: float = 0.0,
    overrides: PlanOverrides = NO_OVERRIDES,
) -> TaskPlan:
    profile = PROFILES[model]
    return plan_task(
        task_id="img_x",
        model=model,
        kind=profile.kind,
        created=T0,
        profile=profile,
        rng=random.Random(seed),
        time_scale=time_scale,
        retention_seconds=3600,
        lost_fraction=lost_fraction,
        prompt="a cat",
        overrides=overrides,
    )


def test_same_seed_same_plan() -> None:
    assert make_plan(seed=7) == make_plan(seed=7)
    assert make_plan(seed=7) != make_plan(seed=8)


def test_completed_task_goes_through_every_status() -> None:
    plan = make_plan(overrides=PlanOverrides(outcome="completed"))
    assert plan.started_at is not None
    assert observe(plan, T0).truth == "pending"
    middle = observe(plan, (plan.started_at + plan.finished_at) / 2)
    assert middle.truth == "processing"
    assert 0 < middle.progress < 100
    done = observe(plan, plan.finished_at)
    assert (done.truth, done.api_status, done.progress, done.visible) == (
        "completed",
        "completed",
        100,
        True,
    )
    assert done.updated == plan.finished_at


def test_finished_task_expires_after_retention_keeping_its_outcome() -> None:
    plan = make_plan(overrides=PlanOverrides(outcome="completed"))
    assert plan.expires_at == plan.finished_at + 3600
    assert observe(plan, plan.expires_at - 1).visible
    gone = observe(plan, plan.expires_at)
    assert (gone.visible, gone.truth) == (False, "completed")
    record = ground_truth(plan, plan.expires_at + 1)
    assert record["status"] == "completed"
    assert record["expired_at"] == plan.expires_at


def test_failed_task_has_error_from_its_family() -> None:
    plan = make_plan(overrides=PlanOverrides(reason="quota"))
    assert plan.outcome == "failed"
    assert plan.reason == "quota"
    assert plan.error in ERROR_MESSAGES["quota"]
    obs = observe(plan, plan.finished_at)
    assert (obs.api_status, obs.cancelled) == ("failed", False)
    assert obs.progress < 100


def test_cancelled_task_is_reported_failed_with_flag() -> None:
    plan = make_plan(overrides=PlanOverrides(outcome="cancelled"))
    obs = observe(plan, plan.finished_at)
    assert (obs.truth, obs.api_status, obs.cancelled) == ("cancelled", "failed", True)
    assert plan.error == CANCEL_MESSAGE
    assert plan.reason is None


def test_lost_task_vanishes_before_finishing() -> None:
    plan = make_plan(overrides=PlanOverrides(outcome="completed", lost=True))
    assert T0 < plan.expires_at < plan.finished_at
    assert observe(plan, plan.expires_at - 1e-3).visible
    gone = observe(plan, plan.expires_at)
    assert (gone.visible, gone.truth) == (False, "expired")
    assert gone.progress < 100
    record = ground_truth(plan, plan.finished_at + 10)
    assert record["status"] == "expired"
    assert record["finished_at"] is None
    assert record["duration_seconds"] is None
    assert record["expired_at"] == plan.expires_at
    assert record["lost"] is True


def test_lost_fraction_one_loses_everything() -> None:
    assert all(make_plan(seed=s, lost_fraction=1.0).lost for s in range(20))
    assert not any(make_plan(seed=s, lost_fraction=0.0).lost for s in range(20))


def test_time_scale_divides_durations() -> None:
    slow, fast = make_plan(seed=3), make_plan(seed=3, time_scale=60)
    assert fast.finished_at - T0 == pytest.approx((slow.finished_at - T0) / 60, abs=1e-6)
    assert fast.expires_at - fast.finished_at == pytest.approx(3600 / 60, abs=1e-6)


def test_duration_overrides_are_simulated_seconds() -> None:
    plan = make_plan(
        time_scale=10,
        overrides=PlanOverrides(outcome="completed", pending_seconds=5, processing_seconds=50),
    )
    assert plan.started_at == T0 + 0.5
    assert plan.finished_at == T0 + 5.5


def test_ground_truth_only_reports_what_happened_so_far() -> None:
    plan = make_plan(overrides=PlanOverrides(outcome="failed", reason="timeout"))
    assert plan.started_at is not None  # timeouts always process
    early = ground_truth(plan, T0)
    assert early["status"] == "pending"
    assert early["started_processing_at"] is None
    assert early["finished_at"] is None
    assert early["error"] is None and early["reason"] is None
    late = ground_truth(plan, plan.finished_at)
    assert late["status"] == "failed"
    assert late["started_processing_at"] == plan.started_at
    assert late["pending_seconds"] == plan.started_at - T0
    assert late["duration_seconds"] == plan.finished_at - T0
    assert (late["error"], late["reason"]) == (plan.error, "timeout")


def test_task_ids_are_safe() -> None:
    rng = random.Random(0)
    image, video = make_task_id("image", rng), make_task_id("video", rng)
    assert image.startswith("img_") and len(image) == 28
    assert video.startswith("vid_") and len(video) == 28
    assert all(c.isalnum() or c in "_-" for c in image + video)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    model=st.sampled_from(sorted(PROFILES)),
    lost=st.floats(0, 1),
    offsets=st.lists(st.floats(0, 5000, allow_nan=False), min_size=2, max_size=30),
)
def test_state_only_moves_forward(seed: int, model: str, lost: float, offsets: list[float]) -> None:
    plan = make_plan(seed=seed, model=model, lost_fraction=lost)
    assert plan.created <= plan.finished_at
    if plan.started_at is not None:
        assert plan.created <= plan.started_at <= plan.finished_at
    if plan.outcome == "failed":
        assert plan.reason in REASONS and plan.error is not None
    previous = None
    for now in sorted(T0 + offset for offset in offsets):
        obs = observe(plan, now)
        if previous is not None:
            assert obs.progress >= previous.progress or obs.truth == "expired"
            assert obs.updated >= previous.updated
            if previous.truth != "expired" and obs.truth != "expired":
                assert ORDER[obs.truth] >= ORDER[previous.truth]
            if not previous.visible:
                assert not obs.visible
        assert obs.updated <= max(now, plan.created)
        assert 0 <= obs.progress <= 100
        assert (obs.progress == 100) == (obs.truth == "completed")
        previous = obs
