"""What Prometheus computes from a sequence of scrapes, for crash tests.

`increase()` over a range that covers every sample, without extrapolation:
the sum of the rises between consecutive samples, where a fall is a counter
reset and the new value counts in full. A series' first sample is its
baseline, so an increment in the scrape that creates a series is not seen.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise

from tests.harness import Samples

Labels = tuple[tuple[str, str], ...]


def series(samples: Samples, name: str, drop: tuple[str, ...] = ()) -> dict[Labels, float]:
    """The samples of `name` by label set, without the labels in `drop`."""
    found: dict[Labels, float] = {}
    for (sample_name, labels), value in samples.items():
        if sample_name == name:
            kept = tuple((k, v) for k, v in labels if k not in drop)
            found[kept] = value
    return found


def increase(values: list[float]) -> float:
    rise = 0.0
    for before, after in pairwise(values):
        rise += after - before if after >= before else after
    return rise


def total_increase(timeline: list[dict[Labels, float]]) -> dict[Labels, float]:
    """`increase()` of every series over a timeline of {labels: value} samples."""
    values: dict[Labels, list[float]] = defaultdict(list)
    for sample in timeline:
        for labels, value in sample.items():
            values[labels].append(value)
    return {labels: increase(seen) for labels, seen in values.items()}


def max_over_instances(rounds: list[dict[str, dict[Labels, float]]]) -> list[dict[Labels, float]]:
    """`max without(instance)` at each round: over the latest sample of every
    instance scraped so far (a dead instance's last sample stays in the max,
    as it does in Prometheus until its staleness; it never raises it)."""
    latest: dict[str, dict[Labels, float]] = {}
    timeline = []
    for scraped in rounds:
        latest.update(scraped)
        merged: dict[Labels, float] = {}
        for values in latest.values():
            for labels, value in values.items():
                merged[labels] = max(merged.get(labels, value), value)
        timeline.append(merged)
    return timeline


def by(increases: dict[Labels, float], label: str) -> dict[str, float]:
    """Summed by one label, leaving out zeros."""
    result: dict[str, float] = defaultdict(float)
    for labels, value in increases.items():
        result[dict(labels)[label]] += value
    return {key: value for key, value in result.items() if value}
