"""Helpers for rule tests: events, a recording submit function, rules built from step lists."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from reactivex import abc

from handlers.base import CallContext
from streams.event import Event
from streams.rules.pipeline import Rule, RuleConfig
from streams.rules.row import fields_of


def ev(ts: float, key: Any = "BTC", source: str = "feed", **data: Any) -> Event:
    """A data event at event time ``ts``."""
    return Event(source, ts, ts, key, data, {"seq": int(ts * 1000)})


class Recorder:
    """A ``submit`` that records every call and accepts it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], CallContext]] = []

    def __call__(self, tool: str, args: dict[str, Any], ctx: CallContext) -> bool:
        self.calls.append((tool, args, ctx))
        return True

    @property
    def rows(self) -> list[tuple[float, Any, dict[str, Any]]]:
        """(ts, key, computed fields) of every fired item."""
        out = []
        for _tool, _args, ctx in self.calls:
            assert ctx.event is not None
            out.append((ctx.event.ts, ctx.event.key, dict(fields_of(ctx.event))))
        return out

    @property
    def times(self) -> list[float]:
        return [row[0] for row in self.rows]

    @property
    def args(self) -> list[dict[str, Any]]:
        return [args for _tool, args, _ctx in self.calls]


def make_rule(
    steps: list[dict[str, Any]],
    rec: Recorder,
    *,
    scheduler: abc.SchedulerBase | None = None,
    args: dict[str, Any] | None = None,
    **config: Any,
) -> Rule:
    """A rule reading source ``feed`` (and ``other``) with ``steps``, calling tool ``t``."""
    body: dict[str, Any] = {
        "from": config.pop("from_", ["feed", "other"]),
        "steps": steps,
        "then": [{"tool": "t", "args": args or {}}],
        **config,
    }
    return Rule("r", RuleConfig.model_validate(body), rec, scheduler)


def run(rule: Rule, events: Iterable[Event], *, finish: bool = True) -> None:
    """Feed ``events`` in order, as the dispatcher (or a replay) would; then end the input."""
    for event in events:
        rule.on_next(event)
    if finish:
        rule.finish()
