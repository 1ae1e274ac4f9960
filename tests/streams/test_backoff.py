"""Backoff delays: exponential, capped, jittered upward only; one policy for reconnects and tool retries."""

from __future__ import annotations

import random

from handlers.base import RetryConfig
from handlers.runner import _retry_delay
from streams.backoff import BackoffPolicy, ReconnectConfig, backoff_delay


def test_delays_grow_exponentially_and_cap() -> None:
    """Without jitter the delays double from initial_seconds and stop at max_seconds."""
    cfg = ReconnectConfig(initial_seconds=0.1, multiplier=2, max_seconds=1, jitter_ratio=0)
    assert [round(backoff_delay(cfg, n, 0.5), 3) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_jitter_only_stretches() -> None:
    """Jitter never makes a delay shorter than the base, and at most (1 + ratio) times longer."""
    cfg = ReconnectConfig(initial_seconds=1, multiplier=2, max_seconds=30, jitter_ratio=0.3)
    assert backoff_delay(cfg, 3, 0.0) == 4.0
    assert abs(backoff_delay(cfg, 3, 0.999999) - 5.2) < 1e-5


def test_default_policy_is_at_most_one_attempt_per_second_after_five() -> None:
    """With the defaults, every wait after the 5th failed attempt is at least one second."""
    cfg = ReconnectConfig()
    assert all(backoff_delay(cfg, n, 0.0) >= 1.0 for n in range(5, 40))
    assert backoff_delay(cfg, 40, 1.0) <= cfg.max_seconds * (1 + cfg.jitter_ratio)


def test_reconnect_and_tool_retry_are_one_policy() -> None:
    """A source's reconnect and a tool's retry are the same BackoffPolicy: the same values give the same
    waits; each keeps its own first wait, cap on it, and key order."""
    values = {"initial_seconds": 0.5, "multiplier": 3, "max_seconds": 10, "jitter_ratio": 0.2}
    retry, reconnect = RetryConfig(**values), ReconnectConfig(**values)
    assert isinstance(retry, BackoffPolicy) and isinstance(reconnect, BackoffPolicy)
    waits = [round(backoff_delay(retry, n, 0.5), 9) for n in range(1, 6)]
    assert waits == [round(backoff_delay(reconnect, n, 0.5), 9) for n in range(1, 6)] == [0.55, 1.65, 4.95, 11.0, 11.0]
    assert (RetryConfig().initial_seconds, ReconnectConfig().initial_seconds) == (0.5, 0.1)
    assert list(RetryConfig.model_fields) == [
        "max_attempts", "initial_seconds", "multiplier", "max_seconds", "jitter_ratio", "retry_timeouts"
    ]
    assert list(ReconnectConfig.model_fields)[:4] == ["initial_seconds", "multiplier", "max_seconds", "jitter_ratio"]


def test_the_runner_waits_the_policy_delay_or_a_longer_retry_after() -> None:
    """The tool runner's wait between attempts is backoff_delay of its retry policy with the same random
    draw, raised to a Retry-After when that is longer (never shortened by one)."""
    policy = RetryConfig(initial_seconds=1, multiplier=2, max_seconds=30, jitter_ratio=0.3)
    draws = random.Random(7)
    expected = [backoff_delay(policy, n, draws.random()) for n in (1, 2, 3)]
    rng = random.Random(7)
    assert [_retry_delay(policy, rng, n, None) for n in (1, 2, 3)] == expected
    rng = random.Random(7)
    assert _retry_delay(policy, rng, 1, 60.0) == 60.0
    assert _retry_delay(policy, rng, 2, 0.001) == expected[1]
