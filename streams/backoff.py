"""The one backoff policy of reflexd: how long to wait before the next attempt.

A source's ``reconnect:`` (:class:`ReconnectConfig`, used by :class:`streams.reconnect.Reconnector`)
and a tool's ``retry:`` (``handlers.base.RetryConfig``, used by the tool runner) share
:class:`BackoffPolicy` — its four keys — and wait :func:`backoff_delay`: exponential growth with
jitter, capped. A leaf module: it imports nothing of reflexd.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BackoffPolicy", "ReconnectConfig", "backoff_delay"]


class BackoffPolicy(BaseModel):
    """Exponential backoff with jitter: the four keys a source's ``reconnect:`` and a tool's
    ``retry:`` share. The wait after failed attempt *n* is :func:`backoff_delay`.

    Each policy declares ``initial_seconds`` again with its own default and cap (a reconnect
    starts sooner than a tool retry).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    initial_seconds: float = Field(gt=0, description="Wait after the first failed attempt.")
    multiplier: float = Field(2.0, ge=1.0, le=10, description="Growth factor of the wait between attempts.")
    max_seconds: float = Field(30.0, gt=0, le=3600, description="Cap on one wait (before jitter).")
    jitter_ratio: float = Field(0.3, ge=0, le=1, description="Each wait is stretched by a random 0..ratio.")


def backoff_delay(policy: BackoffPolicy, attempt: int, rnd: float) -> float:
    """The wait after failed attempt number ``attempt`` (1-based), ``rnd`` in [0, 1):
    ``min(max_seconds, initial_seconds * multiplier ** (attempt - 1)) * (1 + jitter_ratio * rnd)``."""
    base = min(policy.max_seconds, policy.initial_seconds * policy.multiplier ** (attempt - 1))
    return base * (1.0 + policy.jitter_ratio * rnd)


class ReconnectConfig(BackoffPolicy):
    """``reconnect:`` of a source."""

    initial_seconds: float = Field(0.1, gt=0, le=60, description="First backoff delay.")
    healthy_after_seconds: float = Field(
        10.0, ge=0, description="A session must stay up this long before the backoff resets."
    )
    max_attempts: int | None = Field(
        None, gt=0, description="Give up after this many failed attempts; null = never."
    )
