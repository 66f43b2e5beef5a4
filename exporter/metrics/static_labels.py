"""`metrics.static_labels`: the same labels on every series the exporter serves.

Added at exposition, to what the registry collects, so no metric has to know
about them and a restricted scrape (`?name[]=`) gets them too. The config
refuses names the exporter's own series use (`RESERVED_LABELS`), so a static
label never overwrites one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric


class _Collecting(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class StaticLabelsRegistry(CollectorRegistry):
    """Serves what `inner` collects, with `labels` on every sample."""

    def __init__(self, inner: _Collecting, labels: Mapping[str, str]) -> None:
        super().__init__(auto_describe=False)
        self._inner = inner
        self._labels = dict(labels)

    def collect(self) -> Iterator[Metric]:
        for family in self._inner.collect():
            yield with_labels(family, self._labels)

    def restricted_registry(self, names: Iterable[str]) -> StaticLabelsRegistry:  # type: ignore[override]
        restricted = self._inner.restricted_registry(names)  # type: ignore[attr-defined]
        return StaticLabelsRegistry(restricted, self._labels)


def with_labels(family: Metric, labels: Mapping[str, str]) -> Metric:
    """A copy of `family` whose samples carry `labels` as well."""
    copy = Metric(family.name, family.documentation, family.type, family.unit)
    copy.samples = [
        sample._replace(labels={**sample.labels, **labels}) for sample in family.samples
    ]
    return copy


def serving_registry(registry: CollectorRegistry, labels: Mapping[str, str]) -> CollectorRegistry:
    """The registry /metrics serves: `registry` itself when there are no static labels."""
    return StaticLabelsRegistry(registry, labels) if labels else registry
