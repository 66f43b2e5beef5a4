"""The simulator's tasks: creation (with deterministic plans) and look-up."""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping

from exporter.simulator.lifecycle import (
    NO_OVERRIDES,
    PlanOverrides,
    TaskPlan,
    ground_truth,
    make_task_id,
    plan_task,
)
from exporter.simulator.models import Kind, ModelProfile, profile_for


class TaskStore:
    """Plans by task id. Task number i of a seed always gets the same id and plan
    (after a reset, the same as in any run after as many resets)."""

    def __init__(
        self,
        *,
        seed: int,
        time_scale: float,
        retention_seconds: float,
        lost_fraction: float,
        profiles: Mapping[str, ModelProfile],
    ) -> None:
        self._seed = seed
        self._time_scale = time_scale
        self._retention_seconds = retention_seconds
        self._lost_fraction = lost_fraction
        self._profiles = profiles
        self._plans: dict[str, TaskPlan] = {}
        self._count = 0
        # Bumped by clear(): ids never repeat within a run, so a client still
        # polling a task from before a reset cannot hit a new task by accident.
        self._epoch = 0
        self._lock = threading.Lock()

    def create(
        self,
        *,
        model: str,
        kind: Kind,
        now: float,
        prompt: str = "",
        n: int = 1,
        overrides: PlanOverrides = NO_OVERRIDES,
    ) -> TaskPlan:
        with self._lock:
            number = self._count
            self._count += 1
            epoch = self._epoch
        # One generator per task, derived from (seed, number): plans do not depend
        # on how requests from different threads interleave.
        rng = random.Random(
            f"{self._seed}:{number}" if epoch == 0 else f"{self._seed}:{epoch}:{number}"
        )
        task_id = make_task_id(kind, rng)
        plan = plan_task(
            task_id=task_id,
            model=model,
            kind=kind,
            created=now,
            profile=profile_for(model, kind, self._profiles),
            rng=rng,
            time_scale=self._time_scale,
            retention_seconds=self._retention_seconds,
            lost_fraction=self._lost_fraction,
            prompt=prompt,
            n=n,
            overrides=overrides,
        )
        with self._lock:
            self._plans[task_id] = plan
        return plan

    def get(self, task_id: str) -> TaskPlan | None:
        return self._plans.get(task_id)

    def ground_truth(self, now: float) -> list[dict[str, object]]:
        with self._lock:
            plans = list(self._plans.values())
        return [ground_truth(plan, now) for plan in plans]

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()
            self._count = 0
            self._epoch += 1
