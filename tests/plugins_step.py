"""A third-party-style rule step kind, ``every``, added from outside the package.

This file is all a new step kind takes: its config model, its compile function, its runtime
operator and its ``SPEC``; it is registered by adding the spec to a registry value
(``builtin_registry().with_steps(EVERY)``), which a program embedding reflexd hands to
:func:`daemon.cli.main` — as this module does when run (``python -m tests.plugins_step check -c ...``).

``every: {n: 3}`` (shorthand ``every: 3``) passes every third item of each key, with the item's
count in the computed field ``nth``.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Any

from pydantic import Field

from daemon.cli import main
from daemon.registry import Registry, builtin_registry
from streams.event import Event
from streams.rules.operators import admit, operator, with_fields
from streams.rules.spec import (
    CompiledStep,
    Emit,
    OnNext,
    Operator,
    Shorthand,
    StepContext,
    StepModel,
    StepScope,
    StepSpec,
    per_key_text,
)


class EveryConfig(StepModel):
    """``every``: pass every `n`-th item (of each key), with its count in field `nth`."""

    n: int = Field(ge=1, le=1_000_000, description="Pass the n-th, 2n-th, ... item.")
    per_key: bool = Field(True, description="Count each event key separately.")


def every(ctx: StepContext, *, n: int, per_key: bool) -> Operator:
    """Every ``n``-th item (per key), with field ``nth``."""
    stats = ctx.stats
    max_keys = ctx.max_keys

    def build(emit: Emit) -> OnNext:
        counts: OrderedDict[Any, int] = OrderedDict()

        def on_next(item: Event) -> None:
            k = item.key if per_key else None
            count = counts.get(k)
            if count is None:
                admit(counts, k, 0, max_keys, stats)
                count = 0
            else:
                counts.move_to_end(k)
            counts[k] = count = count + 1
            if count % n == 0:
                emit(with_fields(item, {"nth": count}))

        return on_next

    return operator(build)


def compile_every(cfg: EveryConfig, scope: StepScope) -> CompiledStep | None:
    scope.add("nth")
    summary = f"every {cfg.n}{per_key_text(cfg.per_key)}"
    return scope.compiled(summary, lambda ctx: every(ctx, n=cfg.n, per_key=cfg.per_key))


def _expand_n(value: Any) -> Any:
    """``every: 3`` means ``every: {n: 3}``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return {"n": value}
    if not isinstance(value, dict):
        raise ValueError("must be a number of items, or a mapping with n: ...")
    return value


EVERY = StepSpec("every", EveryConfig, compile_every, shorthand=Shorthand(int, _expand_n, "N"))


def registry() -> Registry:
    """The built-in registry plus this step kind."""
    return builtin_registry().with_steps(EVERY)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], registry()))
