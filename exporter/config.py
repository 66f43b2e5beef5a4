"""The configuration file: its schema, defaults and validation.

Every field is checked by pydantic; unknown fields are errors, so a typo is
reported instead of silently ignored. `load_config` turns every problem into a
`ConfigError` that names the file and the field path.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as default_factory
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from exporter.config_env import merge, origin_of, read_environment
from exporter.model import ACCOUNT_PATTERN, DEFAULT_ACCOUNT, valid_task_id
from exporter.upstream.paths import check_no_dot_segments, dot_segment_problem

API_KEY_ENV = "LEMONDATA_API_KEY"
REDIS_PASSWORD_ENV = "LEMONDATA_REDIS_PASSWORD"
DEFAULT_CONFIG_FILE = "config.yaml"
DEFAULT_LISTEN_ADDRESS = ":9847"

# 1 s to 1 h, roughly x1.5-2 apart: image tasks take 30-120 s, videos minutes.
DEFAULT_DURATION_BUCKETS = (
    1,
    2,
    5,
    10,
    15,
    20,
    30,
    45,
    60,
    90,
    120,
    180,
    240,
    300,
    450,
    600,
    900,
    1200,
    1800,
    2700,
    3600,
)
DEFAULT_PENDING_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


def _at_least_a_millisecond(value: float) -> float:
    # Far smaller values make waits of 1/value overflow (a rate of 1e-300 per second).
    if value < 0.001:
        raise ValueError("must be at least 0.001")
    return value


def _no_nul(value: Path) -> Path:
    if "\x00" in str(value):
        raise ValueError("must not contain a NUL character")
    return value


# Finite, at least 1 ms (or 0.001 per second), at most about 31 years.
PositiveSeconds = Annotated[
    float, Field(gt=0, le=1e9, allow_inf_nan=False), AfterValidator(_at_least_a_millisecond)
]
FilePath = Annotated[Path, AfterValidator(_no_nul)]


class ConfigError(Exception):
    """A configuration problem, phrased for the person who wrote the file."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_poll_path(value: str | None) -> str | None:
    """A poll_url must be a path on the API base: the key is never sent elsewhere."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/") or value.startswith("//"):
        raise ValueError("must be a path on the API base such as /v1/tasks/ID, not a URL")
    if any(ord(c) < 0x21 or c in "\\#" for c in value) or len(value) > 512:
        raise ValueError("contains characters not allowed in a poll path")
    return check_no_dot_segments(value)


def listen_address_problem(address: str, example_port: int = 9847) -> str | None:
    """Why `address` is not `host:port`, `:port` or `[v6-host]:port`; None when it is."""
    # The address is never echoed: a secret pasted into the wrong flag stays unprinted.
    if address.strip().isdigit():
        port = address.strip()
        return f"a bare port number; write :{port} (every interface) or 127.0.0.1:{port}"
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        return f"expected host:port such as :{example_port} or 127.0.0.1:{example_port}"
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        return f"an IPv6 host goes in brackets, e.g. [::1]:{example_port}"
    return None


class ApiConfig(_Section):
    base_url: str = "https://api.lemondata.cc"
    key_file: FilePath | None = Field(
        default=None, description=f"file holding the API key; else ${API_KEY_ENV} is used"
    )
    status_path: str = "/v1/images/generations/{task_id}"
    timeout_seconds: PositiveSeconds = 10.0
    max_response_bytes: int = Field(default=1_048_576, ge=1024)
    max_connections: int = Field(default=8, ge=1, le=256)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL such as https://api.lemondata.cc")
        if parts.query or parts.fragment or "@" in parts.netloc:
            raise ValueError("must not contain credentials, a query or a fragment")
        # The key goes wherever this points: no look-alike hosts, ports or spaces.
        if any(ord(c) <= 0x20 or c in "\\%" or ord(c) == 0x7F for c in value):
            raise ValueError("must not contain spaces, control characters, '\\' or '%'")
        try:
            parts.port  # noqa: B018 - raises for a port that is not a number
        except ValueError:
            raise ValueError("the port must be a number from 0 to 65535") from None
        if not parts.hostname:
            raise ValueError("must name a host")
        problem = dot_segment_problem(parts.path)
        if problem:
            raise ValueError(f"the path {problem}")
        return value.rstrip("/")

    @field_validator("status_path")
    @classmethod
    def _status_path(cls, value: str) -> str:
        if "{task_id}" not in value:
            raise ValueError("must contain {task_id}")
        check_poll_path(value.replace("{task_id}", "x"))
        return value


class PollingConfig(_Section):
    cycle_interval_seconds: PositiveSeconds = 1.0
    task_interval_seconds: PositiveSeconds = 5.0
    requests_per_second: PositiveSeconds = 5.0
    max_wait_seconds: PositiveSeconds = 1800.0
    backoff_base_seconds: PositiveSeconds = 2.0
    backoff_max_seconds: PositiveSeconds = 300.0
    shutdown_timeout_seconds: PositiveSeconds = 10.0
    # `adaptive`: poll each task by how likely it is to have finished, learnt per
    # model (docs/benchmarks.md); `fixed`: every task_interval_seconds.
    strategy: Literal["fixed", "adaptive"] = "adaptive"
    # Adaptive: see 95 % of finishes within this time; polls where a finish is
    # likely are at most task_interval_seconds apart, and never further than
    # max_interval_seconds elsewhere.
    freshness_target_seconds: PositiveSeconds = 5.0
    max_interval_seconds: PositiveSeconds = 30.0
    # Share of the account's rate limit (X-RateLimit-* headers) left to the application.
    rate_limit_reserve_ratio: float = Field(default=0.5, ge=0.0, lt=1.0)
    # With no status request sent for this long (nothing due, or every task
    # backing off), one request for a task ID that cannot exist tells whether
    # the API answers and takes the key; it counts against the budget.
    probe_interval_seconds: PositiveSeconds = 60.0


def check_redis_url(value: str | None) -> str | None:
    """A redis://, rediss:// or unix:// URL."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.netloc or parts.path):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return value


