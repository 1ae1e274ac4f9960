"""``throttle``: at most ``max_events`` per interval, the first ones."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from pydantic import Field

from streams.event import Event
from streams.rules.operators import admit, operator
from streams.rules.spec import (
    SECONDS,
    CompiledStep,
    Emit,
    OnNext,
    Operator,
    Seconds,
    StepContext,
    StepModel,
    StepScope,
    StepSpec,
    per_key_text,
    seconds_text,
)

__all__ = ["SPEC", "ThrottleConfig", "compile_throttle", "throttle"]


class ThrottleConfig(StepModel):
    """``throttle``: at most `max_events` per interval, the first ones."""

    seconds: Seconds = Field(description="Interval, started by the first item, in event-time seconds.")
    max_events: int = Field(1, ge=1, le=1_000_000, description="Items let through per interval.")
    per_key: bool = Field(True, description="One interval per event key.")


def throttle(ctx: StepContext, *, seconds: float, max_events: int, per_key: bool) -> Operator:
    """Let the first ``max_events`` items of each interval through; the interval starts at the
    first item and lasts ``seconds`` of event time; the rest are counted as ``suppressed``.

    An item older than its key's interval start (time went back: clock skew, a replay
    restarted) starts a new interval instead of being muted until time catches up.
    """
    stats = ctx.stats
    max_keys = ctx.max_keys

    def build(emit: Emit) -> OnNext:
        intervals: OrderedDict[Any, list[Any]] = OrderedDict()  # key → [interval start, items let through]

        def on_next(item: Event) -> None:
            k = item.key if per_key else None
            ts = item.ts
            st = intervals.get(k)
            if st is None:
                st = admit(intervals, k, [ts, 0], max_keys, stats)
            else:
                intervals.move_to_end(k)
                if not st[0] <= ts < st[0] + seconds:
                    st[0] = ts
                    st[1] = 0
            if st[1] < max_events:
                st[1] += 1
                emit(item)
            else:
                stats.suppressed += 1

        def snapshot() -> list[tuple[Any, float, int]]:
            return [(k, st[0], st[1]) for k, st in intervals.items()]

        def restore(saved: list[tuple[Any, float, int]]) -> None:
            intervals.clear()
            for k, start, passed in saved[-max_keys:]:
                intervals[k] = [start, passed]

        ctx.keep(snapshot, restore)
        return on_next

    return operator(build)


def compile_throttle(cfg: ThrottleConfig, scope: StepScope) -> CompiledStep | None:
    summary = f"throttle {cfg.max_events} per {seconds_text(cfg.seconds)}{per_key_text(cfg.per_key)}"

    def make(ctx: StepContext) -> Operator:
        return throttle(ctx, seconds=cfg.seconds, max_events=cfg.max_events, per_key=cfg.per_key)

    return scope.compiled(summary, make)


SPEC = StepSpec("throttle", ThrottleConfig, compile_throttle, shorthand=SECONDS, checkpoint="kept")
