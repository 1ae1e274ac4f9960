"""``sequence``: A then B, for the same key, within a time limit."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

from pydantic import Field

from streams.event import Event
from streams.expressions import Compiled
from streams.rules.operators import later, operator, with_fields
from streams.rules.spec import (
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

__all__ = ["SPEC", "SequenceConfig", "compile_sequence", "sequence"]


class SequenceConfig(StepModel):
    """``sequence``: A then B, for the same key, within a time limit."""

    first: str = Field(description="Expression matching A.")
    then: str = Field(description="Expression matching B (e.g. `source == 'fills'`).")
    within_seconds: Seconds = Field(description="B must come less than this long after A.")
    per_key: bool = Field(True, description="A and B must have the same event key.")
    emit: Literal["matched", "timeout"] = Field(
        "matched", description="matched: emit B when it follows A; timeout: emit A when no B followed."
    )


def sequence(
    first: Compiled,
    then: Compiled,
    ctx: StepContext,
    label: str,
    *,
    within: float,
    per_key: bool,
    emit_timeouts: bool,
) -> Operator:
    """A ``first`` item followed, for the same key, by a ``then`` item less than ``within`` later.

    Emits the ``then`` item with fields ``first`` (the first item's data), ``first_ts`` and
    ``elapsed_seconds``; or, with ``emit_timeouts``, the ``first`` item when no ``then`` came in
    time (``ts`` = the deadline). One pending ``first`` per key: a newer one replaces it. An
    item matching both is first checked as ``then``, then becomes the new pending ``first``.
    """
    clock = ctx.need_clock()
    stats = ctx.stats
    fail = ctx.fail
    max_keys = ctx.max_keys

    def build(emit: Emit) -> OnNext:
        pending: OrderedDict[Any, list[Event]] = OrderedDict()  # key → [first item]

        def expire(arg: tuple[Any, list[Event]]) -> None:
            k, st = arg
            if pending.get(k) is not st:
                return
            del pending[k]
            if emit_timeouts:
                a = st[0]
                extra = {"first": a.data, "first_ts": a.ts, "elapsed_seconds": within}
                emit(later(a, clock.now, extra))

        def on_next(item: Event) -> None:
            try:
                is_then = then(item)
                is_first = first(item)
            except Exception as exc:
                fail(label, exc, item)
                return
            k = item.key if per_key else None
            ts = item.ts
            if is_then:
                st = pending.get(k)
                if st is not None:
                    a = st[0]
                    elapsed = ts - a.ts
                    if 0 <= elapsed < within:
                        del pending[k]
                        if not emit_timeouts:
                            extra = {"first": a.data, "first_ts": a.ts, "elapsed_seconds": elapsed}
                            emit(with_fields(item, extra))
            if is_first:
                # `admit` inline (every `first` item comes here); a newer first replaces the pending one
                if k in pending:
                    del pending[k]
                elif len(pending) >= max_keys:
                    pending.popitem(last=False)
                    stats.evicted += 1
                st = pending[k] = [item]
                clock.call_at(ts + within, expire, (k, st))

        def restore(saved: list[tuple[Any, Event]]) -> None:
            pending.clear()
            for k, a in saved[-max_keys:]:
                st = pending[k] = [a]
                clock.call_at(a.ts + within, expire, (k, st))  # due already: at the next watermark move

        ctx.keep(lambda: [(k, st[0]) for k, st in pending.items()], restore)  # key → pending first
        return on_next

    return operator(build)


def compile_sequence(cfg: SequenceConfig, scope: StepScope) -> CompiledStep | None:
    first = scope.expr(cfg.first, "first")
    then = scope.expr(cfg.then, "then")
    scope.add("first", "first_ts", "elapsed_seconds")
    if first is None or then is None:
        return None
    summary = (
        f"sequence {cfg.first} then {cfg.then} within {seconds_text(cfg.within_seconds)}"
        f"{per_key_text(cfg.per_key)}{' (timeouts)' if cfg.emit == 'timeout' else ''}"
    )
    label = scope.label

    def make(ctx: StepContext) -> Operator:
        return sequence(
            first,
            then,
            ctx,
            label,
            within=cfg.within_seconds,
            per_key=cfg.per_key,
            emit_timeouts=cfg.emit == "timeout",
        )

    return scope.compiled(summary, make, uses_clock=True)


SPEC = StepSpec("sequence", SequenceConfig, compile_sequence, checkpoint="kept")
