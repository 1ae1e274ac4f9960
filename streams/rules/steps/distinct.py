"""``distinct``: emit an item only the first time its value is seen."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from pydantic import Field

from streams.event import Event
from streams.expressions import Compiled
from streams.rules.operators import operator
from streams.rules.spec import (
    VALUE,
    CompiledStep,
    Emit,
    OnNext,
    Operator,
    Seconds,
    StepContext,
    StepModel,
    StepScope,
    StepSpec,
    seconds_text,
)

__all__ = ["SPEC", "DistinctConfig", "compile_distinct", "distinct"]


class DistinctConfig(StepModel):
    """``distinct``: emit an item only the first time its value is seen."""

    value: str = Field(description="Expression; its value must be hashable (not a list or mapping).")
    per_key: bool = Field(False, description="Values are new per event key (default: new at all).")
    max_values: int | None = Field(
        None, ge=1, le=10_000_000, description="Most values remembered (default: the rule's max_keys)."
    )
    seconds: Seconds | None = Field(None, description="Forget a value not seen for this long (null: never).")


def distinct(
    value: Compiled,
    ctx: StepContext,
    label: str,
    *,
    per_key: bool,
    max_values: int,
    seconds: float | None,
) -> Operator:
    """Emit an item only the first time its ``value`` is seen (in the last ``seconds``, if set).

    Remembers at most ``max_values`` values (the least recently seen is forgotten first, and
    would count as new again).
    """
    stats = ctx.stats
    fail = ctx.fail

    def build(emit: Emit) -> OnNext:
        seen: OrderedDict[Any, float] = OrderedDict()

        def on_next(item: Event) -> None:
            try:
                v = value(item)
                slot = (item.key, v) if per_key else v
                when = seen.get(slot)
            except Exception as exc:  # e.g. an unhashable value
                fail(label, exc, item)
                return
            ts = item.ts
            if when is not None:
                seen.move_to_end(slot)
                seen[slot] = ts
                if seconds is None or ts - when < seconds:
                    return
            else:  # `admit` inline: a new value is the common case here, not a rare one
                if len(seen) >= max_values:
                    seen.popitem(last=False)
                    stats.evicted += 1
                seen[slot] = ts
            emit(item)

        def restore(saved: list[tuple[Any, float]]) -> None:
            seen.clear()
            seen.update(saved[-max_values:])

        ctx.keep(lambda: list(seen.items()), restore)  # value (or key, value) → last seen
        return on_next

    return operator(build)


def compile_distinct(cfg: DistinctConfig, scope: StepScope) -> CompiledStep | None:
    value = scope.expr(cfg.value, "value")
    if value is None:
        return None
    label = scope.label

    def make(ctx: StepContext) -> Operator:
        max_values = cfg.max_values if cfg.max_values is not None else ctx.max_keys
        return distinct(value, ctx, label, per_key=cfg.per_key, max_values=max_values, seconds=cfg.seconds)

    ttl = f" within {seconds_text(cfg.seconds)}" if cfg.seconds else ""
    return scope.compiled(f"distinct {cfg.value}{ttl}", make)


SPEC = StepSpec("distinct", DistinctConfig, compile_distinct, shorthand=VALUE, checkpoint="kept")
