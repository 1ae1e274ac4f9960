"""``where: EXPRESSION``: items for which it is false are dropped."""

from __future__ import annotations

from streams.event import Event
from streams.expressions import Compiled
from streams.rules.operators import operator
from streams.rules.spec import CompiledStep, Emit, OnNext, Operator, StepContext, StepScope, StepSpec

__all__ = ["SPEC", "compile_where", "where"]


def where(predicate: Compiled, ctx: StepContext, label: str) -> Operator:
    """Pass the items for which ``predicate`` is true."""
    fail = ctx.fail

    def build(emit: Emit) -> OnNext:
        def on_next(item: Event) -> None:
            try:
                ok = predicate(item)
            except Exception as exc:
                fail(label, exc, item)
                return
            if ok:
                emit(item)

        return on_next

    return operator(build, test=(label, predicate))  # a rule may run the test inline instead


def compile_where(text: str, scope: StepScope) -> CompiledStep | None:
    predicate = scope.expr(text)
    if predicate is None:
        return None
    label = scope.label
    return scope.compiled(f"where {text}", lambda ctx: where(predicate, ctx, label))


SPEC = StepSpec(
    "where",
    str,
    compile_where,
    summary="`where: EXPRESSION` — items for which it is false are dropped.",
    description="Expression; items for which it is false are dropped.",
    checkpoint="stateless",
)
