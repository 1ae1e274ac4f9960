"""What a rule step kind is: a :class:`StepSpec`, and what its module builds with.

A step kind is one module (``streams/rules/steps/<name>.py``, or a plugin's own file) holding

- its **config model**: the body written under the step's name (a :class:`StepModel`, or a
  plain type such as ``str`` for ``where: EXPRESSION``);
- its **compile function** ``compile(config, scope) -> CompiledStep | None``: it checks its
  expressions against the computed fields in scope (:class:`StepScope`), declares the fields it
  adds for the steps after it, reports problems with their paths, and returns the plan line and
  the factory of its operator (or None when it reported a problem);
- its **runtime operator**, built per running rule from a :class:`StepContext`
  (:mod:`streams.rules.operators` has the shared pieces);
- ``SPEC = StepSpec(name, config, compile, ...)``, whose ``checkpoint`` says what the kind keeps
  across a restart: nothing to keep (``stateless``), its per-key state through
  :meth:`StepContext.keep` (``kept``: a ``snapshot()`` and a ``restore()`` next to the operator),
  or state it cannot save (``not_kept``, the default for a kind that does not say: it starts
  empty after a restart, and the restore logs so).

A list of specs is the one place step kinds are registered (``BUILTIN_STEPS`` in
:mod:`streams.rules.steps`, or a registry's ``steps``); everything else is derived from it:
the tagged union that parses ``steps:`` (:func:`step_union`), the step names in messages, the
JSON Schema, the reference docs and the ``reflexd check`` plan lines. :func:`compile_steps`
compiles a parsed list: each parsed entry knows its spec.

This module is a leaf of the rule layer: it imports no step module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, create_model, field_validator
from reactivex import Observable

from daemon.errors import ExpressionError
from streams.event import Event
from streams.expressions import Compiled, compile_expression, field_name_problem
from streams.rules.clock import EventClock
from streams.rules.stats import RuleStats

__all__ = [
    "MAX_SECONDS",
    "SECONDS",
    "VALUE",
    "CompiledStep",
    "Emit",
    "OnNext",
    "Operator",
    "Path",
    "Seconds",
    "Shorthand",
    "StepContext",
    "StepEntry",
    "StepIssue",
    "StepKeeper",
    "StepModel",
    "StepPlan",
    "StepScope",
    "StepSpec",
    "compile_steps",
    "describe_expression_error",
    "per_key_text",
    "seconds_text",
    "step_union",
]

MAX_SECONDS = 30 * 86_400.0  # a month of event time: longer is surely a unit mistake

Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]
"""A positive duration in event-time seconds (at most :data:`MAX_SECONDS`)."""

Operator = Callable[[Observable[Event]], Observable[Event]]
Emit = Callable[[Event], None]
OnNext = Callable[[Event], None]
Path = tuple[str | int, ...]

C = TypeVar("C")

_STEP_NAME = re.compile(r"[a-z][a-z0-9_]*")


class StepModel(BaseModel):
    """Base of step config models: unknown keys are errors, numbers are accepted where text is."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


# -- runtime ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepKeeper:
    """How one running step's state survives a restart: ``snapshot()`` returns it as plain values
    (lists, tuples, events, numbers, window states), serialised before the step sees another
    event, so it may share the step's own objects; ``restore(saved)`` puts it back into a freshly
    built step, re-arming its timers on the rule's clock."""

    snapshot: Callable[[], Any]
    restore: Callable[[Any], None]


@dataclass
class StepContext:
    """What a step's operator needs from its running rule."""

    stats: RuleStats
    clock: EventClock | None
    max_keys: int
    #: ``fail(step label, exception, item)``: count and log an event a step had to drop.
    fail: Callable[[str, BaseException, Event], None]
    #: The step being built (``steps.2.window``; ``cooldown_seconds`` for the rule's own cooldown).
    label: str = ""
    #: label → the keeper of that step's state, filled by :meth:`keep` as the operators are built.
    keepers: dict[str, StepKeeper] = field(default_factory=dict)
    #: An expression of the event alone (its :func:`~streams.expressions.inline_source` text) → a
    #: cell ``[row, value]``: a step that reads it asks for the cell when it is made; a step that
    #: computes it puts there, when it is built, each row it emits with the value it computed for it,
    #: so that the reader, handed that very row, takes the value instead of computing it again.
    values: dict[str, list[Any]] = field(default_factory=dict)

    def keep(self, snapshot: Callable[[], Any], restore: Callable[[Any], None]) -> None:
        """Register the state of the step being built (see :class:`StepKeeper`); called from the
        operator's ``build``, where the state lives."""
        self.keepers[self.label] = StepKeeper(snapshot, restore)

    def need_clock(self) -> EventClock:
        if self.clock is None:  # pragma: no cover - the rule creates one when a step needs it
            raise RuntimeError("this step needs the rule's event clock")
        return self.clock


