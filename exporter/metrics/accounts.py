"""Several accounts: each account's series carry its name as the `account` label.

Each account's poll loop records into a `Recorder` of its own, in a registry of
its own, exactly as the one loop of a single account does; nothing on the
poll path knows about the label. At exposition `AccountsRegistry` adds
`account="<name>"` to every sample of an account's registry (as
`static_labels.py` adds static labels) and serves one family per metric name,
the accounts' samples merged. The label's values are the configured account
names, fixed at start: bounded.

The agent's own registry (store, intake, discovery, process) is served as it
is, less the families the accounts' registries serve: its own `Recorder`
counts discovery, and its per-account series, never fed, are not served.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from exporter.metrics.recorder import Recorder
from exporter.metrics.static_labels import with_labels

ACCOUNT_LABEL = "account"
# Families every Recorder registers that are not about one account: served once,
# from the agent's own Recorder (discovery happens before a task has a loop).
SHARED_FAMILIES = frozenset(
    {
        "lemondata_tasks_discovered",
        "lemondata_discovery_errors",
        "lemondata_exporter_build_info",
    }
)


class AccountsRegistry(CollectorRegistry):
    """Serves `main` and, with the `account` label, each account's registry."""

    def __init__(self, main: CollectorRegistry, accounts: Mapping[str, CollectorRegistry]) -> None:
        super().__init__(auto_describe=False)
        self._main = main
        self._accounts = dict(accounts)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for name, registry in self._accounts.items():
            labels = {ACCOUNT_LABEL: name}
            for family in registry.collect():
                if family.name in SHARED_FAMILIES:
                    continue
                labelled = with_labels(family, labels)
                found = merged.get(family.name)
                if found is None:
                    merged[family.name] = labelled
                else:
                    found.samples += labelled.samples
        for family in self._main.collect():
            if family.name not in merged:
                yield family
        yield from merged.values()

    def restricted_registry(self, names: Iterable[str]) -> AccountsRegistry:  # type: ignore[override]
        wanted = list(names)
        return AccountsRegistry(
            self._main.restricted_registry(wanted),  # type: ignore[arg-type]
            {
                name: registry.restricted_registry(wanted)  # type: ignore[misc]
                for name, registry in self._accounts.items()
            },
        )


class RegistrationFanout:
    """What registration feeds (`intake.RegistrationRecorder`, discovery's errors):
    counts go to the agent's Recorder; new models get zero series in every
    account's Recorder too, so that their first finish is an increase."""

    def __init__(self, main: Recorder, accounts: Iterable[Recorder]) -> None:
        self._main = main
        self._accounts = [recorder for recorder in accounts if recorder is not main]

    def tasks_discovered(self, source: str, count: int) -> None:
        self._main.tasks_discovered(source, count)

    def discovery_error(self, source: str) -> None:
        self._main.discovery_error(source)

    def add_models(self, models: Iterable[str | None]) -> None:
        wanted = list(models)
        self._main.add_models(wanted)
        for recorder in self._accounts:
            recorder.add_models(wanted)
