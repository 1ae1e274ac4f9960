"""What a component type is: the :class:`ComponentSpec` every source and tool module ends with.

A leaf module (it imports nothing from reflexd but :mod:`streams.metrics`, a leaf too), so that
``streams/<type>.py`` and ``handlers/<type>.py`` can each carry their own ``SPEC`` and
``daemon/registry.py`` can list them without an import circle. :func:`import_from_string` loads
``package.module:attr`` references: plugin component types (``type: package.module:SPEC``) and the
python tool's functions.
"""

from __future__ import annotations

import builtins
import importlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from streams.metrics import MetricSpec

__all__ = [
    "BuildContext",
    "ComponentSpec",
    "ImportStringError",
    "Kind",
    "PreflightCheck",
    "PreflightContext",
    "Problem",
    "import_from_string",
    "is_import_string",
    "writable_file_problem",
]

Kind = Literal["source", "tool"]


@dataclass(frozen=True)
class BuildContext:
    """What a factory may need besides its own config."""

    base_dir: Path  # folder of the configuration file: relative paths resolve against it
    #: configuration paths (``("sources", name, field, ...)``) whose value came from ``${VAR}``
    secret_paths: frozenset[tuple[str | int, ...]] = frozenset()

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def from_env(self, *path: str | int) -> bool:
        """True if the value at ``path`` (or anything inside it) came from the environment."""
        n = len(path)
        return any(p[:n] == path for p in self.secret_paths)


@dataclass(frozen=True)
class PreflightContext:
    """What a type's preflight check gets besides its config (``reflexd check``)."""

    build: BuildContext
    #: ``reflexd check --offline``: skip whatever would need the network (nothing is ever sent anyway)
    offline: bool = False

    def resolve(self, path: str) -> Path:
        return self.build.resolve(path)


@dataclass(frozen=True)
class Problem:
    """Something ``run`` would fail on: ``path`` is below the component's own section
    (``("path",)`` for ``sources.<name>.path``)."""

    path: tuple[str | int, ...]
    reason: str


#: ``preflight(config, ctx)``: what would make ``start()`` fail, found without starting anything.
PreflightCheck = Callable[[Any, PreflightContext], list[Problem]]


def writable_file_problem(path: Path) -> str | None:
    """Why a file at ``path`` could not be created or appended to (its missing folders created
    first), or None. Looks only: creates nothing."""
    if path.is_dir():
        return f"{path} is a folder"
    if path.exists():
        return None if os.access(path, os.W_OK) else f"{path} is not writable"
    folder = path.parent
    while not folder.exists():  # the nearest existing ancestor must let us create the rest
        if folder.parent == folder:
            break
        folder = folder.parent
    if not folder.is_dir():
        return f"cannot create folder {path.parent}: {folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot create {path}: folder {folder} is not writable"
    return None


@dataclass(frozen=True)
class ComponentSpec:
    """Everything the daemon needs to know about one component type.

    The factory returns a ``streams.base.Source`` (kind ``source``) or a ``handlers.base.Tool``
    (kind ``tool``); the daemon checks which when it builds one.
    """

    kind: Kind
    type: str
    config_model: builtins.type[BaseModel]
    factory: Callable[[str, Any, BuildContext], Any]
    #: (field, value) pairs shown by ``reflexd check``; values from the environment are masked.
    summary: Callable[[Any], list[tuple[str, Any]]]
    description: str = ""
    #: A minimal valid configuration (docs, the registry test and the contract suite check it).
    example: Mapping[str, Any] = field(default_factory=dict)
    #: Metrics the type adds to the daemon's, labelled by component (a source's ``metric_samples()``);
    #: the metrics table of docs/operations.md lists them.
    metrics: tuple[MetricSpec, ...] = ()
    #: What ``reflexd check`` verifies beyond the schema (a file that must exist, a program that must
    #: be found): the problems that would make the component fail to start. Never sends anything.
    preflight: PreflightCheck | None = None
    #: The component's results are events too: rules may name it in ``from:`` (the llm tool's answers).
    emits_events: bool = False
    #: The other tools a component calls, as (path below its section, tool name): the configuration
    #: check requires each to be a configured tool, never the component itself nor one that calls
    #: tools in turn (no loops).
    tool_refs: Callable[[Any], list[tuple[tuple[str | int, ...], str]]] | None = None
    #: Fields that must come from the environment (``${VAR}``) when set: a literal is a config error.
    env_only: tuple[str, ...] = ()


# -- package.module:attr ----------------------------------------------------------------------------

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_FORM = "package.module:attr (absolute dotted names of letters, digits and '_')"

Stage = Literal["form", "import", "attribute"]


class ImportStringError(LookupError):
    """A ``package.module:attr`` reference that cannot be loaded.

    ``stage``: ``form`` (not an absolute dotted ``module:attr``), ``import`` (importing the module
    raised; the exception is ``__cause__``) or ``attribute`` (no such attribute).
    """

    def __init__(self, message: str, ref: str, stage: Stage, module: str, attr: str) -> None:
        super().__init__(message)
        self.ref = ref
        self.stage: Stage = stage
        self.module = module
        self.attr = attr


def is_import_string(ref: str) -> bool:
    """True if ``ref`` looks like ``package.module:attr.path`` (absolute, dotted, ASCII names)."""
    module_name, colon, attr = ref.partition(":")
    return bool(colon) and bool(_DOTTED.fullmatch(module_name)) and bool(_DOTTED.fullmatch(attr))


def import_from_string(ref: str, *, what: str = "module") -> Any:
    """The object ``package.module:attr.path`` names, its module imported.

    Any failure is an :class:`ImportStringError` whose message says why, on one line; ``what`` names
    the module in it (``cannot import plugin module 'x': ModuleNotFoundError: ...``). Whatever the
    module's own code raises while it is imported is caught there, since it is outside code.
    """
    module_name, _, attr = ref.partition(":")
    if not is_import_string(ref):
        raise ImportStringError(f"{ref!r} must look like {_FORM}", ref, "form", module_name, attr)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        why = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, whatever the message holds
        raise ImportStringError(
            f"cannot import {what} {module_name!r}: {why}", ref, "import", module_name, attr
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except Exception as exc:  # AttributeError, or whatever a module __getattr__ raises
            raise ImportStringError(
                f"{what} {module_name!r} has no attribute {attr!r}", ref, "attribute", module_name, attr
            ) from exc
    return obj
