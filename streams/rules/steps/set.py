"""``set: {NAME: EXPRESSION, ...}``: computed fields, in order; later steps use NAME."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from streams.event import Event
from streams.expressions import Compiled
from streams.rules.operators import operator
from streams.rules.row import fields_of, make_row
from streams.rules.spec import CompiledStep, Emit, OnNext, Operator, StepContext, StepScope, StepSpec

__all__ = ["SPEC", "compile_set", "set_fields"]


def set_fields(assignments: tuple[tuple[str, Compiled], ...], ctx: StepContext, label: str) -> Operator:
    """Add computed fields, in order (a later one can use an earlier one)."""
    fail = ctx.fail

    def build(emit: Emit) -> OnNext:
        def on_next(item: Event) -> None:
            fields = dict(fields_of(item))
            row = make_row(item, fields)
            try:
                for name, fn in assignments:
                    fields[name] = fn(row)
            except Exception as exc:
                fail(label, exc, item)
                return
            emit(row)

        return on_next

    return operator(build)


def compile_set(body: dict[str, str], scope: StepScope) -> CompiledStep | None:
    assignments: list[tuple[str, Compiled]] = []
    ok = True
    for name, text in body.items():
        if not scope.define(name, name):
            ok = False
            continue
        fn = scope.expr(text, name)
        scope.add(name)  # later assignments may use it even if this one failed
        if fn is None:
            ok = False
            continue
        assignments.append((name, fn))
    if not ok:
        return None
    frozen = tuple(assignments)
    label = scope.label
    return scope.compiled(f"set {', '.join(body)}", lambda ctx: set_fields(frozen, ctx, label))


SPEC = StepSpec(
    "set",
    Annotated[dict[str, str], Field(min_length=1)],
    compile_set,
    summary="`set: {NAME: EXPRESSION, ...}` — computed fields, in order; later steps use NAME.",
    description="Computed fields: name → expression, in order.",
    checkpoint="stateless",
)
