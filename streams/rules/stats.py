"""Per-rule counters: plain integers bumped on the hot path, read at scrape time."""

from __future__ import annotations

__all__ = ["RuleStats"]


class RuleStats:
    """Counters of one rule, read by ``/status`` and ``/metrics`` (never locked, never logged per event)."""

    __slots__ = (
        "errors",
        "evicted",
        "fired",
        "late",
        "matched",
        "overflow",
        "rejected",
        "render_errors",
        "seen",
        "submitted",
        "suppressed",
    )

    def __init__(self) -> None:
        self.seen = 0  # events of the kinds the rule reads
        self.matched = 0  # the rule's top-level `where` was true (or there is none)
        self.errors = 0  # an expression (in `where` or any step) raised: that event dropped
        self.late = 0  # arrived behind the watermark: dropped by the time-driven steps
        self.suppressed = 0  # muted by `cooldown` / `throttle`
        self.evicted = 0  # per-key state forgotten because the rule holds max_keys keys
        self.overflow = 0  # events dropped early from a full window or reorder buffer
        self.fired = 0  # made it through every step
        self.render_errors = 0  # an argument template raised: that call skipped
        self.submitted = 0  # tool calls handed to the runner
        self.rejected = 0  # tool calls the runner refused (backlog over its bound)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}
