"""One account's poll loop, wired: the loop, its outcome handler and listeners,
its store view and its health. The agent makes one per account (one without
`accounts:`) and runs each as a scheduler job of its own."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry

from exporter.classify import ReasonClassifier
from exporter.config import Config
from exporter.metrics.recorder import PollRecording, Recorder
from exporter.model import Task
from exporter.poller.account import AccountWatcher
from exporter.poller.adaptive import AdaptiveSchedule
from exporter.poller.cycle import CycleSettings, DueTasks, PollCycle, StatusFetcher
from exporter.poller.events import PollListener
from exporter.poller.handler import OutcomeHandler
from exporter.poller.learning import DurationLearning
from exporter.poller.ratecontrol import RateController
from exporter.poller.ratelimit import AccountShare, Budget
from exporter.poller.transitions import PollPolicy
from exporter.store.base import ModelStatsStore, PollStore, TaskWriter
from exporter.upstream.client import UpstreamClient


@dataclass
class LoopHealth:
    """One poll loop's progress: what /-/healthy, /-/live and /-/ready ask of it."""

    stall_after: float  # seconds without a finished cycle before unhealthy
    started: float = field(default_factory=time.monotonic)
    last_cycle_end: float | None = None
    shutting_down: bool = False

    def cycle_finished(self) -> None:
        self.last_cycle_end = time.monotonic()

    def ready(self) -> bool:
        return self.last_cycle_end is not None and not self.shutting_down

    def stalled_for(self) -> float:
        """Seconds past the stall limit (<= 0 while polling keeps up)."""
        reference = self.last_cycle_end if self.last_cycle_end is not None else self.started
        return time.monotonic() - reference - self.stall_after


@dataclass
class AccountLoop:
    """One account's poll loop: its key's client, its budget, its listeners, its health."""

    name: str
    client: UpstreamClient
    poller: Poller
    recorder: Recorder
    health: LoopHealth
    registry: CollectorRegistry | None = None  # its own, with several accounts

    @property
    def cycle(self) -> PollCycle:
        return self.poller.cycle


class LoopStore(DueTasks, TaskWriter, Protocol):
    """What one poll loop uses of the store: its due tasks, and where answers go."""


class AccountDue:
    """The store's due tasks of one account, as the poll cycle asks for them;
    answers are applied to the store as they are."""

    def __init__(self, store: PollStore, account: str) -> None:
        self._store = store
        self._account = account
        self.apply = store.apply

    def due(self, now: float, limit: int) -> list[Task]:
        return self._store.due(now, limit, self._account)


def liveness(
    needs_restart: bool, store_problem: str | None, health: LoopHealth
) -> tuple[bool, str]:
    """(alive, why) for /-/live: see `Agent.alive`."""
    if needs_restart:
        return False, f"not alive: the task store fails: {store_problem}"
    stalled = health.stalled_for()
    if stalled > 0 and store_problem is None:  # a store outage pauses polling
        return False, f"not alive: no poll cycle finished for {stalled + health.stall_after:.0f} s"
    return True, "Alive"


@dataclass(frozen=True)
class Poller:
    """The poll path, wired: the loop, the outcome handler and its listeners."""

    cycle: PollCycle
    handler: OutcomeHandler
    rate: RateController
    learning: DurationLearning | None

    def save_stats(self) -> None:
        if self.learning is not None:
            self.learning.save()


def build_poller(
    store: LoopStore,
    client: StatusFetcher,
    classifier: ReasonClassifier,
    recorder: Recorder,
    budget: Budget,
    policy: PollPolicy,
    settings: CycleSettings,
    *,
    schedule: AdaptiveSchedule | None = None,
    share: AccountShare | None = None,
    stats: ModelStatsStore | None = None,
    learning: DurationLearning | None = None,
    account: str | None = None,
    clock: Callable[[], float] = time.time,
    jitter: Callable[[], float] = random.random,
) -> Poller:
    """The poll loop -> one outcome handler -> listeners (metrics, account state,
    rate controller, duration learning); see docs/architecture.md. `learning`:
    shared by several accounts' loops (else one is made from `stats`); `account`:
    the name of one of several accounts, for the log."""
    rate = RateController(
        budget, pause_default=policy.backoff_base, share=share, on_rate=recorder.allowed_rate
    )
    listeners: list[PollListener] = [
        PollRecording(recorder),
        AccountWatcher(recorder.set_account_state, account=account),
        rate,
    ]
    if schedule is not None and learning is None:
        learning = DurationLearning(schedule, stats)
    if learning is not None:
        listeners.append(learning)
    handler = OutcomeHandler(
        store,
        classifier,
        policy,
        listeners,
        model_label=recorder.model_label,
        schedule=schedule,
        jitter=jitter,
    )
    cycle = PollCycle(store, client, handler, rate, settings, clock=clock, ranking=schedule)
    return Poller(cycle, handler, rate, learning)


def job_name(account: str, config: Config) -> str:
    return f"poll:{account}" if config.accounts else "poll"
