"""``debounce``: emit a key's last item once it has been quiet for ``seconds``."""

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

__all__ = ["SPEC", "DebounceConfig", "compile_debounce", "debounce"]


class DebounceConfig(StepModel):
    """``debounce``: emit a key's last item once it has been quiet for `seconds`."""

    seconds: Seconds = Field(description="Quiet period, in event-time seconds.")
    per_key: bool = Field(True, description="Debounce each event key separately.")


def debounce(ctx: StepContext, *, seconds: float, per_key: bool) -> Operator:
    """Emit a key's last item once it has been quiet for ``seconds`` (``ts`` = that moment)."""
    return quiet_keys(ctx, seconds=seconds, per_key=per_key, absence=False, repeat=False)


def compile_debounce(cfg: DebounceConfig, scope: StepScope) -> CompiledStep | None:
    summary = f"debounce {seconds_text(cfg.seconds)}{per_key_text(cfg.per_key)}"
    return scope.compiled(
        summary, lambda ctx: debounce(ctx, seconds=cfg.seconds, per_key=cfg.per_key), uses_clock=True
    )


SPEC = StepSpec("debounce", DebounceConfig, compile_debounce, shorthand=SECONDS, checkpoint="kept")
