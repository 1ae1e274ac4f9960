"""``crossing``: a value crossing a level (a number or another field), edge-triggered."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

from pydantic import Field

from streams.event import Event
from streams.expressions import Compiled
from streams.rules.operators import admit, operator, with_fields
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
    hysteresis: float = Field(0.0, ge=0, description="Dead band: the value must pass level ± this.")
    hysteresis_pct: float = Field(0.0, ge=0, le=100, description="Dead band in percent of |level|.")
    per_key: bool = Field(True, description="Track each event key separately.")


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
) -> Operator:
    """Emit when ``value`` crosses ``level`` (edge-triggered, with a dead band against chattering).

    The value is *above* once ``value > level + band`` and *below* once ``value < level - band``
    (``band = hysteresis + |level| * hysteresis_pct / 100``); in between it keeps its side. A
    crossing is a change of side (never the first side seen); it is emitted for ``up`` (below →
    above), ``down`` (above → below) or ``both``, with fields ``direction`` and ``level``.
    """
    stats = ctx.stats
    fail = ctx.fail
    max_keys = ctx.max_keys
    up = direction in ("up", "both")
    down = direction in ("down", "both")
    pct = hysteresis_pct / 100.0

    def build(emit: Emit) -> OnNext:
        sides: OrderedDict[Any, int] = OrderedDict()

        def on_next(item: Event) -> None:
            try:
                v = value(item)
                lvl = level(item)
                band = hysteresis + abs(lvl) * pct if pct else hysteresis
                if v > lvl + band:
                    side = 1
                elif v < lvl - band:
                    side = -1
                else:
                    return
            except Exception as exc:
                fail(label, exc, item)
                return
            k = item.key if per_key else None
            old = sides.get(k)
            if old is None:
                admit(sides, k, side, max_keys, stats)
                return
            sides.move_to_end(k)
            if old == side:
                return
            sides[k] = side
            if (up and side == 1) or (down and side == -1):
                emit(with_fields(item, {"direction": "up" if side == 1 else "down", "level": lvl}))

        def restore(saved: list[tuple[Any, int]]) -> None:
            sides.clear()
            sides.update(saved[-max_keys:])

        ctx.keep(lambda: list(sides.items()), restore)  # key → side (1 above, -1 below)
        return on_next

    return operator(build)


def compile_crossing(cfg: CrossingConfig, scope: StepScope) -> CompiledStep | None:
    value = scope.expr(cfg.value, "value")
    level = scope.expr(cfg.level, "level")
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
        )

    return scope.compiled(summary, make)


SPEC = StepSpec("crossing", CrossingConfig, compile_crossing, checkpoint="kept")
