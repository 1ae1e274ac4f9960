"""``cooldown``: after an item passes, mute its key for ``seconds`` (also the rule's ``cooldown_seconds``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field

from streams.event import Event
from streams.rules.operators import keep_per_key, operator
from streams.rules.spec import (
    SECONDS,
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

__all__ = ["SPEC", "CooldownConfig", "compile_cooldown", "cooldown", "cooldown_by_key"]


class CooldownConfig(StepModel):
    """``cooldown``: after an item passes, mute its key for `seconds`."""

    seconds: Seconds = Field(description="Quiet period after an item passes, in event-time seconds.")
    per_key: bool = Field(True, description="One cooldown per event key.")


def cooldown_by_key(
    seconds: float,
    *,
    max_keys: int = 100_000,
    on_suppressed: Callable[[Event], None] | None = None,
    on_evicted: Callable[[], None] | None = None,
    per_key: bool = True,
    keep: Callable[[Callable[[], Any], Callable[[Any], None]], None] | None = None,
) -> Operator:
    """Let an event through only if its key has not let one through in the last ``seconds``.

    Time is the event's own time (``Event.ts``), so the rule behaves the same live and on a
    replay. An event whose time is earlier than the last one let through for its key (clock
    skew, a replay restarted) opens the key again rather than muting it until time catches up.

    ``keep`` (:meth:`StepContext.keep`) is given the snapshot and restore of the last times.
    """

    def build(emit: Emit) -> OnNext:
        last: dict[Any, float] = {}

        def on_next(event: Event) -> None:
            key = event.key if per_key else None
            ts = event.ts
            previous = last.get(key)
            if previous is not None and previous <= ts < previous + seconds:
                if on_suppressed is not None:
                    on_suppressed(event)
                return
            if previous is not None:
                del last[key]  # re-insert at the end: dict order = least recently updated first
            elif len(last) >= max_keys:
                del last[next(iter(last))]
                if on_evicted is not None:
                    on_evicted()
            last[key] = ts
            emit(event)

        if keep is not None:
            keep_per_key(keep, last, max_keys)  # key → when it last let one through
        return on_next

    return operator(build)


def cooldown(ctx: StepContext, *, seconds: float, per_key: bool) -> Operator:
    """:func:`cooldown_by_key` for a rule: what it mutes counts as ``suppressed``, the keys it
    forgets (beyond the rule's ``max_keys``) as ``evicted``."""
    stats = ctx.stats

    def suppressed(_event: Event) -> None:
        stats.suppressed += 1

    def evicted() -> None:
        stats.evicted += 1

    return cooldown_by_key(
        seconds,
        max_keys=ctx.max_keys,
        on_suppressed=suppressed,
        on_evicted=evicted,
        per_key=per_key,
        keep=ctx.keep,
    )


def compile_cooldown(cfg: CooldownConfig, scope: StepScope) -> CompiledStep | None:
    summary = f"cooldown {seconds_text(cfg.seconds)}{per_key_text(cfg.per_key)}"
    return scope.compiled(summary, lambda ctx: cooldown(ctx, seconds=cfg.seconds, per_key=cfg.per_key))


SPEC = StepSpec("cooldown", CooldownConfig, compile_cooldown, shorthand=SECONDS, checkpoint="kept")
