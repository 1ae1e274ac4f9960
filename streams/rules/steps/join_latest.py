"""``join_latest``: the latest value per key of several sources, combined."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from pydantic import Field

from streams.event import Event
from streams.expressions import Compiled, field_name_problem
from streams.rules.operators import admit, keep_per_key, operator, with_fields
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
    seconds_text,
)

__all__ = ["SPEC", "JoinLatestConfig", "compile_join_latest", "join_latest"]


class JoinLatestConfig(StepModel):
    """``join_latest``: the latest value per key of several sources, combined."""

    sources: list[str] | dict[str, str] = Field(
        description="Sources to join (names from `from`), or field name → source name."
    )
    value: str | None = Field(None, description="Expression kept per source (default: the event's data).")
    max_age_seconds: Seconds | None = Field(
        None, description="Emit only when every side is at most this old."
    )
    emit_on: str = Field("any", description="`any` side updating emits, or only this field's side.")
    per_key: bool = Field(True, description="Join per event key.")


def join_latest(
    aliases: dict[str, str],
    value: Compiled | None,
    ctx: StepContext,
    label: str,
    *,
    max_age: float | None,
    emit_on: str | None,
    per_key: bool,
) -> Operator:
    """Combine the latest value per key of several sources.

    ``aliases`` maps each source name to the field name its value gets. An item from one of
    them updates its side; once every side has a value (each at most ``max_age`` seconds older
    than the item), a row is emitted with one field per side — on every update, or only on
    updates of the ``emit_on`` side. Items from other sources are dropped.
    """
    stats = ctx.stats
    fail = ctx.fail
    max_keys = ctx.max_keys
    sides = len(aliases)

    def build(emit: Emit) -> OnNext:
        latest: OrderedDict[Any, dict[str, tuple[float, Any]]] = OrderedDict()

        def on_next(item: Event) -> None:
            alias = aliases.get(item.source)
            if alias is None:
                return
            try:
                v = item.data if value is None else value(item)
            except Exception as exc:
                fail(label, exc, item)
                return
            k = item.key if per_key else None
            ts = item.ts
            st = latest.get(k)
            if st is None:
                st = admit(latest, k, {}, max_keys, stats)
            else:
                latest.move_to_end(k)
            st[alias] = (ts, v)
            if len(st) < sides or (emit_on is not None and alias != emit_on):
                return
            if max_age is not None:
                for side_ts, _v in st.values():
                    if ts - side_ts > max_age:
                        return
            emit(with_fields(item, {name: side[1] for name, side in st.items()}))

        keep_per_key(ctx.keep, latest, ctx.max_keys)  # key → side → (time, value)
        return on_next

    return operator(build)


def compile_join_latest(cfg: JoinLatestConfig, scope: StepScope) -> CompiledStep | None:
    listed = isinstance(cfg.sources, list)
    pairs: list[tuple[str, str, str | int]] = (
        [(name, name, i) for i, name in enumerate(cfg.sources)]
        if isinstance(cfg.sources, list)
        else [(alias, src, alias) for alias, src in cfg.sources.items()]
    )
    ok = True
    if len(pairs) < 2:
        scope.problem("join at least two sources", "sources")
        ok = False
    aliases: dict[str, str] = {}
    for alias, src, at in pairs:
        reason = field_name_problem(alias)
        if reason is None:
            scope.add(alias)
        else:
            hint = " (write sources as a mapping, field_name: source)" if listed else ""
            scope.problem(f"{reason}{hint}", "sources", at)
            ok = False
        if scope.sources and src not in scope.sources:
            scope.problem(
                f"{src!r} is not one of this rule's sources ({', '.join(scope.sources)})", "sources", at
            )
            ok = False
        if src in aliases:
            scope.problem(f"source {src!r} is joined twice", "sources", at)
            ok = False
        aliases[src] = alias
    emit_on: str | None = None
    if cfg.emit_on != "any":
        if cfg.emit_on not in aliases.values():
            scope.problem(f"must be any or one of: {', '.join(aliases.values())}", "emit_on")
            ok = False
        emit_on = cfg.emit_on
    value: Compiled | None = None
    if cfg.value is not None:
        value = scope.expr(cfg.value, "value")
        ok &= value is not None
    if not ok:
        return None
    age = f" (max age {seconds_text(cfg.max_age_seconds)})" if cfg.max_age_seconds else ""
    summary = f"join_latest {', '.join(aliases.values())}{age}"
    label = scope.label

    def make(ctx: StepContext) -> Operator:
        return join_latest(
            aliases,
            value,
            ctx,
            label,
            max_age=cfg.max_age_seconds,
            emit_on=emit_on,
            per_key=cfg.per_key,
        )

    return scope.compiled(summary, make, uses_clock=True)


SPEC = StepSpec("join_latest", JoinLatestConfig, compile_join_latest, checkpoint="kept")
