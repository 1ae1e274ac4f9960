"""Pipeline steps: the ``steps:`` list of a rule, validated, compiled and turned into operators.

Each step is a mapping with one key, the step's name::

    steps:
      - where: "key == 'BTCUSDT'"
      - set: {price: "float(data.p)", qty: "float(data.q)"}
      - window: {seconds: 60, aggregates: {vwap: "vwap(price, qty)", move: "pct_change(price)"}}
      - crossing: {value: price, level: vwap, hysteresis_pct: 0.05}
      - throttle: 30

:func:`compile_steps` checks the whole list at configuration time: every expression is
compiled with the computed fields in scope at that point (a field used before the step that
adds it is an error with its path and column), names are checked, and each step becomes a
:class:`CompiledStep` whose ``make(ctx)`` builds its reactivex operator for a running rule.
See ``docs/rules.md`` for the semantics of each step.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from daemon.errors import ExpressionError
from streams.expressions import Compiled, compile_expression, field_name_problem
from streams.rules.aggregates import compile_aggregates
from streams.rules.operators import (
    Operator,
    StepContext,
    absence,
    changed,
    cooldown,
    crossing,
    debounce,
    distinct,
    join_latest,
    rekey,
    sample,
    sequence,
    set_fields,
    throttle,
    where,
    window,
)

__all__ = [
    "STEP_BODIES",
    "STEP_KINDS",
    "CompiledStep",
    "StepConfig",
    "StepIssue",
    "StepPlan",
    "compile_steps",
    "describe_expression_error",
]

MAX_SECONDS = 30 * 86_400.0  # a month of event time: longer is surely a unit mistake


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)
    kind: ClassVar[str] = ""


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


def _seconds_shorthand(field: str, body: type[BaseModel]) -> Any:
    """The validator of a step's ``field`` that also takes a number of seconds for its ``body``."""
    return field_validator(field, mode="before", json_schema_input_type=float | body)(_expand_seconds)


def _value_shorthand(field: str, body: type[BaseModel]) -> Any:
    """The validator of a step's ``field`` that also takes an expression (its ``value``) for its ``body``."""
    return field_validator(field, mode="before", json_schema_input_type=str | body)(_expand_value)


Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]


# -- step bodies ------------------------------------------------------------------------------------


class WindowConfig(_Model):
    """``window``: aggregates over a time or count window, per key."""

    seconds: Seconds | None = Field(None, description="Window length in event-time seconds (or `count`).")
    count: int | None = Field(None, ge=1, le=1_000_000, description="Window length in events (or `seconds`).")
    mode: Literal["sliding", "tumbling"] = Field(
        "sliding", description="sliding: emit per event over the last window; tumbling: emit once per window."
    )
    per_key: bool = Field(True, description="One window per event key (false: one for all).")
    aggregates: dict[str, str] = Field(
        min_length=1, description="Output field → aggregate, e.g. `vwap: vwap(price, qty)`."
    )
    min_events: int = Field(1, ge=1, description="Emit only when the window holds at least this many events.")
    max_events: int = Field(
        100_000, ge=1, le=10_000_000, description="Most events a sliding window holds (oldest dropped first)."
    )

    @model_validator(mode="after")
    def _one_length(self) -> WindowConfig:
        if (self.seconds is None) == (self.count is None):
            raise ValueError("give exactly one of seconds (a time window) or count (a count window)")
        return self


class CrossingConfig(_Model):
    """``crossing``: a value crossing a level (a number or another field), edge-triggered."""

    value: str = Field(description="Expression whose crossings are watched.")
    level: str = Field(description="Expression or number: the level to cross (e.g. `vwap`).")
    direction: Literal["up", "down", "both"] = Field("both", description="Which crossings emit.")
    hysteresis: float = Field(0.0, ge=0, description="Dead band: the value must pass level ± this.")
    hysteresis_pct: float = Field(0.0, ge=0, le=100, description="Dead band in percent of |level|.")
    per_key: bool = Field(True, description="Track each event key separately.")


