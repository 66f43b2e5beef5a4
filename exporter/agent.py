"""The agent: assembles the pipeline from a config and runs it until stopped."""

from __future__ import annotations

import logging
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from pydantic import SecretStr

from exporter.api.mounts import WebApis
from exporter.api.validation import SOURCE as API_SOURCE
from exporter.backends import open_backend, stream_sources
from exporter.classify import ReasonClassifier
from exporter.config import Config
from exporter.discovery.base import DiscoverySource
from exporter.discovery.file import FileSource
from exporter.discovery.runner import run_discovery
from exporter.discovery.static import StaticSource
from exporter.intake import TaskIntake
from exporter.metrics.collector import TaskStoreCollector
from exporter.metrics.recorder import PollRecording, Recorder
from exporter.metrics.static_labels import serving_registry
from exporter.metrics.store_totals import StoreTotalsCollector
from exporter.model import ACTIVE_STATUSES, Status
from exporter.poller.account import AccountWatcher
from exporter.poller.adaptive import AdaptiveSchedule, build_schedule
from exporter.poller.cycle import CycleSettings, PollCycle, StatusFetcher
from exporter.poller.events import PollListener
from exporter.poller.handler import OutcomeHandler
from exporter.poller.learning import DurationLearning
from exporter.poller.ratecontrol import RateController
from exporter.poller.ratelimit import AccountShare, Budget
from exporter.poller.scheduler import build_scheduler
from exporter.poller.transitions import PollPolicy
from exporter.proxy import build_proxy
from exporter.proxy.register import SOURCE as PROXY_SOURCE
from exporter.store.base import ModelStatsStore, PollStore, TaskStore
from exporter.store.guard import StoreGuard, StoreUnavailable
from exporter.upstream.client import UpstreamClient
from exporter.web.httpserver import HttpServer
from exporter.web.security import WebSecurity
from exporter.web.server import build_app

log = logging.getLogger(__name__)
PRUNE_INTERVAL_SECONDS = 60.0
IDLE_LOG_INTERVAL_SECONDS = 300.0


@dataclass
class AgentHealth:
    """What the web server reports on /-/healthy, /-/ready and /."""

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


def liveness(
    needs_restart: bool, store_problem: str | None, health: AgentHealth
) -> tuple[bool, str]:
    """(alive, why) for /-/live: see `Agent.alive`."""
    if needs_restart:
        return False, f"not alive: the task store fails: {store_problem}"
    stalled = health.stalled_for()
    if stalled > 0 and store_problem is None:  # a store outage pauses polling
        return False, f"not alive: no poll cycle finished for {stalled + health.stall_after:.0f} s"
    return True, "Alive"


