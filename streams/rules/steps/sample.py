"""``sample``: the latest item of each period."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from pydantic import Field

from streams.event import Event
from streams.rules.operators import admit, later, operator
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

__all__ = ["SPEC", "SampleConfig", "compile_sample", "sample"]


class SampleConfig(StepModel):
    """``sample``: the latest item of each period."""

    seconds: Seconds = Field(description="Period, aligned to multiples of it in event time.")
    per_key: bool = Field(True, description="Sample each event key separately.")


def sample(ctx: StepContext, *, seconds: float, per_key: bool) -> Operator:
    """At each multiple of ``seconds`` of event time, emit the latest item of each key that had
    one in the period just ended (``ts`` = the period's end)."""
    clock = ctx.need_clock()
    stats = ctx.stats
    max_keys = ctx.max_keys

    def build(emit: Emit) -> OnNext:
        states: OrderedDict[Any, list[Any]] = OrderedDict()  # key → [latest item, pending]

        def fire(arg: tuple[Any, list[Any]]) -> None:
            k, st = arg
            if states.get(k) is not st or not st[1]:
                return
            st[1] = False
            emit(later(st[0], clock.now))

        def on_next(item: Event) -> None:
            k = item.key if per_key else None
            st = states.get(k)
            if st is None:
                st = admit(states, k, [item, False], max_keys, stats)
            else:
                states.move_to_end(k)
                st[0] = item
            if not st[1]:
                st[1] = True
                clock.call_at((math.floor(item.ts / seconds) + 1) * seconds, fire, (k, st))

        def restore(saved: list[tuple[Any, Event, bool]]) -> None:
            states.clear()
            for k, latest, pending in saved[-max_keys:]:
                st = states[k] = [latest, pending]
                if pending:
                    clock.call_at((math.floor(latest.ts / seconds) + 1) * seconds, fire, (k, st))

        ctx.keep(lambda: [(k, st[0], st[1]) for k, st in states.items()], restore)
        return on_next

    return operator(build)


def compile_sample(cfg: SampleConfig, scope: StepScope) -> CompiledStep | None:
    summary = f"sample every {seconds_text(cfg.seconds)}{per_key_text(cfg.per_key)}"
    return scope.compiled(
        summary, lambda ctx: sample(ctx, seconds=cfg.seconds, per_key=cfg.per_key), uses_clock=True
    )


SPEC = StepSpec("sample", SampleConfig, compile_sample, shorthand=SECONDS, checkpoint="kept")
