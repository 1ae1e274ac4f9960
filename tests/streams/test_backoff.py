"""Backoff delays: exponential, capped, jittered upward only."""

from __future__ import annotations

from streams.backoff import ReconnectConfig, backoff_delay


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
