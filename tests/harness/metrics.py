"""Prometheus text as a dict of samples, and sums over it."""

from __future__ import annotations

from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(
        value
        for (sample_name, sample_labels), value in samples.items()
        if sample_name == name and set(labels.items()) <= set(sample_labels)
    )


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    result: dict[str, float] = defaultdict(float)
    for (sample_name, sample_labels), value in samples.items():
        if sample_name == name:
            result[dict(sample_labels)[label]] += value
    return dict(result)