class StoreConfig(_Section):
    path: FilePath = Path("lemondata-exporter.db")
    retention_seconds: PositiveSeconds = 86400.0
    # `redis`: one store shared by several replicas (see docs/deployment.md).
    backend: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str | None = None
    # The Redis password, if the URL has none: this file, else $LEMONDATA_REDIS_PASSWORD.
    redis_password_file: FilePath | None = None
    redis_prefix: str = Field(default="lemondata:", pattern=r"^[A-Za-z0-9_.:{}-]{0,64}$")
    # A task taken by a replica for a poll is left to the others if that
    # replica has not stored the result within this time (it died).
    lease_seconds: PositiveSeconds = 60.0
    # Names this replica in the store and in the stream's consumer group;
    # default: host name and process ID. Must differ between live replicas.
    replica_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    # The most unfinished tasks tracked at once; sources offering more are refused
    # (lemondata_tasks_rejected_total{reason="limit"}).
    max_tracked_tasks: int = Field(default=100_000, ge=1, le=100_000_000)
    # The most of the time the prune of finished tasks may work (and hold the
    # SQLite writer, or Redis, for its batches): it pauses between batches for
    # the rest. Lower: scrapes and polls feel it less, the prune takes longer.
    prune_duty_cycle: float = Field(default=0.25, gt=0.0, le=1.0)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        return check_redis_url(value)

    @model_validator(mode="after")
    def _redis_needs_url(self) -> StoreConfig:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("backend redis needs redis_url, e.g. redis://localhost:6379/0")
        return self


# At most this many accounts: each is a value of the `account` label.
MAX_ACCOUNTS = 50
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


class AccountConfig(_Section):
    """One LemonData account: its own key, budget and `account` label value."""

    name: str = Field(pattern=ACCOUNT_PATTERN.pattern)
    # Where its key is: the name of an environment variable, or a file (exactly one).
    key_env: str | None = Field(default=None, pattern=_ENV_NAME)
    key_file: FilePath | None = None
    # Its request budget; default polling.requests_per_second.
    requests_per_second: PositiveSeconds | None = None

    @model_validator(mode="after")
    def _one_key_source(self) -> AccountConfig:
        if (self.key_env is None) == (self.key_file is None):
            raise ValueError(
                "give exactly one of key_env (the name of an environment variable holding "
                "the key) or key_file (a file holding it)"
            )
        return self