# -- compiling -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepIssue:
    """A problem in a step, at ``path`` relative to the rule (e.g. ``("steps", 2, "window", "seconds")``)."""

    path: Path
    reason: str


@dataclass(frozen=True)
class CompiledStep:
    """A checked step, ready to become an operator of a running rule."""

    kind: str
    label: str  # steps.2.window: names the step in logs
    uses_clock: bool  # needs the rule's event clock (and the event-time gate in front of it)
    summary: str  # one line for `reflexd check`
    make: Callable[[StepContext], Operator]
    checkpoint: str = "not_kept"  # its kind's StepSpec.checkpoint (set by compile_steps)


@dataclass
class StepPlan:
    steps: list[CompiledStep]
    names: frozenset[str]  # computed fields available after the last step
    issues: list[StepIssue]


def describe_expression_error(exc: ExpressionError, text: str) -> str:
    """``column 7: unknown function 'foo' ... in 'foo(data.p)'`` (the form ``reflexd check`` prints)."""
    where_ = f"column {exc.column}: " if exc.column else ""
    return f"{where_}{exc.reason} in {text!r}"


def seconds_text(value: float) -> str:
    """``30s``: a duration in a plan line."""
    return f"{value:g}s"


def per_key_text(per_key: bool) -> str:
    """`` per key`` in a plan line, or nothing."""
    return " per key" if per_key else ""


class StepScope:
    """One step at compile time: where it is (paths of problems, the label in logs) and the computed
    fields in scope. Paths given to the methods are relative to the step's body (``"value"``,
    ``"aggregates", name``); nothing for the body itself."""

    def __init__(
        self,
        kind: str,
        path: Path,
        label: str,
        names: set[str],
        issues: list[StepIssue],
        sources: Collection[str],
        now: Callable[[], float] | None,
    ) -> None:
        self.kind = kind
        self.path = path  # ("steps", 2)
        self.label = label  # "steps.2.window"
        self.sources = sources  # the rule's sources (empty: not known here, not checked)
        self.now = now  # the clock behind now() in expressions (None: the wall clock)
        self._names = names
        self._issues = issues

    @property
    def names(self) -> frozenset[str]:
        """Computed fields added by the steps before this one (and what this one added so far)."""
        return frozenset(self._names)

    def add(self, *names: str) -> None:
        """Declare computed fields this step adds: the steps after it can use them."""
        self._names.update(names)

    def problem(self, reason: str, *at: str | int) -> None:
        self._issues.append(StepIssue((*self.path, self.kind, *at), reason))

    def expr(self, text: str, *at: str | int) -> Compiled | None:
        """``text`` compiled with the fields in scope, or None (the problem reported at ``at``)."""
        try:
            return compile_expression(text, frozenset(self._names), now=self.now)
        except ExpressionError as exc:
            self.problem(describe_expression_error(exc, text), *at)
            return None

    def define(self, name: str, *at: str | int) -> bool:
        """Whether ``name`` can be a computed field (if not, the problem is reported at ``at``)."""
        reason = field_name_problem(name)
        if reason is not None:
            self.problem(reason, *at)
            return False
        return True

    def compiled(
        self, summary: str, make: Callable[[StepContext], Operator], *, uses_clock: bool = False
    ) -> CompiledStep:
        """The result of a compile function: the plan line and the operator factory. ``uses_clock``:
        the operator needs the rule's event clock (timers, or events in time order)."""
        return CompiledStep(self.kind, self.label, uses_clock, summary, make)


# -- specs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shorthand:
    """A scalar a step's body may be written as, e.g. ``throttle: 30`` for ``throttle: {seconds: 30}``."""

    scalar: Any  # its type, for the JSON Schema (float, str)
    expand: Callable[[Any], Any]  # the scalar → the body mapping (anything else: returned as is)
    placeholder: str  # SECONDS, EXPRESSION: what the reference shows

    def doc(self, name: str) -> str:
        return f"Shorthand: `{name}: {self.placeholder}`."


