"""How long to wait before polling a task again. Pure functions."""

from __future__ import annotations


def backoff_delay(errors: int, base: float, cap: float, jitter: float) -> float:
    """Exponential backoff with equal jitter after `errors` consecutive errors.

    `jitter` is a random number in [0, 1): the delay is spread over the upper
    half of the exponential step so that many failing tasks do not retry in
    lockstep, while never retrying sooner than half the step.
    """
    # The exponent is capped: after a long run of errors 2.0**errors would overflow.
    step = min(cap, base * 2.0 ** min(max(0, errors - 1), 64))
    return step * (0.5 + 0.5 * jitter)


def retry_after_delay(
    retry_after: float | None, errors: int, base: float, cap: float, jitter: float
) -> float:
    """A 429 waits what the server asked, or backs off if it did not say."""
    if retry_after is not None and retry_after >= 0:
        return max(retry_after, 0.1)
    return backoff_delay(errors, base, cap, jitter)