class Agent:
    def __init__(self, config: Config, api_key: SecretStr, config_source: str = "") -> None:
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
        self.recorder = Recorder(
            self.registry,
            duration_buckets=config.metrics.duration_buckets,
            pending_buckets=config.metrics.pending_buckets,
            max_models=config.metrics.max_models,
            reasons=self.classifier.reasons,
            reason_classes=self.classifier.classes,
            budget_rps=config.polling.requests_per_second,
        )
        # Models the store knows: their series exist from the first scrape on.
        self.recorder.restore_models(
            [*(labels.model for labels in self.store.finish_totals()), *self.store.models()]
        )
        guard = self.store_guard
        self.registry.register(
            TaskStoreCollector(
                self.store,
                recorder=self.recorder,
                reports=lambda: guard.read(backend.reports_store_gauges),
            )
        )
        self.registry.register(StoreTotalsCollector(self.store, self.recorder))
        self.intake = TaskIntake(self.store, self.registry, config.store.max_tracked_tasks)
        self.sources: list[DiscoverySource] = [StaticSource(config.tasks)]
        self.sources += [FileSource(f.path, f.name) for f in config.discovery.files]
        self.sources += stream_sources(config, backend)
        self.intake.add_sources(source.name for source in self.sources)
        self.recorder.add_sources(source.name for source in self.sources)
        if config.proxy.enabled:
            self.recorder.add_sources([PROXY_SOURCE])
        polling = config.polling
        self.client = UpstreamClient(
            config.api.base_url,
            api_key,
            status_path=config.api.status_path,
            timeout_seconds=config.api.timeout_seconds,
            max_response_bytes=config.api.max_response_bytes,
            max_connections=config.api.max_connections,
        )
        self.poller = build_poller(
            self.store,
            self.client,
            self.classifier,
            self.recorder,
            backend.budget,  # shared by the group with Redis
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
                batch_size=max(
                    1, int(polling.requests_per_second * polling.cycle_interval_seconds * 2)
                ),
                lookahead=polling.cycle_interval_seconds / 2,
                # A slow request must not hold back every due task: after a cycle's
                # worth of waiting, the stragglers are applied by a later cycle.
                straggler_wait=polling.cycle_interval_seconds,
                probe_interval=polling.probe_interval_seconds,
            ),
            schedule=build_schedule(polling),  # None: fixed-interval polling
            stats=self.store_guard,  # what it learnt survives restarts
            share=AccountShare(polling.requests_per_second, polling.rate_limit_reserve_ratio),
        )
        self.cycle = self.poller.cycle
        self.health = AgentHealth(stall_after=max(30.0, 10 * polling.cycle_interval_seconds))
        self._last_idle_log: float | None = None  # monotonic; may be < 300 s after boot
        self._discovered_once = False  # no idle hint in the log before the first pass
        self.task_api_on = False  # set by serve() when a token turns the task API on
        self._scheduler = build_scheduler(
            [
                ("discovery", self.discover, config.discovery.interval_seconds),
                ("poll", self.poll, polling.cycle_interval_seconds),
                ("prune", self.prune, PRUNE_INTERVAL_SECONDS),
            ]
        )
        self._stopped = threading.Event()
        # Last of all collectors: it runs once a scrape has read every other
        # metric (see metrics/recorder.py). Nothing is registered after it.
        self.registry.register(self.recorder.scrape_mark)

    def discover(self) -> None:
        if not self.store_guard.usable():
            return  # nothing could be stored: sources keep their position
        run_discovery(self.sources, self.store, self.recorder, time.time(), self.intake)
        self._discovered_once = True

    def poll(self) -> None:
        # While the store fails, answers could not be stored: polling would only
        # repeat the same requests. The guard probes and says when to resume.
        if not self.store_guard.usable():
            return
        try:
            self.cycle.run_once()
        except StoreUnavailable:
            return  # counted and logged by the guard
        self.health.cycle_finished()
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

    # The HealthView the web server reads.
    def healthy(self) -> tuple[bool, str]:
        problem = self.store_guard.problem()
        if problem is not None:
            return False, f"unhealthy: the task store fails: {problem}"
        stalled = self.health.stalled_for()
        if stalled > 0:
            return (
                False,
                f"unhealthy: no poll cycle finished for {stalled + self.health.stall_after:.0f} s",
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
        guard = self.store_guard
        return liveness(guard.needs_restart(), guard.problem(), self.health)

    def ready(self) -> tuple[bool, str]:
        if self.health.shutting_down:
            return False, "not ready: shutting down"
        problem = self.store_guard.problem()
        if problem is not None:
            return False, f"not ready: the task store fails: {problem}"
        if not self.health.ready():
            return False, "not ready: the first poll cycle has not run yet"
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
        if (
            self._last_idle_log is not None
            and now - self._last_idle_log < IDLE_LOG_INTERVAL_SECONDS
        ):
            return
        hint = self.hint()  # once: discovery may add tasks meanwhile
        if not hint:
            return
        self._last_idle_log = now
        log.warning("%s%s", hint, f" Config: {self.config_source}" if self.config_source else "")

    def start(self) -> None:
        self.store_guard.check_in_background()  # a big store file: see store/guard.py
        self._scheduler.start()

    def stop(self) -> None:
        """Stop taking work, let in-flight polls end within the deadline, close the store."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.shutting_down = True
        self.cycle.stop()
        deadline = self.config.polling.shutdown_timeout_seconds
        ends = time.monotonic() + deadline
        unanswered: list[int] = []

        def finish() -> None:  # the running cycle, then requests still in flight
            self._scheduler.shutdown(wait=True)
            unanswered.append(self.cycle.settle(max(0.0, ends - time.monotonic())))

        finisher = threading.Thread(target=finish, name="shutdown")
        finisher.start()
        finisher.join(deadline + 0.5)
        if finisher.is_alive() or (unanswered and unanswered[0]):
            log.warning("in-flight polls did not finish within %.0f s; abandoning them", deadline)
        self.poller.save_stats()
        self.client.close()
        self.store.close()


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
    store: PollStore,
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
    clock: Callable[[], float] = time.time,
    jitter: Callable[[], float] = random.random,
) -> Poller:
    """The poll loop -> one outcome handler -> listeners (metrics, account state,
    rate controller, duration learning); see docs/architecture.md."""
    rate = RateController(
        budget, pause_default=policy.backoff_base, share=share, on_rate=recorder.allowed_rate
    )
    listeners: list[PollListener] = [
        PollRecording(recorder),
        AccountWatcher(recorder.set_account_state),
        rate,
    ]
    learning = None
    if schedule is not None:
        learning = DurationLearning(schedule, stats)
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


def bind_failure(exc: OSError) -> str:
    """Why a port could not be opened, e.g. "Address already in use" (the HTTP server
    wraps the socket's error in a message of its own)."""
    if exc.strerror:
        return exc.strerror
    found = re.search(r"\[Errno \d+\] ([^)]+)", str(exc))
    return found.group(1) if found else str(exc)


def serve(
    config: Config,
    api_key: SecretStr,
    listen_address: str,
    config_source: str = "",
    stop: threading.Event | None = None,
    web_security: WebSecurity | None = None,
) -> int:
    """Run the agent and its web server until SIGINT/SIGTERM (or `stop` is set).

    `web_security` (from --web.config.file) puts TLS and basic auth on every endpoint.
    """
    stop = stop or threading.Event()
    apis = WebApis.from_config(config)  # an unusable API token stops the start (ValueError)
    agent = Agent(config, api_key, config_source)
    agent.task_api_on = apis.token is not None
    if apis.token is not None:
        agent.recorder.add_sources([API_SOURCE])
        agent.intake.add_sources([API_SOURCE])
    app = build_app(
        serving_registry(agent.registry, config.metrics.static_labels),
        agent,
        apis.mounts(agent.store, agent.recorder, agent.intake),
    )
    if web_security is not None:
        app = web_security.wrap(app, own_auth_prefixes=apis.own_auth_prefixes())
        log.info("web: %s", web_security.describe())
    try:
        web = HttpServer(app, listen_address, tls=web_security.tls if web_security else None)
    except OSError as exc:
        agent.store.close()
        log.error(
            "cannot listen on %s: %s; choose another address with --web.listen-address",
            listen_address,
            bind_failure(exc),
        )
        return 1
    try:
        proxy = (
            build_proxy(config, agent.store, agent.recorder, agent.intake)
            if config.proxy.enabled
            else None
        )
    except OSError as exc:
        agent.store.close()
        log.error(
            "proxy: cannot listen on %s: %s; choose another address in proxy.listen_address",
            config.proxy.listen_address,
            bind_failure(exc),
        )
        return 1
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set())
        for sig in (signal.SIGINT, signal.SIGTERM)
        if threading.current_thread() is threading.main_thread()
    }
    web.start()
    agent.start()
    if proxy is not None:
        proxy.start()
        log.info("proxy on %s for %s", config.proxy.listen_address, config.api.base_url)
    log.info(
        "listening on %s (metrics at /metrics), polling %s", listen_address, config.api.base_url
    )
    stop.wait()  # the first poll cycle logs a hint if nothing is tracked
    log.info("shutting down")
    if proxy is not None:
        proxy.stop()  # no new tasks while the agent stops
    agent.stop()  # /-/ready answers 503 meanwhile
    web.stop()
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    return 0