class ChangedConfig(_Model):
    """``changed``: emit when a value differs from its previous value."""

    value: str = Field(description="Expression to watch.")
    per_key: bool = Field(True, description="Track each event key separately.")
    emit_first: bool = Field(False, description="Also emit the first value seen (previous = null).")


class DistinctConfig(_Model):
    """``distinct``: emit an item only the first time its value is seen."""

    value: str = Field(description="Expression; its value must be hashable (not a list or mapping).")
    per_key: bool = Field(False, description="Values are new per event key (default: new at all).")
    max_values: int | None = Field(
        None, ge=1, le=10_000_000, description="Most values remembered (default: the rule's max_keys)."
    )
    seconds: Seconds | None = Field(None, description="Forget a value not seen for this long (null: never).")


class ThrottleConfig(_Model):
    """``throttle``: at most `max_events` per interval, the first ones."""

    seconds: Seconds = Field(description="Interval, started by the first item, in event-time seconds.")
    max_events: int = Field(1, ge=1, le=1_000_000, description="Items let through per interval.")
    per_key: bool = Field(True, description="One interval per event key.")


class DebounceConfig(_Model):
    """``debounce``: emit a key's last item once it has been quiet for `seconds`."""

    seconds: Seconds = Field(description="Quiet period, in event-time seconds.")
    per_key: bool = Field(True, description="Debounce each event key separately.")


class CooldownConfig(_Model):
    """``cooldown``: after an item passes, mute its key for `seconds`."""

    seconds: Seconds = Field(description="Quiet period after an item passes, in event-time seconds.")
    per_key: bool = Field(True, description="One cooldown per event key.")


class SampleConfig(_Model):
    """``sample``: the latest item of each period."""

    seconds: Seconds = Field(description="Period, aligned to multiples of it in event time.")
    per_key: bool = Field(True, description="Sample each event key separately.")


class SequenceConfig(_Model):
    """``sequence``: A then B, for the same key, within a time limit."""

    first: str = Field(description="Expression matching A.")
    then: str = Field(description="Expression matching B (e.g. `source == 'fills'`).")
    within_seconds: Seconds = Field(description="B must come less than this long after A.")
    per_key: bool = Field(True, description="A and B must have the same event key.")
    emit: Literal["matched", "timeout"] = Field(
        "matched", description="matched: emit B when it follows A; timeout: emit A when no B followed."
    )


class JoinLatestConfig(_Model):
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


class AbsenceConfig(_Model):
    """``absence``: fire when no item came for `seconds`."""

    seconds: Seconds = Field(description="Silence that fires, in event-time seconds.")
    per_key: bool = Field(False, description="A silence per event key (default: no item at all).")
    repeat: bool = Field(False, description="Fire again every `seconds` while the silence lasts.")


# -- step wrappers: one key each ---------------------------------------------------------------------


class WhereStep(_Model):
    kind: ClassVar[str] = "where"
    where: str = Field(description="Expression; items for which it is false are dropped.")


class SetStep(_Model):
    kind: ClassVar[str] = "set"
    fields: dict[str, str] = Field(
        alias="set", min_length=1, description="Computed fields: name → expression, in order."
    )


class KeyStep(_Model):
    kind: ClassVar[str] = "key"
    key: str = Field(description="Expression giving the new event key for the steps after it.")


class WindowStep(_Model):
    kind: ClassVar[str] = "window"
    window: WindowConfig


class CrossingStep(_Model):
    kind: ClassVar[str] = "crossing"
    crossing: CrossingConfig


class ChangedStep(_Model):
    kind: ClassVar[str] = "changed"
    changed: ChangedConfig

    _short = _value_shorthand("changed", ChangedConfig)


class DistinctStep(_Model):
    kind: ClassVar[str] = "distinct"
    distinct: DistinctConfig

    _short = _value_shorthand("distinct", DistinctConfig)


class ThrottleStep(_Model):
    kind: ClassVar[str] = "throttle"
    throttle: ThrottleConfig

    _short = _seconds_shorthand("throttle", ThrottleConfig)


class DebounceStep(_Model):
    kind: ClassVar[str] = "debounce"
    debounce: DebounceConfig

    _short = _seconds_shorthand("debounce", DebounceConfig)


