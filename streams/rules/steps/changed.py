"""``changed``: emit when a value differs from its previous value."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from pydantic import Field

from streams.event import Event
from streams.expressions import Compiled
from streams.rules.operators import admit, keep_per_key, operator, with_fields
from streams.rules.spec import (
    VALUE,
    CompiledStep,
    Emit,
    OnNext,
    Operator,
    StepContext,
    StepModel,
    StepScope,
    StepSpec,
)

__all__ = ["SPEC", "ChangedConfig", "changed", "compile_changed"]

_MISSING: Any = object()


class ChangedConfig(StepModel):
    """``changed``: emit when a value differs from its previous value."""

    value: str = Field(description="Expression to watch.")
    per_key: bool = Field(True, description="Track each event key separately.")
    emit_first: bool = Field(False, description="Also emit the first value seen (previous = null).")


def changed(value: Compiled, ctx: StepContext, label: str, *, per_key: bool, emit_first: bool) -> Operator:
    """Emit when ``value`` differs from its previous value (per key); field ``previous``."""
    stats = ctx.stats
    fail = ctx.fail
    max_keys = ctx.max_keys

    def build(emit: Emit) -> OnNext:
        last: OrderedDict[Any, Any] = OrderedDict()

        def on_next(item: Event) -> None:
            try:
                v = value(item)
                k = item.key if per_key else None
                old = last.get(k, _MISSING)
                same = old is not _MISSING and bool(old == v)
            except Exception as exc:
                fail(label, exc, item)
                return
            if old is _MISSING:
                admit(last, k, v, max_keys, stats)
                if emit_first:
                    emit(with_fields(item, {"previous": None}))
                return
            last.move_to_end(k)
            if same:
                return
            last[k] = v
            emit(with_fields(item, {"previous": old}))

        keep_per_key(ctx.keep, last, ctx.max_keys)  # key → last value
        return on_next

    return operator(build)


def compile_changed(cfg: ChangedConfig, scope: StepScope) -> CompiledStep | None:
    value = scope.expr(cfg.value, "value")
    scope.add("previous")
    if value is None:
        return None
    label = scope.label

    def make(ctx: StepContext) -> Operator:
        return changed(value, ctx, label, per_key=cfg.per_key, emit_first=cfg.emit_first)

    return scope.compiled(f"changed {cfg.value}", make)


SPEC = StepSpec("changed", ChangedConfig, compile_changed, shorthand=VALUE, checkpoint="kept")
