"""Model profiles (how long tasks take, how often they fail) and error texts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, get_args

Kind = Literal["image", "video"]
KINDS: tuple[Kind, ...] = get_args(Kind)

Reason = Literal[
    "content_policy",
    "invalid_request",
    "timeout",
    "quota",
    "rate_limited",
    "upstream_error",
    "unknown",
]
REASONS: tuple[Reason, ...] = get_args(Reason)

CANCEL_MESSAGE = "Task was cancelled by user"

DEFAULT_REASON_WEIGHTS: Mapping[Reason, float] = MappingProxyType(
    {
        "content_policy": 0.30,
        "invalid_request": 0.10,
        "timeout": 0.15,
        "quota": 0.05,
        "rate_limited": 0.08,
        "upstream_error": 0.22,
        "unknown": 0.10,
    }
)


@dataclass(frozen=True)
class ModelProfile:
    """Timing and failure behaviour of one model; all durations in simulated seconds."""

    kind: Kind
    pending_seconds: tuple[float, float]
    processing_seconds: tuple[float, float]
    failure_probability: float
    cancel_probability: float
    # A few tasks take much longer than the usual range (busy provider, retries).
    long_tail_probability: float = 0.03
    long_tail_factor: tuple[float, float] = (1.5, 3.0)
    reason_weights: Mapping[Reason, float] = field(default_factory=lambda: DEFAULT_REASON_WEIGHTS)

    def __post_init__(self) -> None:
        for lo, hi in (self.pending_seconds, self.processing_seconds, self.long_tail_factor):
            if not 0 <= lo <= hi:
                raise ValueError(f"bad range ({lo}, {hi})")
        total = self.failure_probability + self.cancel_probability
        if min(self.failure_probability, self.cancel_probability) < 0 or total > 1:
            raise ValueError("failure and cancel probabilities must be >= 0 and sum to <= 1")


def _image(
    pending: tuple[float, float], processing: tuple[float, float], fail: float, cancel: float
) -> ModelProfile:
    return ModelProfile("image", pending, processing, fail, cancel)


def _video(
    pending: tuple[float, float], processing: tuple[float, float], fail: float, cancel: float
) -> ModelProfile:
    # Video tails are capped near the ~10 minute client deadline of the docs.
    return ModelProfile("video", pending, processing, fail, cancel, 0.04, (1.2, 1.6))


# The docs: most image tasks finish within 30-120 s; videos take minutes, up to ~10.
PROFILES: Mapping[str, ModelProfile] = MappingProxyType(
    {
        "flux-pro": _image((1, 5), (25, 70), 0.04, 0.01),
        "flux-schnell": _image((0.5, 3), (8, 25), 0.02, 0.005),
        "flux-kontext-pro": _image((1, 6), (25, 80), 0.05, 0.01),
        "dall-e-3": _image((1, 4), (15, 45), 0.06, 0.005),
        "gpt-image-1": _image((2, 10), (40, 115), 0.05, 0.01),
        "midjourney": _image((5, 30), (45, 110), 0.07, 0.02),
        "ideogram-v3": _image((2, 8), (20, 60), 0.04, 0.01),
        "stable-diffusion-3.5": _image((1, 4), (10, 35), 0.03, 0.005),
        "seedream-4": _image((2, 6), (20, 60), 0.04, 0.01),
        "sora-2": _video((10, 60), (150, 420), 0.09, 0.02),
        "veo-3": _video((5, 40), (90, 360), 0.07, 0.02),
        "kling-v2.1": _video((10, 90), (120, 420), 0.08, 0.02),
        "runway-gen4": _video((5, 20), (60, 240), 0.06, 0.02),
        "hailuo-02": _video((10, 60), (120, 360), 0.08, 0.02),
    }
)

# Used for models that are not in the profile table.
GENERIC_PROFILES: Mapping[Kind, ModelProfile] = MappingProxyType(
    {
        "image": _image((1, 8), (20, 100), 0.05, 0.01),
        "video": _video((10, 60), (120, 400), 0.08, 0.02),
    }
)


def profile_for(
    model: str, kind: Kind, profiles: Mapping[str, ModelProfile] = PROFILES
) -> ModelProfile:
    """The model's profile, or the generic one of the kind for unknown models."""
    return profiles.get(model) or GENERIC_PROFILES[kind]


@dataclass(frozen=True)
class FailureShape:
    """When, within a task's life, failures of one family happen."""

    # Fraction of the planned processing time at which the task fails.
    at_fraction: tuple[float, float]
    # Chance that the task fails while still pending (never processes).
    from_pending_probability: float = 0.0
    # Factor on the planned processing time (timeouts outlive normal tasks).
    stretch: tuple[float, float] = (1.0, 1.0)


FAILURE_SHAPES: Mapping[Reason, FailureShape] = MappingProxyType(
    {
        # Prompt checks fail early, output filters fail at the end.
        "content_policy": FailureShape((0.02, 1.0), 0.3),
        "invalid_request": FailureShape((0.0, 0.1), 0.6),
        "timeout": FailureShape((1.0, 1.0), 0.0, (1.3, 2.0)),
        "quota": FailureShape((0.0, 0.05), 0.7),
        "rate_limited": FailureShape((0.0, 0.3), 0.4),
        "upstream_error": FailureShape((0.05, 1.0), 0.1),
        "unknown": FailureShape((0.0, 1.0), 0.2),
    }
)

ERROR_MESSAGES: Mapping[Reason, tuple[str, ...]] = MappingProxyType(
    {
        "content_policy": (
            "Your request was rejected as a result of our safety system. Your prompt may "
            "contain text that is not allowed by our safety system.",
            "Content policy violation: the generated image was flagged by the moderation system",
            "Request blocked: the prompt violates the provider's usage policies",
            "Output was filtered by the safety checker (NSFW content detected)",
        ),
        "invalid_request": (
            "Invalid prompt: prompt must be between 1 and 4000 characters",
            "Invalid request: unsupported size '1792x1024' for this model",
            "Invalid parameter: aspect_ratio must be one of 1:1, 16:9, 9:16",
            "Bad request: the reference image could not be downloaded",
        ),
        "timeout": (
            "Upstream provider timed out after 600 seconds",
            "Generation timed out: the provider did not respond in time",
            "Task timeout: no result from upstream before the deadline",
            "Request to provider timed out (ReadTimeout)",
        ),
        "quota": (
            "Insufficient quota: your account balance is too low to complete this request",
            "Quota exceeded for this API key",
            "You have exceeded your monthly spending limit",
            "Insufficient balance",
        ),
        "rate_limited": (
            "Rate limited by upstream provider, please retry later",
            "Provider returned 429 Too Many Requests",
            "Too many concurrent tasks for this model; try again later",
        ),
        "upstream_error": (
            "Internal server error",
            "Upstream provider returned an error: 500 Internal Server Error",
            "Upstream service unavailable (503)",
            "Bad gateway from provider",
            "Provider error: model is overloaded",
        ),
        "unknown": (
            "Generation failed",
            "Something went wrong",
            "error code 17",
            "task failed: null",
            "ERR_WORKER_EXITED (exit status 137)",
            "生成失败",
        ),
    }
)