class StaticTask(_Section):
    id: str
    model: str | None = None
    poll_url: str | None = None
    account: str | None = None  # one of `accounts:`; default the first

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not valid_task_id(value):
            raise ValueError("task IDs are 1-128 characters of A-Z a-z 0-9 . _ : -")
        return value

    @field_validator("poll_url")
    @classmethod
    def _poll_url(cls, value: str | None) -> str | None:
        return check_poll_path(value)


class FileDiscovery(_Section):
    path: FilePath
    name: str = Field(default="file", pattern=r"^[a-z][a-z0-9_]{0,31}$")
    account: str | None = None  # the account of its tasks (one of `accounts:`); default the first


class RedisStreamDiscovery(_Section):
    """A Redis Stream that applications append tasks to (fields task_id, model, poll_url)."""

    stream: str = Field(default="lemondata:tasks", pattern=r"^[A-Za-z0-9_.:{}-]{1,128}$")
    # Default: store.redis_url.
    redis_url: str | None = None
    group: str = Field(default="lemondata-exporter", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    name: str = Field(default="stream", pattern=r"^[a-z][a-z0-9_]{0,31}$")
    # Entries read by a replica that did not confirm them within this time are
    # taken over by another one (XAUTOCLAIM).
    claim_idle_seconds: PositiveSeconds = 30.0
    batch_size: int = Field(default=500, ge=1, le=10000)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        return check_redis_url(value)


class DiscoveryConfig(_Section):
    interval_seconds: PositiveSeconds = 2.0
    files: list[FileDiscovery] = []
    redis_stream: RedisStreamDiscovery | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> DiscoveryConfig:
        paths = [str(f.path) for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("the same file is listed twice")
        return self


FailureClass = Literal["user", "service"]
# Reasons that are the caller's doing (the prompt or the parameters), not the service's.
USER_REASONS = frozenset({"content_policy", "invalid_request"})


def default_failure_class(reason: str) -> FailureClass:
    """The class of a reason whose rule does not name one."""
    return "user" if reason in USER_REASONS else "service"


class FailureReason(_Section):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    reason: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    pattern: str
    # `user`: the caller caused it; `service`: the API or its providers did.
    # Default: `user` for content_policy and invalid_request, else `service`.
    named_class: FailureClass | None = Field(default=None, alias="class")

    @property
    def failure_class(self) -> FailureClass:
        """The rule's class, named or by default."""
        return self.named_class or default_failure_class(self.reason)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


DEFAULT_FAILURE_REASONS = (
    FailureReason(
        reason="content_policy",
        pattern=r"(?i)content[ _-]?(policy|filter|moderation)|safety|nsfw|moderat|"
        r"inappropriate|prohibited|violat",
    ),
    FailureReason(
        reason="quota",
        pattern=r"(?i)quota|insufficient[ _-]?(balance|funds|credits?)|billing|payment|"
        r"spending limit|out of credits",
    ),
    FailureReason(reason="rate_limited", pattern=r"(?i)rate[ _-]?limit|too many|\b429\b"),
    FailureReason(reason="timeout", pattern=r"(?i)time[ _-]?d?[ _-]?out|deadline exceeded"),
    FailureReason(
        reason="invalid_request",
        pattern=r"(?i)invalid|unsupported|not supported|bad request|malformed|too long|"
        r"must be|required",
    ),
    FailureReason(
        reason="upstream_error",
        pattern=r"(?i)internal|server error|upstream|provider|unavailable|overloaded|gateway|"
        r"\b5\d\d\b",
    ),
)


# Label names the exporter's own series use, and those Prometheus sets on a
# scrape: a static label may not take one (tests/unit/test_static_labels.py
# checks the list against what the exporter serves).
RESERVED_LABELS = frozenset(
    {
        "account", "class", "code", "kind", "le", "model", "op", "quantile", "reason", "source",
        "state", "status", "version", "job", "instance",
        # the Python runtime's collectors
        "generation", "implementation", "major", "minor", "patchlevel",
    }
)  # fmt: skip
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
MAX_STATIC_LABELS = 16


def _static_labels(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_STATIC_LABELS:
        raise ValueError(f"at most {MAX_STATIC_LABELS} labels")
    for name, label_value in value.items():
        if not _LABEL_NAME.match(name) or name.startswith("__"):
            raise ValueError(
                f"{name!r} is not a label name (letters, digits and _, not starting with "
                "a digit or __)"
            )
        if name in RESERVED_LABELS:
            raise ValueError(f"{name!r} is a label the exporter or Prometheus sets; choose another")
        if not label_value or len(label_value) > 256:
            raise ValueError(f"the value of {name!r} must be 1 to 256 characters")
    return value


class MetricsConfig(_Section):
    duration_buckets: list[PositiveSeconds] = list(DEFAULT_DURATION_BUCKETS)
    pending_buckets: list[PositiveSeconds] = list(DEFAULT_PENDING_BUCKETS)
    max_models: int = Field(default=50, ge=1, le=1000)
    # Labels on every series served, e.g. {env: prod, region: eu-west-1}.
    static_labels: Annotated[dict[str, str], AfterValidator(_static_labels)] = {}

    @field_validator("duration_buckets", "pending_buckets")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if not value or any(b >= a for a, b in zip(value[1:], value, strict=False)):
            raise ValueError("must be a non-empty list of strictly increasing numbers")
        return value


class ProxyConfig(_Section):
    """Fronts the API for the calls that create tasks, and registers what they return."""

    enabled: bool = False
    listen_address: str = ":9849"
    create_paths: list[str] = ["/v1/images/generations", "/v1/videos/generations"]
    timeout_seconds: PositiveSeconds = 300.0
    max_connections: int = Field(default=64, ge=1, le=1024)
    # Create bodies up to this size are read to find `model`; larger ones pass through.
    max_create_body_bytes: int = Field(default=1_048_576, ge=1024)
    # Any request body larger than this is refused with 413 (the connection closes).
    max_body_bytes: int = Field(default=64 * 1_048_576, ge=1024)

    @field_validator("listen_address")
    @classmethod
    def _listen_address(cls, value: str) -> str:
        problem = listen_address_problem(value, 9849)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("create_paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for path in value:
            check_poll_path(path)
        return [path.rstrip("/") or "/" for path in value]


class ApiServerConfig(_Section):
    """The task API (/api/v1/): on only when a token is set (see docs/api.md)."""

    # File holding the bearer token; else $LEMONDATA_EXPORTER_TOKEN; neither: the API is off.
    token_file: Path | None = None
    max_body_bytes: int = Field(default=65_536, ge=1024, le=16 * 1_048_576)
    max_batch_size: int = Field(default=500, ge=1, le=10_000)
    # `token`: /status asks for the task API's bearer token too (the page shows
    # task IDs and upstream error texts). With --web.config.file basic auth it is
    # behind basic auth either way.
    status_page_auth: Literal["none", "token"] = "none"


class Config(_Section):
    api: ApiConfig = ApiConfig()
    polling: PollingConfig = PollingConfig()
    store: StoreConfig = StoreConfig()
    tasks: list[StaticTask] = []
    discovery: DiscoveryConfig = DiscoveryConfig()
    failure_reasons: list[FailureReason] = list(DEFAULT_FAILURE_REASONS)
    metrics: MetricsConfig = MetricsConfig()
    api_server: ApiServerConfig = ApiServerConfig()
    proxy: ProxyConfig = ProxyConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Several LemonData accounts (keys), each polled with its own key and budget;
    # none: one account, the key from $LEMONDATA_API_KEY or api.key_file.
    accounts: Annotated[list[AccountConfig], Field(max_length=MAX_ACCOUNTS)] = []

    @property
    def account_names(self) -> tuple[str, ...]:
        """Every account's name, the first being where tasks without one go."""
        return tuple(a.name for a in self.accounts) or (DEFAULT_ACCOUNT,)

    @property
    def default_account(self) -> str:
        return self.account_names[0]

    @model_validator(mode="after")
    def _one_class_per_reason(self) -> Config:
        classes: dict[str, str] = {}
        for rule in self.failure_reasons:
            if classes.setdefault(rule.reason, rule.failure_class) != rule.failure_class:
                raise ValueError(
                    f"failure_reasons: reason {rule.reason} is given both classes "
                    "`user` and `service`; a reason has one class"
                )
        return self


def _field_path(location: tuple[int | str, ...]) -> str:
    """("api", "timeout_seconds") -> "api.timeout_seconds"; () -> "" (the whole file)."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def problem_line(source: str, field: str, message: str) -> str:
    """The one format of every problem: `FILE: FIELD: problem` (FIELD empty: the whole file)."""
    return f"{source}: {field}: {message}" if field else f"{source}: {message}"


@dataclass(frozen=True)
class Finding:
    """One problem with the configuration, or a warning (`run` would still start)."""

    field: str
    message: str
    warning: bool = False

    def line(self, source: str) -> str:
        return problem_line(
            source, self.field, ("warning: " if self.warning else "") + self.message
        )


# ---- validation errors phrased for a person -----------------------------------------

# Settings that hold a secret are never written in the file; what to do instead.
_SECRET_SETTINGS = {
    "api_key": f"the API key must not be written in the config file; set ${API_KEY_ENV} "
    "or api.key_file",
    "token": "the token must not be written in the config file; "
    "set $LEMONDATA_EXPORTER_TOKEN or api_server.token_file",
    "account_key": "an account's key must not be written in the config file; name the "
    "environment variable that holds it in key_env, or a file in key_file",
}
# Names under an `accounts:` entry that would hold its key.
_ACCOUNT_SECRET_NAMES = frozenset({"key", "api_key", "token", "secret", "password"})
_SECRET_NAMES = {
    ("api", "key"): "api_key",
    ("api", "api_key"): "api_key",
    ("api", "token"): "api_key",
    ("", "api_key"): "api_key",
    ("", "key"): "api_key",
    ("api_server", "token"): "token",
    ("", "token"): "token",
}
_UNIT_SUFFIX = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|secs|seconds|m|min|h)\s*$", re.I)


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The model inside `X`, `X | None`, `list[X]` or `Annotated[X, ...]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType, list, Annotated):
        for argument in typing.get_args(annotation):
            found = _section_model(argument)
            if found is not None:
                return found
    return None


def _model_at(root: type[BaseModel], location: tuple[int | str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in location:
        if isinstance(part, int):
            continue  # an item of a list: same model
        if model is None or part not in model.model_fields:
            return None
        model = _section_model(model.model_fields[part].annotation)
    return model


def _unknown_setting(root: type[BaseModel], location: tuple[int | str, ...]) -> str:
    parent, name = location[:-1], str(location[-1])
    section = str(parent[0]) if parent else ""
    secret = _SECRET_NAMES.get((section if len(parent) == 1 else "", name))
    if secret is not None and len(parent) <= 1:
        return _SECRET_SETTINGS[secret]
    if section == "accounts" and len(parent) == 2 and name in _ACCOUNT_SECRET_NAMES:
        return _SECRET_SETTINGS["account_key"]
    model = _model_at(root, parent)
    known = list(model.model_fields) if model is not None else []
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"unknown setting; did you mean `{close[0]}`?"
    # A setting put in the wrong section: say where it belongs.
    for other, info in root.model_fields.items():
        sub = _section_model(info.annotation)
        if sub is not None and other != section and name in sub.model_fields:
            return f"unknown setting here; did you mean `{other}.{name}`?"
    if known:
        return f"unknown setting; the settings here are {', '.join(known)}"
    return "unknown setting"


def _error_message(root: type[BaseModel], error: ErrorDetails) -> str:
    """pydantic's message, with a hint for the usual slips. The input is echoed only for
    the slips below, never for a secret."""
    kind, location, value = error["type"], error["loc"], error.get("input")
    name = str(location[-1]) if location else ""
    if kind == "extra_forbidden":
        return _unknown_setting(root, location)
    if kind == "string_type" and isinstance(value, int | float) and not isinstance(value, bool):
        if name.endswith("listen_address") and isinstance(value, int):
            return f'must be text such as ":{value}" (a bare port number is read as a number)'
        return "must be text; put the value in quotes"
    if kind in ("float_parsing", "int_parsing") and isinstance(value, str):
        unit = _UNIT_SUFFIX.match(value)
        if unit and name.endswith("_seconds"):
            return f"must be a number of seconds without a unit (e.g. {unit.group(1)})"
    if kind == "model_type" and not isinstance(value, dict):
        container = str(location[-2]) if len(location) > 1 else ""
        example = {"tasks": "{id: img_abc}", "files": "{path: tasks.jsonl}"}.get(container)
        return "must be a mapping of settings (key: value)" + (
            f", such as {example}" if example else ""
        )
    return error["msg"].removeprefix("Value error, ")


def validation_problems(
    exc: ValidationError,
    root: type[BaseModel],
    source: str,
    origins: Mapping[str, str] | None = None,
) -> list[str]:
    """One `FILE: FIELD: problem` line per error in `exc` (validating `root`); a field
    set by an environment variable names the variable (`origins`) instead of the file."""
    lines = []
    for error in exc.errors(include_url=False, include_context=False):
        field = _field_path(error["loc"])
        where = origin_of(field, origins or {}, source)
        lines.append(problem_line(where, field, _error_message(root, error)))
    return lines


def yaml_problem(exc: yaml.YAMLError, source: str) -> str:
    """The parser's own reason and position, e.g. a tab in the indentation."""
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    reason = ""
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [part for part in (exc.problem, exc.context) if part]
        reason = ": " + ", ".join(parts) if parts else ""
        if exc.problem and "'\\t'" in exc.problem:
            reason += " (indent with spaces; YAML does not allow tabs there)"
    return f"{source}: not valid YAML{where}{reason}"


# ---- settings that contradict each other ---------------------------------------------


def contradictions(sections: Mapping[str, Any]) -> list[Finding]:
    """Cross-field checks over the sections that are valid on their own."""
    found: list[Finding] = []
    polling = sections.get("polling")
    if isinstance(polling, PollingConfig):
        if polling.max_wait_seconds < polling.task_interval_seconds:
            found.append(
                Finding(
                    "polling.max_wait_seconds",
                    f"{polling.max_wait_seconds:g} is below polling.task_interval_seconds "
                    f"({polling.task_interval_seconds:g}): tasks would time out before their "
                    "second poll; raise max_wait_seconds or lower task_interval_seconds",
                )
            )
        if polling.backoff_base_seconds > polling.backoff_max_seconds:
            found.append(
                Finding(
                    "polling.backoff_base_seconds",
                    f"{polling.backoff_base_seconds:g} is above polling.backoff_max_seconds "
                    f"({polling.backoff_max_seconds:g}): the first wait after an error would "
                    "exceed the longest; lower backoff_base_seconds or raise backoff_max_seconds",
                )
            )
        if polling.cycle_interval_seconds > polling.task_interval_seconds:
            found.append(
                Finding(
                    "polling.cycle_interval_seconds",
                    f"{polling.cycle_interval_seconds:g} is above polling.task_interval_seconds "
                    f"({polling.task_interval_seconds:g}): a task is polled at most once per "
                    "cycle, so no more often than every cycle_interval_seconds",
                    warning=True,
                )
            )
    found += account_findings(sections)
    discovery, store = sections.get("discovery"), sections.get("store")
    if isinstance(discovery, DiscoveryConfig) and discovery.redis_stream is not None:
        stream_url = discovery.redis_stream.redis_url
        if not stream_url and not (isinstance(store, StoreConfig) and store.redis_url):
            found.append(
                Finding(
                    "discovery.redis_stream.redis_url",
                    "the stream needs a Redis URL, here or in store.redis_url",
                )
            )
    return found


def account_findings(sections: Mapping[str, Any]) -> list[Finding]:
    """Unique account names, and every `account` a task or a file names is one of them."""
    accounts = sections.get("accounts")
    if not isinstance(accounts, list):
        return []  # reported by the schema
    found: list[Finding] = []
    names: list[str] = []
    for index, account in enumerate(accounts):
        if account.name in names:
            found.append(Finding(f"accounts[{index}].name", f"{account.name} is listed twice"))
        names.append(account.name)
    references: list[tuple[str, str | None]] = []
    tasks, discovery = sections.get("tasks"), sections.get("discovery")
    if isinstance(tasks, list):
        references += [(f"tasks[{i}].account", task.account) for i, task in enumerate(tasks)]
    if isinstance(discovery, DiscoveryConfig):
        references += [
            (f"discovery.files[{i}].account", f.account) for i, f in enumerate(discovery.files)
        ]
    for field, name in references:
        if name is None or name in names:
            continue
        if not names:
            message = "names an account, but the config lists no `accounts:`"
        else:
            message = f"no account is named {name!r}; the accounts are {', '.join(names)}"
        found.append(Finding(field, message))
    return found


# ---- reading the file ----------------------------------------------------------------


@dataclass
class ConfigReport:
    """Everything learnt from a config file without touching anything else."""

    source: str
    config: Config | None = None
    # Field paths set by environment variables, and which (`$NAME`).
    origins: dict[str, str] = default_factory(default_factory=dict)
    problems: list[str] = default_factory(default_factory=list)  # `run` would refuse these
    warnings: list[str] = default_factory(default_factory=list)
    # Every top-level section that is valid on its own, even when others are not,
    # so that the checks of the files they name still run.
    sections: dict[str, Any] = default_factory(default_factory=dict)


def check_config_data(
    data: Any, source: str, environ: Mapping[str, str] | None = None
) -> ConfigReport:
    """Validate already-parsed YAML, with the settings in `environ` (see config_env)
    applied over it; never raises."""
    report = ConfigReport(source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        report.problems.append(f"{source}: the top level must be a mapping of sections")
        return report
    if environ is not None:
        settings = read_environment(environ, Config)
        report.problems += [f"${name}: {problem}" for name, problem in settings.problems]
        report.origins = settings.origins
        data = merge(data, settings.values)
    try:
        report.config = Config.model_validate(data)
        report.sections = {name: getattr(report.config, name) for name in Config.model_fields}
    except ValidationError as exc:
        report.problems += validation_problems(exc, Config, source, report.origins)
        report.sections = _valid_sections(data, exc)
    for finding in contradictions(report.sections):
        line = finding.line(origin_of(finding.field, report.origins, source))
        (report.warnings if finding.warning else report.problems).append(line)
    if report.problems:
        report.config = None
    return report


def _valid_sections(data: dict[str, Any], exc: ValidationError) -> dict[str, Any]:
    """Each top-level section that validates once its bad settings are left out."""
    bad: dict[str, set[str]] = {}
    for error in exc.errors():
        location = error["loc"]
        if location:
            bad.setdefault(str(location[0]), set()).add(
                str(location[1]) if len(location) > 1 else ""
            )
    sections: dict[str, Any] = {}
    for name, info in Config.model_fields.items():
        value = data[name] if name in data else info.get_default(call_default_factory=True)
        if name in bad:
            if "" in bad[name] or not isinstance(value, dict):
                continue
            value = {key: item for key, item in value.items() if key not in bad[name]}
        try:
            sections[name] = TypeAdapter(info.annotation).validate_python(value)
        except ValidationError:
            continue
    return sections


def check_config_file(
    path: Path | str, environ: Mapping[str, str] | None = os.environ
) -> ConfigReport:
    """Read, parse and validate a config file, with the environment's settings over it
    (`environ=None`: the file alone); never raises."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return ConfigReport(source, problems=[f"{source}: file not found"])
    except UnicodeDecodeError:
        return ConfigReport(source, problems=[f"{source}: cannot read: not UTF-8 text"])
    except OSError as exc:
        return ConfigReport(source, problems=[f"{source}: cannot read: {exc.strerror}"])
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return ConfigReport(source, problems=[yaml_problem(exc, source)])
    return check_config_data(data, source, environ)


def parse_config(data: Any, source: str) -> Config:
    """Validate already-parsed YAML; raises ConfigError naming every bad field."""
    report = check_config_data(data, source)
    if report.config is None:
        raise ConfigError(report.problems)
    return report.config


def load_config(path: Path | str, environ: Mapping[str, str] | None = os.environ) -> Config:
    """Read and validate a config file (and the environment's settings); raises
    ConfigError naming every problem."""
    report = check_config_file(path, environ)
    if report.config is None:
        raise ConfigError(report.problems)
    return report.config


# ---- secrets -------------------------------------------------------------------------


def secret_problem(secret: str, what: str) -> str | None:
    """Why `secret` cannot go into an HTTP header, without quoting any of it."""
    if "\n" in secret or "\r" in secret:
        return f"{what} holds more than one line (a line break inside it); keep only the key"
    if any(ord(c) > 0x7E for c in secret):
        return f"{what} contains a character outside ASCII (a pasted quote or space?)"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in secret):
        return f"{what} contains a control character such as a tab"
    return None


def world_readable(path: Path) -> str | None:
    """A warning if every user on the machine may read `path` (a file with a secret)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None  # reported by whoever reads it
    if mode & stat.S_IROTH:
        return (
            f"{path} is readable by every user on this machine "
            f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
        )
    return None


def shown_path(path: Path) -> str:
    """`path` for a message about a file that cannot be read, unless it may be the secret
    itself pasted in place of a file name (no folder, no extension)."""
    text = str(path)
    if "/" in text or "." in text:
        return text
    return "the file named there (if that is the secret itself: name a file that holds it)"


def read_secret_file(path: Path) -> str:
    """The secret in `path`, stripped; ValueError saying why it cannot be had (the
    file unreadable, not UTF-8, empty), never with the secret in it."""
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{shown_path(path)} is not UTF-8 text") from None
    except OSError as exc:
        raise ValueError(f"cannot read {shown_path(path)}: {exc.strerror}") from None
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret


def _read_key_file(path: Path, field: str, prefix: str) -> SecretStr:
    """The key in `path`; ConfigError naming the file and `field`, never the key."""
    try:
        key = read_secret_file(path)
    except ValueError as exc:
        raise ConfigError([f"{prefix}{field}: {exc}"]) from None
    problem = secret_problem(key, f"the key in {path}")
    if problem:
        raise ConfigError([f"{prefix}{field}: {problem}"])
    return SecretStr(key)


def _read_key_env(name: str, field: str, env: Mapping[str, str], prefix: str) -> SecretStr | None:
    key = env.get(name, "").strip()
    problem = secret_problem(key, "the key")
    if problem:
        raise ConfigError([f"{prefix}{field}: {problem}"])
    return SecretStr(key) if key else None


def read_api_key(
    config: Config, environ: Mapping[str, str] | None = None, source: str = ""
) -> SecretStr | None:
    """The API key from api.key_file or $LEMONDATA_API_KEY; None if neither is set.

    Raises ConfigError for a key that is unreadable, empty or cannot be sent in an
    HTTP header (a line break, a non-ASCII character): every poll would fail.
    """
    env = os.environ if environ is None else environ
    prefix = f"{source}: " if source else ""
    if config.api.key_file is not None:
        return _read_key_file(config.api.key_file, "api.key_file", prefix)
    return _read_key_env(API_KEY_ENV, f"${API_KEY_ENV}", env, prefix)


def read_account_key(
    config: Config,
    index: int,
    environ: Mapping[str, str] | None = None,
    source: str = "",
) -> SecretStr | None:
    """The key of `config.accounts[index]`, from its key_file or its key_env variable;
    None if that variable is not set. ConfigError as `read_api_key`'s."""
    env = os.environ if environ is None else environ
    prefix = f"{source}: " if source else ""
    account = config.accounts[index]
    if account.key_file is not None:
        return _read_key_file(account.key_file, f"accounts[{index}].key_file", prefix)
    assert account.key_env is not None  # one of the two, checked with the config
    return _read_key_env(account.key_env, f"accounts[{index}].key_env", env, prefix)


def read_account_keys(
    config: Config, environ: Mapping[str, str] | None = None, source: str = ""
) -> dict[str, SecretStr]:
    """Every account's key by account name: the implicit account's (`read_api_key`)
    without `accounts:`. ConfigError naming every account whose key is missing or
    unusable (its field, never a key)."""
    if not config.accounts:
        key = read_api_key(config, environ, source)
        return {DEFAULT_ACCOUNT: key} if key is not None else {}
    keys: dict[str, SecretStr] = {}
    problems: list[str] = []
    prefix = f"{source}: " if source else ""
    for index, account in enumerate(config.accounts):
        try:
            key = read_account_key(config, index, environ, source)
        except ConfigError as exc:
            problems += exc.problems
            continue
        if key is None:
            problems.append(
                f"{prefix}accounts[{index}].key_env: ${account.key_env} is not set "
                f"(the key of account {account.name})"
            )
            continue
        keys[account.name] = key
    if problems:
        raise ConfigError(problems)
    return keys


def read_redis_password(config: Config, environ: dict[str, str] | None = None) -> SecretStr | None:
    """The Redis password from store.redis_password_file, else $LEMONDATA_REDIS_PASSWORD;
    None if neither is set (a password in the URL applies then)."""
    env = os.environ if environ is None else environ
    path = config.store.redis_password_file
    if path is not None:
        try:
            return SecretStr(read_secret_file(path))
        except ValueError as exc:
            raise ConfigError([f"store.redis_password_file: {exc}"]) from None
    password = env.get(REDIS_PASSWORD_ENV, "").strip()
    return SecretStr(password) if password else None
