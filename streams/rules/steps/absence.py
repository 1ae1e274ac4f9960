"""``absence``: fire when no item came for ``seconds``."""

from __future__ import annotations

from pydantic import Field

from streams.rules.operators import quiet_keys
from streams.rules.spec import (
    SECONDS,
    CompiledStep,
    Operator,
    Seconds,
    StepContext,
    StepModel,
    StepScope,
    StepSpec,
    per_key_text,
    seconds_text,
)

__all__ = ["SPEC", "AbsenceConfig", "absence", "compile_absence"]


class AbsenceConfig(StepModel):
    """``absence``: fire when no item came for `seconds`."""

    seconds: Seconds = Field(description="Silence that fires, in event-time seconds.")
    per_key: bool = Field(False, description="A silence per event key (default: no item at all).")
    repeat: bool = Field(False, description="Fire again every `seconds` while the silence lasts.")


def absence(ctx: StepContext, *, seconds: float, per_key: bool, repeat: bool) -> Operator:
    """Emit when no item (of a key, or at all) has come for ``seconds`` of event time.

    The row is the last item seen, with ``ts`` = the moment the silence reached ``seconds``
    and fields ``silent_seconds`` and ``last_ts``. It fires once per silence — the next item
    re-arms it — or, with ``repeat``, again every ``seconds`` while the silence lasts. The
    items themselves are not passed on.
    """
    return quiet_keys(ctx, seconds=seconds, per_key=per_key, absence=True, repeat=repeat)


def compile_absence(cfg: AbsenceConfig, scope: StepScope) -> CompiledStep | None:
    scope.add("silent_seconds", "last_ts")
    summary = (
        f"absence {seconds_text(cfg.seconds)}{per_key_text(cfg.per_key)}{' repeating' if cfg.repeat else ''}"
    )

    def make(ctx: StepContext) -> Operator:
        return absence(ctx, seconds=cfg.seconds, per_key=cfg.per_key, repeat=cfg.repeat)

    return scope.compiled(summary, make, uses_clock=True)


SPEC = StepSpec("absence", AbsenceConfig, compile_absence, shorthand=SECONDS, checkpoint="kept")
