"""``key: EXPRESSION``: the new event key for the per-key steps after it."""

from __future__ import annotations

from streams.event import Event, new_event
from streams.expressions import Compiled
from streams.rules.operators import operator
from streams.rules.row import Row, make_row
from streams.rules.spec import CompiledStep, Emit, OnNext, Operator, StepContext, StepScope, StepSpec

__all__ = ["SPEC", "compile_key", "rekey"]


def rekey(key: Compiled, ctx: StepContext, label: str) -> Operator:
    """Replace the event key (the key every later per-key step groups by)."""
    fail = ctx.fail

    def build(emit: Emit) -> OnNext:
        def on_next(item: Event) -> None:
            try:
                value = key(item)
                hash(value)
            except Exception as exc:
                fail(label, exc, item)
                return
            if type(item) is Row:
                emit(make_row(item, item.fields, key=value))
            else:
                emit(
                    new_event(
                        item.source,
                        item.ts,
                        item.received_at,
                        value,
                        item.data,
                        item.meta,
                        item.kind,
                        item.ack,
                    )
                )

        return on_next

    return operator(build)


def compile_key(text: str, scope: StepScope) -> CompiledStep | None:
    key = scope.expr(text)
    if key is None:
        return None
    label = scope.label
    return scope.compiled(f"key {text}", lambda ctx: rekey(key, ctx, label))


SPEC = StepSpec(
    "key",
    str,
    compile_key,
    summary="`key: EXPRESSION` — the new event key for the per-key steps after it.",
    description="Expression giving the new event key for the steps after it.",
    checkpoint="stateless",
)
