"""Pure task lifecycle: a plan drawn once at creation, and the state at any time.

A task's whole life (when it starts processing, when and how it ends, when it
stops being visible) is decided when it is created, so the state at a given
time is a cheap pure function of (plan, now). All plan times are real unix
seconds: simulated durations are divided by the time scale while planning.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from exporter.simulator.models import (
    CANCEL_MESSAGE,
    ERROR_MESSAGES,
    FAILURE_SHAPES,
    REASONS,
    Kind,
    ModelProfile,
    Reason,
)

Outcome = Literal["completed", "failed", "cancelled"]
TruthStatus = Literal["pending", "processing", "completed", "failed", "cancelled", "expired"]
OUTCOMES: tuple[Outcome, ...] = ("completed", "failed", "cancelled")

ID_PREFIXES: dict[Kind, str] = {"image": "img_", "video": "vid_"}
# Share of cancellations that happen while the task is still queued.
CANCEL_WHILE_PENDING = 0.3


@dataclass(frozen=True)
class PlanOverrides:
    """Forces parts of a plan (for tests and demos); None keeps the drawn value."""

    outcome: Outcome | None = None
    reason: Reason | None = None  # implies outcome "failed" when outcome is None
    lost: bool | None = None
    pending_seconds: float | None = None  # simulated seconds
    processing_seconds: float | None = None  # simulated seconds, before failure cut


NO_OVERRIDES = PlanOverrides()


@dataclass(frozen=True)
class TaskPlan:
    task_id: str
    model: str
    kind: Kind
    prompt: str
    n: int
    created: float
    # None: the task never processes (it fails, is cancelled or is lost while pending).
    started_at: float | None
    # When the outcome happens; never reached by lost tasks.
    finished_at: float
    outcome: Outcome
    reason: Reason | None
    error: str | None
    # Progress reported once finished (and the ceiling while processing).
    final_progress: int
    # From this time on the task answers 404: end of retention, or when it got lost.
    expires_at: float
    lost: bool

    @property
    def poll_url(self) -> str:
        return f"/v1/tasks/{self.task_id}"


@dataclass(frozen=True)
class Observation:
    """What the task looks like at one instant."""

    truth: TruthStatus
    visible: bool  # False: the API answers 404
    progress: int
    updated: float  # time of the last visible change

    @property
    def api_status(self) -> str:
        """The status string the API reports (cancelled tasks report "failed")."""
        return "failed" if self.truth == "cancelled" else self.truth

    @property
    def cancelled(self) -> bool:
        return self.truth == "cancelled"


def make_task_id(kind: Kind, rng: random.Random) -> str:
    return f"{ID_PREFIXES[kind]}{rng.getrandbits(96):024x}"


def _between(bounds: tuple[float, float], u: float) -> float:
    lo, hi = bounds
    return lo + (hi - lo) * u


def _weighted_reason(profile: ModelProfile, u: float) -> Reason:
    weights = [max(0.0, profile.reason_weights.get(reason, 0.0)) for reason in REASONS]
    total = sum(weights)
    if total <= 0:
        return "unknown"
    point = u * total
    for reason, weight in zip(REASONS, weights, strict=True):
        if point < weight:
            return reason
        point -= weight
    return REASONS[-1]


def plan_task(
    *,
    task_id: str,
    model: str,
    kind: Kind,
    created: float,
    profile: ModelProfile,
    rng: random.Random,
    time_scale: float = 1.0,
    retention_seconds: float = 3600.0,
    lost_fraction: float = 0.0,
    prompt: str = "",
    n: int = 1,
    overrides: PlanOverrides = NO_OVERRIDES,
) -> TaskPlan:
    """Draws the whole life of one task. Deterministic for a given rng state."""
    # Draw every number up front, in a fixed order, so one task's plan never
    # shifts another's when outcomes differ.
    u = [rng.random() for _ in range(12)]
    pending = _between(profile.pending_seconds, u[0])
    processing = _between(profile.processing_seconds, u[1])
    if u[2] < profile.long_tail_probability:
        processing *= _between(profile.long_tail_factor, u[3])
    if overrides.pending_seconds is not None:
        pending = overrides.pending_seconds
    if overrides.processing_seconds is not None:
        processing = overrides.processing_seconds

    outcome: Outcome
    if u[4] < profile.failure_probability:
        outcome = "failed"
    elif u[4] < profile.failure_probability + profile.cancel_probability:
        outcome = "cancelled"
    else:
        outcome = "completed"
    reason: Reason | None = None
    if overrides.reason is not None:
        outcome, reason = "failed", overrides.reason
    if overrides.outcome is not None:
        outcome = overrides.outcome

    error: str | None = None
    processes = True
    final_progress = 100
    if outcome == "failed":
        reason = reason or _weighted_reason(profile, u[5])
        messages = ERROR_MESSAGES[reason]
        error = messages[min(int(u[6] * len(messages)), len(messages) - 1)]
        shape = FAILURE_SHAPES[reason]
        processes = u[7] >= shape.from_pending_probability
        fraction = _between(shape.at_fraction, u[8])
        processing *= _between(shape.stretch, u[9]) * fraction
        final_progress = min(99, int(100 * fraction)) if processes else 0
    elif outcome == "cancelled":
        error = CANCEL_MESSAGE
        processes = u[7] >= CANCEL_WHILE_PENDING
        if processes:
            processing *= u[8]
            final_progress = min(99, int(100 * u[8]))
        else:
            pending *= u[8]
            final_progress = 0

    created_real = created
    started_at = created_real + pending / time_scale
    finished_at = started_at + (processing / time_scale if processes else 0.0)
    lost = u[10] < lost_fraction if overrides.lost is None else overrides.lost
    if lost:
        # Lost somewhere between creation and the (never reached) finish.
        expires_at = created_real + (finished_at - created_real) * (0.1 + 0.85 * u[11])
        expires_at = min(expires_at, math.nextafter(finished_at, -math.inf))
    else:
        expires_at = finished_at + retention_seconds / time_scale
    return TaskPlan(
        task_id=task_id,
        model=model,
        kind=kind,
        prompt=prompt,
        n=n,
        created=created_real,
        started_at=started_at if processes else None,
        finished_at=finished_at,
        outcome=outcome,
        reason=reason,
        error=error,
        final_progress=final_progress,
        expires_at=expires_at,
        lost=lost,
    )


def observe(plan: TaskPlan, now: float) -> Observation:
    """The task's state at `now` (pure)."""
    if now >= plan.expires_at:
        if plan.lost:
            last = observe(plan, math.nextafter(plan.expires_at, -math.inf))
            return Observation("expired", False, last.progress, last.updated)
        return Observation(plan.outcome, False, plan.final_progress, plan.finished_at)
    if now >= plan.finished_at:
        return Observation(plan.outcome, True, plan.final_progress, plan.finished_at)
    started = plan.started_at
    if started is None or now < started:
        return Observation("pending", True, 0, plan.created)
    # Progress climbs linearly to the final value; 100 only once completed.
    ceiling = min(plan.final_progress, 99)
    span = plan.finished_at - started
    progress = min(ceiling, int(ceiling * (now - started) / span)) if span > 0 else 0
    updated = started + span * progress / ceiling if progress > 0 else started
    return Observation("processing", True, progress, updated)


def ground_truth(plan: TaskPlan, now: float) -> dict[str, object]:
    """What really happened to the task up to `now`, for tests and benchmarks."""
    obs = observe(plan, now)
    gone = plan.expires_at if now >= plan.expires_at else None
    started = plan.started_at
    if started is not None and (now < started or (plan.lost and started >= plan.expires_at)):
        started = None
    finished = plan.finished_at if not plan.lost and now >= plan.finished_at else None
    left_pending = started if plan.started_at is not None else finished
    done = finished is not None
    return {
        "id": plan.task_id,
        "model": plan.model,
        "kind": plan.kind,
        "created": plan.created,
        "status": obs.truth,
        "started_processing_at": started,
        "finished_at": finished,
        "expired_at": gone,
        "lost": plan.lost,
        "duration_seconds": finished - plan.created if finished is not None else None,
        "pending_seconds": left_pending - plan.created if left_pending is not None else None,
        "progress": obs.progress,
        "error": plan.error if done else None,
        "reason": plan.reason if done else None,
    }