class CooldownStep(_Model):
    kind: ClassVar[str] = "cooldown"
    cooldown: CooldownConfig

    _short = _seconds_shorthand("cooldown", CooldownConfig)


class SampleStep(_Model):
    kind: ClassVar[str] = "sample"
    sample: SampleConfig

    _short = _seconds_shorthand("sample", SampleConfig)


class SequenceStep(_Model):
    kind: ClassVar[str] = "sequence"
    sequence: SequenceConfig


class JoinLatestStep(_Model):
    kind: ClassVar[str] = "join_latest"
    join_latest: JoinLatestConfig


class AbsenceStep(_Model):
    kind: ClassVar[str] = "absence"
    absence: AbsenceConfig

    _short = _seconds_shorthand("absence", AbsenceConfig)


_STEP_MODELS: tuple[type[_Model], ...] = (
    WhereStep,
    SetStep,
    KeyStep,
    WindowStep,
    CrossingStep,
    ChangedStep,
    DistinctStep,
    ThrottleStep,
    DebounceStep,
    CooldownStep,
    SampleStep,
    SequenceStep,
    JoinLatestStep,
    AbsenceStep,
)
STEP_KINDS: tuple[str, ...] = tuple(m.kind for m in _STEP_MODELS)

STEP_BODIES: dict[str, tuple[type[BaseModel] | str, str]] = {
    "where": ("`where: EXPRESSION` — items for which it is false are dropped.", ""),
    "set": ("`set: {NAME: EXPRESSION, ...}` — computed fields, in order; later steps use NAME.", ""),
    "key": ("`key: EXPRESSION` — the new event key for the per-key steps after it.", ""),
    "window": (WindowConfig, ""),
    "crossing": (CrossingConfig, ""),
    "changed": (ChangedConfig, "Shorthand: `changed: EXPRESSION`."),
    "distinct": (DistinctConfig, "Shorthand: `distinct: EXPRESSION`."),
    "throttle": (ThrottleConfig, "Shorthand: `throttle: SECONDS`."),
    "debounce": (DebounceConfig, "Shorthand: `debounce: SECONDS`."),
    "cooldown": (CooldownConfig, "Shorthand: `cooldown: SECONDS`."),
    "sample": (SampleConfig, "Shorthand: `sample: SECONDS`."),
    "sequence": (SequenceConfig, ""),
    "join_latest": (JoinLatestConfig, ""),
    "absence": (AbsenceConfig, "Shorthand: `absence: SECONDS`."),
}
"""What the reference documents for each step: its body model (or a line), and its shorthand."""


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        if len(value) == 1:
            (name,) = value
            if name in STEP_KINDS:
                return str(name)
        return None
    kind = getattr(type(value), "kind", None)
    return kind if isinstance(kind, str) else None


StepConfig = Annotated[
    Annotated[WhereStep, Tag("where")]
    | Annotated[SetStep, Tag("set")]
    | Annotated[KeyStep, Tag("key")]
    | Annotated[WindowStep, Tag("window")]
    | Annotated[CrossingStep, Tag("crossing")]
    | Annotated[ChangedStep, Tag("changed")]
    | Annotated[DistinctStep, Tag("distinct")]
    | Annotated[ThrottleStep, Tag("throttle")]
    | Annotated[DebounceStep, Tag("debounce")]
    | Annotated[CooldownStep, Tag("cooldown")]
    | Annotated[SampleStep, Tag("sample")]
    | Annotated[SequenceStep, Tag("sequence")]
    | Annotated[JoinLatestStep, Tag("join_latest")]
    | Annotated[AbsenceStep, Tag("absence")],
    Discriminator(
        _step_kind,
        custom_error_type="step_kind",
        custom_error_message="a step is a mapping with one key, the step's name: " + ", ".join(STEP_KINDS),
    ),
]
"""One entry of a rule's ``steps`` (a tagged union keyed by the step's name)."""


# -- compiling ---------------------------------------------------------------------------------------

Path = tuple[str | int, ...]


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


