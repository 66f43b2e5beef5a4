"""Settings of one simulator instance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from exporter.simulator.models import PROFILES, ModelProfile

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9848
DEFAULT_API_KEY = "sk-simulator"


@dataclass(frozen=True)
class SimulatorSettings:
    """Everything that shapes the simulator's behaviour; immutable once built.

    Durations of tasks and `retention_seconds` are in simulated seconds and are
    divided by `time_scale`; rate-limit windows and fault windows are real time.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_keys: tuple[str, ...] = (DEFAULT_API_KEY,)
    time_scale: float = 1.0
    seed: int | None = None
    # Per key, per real minute; 0 disables limiting and the X-RateLimit-* headers.
    rate_limit_per_minute: int = 1000
    # Keys that are accounts of their own: their own limit (per real minute, 0: none)
    # and their own tasks (another key's request for one gets 404). The other keys
    # are keys of one shared account, as before.
    key_limits: Mapping[str, int] = field(default_factory=dict)
    retention_seconds: float = 3600.0
    # Fraction of tasks that start answering 404 before they finish.
    lost_fraction: float = 0.02
    # None: integers when time_scale == 1 (like the real API), floats otherwise.
    float_timestamps: bool | None = None
    # Initial fault configuration, same format as `PUT /_sim/faults`.
    faults: Mapping[str, object] = field(default_factory=dict)
    profiles: Mapping[str, ModelProfile] = field(default_factory=lambda: PROFILES)
    max_request_body_bytes: int = 1_048_576
    # Idle keep-alive connections are closed after this many real seconds.
    idle_timeout_seconds: float = 60.0

    def __post_init__(self) -> None:
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {self.time_scale}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")
        if not self.api_keys or any(not key for key in self.api_keys):
            raise ValueError("api_keys must hold at least one non-empty key")
        if self.rate_limit_per_minute < 0:
            raise ValueError("rate_limit_per_minute must be >= 0")
        for key, limit in self.key_limits.items():
            if key not in self.api_keys:
                raise ValueError("key_limits names a key that is not in api_keys")
            if limit < 0:
                raise ValueError("key_limits: a limit must be >= 0")
        if self.retention_seconds <= 0:
            raise ValueError("retention_seconds must be > 0")
        if not 0.0 <= self.lost_fraction <= 1.0:
            raise ValueError("lost_fraction must be within 0..1")

    @property
    def use_float_timestamps(self) -> bool:
        if self.float_timestamps is not None:
            return self.float_timestamps
        return self.time_scale != 1.0
