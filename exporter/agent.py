"""The agent: assembles the pipeline from a config and runs it until stopped."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from pydantic import SecretStr

from exporter.backends import Backend, open_backend, stream_sources
from exporter.classify import ReasonClassifier
from exporter.config import Config
from exporter.discovery.base import DiscoverySource
from exporter.discovery.file import FileSource
from exporter.discovery.runner import run_discovery
from exporter.discovery.static import StaticSource
from exporter.intake import TaskIntake
from exporter.loops import (
    AccountDue,
    AccountLoop,
    LoopHealth,
    LoopStore,
    build_poller,
    job_name,
    liveness,
)
from exporter.metrics.accounts import RegistrationFanout
from exporter.metrics.collector import TaskStoreCollector
from exporter.metrics.recorder import ModelLabels, Recorder
from exporter.metrics.store_totals import StoreTotalsCollector
from exporter.model import ACTIVE_STATUSES, Status
from exporter.poller.adaptive import AdaptiveSchedule, build_schedule
from exporter.poller.cycle import CycleSettings
from exporter.poller.learning import DurationLearning
from exporter.poller.ratelimit import AccountShare
from exporter.poller.scheduler import build_scheduler
from exporter.poller.transitions import PollPolicy
from exporter.proxy.register import SOURCE as PROXY_SOURCE
from exporter.store.base import TaskStore
from exporter.store.guard import StoreGuard, StoreUnavailable
from exporter.upstream.client import UpstreamClient

log = logging.getLogger(__name__)
PRUNE_INTERVAL_SECONDS = 60.0
IDLE_LOG_INTERVAL_SECONDS = 300.0


class Agent:
    def __init__(
        self,
        config: Config,
        api_key: SecretStr | Mapping[str, SecretStr],
        config_source: str = "",
    ) -> None:
        """`api_key`: the key of the one account, or every account's key by name."""
        self.config = config
        self.config_source = config_source
        self.registry = CollectorRegistry()
        for standard in (ProcessCollector, PlatformCollector, GCCollector):
            standard(registry=self.registry)
        backend = open_backend(config)  # SQLite, or Redis shared by replicas
        # Every use of the store goes through the guard: failures are counted,
        # logged once a minute, and pause polling (see store/guard.py).
        self.store_guard = StoreGuard(backend.store, self.registry, model_stats=backend.model_stats)
        self.store: TaskStore = self.store_guard
        self.classifier = ReasonClassifier(config.failure_reasons)
        self.recorder = self._recorder(self.registry, config.polling.requests_per_second)
        # Models the store knows: their series exist from the first scrape on.
        self.known_models = [
            *(labels.model for labels in self.store.finish_totals()),
            *self.store.models(),
        ]
        self.recorder.restore_models(self.known_models)
        guard = self.store_guard
        self.registry.register(
            TaskStoreCollector(
                self.store,
                recorder=self.recorder,
                reports=lambda: guard.read(backend.reports_store_gauges),
                accounts=config.account_names if config.accounts else None,
            )
        )
        self.registry.register(StoreTotalsCollector(self.store, self.recorder))
        self.intake = TaskIntake(
            self.store,
            self.registry,
            config.store.max_tracked_tasks,
            accounts=config.account_names if config.accounts else None,
        )
        default = config.default_account  # of tasks from a source that names none
        self.sources: list[DiscoverySource] = [StaticSource(config.tasks, default)]
        self.sources += [
            FileSource(f.path, f.name, f.account or default) for f in config.discovery.files
        ]
        self.sources += stream_sources(config, backend)
        self.intake.add_sources(source.name for source in self.sources)
        self.recorder.add_sources(source.name for source in self.sources)
        if config.proxy.enabled:
            self.recorder.add_sources([PROXY_SOURCE])
        polling = config.polling
        keys = api_key if isinstance(api_key, Mapping) else {config.default_account: api_key}
        schedule = build_schedule(polling)  # None: fixed-interval polling
        # What adaptive polling learns is about models, not accounts: one learner.
        learning = DurationLearning(schedule, self.store_guard) if schedule else None
        self.loops = [
            self._account_loop(name, keys[name], rps, backend, schedule, learning)
            for name, rps in self._account_rates()
        ]
        # Without `accounts:` the one loop records into the agent's own Recorder
        # and /metrics is as it always was; with them, each account's registry is
        # served with its `account` label (metrics/accounts.py).
        self.account_registries = {
            loop.name: loop.registry for loop in self.loops if loop.registry is not None
        }
        self.registration: RegistrationFanout = RegistrationFanout(
            self.recorder, [loop.recorder for loop in self.loops]
        )
        self.learning = learning
        if config.accounts:
            self._warn_unpolled(config.account_names)
        first = self.loops[0]
        self.client, self.poller, self.cycle = first.client, first.poller, first.cycle
        self._idle_lock = threading.Lock()
        self._last_idle_log: float | None = None  # monotonic; may be < 300 s after boot
        self._discovered_once = False  # no idle hint in the log before the first pass
        self.task_api_on = False  # set by serve() when a token turns the task API on
        self._scheduler = build_scheduler(
            [
                ("discovery", self.discover, config.discovery.interval_seconds),
                *(
                    (
                        job_name(loop.name, config),
                        functools.partial(self.poll, loop),
                        polling.cycle_interval_seconds,
                    )
                    for loop in self.loops
                ),
                ("prune", self.prune, PRUNE_INTERVAL_SECONDS),
            ]
        )
        self._stopped = threading.Event()
        # Last of all collectors: it runs once a scrape has read every other
        # metric (see metrics/recorder.py). Nothing is registered after it.
        self.registry.register(self.recorder.scrape_mark)

    def _recorder(
        self, registry: CollectorRegistry, budget_rps: float, models: ModelLabels | None = None
    ) -> Recorder:
        metrics = self.config.metrics
        return Recorder(
            registry,
            duration_buckets=metrics.duration_buckets,
            pending_buckets=metrics.pending_buckets,
            max_models=metrics.max_models,
            reasons=self.classifier.reasons,
            reason_classes=self.classifier.classes,
            budget_rps=budget_rps,
            model_labels=models,
        )

    def _account_rates(self) -> list[tuple[str, float]]:
        """(name, requests per second) of every account; the implicit one without `accounts:`."""
        default = self.config.polling.requests_per_second
        if not self.config.accounts:
            return [(self.config.default_account, default)]
        return [(a.name, a.requests_per_second or default) for a in self.config.accounts]

    def _account_loop(
        self,
        name: str,
        key: SecretStr,
        rps: float,
        backend: Backend,
        schedule: AdaptiveSchedule | None,
        learning: DurationLearning | None,
    ) -> AccountLoop:
        """One account's poll loop. Without `accounts:`, the one loop is today's: the
        agent's Recorder, the backend's budget, every due task."""
        config, polling = self.config, self.config.polling
        several = bool(config.accounts)
        registry = None
        if several:
            registry = CollectorRegistry(auto_describe=False)
            recorder = self._recorder(registry, rps, self.recorder.model_label)
            recorder.restore_models(self.known_models)
            registry.register(recorder.scrape_mark)  # last: see metrics/recorder.py
            budget = backend.account_budget(name, rps)
            store: LoopStore = AccountDue(self.store, name)
        else:
            recorder, budget, store = self.recorder, backend.budget, self.store
        client = UpstreamClient(
            config.api.base_url,
            key,
            status_path=config.api.status_path,
            timeout_seconds=config.api.timeout_seconds,
            max_response_bytes=config.api.max_response_bytes,
            max_connections=config.api.max_connections,
        )
        poller = build_poller(
            store,
            client,
            self.classifier,
            recorder,
            budget,  # shared by the group with Redis
            PollPolicy(
                task_interval=polling.task_interval_seconds,
                max_wait=polling.max_wait_seconds,
                backoff_base=polling.backoff_base_seconds,
                backoff_max=polling.backoff_max_seconds,
            ),
            CycleSettings(
                workers=config.api.max_connections,
                # About two cycles' worth of budget: enough to keep the pool busy,
                # small enough that a cycle ends and the lag is measured.
                batch_size=max(1, int(rps * polling.cycle_interval_seconds * 2)),
                lookahead=polling.cycle_interval_seconds / 2,
                # A slow request must not hold back every due task: after a cycle's
                # worth of waiting, the stragglers are applied by a later cycle.
                straggler_wait=polling.cycle_interval_seconds,
                probe_interval=polling.probe_interval_seconds,
            ),
            schedule=schedule,
            learning=learning,  # what it learnt survives restarts
            share=AccountShare(rps, polling.rate_limit_reserve_ratio),
            account=name if several else None,
        )
        health = LoopHealth(stall_after=max(30.0, 10 * polling.cycle_interval_seconds))
        return AccountLoop(name, client, poller, recorder, health, registry)

    def _warn_unpolled(self, accounts: tuple[str, ...]) -> None:
        """Unfinished tasks stored under an account that is no longer configured
        (e.g. `default`, from before `accounts:`) are polled by no loop: say so once."""
        try:
            counts = self.store.count_by_account()
        except StoreUnavailable:
            return
        for account, by_status in sorted(counts.items()):
            waiting = sum(by_status.get(status, 0) for status in ACTIVE_STATUSES)
            if account not in accounts and waiting:
                log.warning(
                    "%d unfinished task(s) in the store belong to account %s, which is not "
                    "in accounts:; no loop polls them (name an account %s to poll them)",
                    waiting,
                    account,
                    account,
                )

    def discover(self) -> None:
        if not self.store_guard.usable():
            return  # nothing could be stored: sources keep their position
        run_discovery(self.sources, self.store, self.registration, time.time(), self.intake)
        self._discovered_once = True

    def poll(self, loop: AccountLoop | None = None) -> None:
        """One cycle of an account's loop (default: the first)."""
        loop = loop or self.loops[0]
        # While the store fails, answers could not be stored: polling would only
        # repeat the same requests. The guard probes and says when to resume.
        if not self.store_guard.usable():
            return
        try:
            loop.cycle.run_once()
        except StoreUnavailable:
            return  # counted and logged by the guard
        loop.health.cycle_finished()
        self._log_if_idle()

    def prune(self) -> None:
        if not self.store_guard.usable():
            return
        try:
            removed = self.store.prune(time.time() - self.config.store.retention_seconds)
        except StoreUnavailable:
            return
        if removed:
            log.info("forgot %d finished task(s) past the retention", removed)

    def tracked(self) -> int:
        counts = self.store.count_by_status()
        return sum(counts.get(status, 0) for status in ACTIVE_STATUSES)

    def _of_account(self, loop: AccountLoop) -> str:
        return f" of account {loop.name}" if self.config.accounts else ""

    # The HealthView the web server reads.
    def healthy(self) -> tuple[bool, str]:
        problem = self.store_guard.problem()
        if problem is not None:
            return False, f"unhealthy: the task store fails: {problem}"
        for loop in self.loops:  # every account's loop must keep running
            stalled = loop.health.stalled_for()
            if stalled > 0:
                return (
                    False,
                    f"unhealthy: no poll cycle{self._of_account(loop)} finished for "
                    f"{stalled + loop.health.stall_after:.0f} s",
                )
        try:
            self.store.count_by_status()
        except Exception as exc:
            return False, f"unhealthy: the task store cannot be read: {type(exc).__name__}"
        return True, "Healthy"

    def alive(self) -> tuple[bool, str]:
        """For a liveness probe: False only where restarting the process helps.

        A store that fails for a cause outside the process (Redis down, a full
        disk) heals by itself and polling resumes with it: a restart would only
        lose /metrics and the reason meanwhile (and, with Redis, fail to start).
        /-/healthy still says 503 for those."""
        # The store is asked once: its state is the same for every loop.
        needs_restart, problem = self.store_guard.needs_restart(), self.store_guard.problem()
        for loop in self.loops:  # every account's loop must keep running
            alive, why = liveness(needs_restart, problem, loop.health)
            if not alive:
                # A store that fails for good is the store's trouble, not this account's.
                named = self.config.accounts and not needs_restart
                return alive, f"{why} (account {loop.name})" if named else why
        return True, "Alive"

    def ready(self) -> tuple[bool, str]:
        if self._stopped.is_set():
            return False, "not ready: shutting down"
        problem = self.store_guard.problem()
        if problem is not None:
            return False, f"not ready: the task store fails: {problem}"
        for loop in self.loops:
            if not loop.health.ready():
                return (
                    False,
                    f"not ready: the first poll cycle{self._of_account(loop)} has not run yet",
                )
        return True, "Ready"

    def summary(self) -> dict[str, int]:
        try:
            counts = self.store.count_by_status()
        except StoreUnavailable:
            counts = {}  # the landing page still answers; health says why
        return {status.value: counts.get(status, 0) for status in Status}

    def hint(self) -> str:
        """Why task metrics do not move, when the store holds no task at all.

        Text with `code` in backticks (the landing page renders it as <code>). No
        hint once any task is known: finished tasks mean discovery works.
        """
        try:
            if any(self.store.count_by_status().values()):
                return ""
        except StoreUnavailable as exc:
            return f"The task store fails: {exc}"
        config = self.config
        sources = []
        for source in config.discovery.files:
            missing = "" if source.path.exists() else " (it does not exist yet)"
            sources.append(f"the file `{source.path}`{missing}")
        if config.discovery.redis_stream is not None:
            sources.append(f"the Redis stream `{config.discovery.redis_stream.stream}`")
        if config.proxy.enabled:
            sources.append(f"create calls through the proxy on `{config.proxy.listen_address}`")
        if self.task_api_on:
            sources.append("the task API (`lemondata-exporter track ID` or POST /api/v1/tasks)")
        if sources:
            listed = ", ".join(sources[:-1]) + (" and " if len(sources) > 1 else "") + sources[-1]
            return (
                "No tasks are tracked yet, so task metrics will not move. Tasks come from "
                f"{listed}; they show here once your application adds some."
            )
        return (
            "No tasks are tracked, and nothing is configured to add any. List task IDs in "
            "the config's `tasks`, name a file your application appends to in "
            "`discovery.files`, set `$LEMONDATA_EXPORTER_TOKEN` to turn on the task API "
            "(`lemondata-exporter track ID`), or set `proxy.enabled: true`."
        )

    def _log_if_idle(self) -> None:
        now = time.monotonic()
        if not self._discovered_once:
            return
        with self._idle_lock:  # several accounts' loops end cycles at once
            if (
                self._last_idle_log is not None
                and now - self._last_idle_log < IDLE_LOG_INTERVAL_SECONDS
            ):
                return
            self._last_idle_log = now
        hint = self.hint()  # once: discovery may add tasks meanwhile
        if not hint:
            self._last_idle_log = None  # not idle: look again next cycle
            return
        log.warning("%s%s", hint, f" Config: {self.config_source}" if self.config_source else "")

    def start(self) -> None:
        self.store_guard.check_in_background()  # a big store file: see store/guard.py
        self._scheduler.start()

    def stop(self) -> None:
        """Stop taking work, let in-flight polls end within the deadline, close the store."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        for loop in self.loops:
            loop.health.shutting_down = True
            loop.cycle.stop()
        deadline = self.config.polling.shutdown_timeout_seconds
        ends = time.monotonic() + deadline
        unanswered: list[int] = []

        def finish() -> None:  # the running cycles, then requests still in flight
            self._scheduler.shutdown(wait=True)
            for loop in self.loops:
                unanswered.append(loop.cycle.settle(max(0.0, ends - time.monotonic())))

        finisher = threading.Thread(target=finish, name="shutdown")
        finisher.start()
        finisher.join(deadline + 0.5)
        if finisher.is_alive() or any(unanswered):
            log.warning("in-flight polls did not finish within %.0f s; abandoning them", deadline)
        if self.learning is not None:
            self.learning.save()
        for loop in self.loops:
            loop.client.close()
        self.store.close()