def _expand_seconds(value: Any) -> Any:
    """``throttle: 10`` means ``throttle: {seconds: 10}``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"seconds": value}
    if not isinstance(value, dict):
        raise ValueError("must be a number of seconds, or a mapping with seconds: ...")
    return value


def _expand_value(value: Any) -> Any:
    """``changed: data.status`` means ``changed: {value: data.status}``."""
    if isinstance(value, str):
        return {"value": value}
    return value


SECONDS = Shorthand(float, _expand_seconds, "SECONDS")
"""``NAME: SECONDS`` for ``NAME: {seconds: SECONDS}``."""
VALUE = Shorthand(str, _expand_value, "EXPRESSION")
"""``NAME: EXPRESSION`` for ``NAME: {value: EXPRESSION}``."""


class StepEntry(BaseModel):
    """One parsed entry of a rule's ``steps``: ``body`` is the config under the step's name.

    Each spec has its own subclass (``WindowStep``: one field, aliased ``window``), made by
    :class:`StepSpec`; ``spec`` says which.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    spec: ClassVar[StepSpec[Any]]
    body: Any


@dataclass(frozen=True, eq=False)
class StepSpec(Generic[C]):
    """Everything the rule layer needs to know about one step kind."""

    name: str  # the key in `steps:` (and in labels: steps.2.NAME)
    config: Any  # type of the body: a StepModel, or e.g. str / Annotated[dict[str, str], ...]
    compile: Callable[[C, StepScope], CompiledStep | None]
    #: One line for the reference; default: the config model's docstring.
    summary: str = ""
    shorthand: Shorthand | None = None
    #: Description of the body in the JSON Schema (for a body that is not a model).
    description: str | None = None
    #: What a running step of this kind keeps across a restart (see the module docstring):
    #: ``stateless``, ``kept`` (its operator calls :meth:`StepContext.keep`) or ``not_kept``.
    checkpoint: Literal["stateless", "kept", "not_kept"] = "not_kept"
    #: The parsed-entry model (``<Name>Step``), made from the above.
    entry: type[StepEntry] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not _STEP_NAME.fullmatch(self.name):
            raise ValueError(f"step name {self.name!r} must be snake_case (a-z, digits, '_')")
        validators = {}
        if self.shorthand is not None:
            expand = field_validator(
                "body", mode="before", json_schema_input_type=self.shorthand.scalar | self.config
            )
            validators["_shorthand"] = expand(self.shorthand.expand)
        model_name = "".join(part.capitalize() for part in self.name.split("_")) + "Step"
        entry: type[StepEntry] = create_model(
            model_name,
            __base__=StepEntry,
            __validators__=validators,
            body=(self.config, Field(alias=self.name, description=self.description)),
        )
        entry.spec = self
        object.__setattr__(self, "entry", entry)

    @property
    def doc(self) -> str:
        """The reference's line about this step."""
        return self.summary or (getattr(self.config, "__doc__", None) or "").strip()


def step_union(steps: Sequence[StepSpec[Any]]) -> Any:
    """The type of one entry of ``steps:`` for these step kinds: a union tagged by the entry's one key.

    An entry that is not a one-key mapping of a known name fails with a message listing the names.
    """
    names = tuple(spec.name for spec in steps)
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"step kinds registered twice: {', '.join(twice)}")
    known = frozenset(names)

    def kind_of(value: Any) -> str | None:
        if isinstance(value, dict):
            if len(value) == 1:
                (name,) = value
                if name in known:
                    return str(name)
            return None
        if isinstance(value, StepEntry):
            return type(value).spec.name
        return None

    tagged = tuple(Annotated[spec.entry, Tag(spec.name)] for spec in steps)
    union: Any = tagged[0] if len(tagged) == 1 else Union[tagged]  # noqa: UP007  # known at run time
    return Annotated[
        union,
        Discriminator(
            kind_of,
            custom_error_type="step_kind",
            custom_error_message="a step is a mapping with one key, the step's name: " + ", ".join(names),
        ),
    ]


def compile_steps(
    steps: Sequence[StepEntry],
    *,
    sources: Collection[str] = (),
    names: Collection[str] = (),
    now: Callable[[], float] | None = None,
    prefix: Path = ("steps",),
) -> StepPlan:
    """Check and compile parsed steps: every expression is compiled with the computed fields in scope
    at that point (a field used before the step that adds it is an error with its path and column).

    ``sources`` are the rule's sources (checked by ``join_latest``), ``names`` the computed fields
    already in scope, ``now`` the clock behind ``now()``. Problems are collected, not raised; a
    step with a problem is left out of ``steps``.
    """
    in_scope = set(names)
    issues: list[StepIssue] = []
    compiled: list[CompiledStep] = []
    dotted = ".".join(str(p) for p in prefix)
    for index, entry in enumerate(steps):
        spec = type(entry).spec
        scope = StepScope(
            spec.name, (*prefix, index), f"{dotted}.{index}.{spec.name}", in_scope, issues, sources, now
        )
        result = spec.compile(entry.body, scope)
        if result is not None:
            compiled.append(replace(result, checkpoint=spec.checkpoint))
    return StepPlan(compiled, frozenset(in_scope), issues)
