"""The simulator: routing, auth, rate limits, task endpoints, faults, ground truth."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from exporter.simulator import faults as fault_modes
from exporter.simulator.lifecycle import Outcome, PlanOverrides, observe
from exporter.simulator.models import KINDS, Kind, Reason
from exporter.simulator.payloads import (
    bad_request_reply,
    create_payload,
    image_status_payload,
    invalid_key_reply,
    rate_limited_reply,
    task_not_found_reply,
    unified_status_payload,
)
from exporter.simulator.ratelimit import FixedWindowLimiter, RateDecision
from exporter.simulator.reply import Reply, Request, error_reply, json_reply
from exporter.simulator.server import SimulatorServer
from exporter.simulator.settings import SimulatorSettings
from exporter.simulator.store import TaskStore

MAX_IMAGES = 10


@dataclass(frozen=True)
class Route:
    """What a request path names: a path kind, the method it takes, a task id."""

    kind: str
    method: str = "GET"
    task_id: str | None = None


def route(path: str) -> Route:
    """Maps a request path to a path kind (pure)."""
    parts = path.strip("/").split("/")
    if parts[0] == "_sim":
        return Route("sim", "")
    if parts[0] != "v1" or "" in parts:
        return Route("other", "")
    rest = parts[1:]
    match rest:
        case ["images", "generations"]:
            return Route("create_image", "POST")
        case ["videos", "generations"]:
            return Route("create_video", "POST")
        case ["images", "generations", task_id]:
            return Route("status_image", "GET", task_id)
        case ["images", task_id]:
            return Route("status_image_alias", "GET", task_id)
        case ["tasks", task_id]:
            return Route("status_task", "GET", task_id)
        case ["videos", "generations", task_id]:
            return Route("status_video", "GET", task_id)
    return Route("other_api", "")


def bearer_key(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, key = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return key.strip() or None


def not_found_reply() -> Reply:
    return error_reply(404, "Not found", "invalid_request_error", "not_found")


class Simulator:
    """An imitation of the LemonData async task API; see the package docstring."""

    def __init__(
        self,
        settings: SimulatorSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or SimulatorSettings()
        self.seed = (
            self.settings.seed
            if self.settings.seed is not None
            else random.SystemRandom().randrange(2**32)
        )
        self._clock = clock
        self._keys = frozenset(self.settings.api_keys)
        self._float_ts = self.settings.use_float_timestamps
        self._store = TaskStore(
            seed=self.seed,
            time_scale=self.settings.time_scale,
            retention_seconds=self.settings.retention_seconds,
            lost_fraction=self.settings.lost_fraction,
            profiles=self.settings.profiles,
        )
        limit, own = self.settings.rate_limit_per_minute, self.settings.key_limits
        self._limiter = (
            FixedWindowLimiter(limit, limits=own) if limit > 0 or any(own.values()) else None
        )
        # The account each task was created by (a key of `key_limits`, or '' for the
        # shared account of the other keys): another account's request gets 404, as
        # a multi-tenant API answers. Tasks made in-process without a key: everyone's.
        self._own_accounts = frozenset(self.settings.key_limits)
        self._owners: dict[str, str] = {}
        self._revoked: set[str] = set()
        # Fault draws need not be reproducible (threads interleave anyway).
        self._fault_rng = random.Random(f"faults:{self.seed}")
        self._faults: fault_modes.ActiveFaults = {}
        self._counts: Counter[tuple[str, int]] = Counter()
        self._counts_lock = threading.Lock()
        self._server: SimulatorServer | None = None
        self._port: int | None = None
        self.set_faults(self.settings.faults)

    # ---- lifecycle of the HTTP server ----------------------------------------

    def start(self) -> None:
        """Serves in a background thread; port 0 picks a free port."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        server = SimulatorServer(
            self.settings.host,
            self.settings.port,
            self.handle,
            idle_timeout=self.settings.idle_timeout_seconds,
            max_body_bytes=self.settings.max_request_body_bytes,
        )
        server.start()
        self._server = server
        self._port = server.port

    def stop(self) -> None:
        """Stops quickly, even with hanging or dripping requests in flight."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("simulator not started")
        return self._port

    @property
    def url(self) -> str:
        host = self.settings.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    # ---- in-process API -------------------------------------------------------

    def create_task(
        self,
        model: str,
        kind: Kind = "image",
        *,
        prompt: str = "",
        n: int = 1,
        outcome: Outcome | None = None,
        reason: Reason | None = None,
        lost: bool | None = None,
        pending_seconds: float | None = None,
        processing_seconds: float | None = None,
        key: str | None = None,
    ) -> dict[str, Any]:
        """Same as the create POST, in-process; keyword overrides force parts of the plan.
        `key`: the task is that key's account's (invisible to other accounts); None:
        everyone's."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        overrides = PlanOverrides(outcome, reason, lost, pending_seconds, processing_seconds)
        plan = self._store.create(
            model=model, kind=kind, now=self._clock(), prompt=prompt, n=n, overrides=overrides
        )
        if key is not None:
            self._owners[plan.task_id] = self._account(key)
        return create_payload(plan, self._float_ts)

    def _account(self, key: str) -> str:
        return key if key in self._own_accounts else ""

    def revoke_key(self, key: str) -> None:
        """From now on the API answers this key 401 `expired_api_key` (until `reset`)."""
        self._revoked.add(key)

    def ground_truth(self) -> list[dict[str, Any]]:
        """What really happened to every task so far (faults never change it)."""
        return self._store.ground_truth(self._clock())

    def request_counts(self) -> dict[str, Any]:
        with self._counts_lock:
            counts = dict(self._counts)
        by_code: Counter[str] = Counter()
        by_kind: Counter[str] = Counter()
        both: dict[str, dict[str, int]] = {}
        for (kind, code), count in counts.items():
            by_code[str(code)] += count
            by_kind[kind] += count
            both.setdefault(kind, {})[str(code)] = count
        return {
            "total": sum(counts.values()),
            "by_code": dict(by_code),
            "by_path_kind": dict(by_kind),
            "by_path_kind_and_code": both,
        }

    def set_faults(self, config: Mapping[str, object]) -> None:
        """Replaces the fault configuration; raises FaultConfigError (a ValueError)."""
        self._faults = fault_modes.parse_faults(config, self._clock())

    def faults(self) -> dict[str, Any]:
        return {name: setting.to_json() for name, setting in self._faults.items()}

    def reset(self) -> None:
        """Back to a fresh start: no tasks, no counts, fresh rate windows, initial faults."""
        self._store.clear()
        self._owners.clear()
        self._revoked.clear()
        with self._counts_lock:
            self._counts.clear()
        if self._limiter is not None:
            self._limiter.reset()
        self.set_faults(self.settings.faults)

    # ---- request handling -----------------------------------------------------

    def handle(self, request: Request) -> Reply:
        """Answers one request (no sockets involved)."""
        now = self._clock()
        target = route(request.path)
        if target.kind == "sim":
            reply = self._handle_sim(request, now)
        elif target.kind == "other":
            reply = not_found_reply()
        else:
            reply = self._handle_api(request, target, now)
        with self._counts_lock:
            self._counts[(target.kind, reply.status)] += 1
        return reply

    def _handle_api(self, request: Request, target: Route, now: float) -> Reply:
        active = self._faults
        forced = fault_modes.window_reply(active, now, self._fault_rng)
        if forced is not None:
            return forced
        key = bearer_key(request.headers.get("authorization"))
        if key is None or key not in self._keys:
            return invalid_key_reply()
        if key in self._revoked:
            return error_reply(401, "API key expired", "authentication_error", "expired_api_key")
        decision = self._limiter.hit(key, now) if self._limiter is not None else None
        if decision is not None and not decision.allowed:
            reply = rate_limited_reply(decision.retry_after)
        elif target.kind == "other_api":
            reply = not_found_reply()
        elif request.method not in (target.method, "HEAD" if target.method == "GET" else ""):
            reply = error_reply(
                405, "Method not allowed", "invalid_request_error", "method_not_allowed"
            )
        elif target.task_id is None:
            kind: Kind = "image" if target.kind == "create_image" else "video"
            reply = self._create(request, kind, key)
        elif self._owners.get(target.task_id, self._account(key)) != self._account(key):
            reply = task_not_found_reply()  # another account's task
        else:
            reply = self._status(target, target.task_id, now, active)
        return self._with_rate_headers(reply, decision)

    @staticmethod
    def _with_rate_headers(reply: Reply, decision: RateDecision | None) -> Reply:
        if decision is None or not reply.rate_limit_headers:
            return reply
        return replace(reply, headers=reply.headers + decision.headers())

    def _create(self, request: Request, kind: Kind, key: str) -> Reply:
        try:
            body = json.loads(request.body or b"null")
        except (ValueError, UnicodeDecodeError):
            return bad_request_reply("Request body is not valid JSON", "invalid_json")
        if not isinstance(body, dict):
            return bad_request_reply("Request body must be a JSON object", "invalid_json")
        model = body.get("model")
        if model is None:
            return bad_request_reply("'model' is required", "missing_required_parameter")
        if not isinstance(model, str) or not model.strip():
            return bad_request_reply("'model' must be a non-empty string", "invalid_parameter")
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            return bad_request_reply("'prompt' must be a string", "invalid_parameter")
        n = body.get("n", 1)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
            return bad_request_reply(
                f"'n' must be an integer from 1 to {MAX_IMAGES}", "invalid_parameter"
            )
        plan = self._store.create(model=model, kind=kind, now=self._clock(), prompt=prompt, n=n)
        self._owners[plan.task_id] = self._account(key)
        return json_reply(200, create_payload(plan, self._float_ts))

    def _status(
        self, target: Route, task_id: str, now: float, active: fault_modes.ActiveFaults
    ) -> Reply:
        plan = self._store.get(task_id)
        obs = observe(plan, now) if plan is not None else None
        if plan is None or obs is None or not obs.visible:
            reply = task_not_found_reply()
        else:
            if target.kind in ("status_image", "status_image_alias"):
                payload = image_status_payload(plan, obs, self._float_ts)
            else:
                payload = unified_status_payload(plan, obs, self._float_ts)
            payload = fault_modes.apply_payload_faults(active, payload, self._fault_rng)
            reply = json_reply(200, payload)
        return fault_modes.apply_reply_faults(active, reply, self._fault_rng)

    # ---- /_sim ----------------------------------------------------------------

    def _handle_sim(self, request: Request, now: float) -> Reply:
        endpoint = (request.method, request.path.rstrip("/"))
        if endpoint == ("GET", "/_sim/ground_truth"):
            return json_reply(
                200,
                {
                    "now": now,
                    "time_scale": self.settings.time_scale,
                    "seed": self.seed,
                    "tasks": self._store.ground_truth(now),
                    "requests": self.request_counts(),
                },
            )
        if endpoint == ("POST", "/_sim/reset"):
            self.reset()
            return json_reply(200, {"reset": True})
        if endpoint == ("GET", "/_sim/faults"):
            return self._faults_reply()
        if endpoint == ("PUT", "/_sim/faults"):
            try:
                config = json.loads(request.body or b"{}")
                self.set_faults(config)
            except (ValueError, UnicodeDecodeError, AttributeError) as exc:
                return bad_request_reply(str(exc), "invalid_fault_config")
            return self._faults_reply()
        if endpoint == ("POST", "/_sim/revoke"):
            try:
                key = json.loads(request.body or b"{}").get("key")
            except (ValueError, UnicodeDecodeError, AttributeError):
                key = None
            if not isinstance(key, str) or key not in self._keys:
                return bad_request_reply('the body must be {"key": "<an accepted key>"}', "no_key")
            self.revoke_key(key)
            return json_reply(200, {"revoked": True})
        if endpoint == ("GET", "/_sim/health"):
            return json_reply(200, {"ok": True})
        return not_found_reply()

    def _faults_reply(self) -> Reply:
        return json_reply(
            200, {"active": self.faults(), "available": fault_modes.describe_faults()}
        )
