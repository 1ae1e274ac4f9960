"""The component registry: ``type:`` name → :class:`ComponentSpec` (config model, factory, plan summary).

Every source and tool type is one module that ends with its ``SPEC`` (``streams/<type>.py``,
``handlers/<type>.py``); :func:`builtin_registry` is the list of those specs. A
:class:`Registry` is a value, not a global that modules mutate on import: the daemon uses
:func:`builtin_registry`, tests and benchmarks build a trimmed or extended one with
:meth:`Registry.with_specs` / :meth:`Registry.without`. A ``type`` of the form
``package.module:attr`` loads a plugin whose ``attr`` is a :class:`ComponentSpec`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from handlers.ccxt_order import SPEC as CCXT_ORDER
from handlers.exec import SPEC as EXEC
from handlers.file import SPEC as FILE
from handlers.kafka import SPEC as KAFKA_TOOL
from handlers.llm import SPEC as LLM
from handlers.log import SPEC as LOG
from handlers.notify import SPEC as NOTIFY
from handlers.python import SPEC as PYTHON
from handlers.webhook import SPEC as WEBHOOK
from streams.ccxt import SPEC as CCXT
from streams.component import BuildContext, ComponentSpec, ImportStringError, Kind, import_from_string
from streams.kafka import SPEC as KAFKA
from streams.replay import SPEC as REPLAY
from streams.rules.spec import StepSpec
from streams.rules.steps import BUILTIN_STEPS
from streams.websocket import SPEC as WEBSOCKET

__all__ = ["BuildContext", "ComponentSpec", "Kind", "Registry", "builtin_registry"]


class Registry:
    """Immutable mapping of (kind, type) to :class:`ComponentSpec`, and the rule step kinds
    (:class:`~streams.rules.spec.StepSpec`, by default the built-in ones) rules are parsed with."""

    def __init__(
        self, specs: Iterable[ComponentSpec] = (), steps: Iterable[StepSpec[Any]] = BUILTIN_STEPS
    ) -> None:
        self._specs: dict[tuple[Kind, str], ComponentSpec] = {}
        for spec in specs:
            key = (spec.kind, spec.type)
            if key in self._specs:
                raise ValueError(f"{spec.kind} type {spec.type!r} registered twice")
            self._specs[key] = spec
        self.steps: tuple[StepSpec[Any], ...] = tuple(steps)
        names = [step.name for step in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"rule steps registered twice: {', '.join(names)}")

    def with_specs(self, *specs: ComponentSpec) -> Registry:
        """A copy with ``specs`` added or replaced."""
        replaced = {(s.kind, s.type) for s in specs}
        return Registry([s for k, s in self._specs.items() if k not in replaced] + list(specs), self.steps)

    def without(self, kind: Kind, *types: str) -> Registry:
        kept = [s for (k, t), s in self._specs.items() if not (k == kind and t in types)]
        return Registry(kept, self.steps)

    def with_steps(self, *steps: StepSpec[Any]) -> Registry:
        """A copy with rule step kinds added (a step of the same name is replaced, in its place)."""
        new = {step.name: step for step in steps}
        kept = [new.pop(step.name, step) for step in self.steps]
        return Registry(self._specs.values(), [*kept, *new.values()])

    def types(self, kind: Kind) -> list[str]:
        return sorted(t for (k, t) in self._specs if k == kind)

    def specs(self, kind: Kind) -> list[ComponentSpec]:
        return [self._specs[(kind, t)] for t in self.types(kind)]

    def get(self, kind: Kind, type_name: str) -> ComponentSpec:
        """The spec for ``type_name``; plugins (``module:attr``) are imported. Raises LookupError."""
        spec = self._specs.get((kind, type_name))
        if spec is not None:
            return spec
        if ":" in type_name:
            return _load_plugin(kind, type_name)
        known = ", ".join(self.types(kind)) or "none"
        raise LookupError(
            f"unknown {kind} type {type_name!r} (known: {known}; plugins are written module:attr)"
        )


def _load_plugin(kind: Kind, ref: str) -> ComponentSpec:
    """Import ``package.module:attr``; any failure (a malformed reference, import errors, errors raised
    while the module runs, a missing attribute) is a LookupError whose message says why."""
    try:
        obj = import_from_string(ref, what="plugin module")
    except ImportStringError as exc:
        raise LookupError(f"plugin type {exc}" if exc.stage == "form" else str(exc)) from exc.__cause__
    if not isinstance(obj, ComponentSpec):
        raise LookupError(f"plugin {ref!r} is not a reflexd ComponentSpec")
    if obj.kind != kind:
        raise LookupError(f"plugin {ref!r} is a {obj.kind}, not a {kind}")
    return obj


def builtin_registry() -> Registry:
    """The component types that ship with reflexd: the ``SPEC`` each type's module ends with
    (heavy client libraries such as ccxt are imported when a component is built, not here)."""
    return Registry(
        [
            # sources
            WEBSOCKET,
            REPLAY,
            KAFKA,
            CCXT,
            # tools
            LOG,
            FILE,
            WEBHOOK,
            KAFKA_TOOL,
            EXEC,
            PYTHON,
            CCXT_ORDER,
            NOTIFY,
            LLM,
        ]
    )