@dataclass
class StepPlan:
    steps: list[CompiledStep]
    names: frozenset[str]  # computed fields available after the last step
    issues: list[StepIssue]


def describe_expression_error(exc: ExpressionError, text: str) -> str:
    """``column 7: unknown function 'foo' ... in 'foo(data.p)'`` (the form ``reflexd check`` prints)."""
    where_ = f"column {exc.column}: " if exc.column else ""
    return f"{where_}{exc.reason} in {text!r}"


def _secs(value: float) -> str:
    return f"{value:g}s"


def _per_key(per_key: bool) -> str:
    return " per key" if per_key else ""


class _Compiler:
    def __init__(self, sources: Collection[str], now: Callable[[], float] | None) -> None:
        self.sources = sources
        self.now = now
        self.issues: list[StepIssue] = []
        self.names: set[str] = set()

    def problem(self, path: Path, reason: str) -> None:
        self.issues.append(StepIssue(path, reason))

    def expr(self, path: Path, text: str) -> Compiled | None:
        try:
            return compile_expression(text, frozenset(self.names), now=self.now)
        except ExpressionError as exc:
            self.problem(path, describe_expression_error(exc, text))
            return None

    def define(self, path: Path, name: str) -> bool:
        reason = field_name_problem(name)
        if reason is not None:
            self.problem(path, reason)
            return False
        return True

    def expression_step(
        self,
        kind: str,
        text: str,
        path: Path,
        label: str,
        operator: Callable[[Compiled, StepContext, str], Operator],
    ) -> CompiledStep | None:
        """A step that is one expression (``where``, ``key``): ``operator(compiled, ctx, label)``."""
        fn = self.expr((*path, kind), text)
        if fn is None:
            return None
        return CompiledStep(kind, label, False, f"{kind} {text}", lambda ctx: operator(fn, ctx, label))

    # one method per step kind: returns a CompiledStep, or None if something was reported

    def where_(self, step: WhereStep, path: Path, label: str) -> CompiledStep | None:
        return self.expression_step("where", step.where, path, label, where)

    def set_(self, step: SetStep, path: Path, label: str) -> CompiledStep | None:
        assignments: list[tuple[str, Compiled]] = []
        ok = True
        for name, text in step.fields.items():
            at = (*path, "set", name)
            if not self.define(at, name):
                ok = False
                continue
            fn = self.expr(at, text)
            self.names.add(name)  # later assignments may use it even if this one failed
            if fn is None:
                ok = False
                continue
            assignments.append((name, fn))
        if not ok:
            return None
        frozen = tuple(assignments)
        summary = f"set {', '.join(step.fields)}"
        return CompiledStep("set", label, False, summary, lambda ctx: set_fields(frozen, ctx, label))

    def key_(self, step: KeyStep, path: Path, label: str) -> CompiledStep | None:
        return self.expression_step("key", step.key, path, label, rekey)

    def window_(self, step: WindowStep, path: Path, label: str) -> CompiledStep | None:
        cfg = step.window
        ok = True
        for name in cfg.aggregates:
            ok &= self.define((*path, "window", "aggregates", name), name)

        def bad(name: str, exc: ExpressionError) -> None:
            self.problem(
                (*path, "window", "aggregates", name), describe_expression_error(exc, cfg.aggregates[name])
            )

        program = compile_aggregates(cfg.aggregates, frozenset(self.names), now=self.now, on_error=bad)
        self.names.update(cfg.aggregates)
        tumbling = cfg.mode == "tumbling"
        timed = cfg.seconds is not None
        if tumbling and timed:
            self.names.update(("window_start", "window_end"))
        if program is None or not ok:
            return None
        length = _secs(cfg.seconds) if cfg.seconds is not None else f"{cfg.count} events"
        summary = f"window {length} {cfg.mode}{_per_key(cfg.per_key)}: {', '.join(cfg.aggregates)}"

        def make(ctx: StepContext) -> Operator:
            return window(
                program,
                ctx,
                label,
                seconds=cfg.seconds,
                count=cfg.count,
                tumbling=tumbling,
                per_key=cfg.per_key,
                min_events=cfg.min_events,
                max_events=cfg.max_events,
            )

        # a sliding time window needs events in time order; a tumbling one needs timers
        return CompiledStep("window", label, timed, summary, make)

    def crossing_(self, step: CrossingStep, path: Path, label: str) -> CompiledStep | None:
        cfg = step.crossing
        value = self.expr((*path, "crossing", "value"), cfg.value)
        level = self.expr((*path, "crossing", "level"), cfg.level)
        self.names.update(("direction", "level"))
        if value is None or level is None:
            return None
        band = []
        if cfg.hysteresis:
            band.append(f"±{cfg.hysteresis:g}")
        if cfg.hysteresis_pct:
            band.append(f"±{cfg.hysteresis_pct:g}%")
        summary = f"crossing {cfg.value} / {cfg.level} {cfg.direction}" + (
            f" {' '.join(band)}" if band else ""
        )

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

        return CompiledStep("crossing", label, False, summary, make)

    def changed_(self, step: ChangedStep, path: Path, label: str) -> CompiledStep | None:
        cfg = step.changed
        fn = self.expr((*path, "changed", "value"), cfg.value)
        self.names.add("previous")
        if fn is None:
            return None

        def make(ctx: StepContext) -> Operator:
            return changed(fn, ctx, label, per_key=cfg.per_key, emit_first=cfg.emit_first)

        return CompiledStep("changed", label, False, f"changed {cfg.value}", make)

    def distinct_(self, step: DistinctStep, path: Path, label: str) -> CompiledStep | None:
        cfg = step.distinct
        fn = self.expr((*path, "distinct", "value"), cfg.value)
        if fn is None:
            return None

        def make(ctx: StepContext) -> Operator:
            max_values = cfg.max_values if cfg.max_values is not None else ctx.max_keys
            return distinct(fn, ctx, label, per_key=cfg.per_key, max_values=max_values, seconds=cfg.seconds)

        ttl = f" within {_secs(cfg.seconds)}" if cfg.seconds else ""
        return CompiledStep("distinct", label, False, f"distinct {cfg.value}{ttl}", make)

    def throttle_(self, step: ThrottleStep, path: Path, label: str) -> CompiledStep | None:
        cfg = step.throttle
        summary = f"throttle {cfg.max_events} per {_secs(cfg.seconds)}{_per_key(cfg.per_key)}"

        def make(ctx: StepContext) -> Operator:
            return throttle(ctx, seconds=cfg.seconds, max_events=cfg.max_events, per_key=cfg.per_key)

        return CompiledStep("throttle", label, False, summary, make)

    def cooldown_(self, step: CooldownStep, path: Path, label: str) -> CompiledStep | None:
        cfg = step.cooldown
        summary = f"cooldown {_secs(cfg.seconds)}{_per_key(cfg.per_key)}"
        return CompiledStep(
            "cooldown",
            label,
            False,
            summary,
            lambda ctx: cooldown(ctx, seconds=cfg.seconds, per_key=cfg.per_key),
        )

    def debounce_(self, step: DebounceStep, path: Path, label: str) -> CompiledStep | None:
        cfg = step.debounce
        summary = f"debounce {_secs(cfg.seconds)}{_per_key(cfg.per_key)}"
        return CompiledStep(
            "debounce",
            label,
            True,
            summary,
            lambda ctx: debounce(ctx, seconds=cfg.seconds, per_key=cfg.per_key),
        )

    def sample_(self, step: SampleStep, path: Path, label: str) -> CompiledStep | None:
        cfg = step.sample
        summary = f"sample every {_secs(cfg.seconds)}{_per_key(cfg.per_key)}"
        return CompiledStep(
            "sample", label, True, summary, lambda ctx: sample(ctx, seconds=cfg.seconds, per_key=cfg.per_key)
        )

    def sequence_(self, step: SequenceStep, path: Path, label: str) -> CompiledStep | None:
        cfg = step.sequence
        first = self.expr((*path, "sequence", "first"), cfg.first)
        then = self.expr((*path, "sequence", "then"), cfg.then)
        self.names.update(("first", "first_ts", "elapsed_seconds"))
        if first is None or then is None:
            return None
        summary = (
            f"sequence {cfg.first} then {cfg.then} within {_secs(cfg.within_seconds)}"
            f"{_per_key(cfg.per_key)}{' (timeouts)' if cfg.emit == 'timeout' else ''}"
        )

        def make(ctx: StepContext) -> Operator:
            return sequence(
                first,
                then,
                ctx,
                label,
                within=cfg.within_seconds,
                per_key=cfg.per_key,
                emit_timeouts=cfg.emit == "timeout",
            )

        return CompiledStep("sequence", label, True, summary, make)

    def join_latest_(self, step: JoinLatestStep, path: Path, label: str) -> CompiledStep | None:
        cfg = step.join_latest
        at = (*path, "join_latest", "sources")
        pairs = (
            [(name, name, (*at, i)) for i, name in enumerate(cfg.sources)]
            if isinstance(cfg.sources, list)
            else [(alias, src, (*at, alias)) for alias, src in cfg.sources.items()]
        )
        ok = True
        if len(pairs) < 2:
            self.problem(at, "join at least two sources")
            ok = False
        aliases: dict[str, str] = {}
        for alias, src, where_at in pairs:
            reason = field_name_problem(alias)
            if reason is None:
                self.names.add(alias)
            else:
                hint = (
                    " (write sources as a mapping, field_name: source)"
                    if isinstance(cfg.sources, list)
                    else ""
                )
                self.problem(where_at, f"{reason}{hint}")
                ok = False
            if self.sources and src not in self.sources:
                self.problem(
                    where_at, f"{src!r} is not one of this rule's sources ({', '.join(self.sources)})"
                )
                ok = False
            if src in aliases:
                self.problem(where_at, f"source {src!r} is joined twice")
                ok = False
            aliases[src] = alias
        emit_on: str | None = None
        if cfg.emit_on != "any":
            if cfg.emit_on not in aliases.values():
                names = ", ".join(aliases.values())
                self.problem((*path, "join_latest", "emit_on"), f"must be any or one of: {names}")
                ok = False
            emit_on = cfg.emit_on
        value: Compiled | None = None
        if cfg.value is not None:
            value = self.expr((*path, "join_latest", "value"), cfg.value)
            ok &= value is not None
        if not ok:
            return None
        age = f" (max age {_secs(cfg.max_age_seconds)})" if cfg.max_age_seconds else ""
        summary = f"join_latest {', '.join(aliases.values())}{age}"

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

        return CompiledStep("join_latest", label, True, summary, make)

    def absence_(self, step: AbsenceStep, path: Path, label: str) -> CompiledStep | None:
        cfg = step.absence
        self.names.update(("silent_seconds", "last_ts"))
        summary = f"absence {_secs(cfg.seconds)}{_per_key(cfg.per_key)}{' repeating' if cfg.repeat else ''}"
        return CompiledStep(
            "absence",
            label,
            True,
            summary,
            lambda ctx: absence(ctx, seconds=cfg.seconds, per_key=cfg.per_key, repeat=cfg.repeat),
        )


def compile_steps(
    steps: Sequence[Any],
    *,
    sources: Collection[str] = (),
    names: Collection[str] = (),
    now: Callable[[], float] | None = None,
    prefix: Path = ("steps",),
) -> StepPlan:
    """Check and compile validated step configs (see the module docstring).

    ``sources`` are the rule's sources (checked by ``join_latest``), ``names`` the computed
    fields already in scope, ``now`` the clock behind ``now()``. Problems are collected, not
    raised; a step with a problem is left out of ``steps``.
    """
    compiler = _Compiler(sources, now)
    compiler.names.update(names)
    compiled: list[CompiledStep] = []
    for index, step in enumerate(steps):
        kind = type(step).kind
        method = getattr(compiler, f"{kind}_")
        result = method(step, (*prefix, index), f"{'.'.join(str(p) for p in prefix)}.{index}.{kind}")
        if result is not None:
            compiled.append(result)
    return StepPlan(compiled, frozenset(compiler.names), compiler.issues)
