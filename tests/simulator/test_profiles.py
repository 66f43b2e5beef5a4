"""Model profiles and error texts: realistic, complete, and honoured by planning."""

from __future__ import annotations

import random
import statistics
from collections import Counter

import pytest

from exporter.simulator.lifecycle import TaskPlan, plan_task
from exporter.simulator.models import (
    DEFAULT_REASON_WEIGHTS,
    ERROR_MESSAGES,
    FAILURE_SHAPES,
    GENERIC_PROFILES,
    PROFILES,
    REASONS,
    ModelProfile,
    profile_for,
)


def plans(model: str, count: int = 2000) -> list[TaskPlan]:
    profile = PROFILES[model]
    return [
        plan_task(
            task_id=f"t{i}",
            model=model,
            kind=profile.kind,
            created=0.0,
            profile=profile,
            rng=random.Random(f"profiles:{i}"),
        )
        for i in range(count)
    ]


def test_every_reason_has_messages_weights_and_a_shape() -> None:
    for reason in REASONS:
        assert ERROR_MESSAGES[reason]
        assert reason in DEFAULT_REASON_WEIGHTS
        assert reason in FAILURE_SHAPES


def test_profiles_have_both_kinds() -> None:
    kinds = Counter(profile.kind for profile in PROFILES.values())
    assert kinds["image"] >= 3 and kinds["video"] >= 3


def test_unknown_models_get_the_generic_profile_of_their_kind() -> None:
    assert profile_for("no-such-model", "video") is GENERIC_PROFILES["video"]
    assert profile_for("flux-pro", "image") is PROFILES["flux-pro"]


@pytest.mark.parametrize("model", sorted(m for m, p in PROFILES.items() if p.kind == "image"))
def test_most_image_tasks_finish_within_two_minutes(model: str) -> None:
    completed = [p.finished_at for p in plans(model, 500) if p.outcome == "completed"]
    assert statistics.median(completed) <= 120
    assert sum(d <= 130 for d in completed) / len(completed) > 0.9


@pytest.mark.parametrize("model", sorted(m for m, p in PROFILES.items() if p.kind == "video"))
def test_video_tasks_take_minutes_up_to_about_ten(model: str) -> None:
    completed = [p.finished_at for p in plans(model, 500) if p.outcome == "completed"]
    assert statistics.median(completed) >= 60
    assert sum(d <= 600 for d in completed) / len(completed) > 0.97


def test_outcome_rates_follow_the_profile() -> None:
    outcomes = Counter(p.outcome for p in plans("sora-2", 4000))
    profile = PROFILES["sora-2"]
    assert outcomes["failed"] / 4000 == pytest.approx(profile.failure_probability, abs=0.02)
    assert outcomes["cancelled"] / 4000 == pytest.approx(profile.cancel_probability, abs=0.01)


def test_failures_draw_every_family() -> None:
    reasons = Counter(p.reason for p in plans("midjourney", 4000) if p.outcome == "failed")
    assert set(reasons) == set(REASONS)


def test_a_long_tail_exists() -> None:
    durations = [p.finished_at for p in plans("flux-pro") if p.outcome == "completed"]
    assert max(durations) > PROFILES["flux-pro"].processing_seconds[1] * 1.3


def test_profile_rejects_impossible_values() -> None:
    with pytest.raises(ValueError):
        ModelProfile("image", (5, 1), (1, 2), 0.1, 0.1)
    with pytest.raises(ValueError):
        ModelProfile("image", (1, 5), (1, 2), 0.8, 0.5)
