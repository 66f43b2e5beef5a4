"""A seeded workload for the polling benchmarks, drawn from the simulator's own model.

Tasks arrive as a Poisson stream over a mix of models: most are images that
take 30-120 s, about a tenth are videos (minutes, the slow tail), and the
simulator's profiles add failures, cancellations, lost tasks and a long tail
of slow runs. Every task's life is a `TaskPlan` from `exporter.simulator`, so
the discrete-event benchmark and a real simulator see the same tasks.

Half the image tasks are polled on their `poll_url` (`/v1/tasks/{id}`: with
`updated` and `progress`), the rest on the image path (neither); videos
always on their `poll_url`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from exporter.simulator.lifecycle import TaskPlan, make_task_id, plan_task
from exporter.simulator.models import PROFILES, Kind

# (model, kind, weight)
MIX: tuple[tuple[str, Kind, float], ...] = (
    ("flux-pro", "image", 20),
    ("gpt-image-1", "image", 14),
    ("midjourney", "image", 12),
    ("flux-kontext-pro", "image", 12),
    ("ideogram-v3", "image", 10),
    ("seedream-4", "image", 10),
    ("dall-e-3", "image", 12),
    ("veo-3", "video", 5),
    ("runway-gen4", "video", 5),
)
T0 = 1_700_000_000.0  # workload clock origin (unix seconds)
LOST_FRACTION = 0.02  # the simulator's default


@dataclass(frozen=True)
class WorkloadTask:
    plan: TaskPlan
    unified: bool  # polled on poll_url (updated + progress) rather than the image path
    discovered_at: float  # when the application's line reaches the agent


def make_workload(
    *,
    seed: int,
    duration_seconds: float,
    arrivals_per_second: float,
    discovery_delay: float = 2.0,
    time_scale: float = 1.0,
    start: float = T0,
) -> list[WorkloadTask]:
    """Tasks created over `duration_seconds` (simulated), sorted by discovery time.

    With `time_scale` > 1 every time is divided by it, as the simulator does.
    """
    rng = random.Random(seed)
    models = [m for m, _, _ in MIX]
    kinds = {m: k for m, k, _ in MIX}
    weights = [w for _, _, w in MIX]
    tasks = []
    t = 0.0
    number = 0
    while True:
        t += rng.expovariate(arrivals_per_second)
        if t >= duration_seconds:
            break
        model = rng.choices(models, weights)[0]
        kind = kinds[model]
        task_rng = random.Random(f"{seed}:{number}")
        plan = plan_task(
            task_id=make_task_id(kind, task_rng),
            model=model,
            kind=kind,
            created=start + t / time_scale,
            profile=PROFILES[model],
            rng=task_rng,
            time_scale=time_scale,
            retention_seconds=3600.0,
            lost_fraction=LOST_FRACTION,
        )
        unified = kind == "video" or rng.random() < 0.5
        lag = rng.uniform(0.0, discovery_delay) / time_scale
        tasks.append(WorkloadTask(plan, unified, plan.created + lag))
        number += 1
    tasks.sort(key=lambda w: w.discovered_at)
    return tasks


def finishes(task: WorkloadTask) -> bool:
    """True if the task really finishes (lost tasks vanish instead)."""
    return not task.plan.lost
