"""Per-rule counters: plain integers bumped on the hot path, read at scrape time."""

from __future__ import annotations

__all__ = ["RuleStats", "SharedCount"]

#: the counters, in the order :meth:`RuleStats.as_dict` gives them
_FIELDS = (
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


class SharedCount:
    """Events counted once for several rules (a group of :mod:`streams.rules.shared`)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class RuleStats:
    """Counters of one rule, read by ``/status`` and ``/metrics`` (never locked, never logged per event).

    ``seen`` is derived when read: what the rule counted itself (``own_seen``) plus what its shared
    group counted for it since it joined (:meth:`share_seen`), so that a group of 1,000 rules counts
    an event once, not 1,000 times.
    """

    __slots__ = (
        "_shared",
        "_shared_base",
        "errors",
        "evicted",
        "fired",
        "late",
        "matched",
        "overflow",
        "own_seen",
        "rejected",
        "render_errors",
        "submitted",
        "suppressed",
    )

    def __init__(self) -> None:
        self.own_seen = 0  # events of the kinds the rule reads, counted by the rule itself
        self._shared: SharedCount | None = None  # the rest: counted by its group
        self._shared_base = 0
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

    @property
    def seen(self) -> int:
        """Events of the kinds the rule reads."""
        shared = self._shared
        if shared is None:
            return self.own_seen
        return self.own_seen + shared.count - self._shared_base

    @seen.setter
    def seen(self, value: int) -> None:
        self.own_seen += value - self.seen

    def share_seen(self, counter: SharedCount | None) -> None:
        """From now on the events ``counter`` counts are seen by this rule too (None: only its own)."""
        self.own_seen = self.seen
        self._shared = counter
        self._shared_base = counter.count if counter is not None else 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _FIELDS}
