"""``crossing``: a value crossing a level (a number or another field), edge-triggered."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from streams.expressions import INLINE_NAMES, Compiled, inline_source
from streams.rules.operators import admit, keep_per_key, operator, with_fields
from streams.rules.spec import (
    CompiledStep,
    Emit,
    OnNext,
    Operator,
    StepContext,
    StepModel,
    StepScope,
    StepSpec,
)

__all__ = ["SPEC", "CrossingConfig", "compile_crossing", "crossing"]


class CrossingConfig(StepModel):
    """``crossing``: a value crossing a level (a number or another field), edge-triggered."""

    value: str = Field(description="Expression whose crossings are watched.")
    level: str = Field(description="Expression or number: the level to cross (e.g. `vwap`).")
    direction: Literal["up", "down", "both"] = Field("both", description="Which crossings emit.")
    hysteresis: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="Dead band: the value must pass level ± this."
    )
    hysteresis_pct: float = Field(
        0.0, ge=0, le=100, allow_inf_nan=False, description="Dead band in percent of |level|."
    )
    per_key: bool = Field(True, description="Track each event key separately.")


_CROSSING = """\
def build(emit, sides):
    get, to_end = sides.get, sides.move_to_end

    def on_next(item):
        try:
            v = {value}
            lvl = {level}
            band = {band}
            if v > lvl + band:
                side = 1
            elif v < lvl - band:
                side = -1
            else:
                return
        except Exception as exc:
            fail(label, exc, item)
            return
        k = {key}
        old = get(k)
        if old is None:
            admit(sides, k, side, max_keys, stats)
            return
        to_end(k)
        if old == side:
            return
        sides[k] = side
        if {emits}:
            emit(with_fields(item, {{"direction": "up" if side == 1 else "down", "level": lvl}}))

    return on_next
"""


def crossing(
    value: Compiled,
    level: Compiled,
    ctx: StepContext,
    label: str,
    *,
    direction: str,
    hysteresis: float,
    hysteresis_pct: float,
    per_key: bool,
    value_source: str | None = None,
    level_source: str | None = None,
    value_key: str | None = None,
) -> Operator:
    """Emit when ``value`` crosses ``level`` (edge-triggered, with a dead band against chattering).

    The value is *above* once ``value > level + band`` and *below* once ``value < level - band``
    (``band = hysteresis + |level| * hysteresis_pct / 100``); in between it keeps its side. A
    crossing is a change of side (never the first side seen); it is emitted for ``up`` (below →
    above), ``down`` (above → below) or ``both``, with fields ``direction`` and ``level``.

    The ``on_next`` is compiled for the configuration, with ``value`` and ``level`` written in
    when they are simple (``value_source`` / ``level_source``, from
    :func:`~streams.expressions.inline_source`) and called otherwise.
    """
    up = direction in ("up", "both")
    down = direction in ("down", "both")
    pct = hysteresis_pct / 100.0
    value_text = value_source or "_value(item)"
    if value_key is not None:  # a step before may have computed it for this very row (StepContext.values)
        value_text = f"_cell[1] if item is _cell[0] else {value_text}"
    source = _CROSSING.format(
        value=value_text,
        level=level_source or "_level(item)",
        # hysteresis + abs(lvl) * pct; 0.0 + x is x for the x >= 0 (or NaN) that abs(lvl) * pct is
        band=(f"{float(hysteresis)!r} + " if hysteresis else "") + f"abs(lvl) * {pct!r}"
        if pct
        else f"{float(hysteresis)!r}",
        key="item.key" if per_key else "None",
        emits="True" if up and down else "side == 1" if up else "side == -1",
    )
    names: dict[str, Any] = dict(INLINE_NAMES)
    names.update(
        _value=value,
        _cell=ctx.values.setdefault(value_key, [None, None]) if value_key is not None else None,
        _level=level,
        fail=ctx.fail,
        label=label,
        admit=admit,
        max_keys=ctx.max_keys,
        stats=ctx.stats,
        with_fields=with_fields,
    )
    exec(compile(source, f"<crossing {label}>", "exec"), names)  # our lines; text only from inline_source
    build_compiled: Callable[[Emit, OrderedDict[Any, int]], OnNext] = names["build"]

    def build(emit: Emit) -> OnNext:
        sides: OrderedDict[Any, int] = OrderedDict()
        on_next = build_compiled(emit, sides)

        keep_per_key(ctx.keep, sides, ctx.max_keys)  # key → side (1 above, -1 below)
        return on_next

    return operator(build)


def compile_crossing(cfg: CrossingConfig, scope: StepScope) -> CompiledStep | None:
    value = scope.expr(cfg.value, "value")
    level = scope.expr(cfg.level, "level")
    value_source = inline_source(cfg.value, scope.names)  # read with the names the expressions saw
    value_key = inline_source(cfg.value)  # it reads the event alone: a step before may hand it over
    level_source = inline_source(cfg.level, scope.names)
    scope.add("direction", "level")
    if value is None or level is None:
        return None
    band = []
    if cfg.hysteresis:
        band.append(f"±{cfg.hysteresis:g}")
    if cfg.hysteresis_pct:
        band.append(f"±{cfg.hysteresis_pct:g}%")
    summary = f"crossing {cfg.value} / {cfg.level} {cfg.direction}" + (f" {' '.join(band)}" if band else "")
    label = scope.label

    def make(ctx: StepContext) -> Operator:
        return crossing(
            value,
            level,
            ctx,
            label,
            direction=cfg.direction,
            hysteresis=cfg.hysteresis,
            hysteresis_pct=cfg.hysteresis_pct,
            per_key=cfg.per_key,
            value_source=value_source,
            level_source=level_source,
            value_key=value_key,
        )

    return scope.compiled(summary, make)


SPEC = StepSpec("crossing", CrossingConfig, compile_crossing, checkpoint="kept")
