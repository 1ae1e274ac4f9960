"""Rules: step pipelines from source queues to the tool runner.

::

    source queue ──► Dispatcher (one task per source, batches) ──► Rule.on_next: kind, event
        clock, where (errors counted) ──► steps (where, set, window, crossing,
        throttle, debounce, sequence, join_latest, absence, ...) ──► cooldown per key
        ──► fire: render args ──► runner.submit

The dispatcher calls ``on_next`` from a task on the event loop (no ``observe_on``: it costs a
loop callback per event). Each step's operator is built from ``build(emit) -> on_next``
(:class:`~streams.rules.operators.StepOperator`), and a rule chains them directly: a step's
``on_next`` calls the next one's, with no reactivex Subject or observer between them. A plugin step
whose operator is a reactivex pipeline of its own puts the rule on a Subject instead, subscribed
with the AsyncIOScheduler. Either way time-driven steps run on the loop, never on timer threads.
An expression that raises, in ``where`` or in any step, drops that event and is counted per rule;
the rule keeps running. So does anything else that fails per event (an operator's own bug, a
runner that raises): counted, logged rate-limited with one sample, never a traceback per event.

A rule with a time-driven step owns an :class:`~streams.rules.clock.EventClock`: every event
the rule reads moves its watermark (firing due timers) before the event enters the pipeline,
and an event-time gate in front of the first time-driven step drops late events and releases
the others in time order. Given a scheduler, the clock also ticks during silence (live);
without one (``reflexd replay``) only events move time and ``now()`` is the replay's clock.
See ``docs/rules.md``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from reactivex import Observable, abc
from reactivex.subject import Subject

from daemon.errors import RuleError
from daemon.logs import RateLimitedLog, get_logger
from streams.base import Source
from streams.call import CallContext, event_ref
from streams.event import Event
from streams.expressions import compile_expression, compile_template
from streams.rules import shared
from streams.rules.checkpoint import RuleSnapshot, fingerprint
from streams.rules.clock import EventClock
from streams.rules.operators import StepOperator, event_time_gate
from streams.rules.sink import Submit, ToolSink
from streams.rules.spec import StepContext, StepEntry, StepPlan, StepSpec, compile_steps, step_union
from streams.rules.stats import RuleStats
from streams.rules.steps import BUILTIN_STEPS
from streams.rules.steps.cooldown import cooldown
from streams.tracing import Span, Tracer

__all__ = [
    "Dispatcher",
    "Rule",
    "RuleConfig",
    "RuleStats",
    "StepConfig",
    "ToolCallConfig",
    "plan_rule",
    "rule_config_model",
]

log = get_logger("rule")


EventKind = Literal["data", "gap", "answer"]


def _payloads() -> list[EventKind]:
    """Payloads: ``data`` from sources, ``answer`` from llm tools (a rule reads one or the other)."""
    return ["data", "answer"]


class ToolCallConfig(BaseModel):
    """One entry of a rule's ``then``."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    tool: str = Field(description="Name of a tool under `tools:`.")
    args: dict[str, Any] = Field(
        default_factory=dict, description="Arguments; strings may hold `{expression}` placeholders."
    )


def _steps_description(steps: Sequence[StepSpec[Any]]) -> str:
    return f"Pipeline after `where`: {', '.join(spec.name for spec in steps)} (see docs/rules.md)."


if TYPE_CHECKING:
    StepConfig: TypeAlias = StepEntry
else:
    StepConfig = step_union(BUILTIN_STEPS)
"""One entry of a rule's ``steps`` with the built-in step kinds (a union tagged by the entry's key)."""


class RuleConfig(BaseModel):
    """A reactive rule: which sources it reads, when it matches, what it fires."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True, populate_by_name=True)

    from_: list[str] = Field(alias="from", min_length=1, description="Source names the rule reads.")
    where: str | None = Field(None, description="Expression; the rule matches when it is true.")
    steps: list[StepConfig] = Field(default_factory=list, description=_steps_description(BUILTIN_STEPS))
    cooldown_seconds: float = Field(0.0, ge=0, description="After firing for a key, stay quiet this long.")
    kinds: list[EventKind] = Field(
        default_factory=_payloads,
        min_length=1,
        description="Event kinds the rule sees: data, answer (an llm tool's), gap.",
    )
    allowed_lateness_seconds: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="Time-driven steps wait this long (event time) for out-of-order events; "
        "older ones are late: counted and dropped.",
    )
    max_keys: int = Field(100_000, ge=1, description="Most keys whose state the rule keeps.")
    then: list[ToolCallConfig] = Field(min_length=1, description="Tool calls made when the rule fires.")

    @field_validator("from_", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


def rule_config_model(steps: Sequence[StepSpec[Any]]) -> type[RuleConfig]:
    """The rule model whose ``steps`` are these step kinds (:class:`RuleConfig` for the built-in ones);
    the config loader takes them from its registry."""
    if tuple(steps) == BUILTIN_STEPS:
        return RuleConfig
    entry: Any = step_union(steps)
    field: Any = Field(default_factory=list, description=_steps_description(steps))
    model: type[RuleConfig] = create_model(
        "RuleConfig", __base__=RuleConfig, __doc__=RuleConfig.__doc__, steps=(list[entry], field)
    )
    return model


def plan_rule(config: RuleConfig, now: Callable[[], float] | None = None) -> StepPlan:
    """Compile a rule's steps (problems are in ``.issues``, paths relative to the rule)."""
    return compile_steps(config.steps, sources=config.from_, now=now)


def _raised_at(exc: BaseException) -> str:
    """``file.py:123`` of the innermost frame of ``exc``'s traceback: where to look, without a traceback."""
    tb = exc.__traceback__
    if tb is None:
        return "?"
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"


def _drop(event: Event) -> None:
    """What a disposed rule's steps are handed instead of an event."""


class Rule:
    """One configured rule: its steps chained directly (or on a reactivex Subject, see the module doc).

    ``scheduler`` is the reactivex scheduler time-driven steps tick on during silence (the
    daemon's AsyncIOScheduler, or a TestScheduler). Without one the rule runs in event time
    only, as ``reflexd replay`` does: silence is noticed when the next event arrives (or at
    :meth:`finish`), and ``now()`` in expressions is the rule's event-time clock.
    """

    def __init__(
        self,
        name: str,
        config: RuleConfig,
        submit: Submit,
        scheduler: abc.SchedulerBase | None = None,
        *,
        tracer: Tracer | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.stats = RuleStats()
        self._submit = submit
        #: asked for a span only when the rule fires (tracing on); the calls carry it on
        self._tracer = tracer
        #: what a match calls: chosen here, so that with tracing off firing costs what it did without it
        self._on_fire: Callable[[Event], None] = self._fire if tracer is None else self._fire_traced
        self._kinds = frozenset(config.kinds)
        self._latest_ts = -math.inf
        self.clock: EventClock | None = None
        now = self._event_time if scheduler is None else None
        plan = plan_rule(config, now)
        if plan.issues:
            problems = "; ".join(f"{'.'.join(str(p) for p in i.path)}: {i.reason}" for i in plan.issues)
            raise RuleError(f"rule {name}: {problems}")
        self._where = compile_expression(config.where, now=now) if config.where else None
        self._calls = [(call.tool, compile_template(call.args, plan.names, now=now)) for call in config.then]
        self._names, self._now = plan.names, now
        self._arg_leaves: dict[int, list[tuple[str, Callable[[Event], Any]]]] = {}  # built at a first error
        #: the first argument template that raised: (event time, "rule R, argument A: KeyError 'p'")
        self.first_render_error: tuple[float, str] | None = None
        #: the newest fire: (wall clock, the event), kept by reference when the rule fires (never per
        #: event) for /status, which shows it redacted
        self.last_fire: tuple[float, Event] | None = None
        self._error_log = RateLimitedLog(log, "rule expression raised; event dropped", interval=10.0)
        self._render_log = RateLimitedLog(log, "argument template raised; call skipped", interval=10.0)
        # bugs below the steps' own guards, and a runner that raises: still per event, so still rate-limited
        self._crash_log = RateLimitedLog(
            log, "rule step failed unexpectedly; event dropped", level=logging.ERROR, interval=10.0
        )
        self._submit_log = RateLimitedLog(
            log, "submitting a tool call failed", level=logging.ERROR, interval=10.0
        )
        #: the reactivex Subject in front of the steps, only when a step kind's operator is not a
        #: :class:`~streams.rules.operators.StepOperator` (a plugin's own reactivex pipeline)
        self.subject: Subject[Event] | None = None
        if any(step.uses_clock for step in plan.steps):
            self.clock = EventClock(config.allowed_lateness_seconds, scheduler)
            self.clock.on_error = self._timer_failed
        ctx = StepContext(self.stats, self.clock, config.max_keys, self._step_failed)
        operators: list[Callable[[Observable[Event]], Observable[Event]]] = []
        gated = False
        #: labels of the steps whose state a restart loses (kinds that say ``not_kept``)
        self._unkept = [step.label for step in plan.steps if step.checkpoint == "not_kept"]
        for step in plan.steps:
            if step.uses_clock and not gated:  # late events stop here; the rest go on in time order
                operators.append(event_time_gate(ctx))
                gated = True
            operators.append(step.make(replace(ctx, label=step.label)))
        if config.cooldown_seconds > 0:
            rule_ctx = replace(ctx, label="cooldown_seconds")
            operators.append(cooldown(rule_ctx, seconds=config.cooldown_seconds, per_key=True))
        self._keepers = ctx.keepers  # filled as the pipeline is built or subscribed (below)
        self._operators = bool(operators)
        self.summary = [step.summary for step in plan.steps]
        self._disposed = False
        self._subscription: abc.DisposableBase | None = None
        #: what an event that passed `where` is handed to: the first step (or the fire, without steps);
        #: for a time-driven rule, the first step after those its ``on_next`` runs inline (below)
        self.push: Callable[[Event], None]
        #: run by a time-driven rule's ``on_next`` itself: a leading ``where`` step's (label, predicate)
        #: and the event-time gate after it (without allowed lateness), instead of their own frames
        self._test: tuple[str, Callable[[Event], Any]] | None = None
        self._gate: EventClock | None = None
        if all(isinstance(op, StepOperator) for op in operators):
            # Steps chained directly, each step's on_next calling the next one's: no Subject (lock,
            # observer list copy) and no observer frame per step. Built last to first, as
            # subscribing builds them. A disposed rule drops what still reaches its end.
            emit: Callable[[Event], None] = self._on_fire if not operators else self._fire_unless_disposed
            chain = [op for op in operators if isinstance(op, StepOperator)]
            if self.clock is not None and chain and chain[0].test is not None:
                self._test = chain.pop(0).test
            if self.clock is not None and chain and chain[0].gate is not None:
                self._gate = chain.pop(0).gate
            for op in reversed(chain):
                emit = op.build(emit)
            self.push = emit
        else:  # a step kind whose operator is a reactivex pipeline of its own
            subject: Subject[Event] = Subject()
            self.subject = subject
            self._subscription = subject.pipe(*operators).subscribe(
                on_next=self._on_fire, on_error=self._on_error, scheduler=scheduler
            )
            self.push = subject.on_next
        # The `where` filter runs before the steps: most events do not match, and a step hop
        # would cost more than the test itself.
        self._head = [self.push]  # dispose() swaps in a no-op: a disposed rule's steps see nothing
        self.on_next: Callable[[Event], None] = self._entry(scheduler is None)

    def _entry(self, replay: bool) -> Callable[[Event], None]:
        """The rule's ``on_next``: kind, time, ``where`` (counted as seen / matched), then the steps
        (:attr:`push`, through the cell :meth:`dispose` empties) or, without steps, the fire."""
        kinds = self._kinds
        crashed = self._crashed
        failed = self._step_failed
        stats = self.stats
        where = self._where
        # a rule without steps or cooldown has an empty pipeline: it fires directly (most rules
        # are `where` + `then`), also once disposed
        head = self._head if self._operators else [self._on_fire]
        # every event moves time first: the rule's clock (firing due timers) or, replaying without
        # one, the newest event time that now() reports
        clock = self.clock
        observe = clock.observe if clock is not None else self._note_time if replay else None
        if self._test is not None or self._gate is not None:
            return self._entry_inline(head)
        if observe is not None:

            def on_next_timed(event: Event) -> None:
                if event.kind not in kinds:
                    return
                try:
                    observe(event.ts)
                    stats.own_seen += 1
                    if where is not None:
                        try:
                            ok = where(event)
                        except Exception as exc:
                            failed("where", exc, event)
                            return
                        if not ok:
                            return
                    stats.matched += 1
                    head[0](event)
                except Exception as exc:
                    crashed(exc, event)

            return on_next_timed

        def on_next(event: Event) -> None:
            if event.kind not in kinds:
                return
            try:
                stats.own_seen += 1
                if where is not None:
                    try:
                        ok = where(event)
                    except Exception as exc:
                        failed("where", exc, event)
                        return
                    if not ok:
                        return
                stats.matched += 1
                head[0](event)
            except Exception as exc:
                crashed(exc, event)

        return on_next

    def _entry_inline(self, head: list[Callable[[Event], None]]) -> Callable[[Event], None]:
        """The ``on_next`` of a time-driven rule whose first steps are a ``where`` step and/or the
        event-time gate: theirs run here, as their own ``on_next`` would (see :attr:`_test`). Once
        the rule is disposed (``head[0]`` is :func:`_drop`) they count nothing, as the steps would
        see nothing; the test itself is an expression, which changes nothing."""
        kinds = self._kinds
        crashed = self._crashed
        failed = self._step_failed
        stats = self.stats
        where = self._where
        assert self.clock is not None
        observe = self.clock.observe
        label, test = self._test or ("", None)
        gate = self._gate

        def on_next_inline(event: Event) -> None:
            if event.kind not in kinds:
                return
            try:
                observe(event.ts)
                stats.own_seen += 1
                if where is not None:
                    try:
                        ok = where(event)
                    except Exception as exc:
                        failed("where", exc, event)
                        return
                    if not ok:
                        return
                stats.matched += 1
                if test is not None:
                    try:
                        ok = test(event)
                    except Exception as exc:
                        if head[0] is not _drop:
                            failed(label, exc, event)
                        return
                    if not ok:
                        return
                if gate is not None and not event.ts >= gate.watermark:  # NaN is late, as in the gate
                    if head[0] is not _drop:
                        stats.late += 1
                    return
                head[0](event)
            except Exception as exc:
                crashed(exc, event)

        return on_next_inline

    def _note_time(self, ts: float) -> None:
        if ts > self._latest_ts:
            self._latest_ts = ts

    def _event_time(self) -> float:
        """``now()`` without a scheduler: how far the rule has got in event time."""
        clock = self.clock
        return clock.now if clock is not None else self._latest_ts

    def _step_failed(self, label: str, exc: BaseException, item: Event) -> None:
        self.stats.errors += 1
        self._error_log.hit(
            rule=self.name,
            step=label,
            error=f"{type(exc).__name__}: {exc}",
            source=item.source,
            key=repr(item.key)[:100],
            data=repr(item.data)[:200],
        )

    def _timer_failed(self, exc: BaseException) -> None:
        self.stats.errors += 1
        self._error_log.hit(rule=self.name, step="timer", error=f"{type(exc).__name__}: {exc}")

    def _crashed(self, exc: BaseException, event: Event) -> None:
        """A bug below the steps' own guards (e.g. a key no dict can hold): count it, log it rate-limited
        with a sample and where it was raised, keep the rule (and the dispatcher) running."""
        self.stats.errors += 1
        self._crash_log.hit(
            rule=self.name,
            error=f"{type(exc).__name__}: {exc}",
            at=_raised_at(exc),
            source=event.source,
            key=repr(event.key)[:100],
            data=repr(event.data)[:200],
        )

    def _fire_traced(self, event: Event) -> None:
        """Fire under the rule's span: its calls are its children, it ends once they are submitted."""
        assert self._tracer is not None
        try:
            span = self._tracer.fired(self.name, event)
        except Exception as exc:  # a tracer's bug must not stop the rule from acting
            self._submit_log.hit(rule=self.name, error=f"tracing: {type(exc).__name__}: {exc}")
            self._fire(event)
            return
        submitted, rejected = self.stats.submitted, self.stats.rejected
        try:
            self._fire(event, span)
        finally:
            stats = self.stats
            span.set({"reflexd.calls_submitted": stats.submitted - submitted})
            span.end("a call was rejected" if stats.rejected > rejected else None)

    def _fire(self, event: Event, span: Span | None = None) -> None:
        stats = self.stats
        stats.fired += 1
        self.last_fire = (time.time(), event)
        ref: str | None = None
        for index, (tool, render) in enumerate(self._calls):
            try:
                args = render(event)
            except Exception as exc:
                self._render_failed(index, tool, event, exc)
                continue
            if ref is None:
                ref = event_ref(event)
            ctx = CallContext(tool, self.name, event, f"{self.name}:{ref}:{index}")
            if span is not None:
                ctx = ctx._replace(trace=span)
            try:
                accepted = self._submit(tool, args, ctx)
            except Exception as exc:
                self._submit_failed(tool, exc)
                accepted = False
            if accepted:
                stats.submitted += 1
            else:
                stats.rejected += 1

    def _submit_failed(self, tool: str, exc: Exception) -> None:
        """The runner raised while taking a call: log it (rate-limited), with where it was raised."""
        self._submit_log.hit(
            rule=self.name, tool=tool, error=f"{type(exc).__name__}: {exc}", at=_raised_at(exc)
        )

    def _render_failed(self, index: int, tool: str, event: Event, exc: Exception) -> None:
        """Count a call whose arguments did not render; name the argument (in the log, and the first
        sample in :attr:`first_render_error`)."""
        self.stats.render_errors += 1
        argument = self._failing_argument(index, event)
        error = f"{type(exc).__name__}: {exc}"
        self._render_log.hit(rule=self.name, tool=tool, argument=argument, error=error)
        if self.first_render_error is None:
            sample = f"rule {self.name}, argument {argument}: {type(exc).__name__} {exc}"
            self.first_render_error = (event.ts, sample)

    def _failing_argument(self, index: int, event: Event) -> str:
        """Which argument of call ``index`` raises on ``event`` (``text``, ``order.qty``): each template
        rendered alone, on the error path only."""
        leaves = self._arg_leaves.get(index)
        if leaves is None:
            leaves = self._arg_leaves[index] = []
            pending: list[tuple[str, Any]] = [("", self.config.then[index].args)]
            while pending:
                path, value = pending.pop(0)
                if isinstance(value, dict):
                    pending.extend((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
                elif isinstance(value, list):
                    pending.extend((f"{path}.{i}", v) for i, v in enumerate(value))
                else:
                    leaves.append((path, compile_template(value, self._names, now=self._now)))
        for path, render in leaves:
            try:
                render(event)
            except Exception:
                return path or "(all)"
        return "(all)"

    def _on_error(self, exc: Exception) -> None:  # pragma: no cover - every step catches its own errors
        log.error("rule pipeline failed", exc_info=exc, extra={"fields": {"rule": self.name}})

    def tick(self, now: float) -> None:
        """A replay reached event time ``now`` (in any source): fire the timers due by then.

        Live, the scheduler's clock plays this part during silences.
        """
        if self.clock is not None:
            self.clock.tick(now)

    def finish(self, until: float | None = None) -> None:
        """End of a finite input (a replay): fire the timers due by the newest event time (or by
        ``until``, the last event time of the whole input)."""
        if self.clock is not None:
            self.clock.finish(until)

    @functools.cached_property
    def fingerprint(self) -> str:
        """What this rule's state depends on, hashed (:func:`streams.rules.checkpoint.fingerprint`)."""
        return fingerprint(self.config)

    def snapshot(self) -> RuleSnapshot:
        """The rule's state now: its steps' per-key state and its clock's position. It shares the
        steps' objects: serialise it (:meth:`RuleSnapshot.dumps`) before the rule sees another
        event, or take it from a rule that will see none (a reload restarting the rule)."""
        clock = self.clock.snapshot() if self.clock is not None else None
        steps = {label: keeper.snapshot() for label, keeper in self._keepers.items()}
        return RuleSnapshot(self.fingerprint, clock, steps, list(self._unkept))

    def restore(self, snapshot: RuleSnapshot) -> bool:
        """Take up the state of ``snapshot`` (before the rule sees an event); False, changing nothing,
        when it was taken from a rule defined differently (another fingerprint)."""
        if snapshot.fingerprint != self.fingerprint:
            return False
        if self.clock is not None and snapshot.clock is not None:
            self.clock.restore(snapshot.clock)  # first: the steps' timers are set against it
        for label, state in snapshot.steps.items():
            keeper = self._keepers.get(label)
            if keeper is not None:
                keeper.restore(state)
        return True

    def _fire_unless_disposed(self, event: Event) -> None:
        if not self._disposed:
            self._on_fire(event)

    def dispose(self) -> None:
        self._disposed = True
        if self._operators:
            self._head[0] = _drop
        if self._subscription is not None:
            self._subscription.dispose()
        if self.clock is not None:
            self.clock.dispose()


class Dispatcher:
    """Feeds one source's queue to the rules that read it, in batches, with backpressure."""

    def __init__(
        self,
        source: Source,
        rules: Sequence[Rule],
        runner: ToolSink,
        batch_size: int = 512,
        *,
        seen: Callable[[Event], None] | None = None,
    ) -> None:
        self.source = source
        self.rules = list(rules)
        #: the rules' entry points; replaced as a whole (never mutated) by :meth:`set_rules`
        self.targets: list[Callable[[Event], None]] = shared.targets(self.rules)
        self.runner = runner
        self.batch_size = batch_size
        #: called with the last event of each batch (the MCP feed's latest event per source), if set
        self.seen = seen
        self.dispatched = 0
        self.skipped = 0  # records of partitions revoked before they were dispatched

    def set_rules(self, rules: Sequence[Rule]) -> None:
        """The rules that read this source from the next event on (a reload). The loop only awaits
        between events, so a batch is never split between two sets of rules mid-event."""
        self.rules = list(rules)
        self.targets = shared.targets(self.rules)

    async def run(self) -> None:
        """Until the source's queue is closed and drained."""
        if self.source.acknowledges:
            await self._run_acknowledged()
            return
        queue = self.source.queue
        size = self.batch_size
        while batch := await queue.get_batch(size):
            await self._deliver(batch)
            await self._dispatched(batch)

    async def _deliver(self, batch: list[Event]) -> None:
        """Each event of ``batch`` to every rule. While it waits for room in the runner, a reload may
        replace :attr:`targets`: the rest of the batch goes to the new rules."""
        runner = self.runner
        events = iter(batch)
        targets = self.targets
        while True:
            if len(targets) == 1:  # the common case, without the inner loop
                target = targets[0]
                for event in events:
                    target(event)
                    if runner.full:
                        await runner.wait_for_room()
                        if self.targets is not targets:
                            break
                else:
                    return
            else:
                for event in events:
                    for target in targets:
                        target(event)
                    if runner.full:
                        await runner.wait_for_room()
                        if self.targets is not targets:
                            break
                else:
                    return
            targets = self.targets

    async def _run_acknowledged(self) -> None:
        """The same loop for records promised at-least-once: each carries an Ack (``event.ack``).

        Records of a partition this consumer no longer owns are skipped (the new owner reads them
        again); every other record is released after the rules saw it, so it finishes once its
        tool calls have too.
        """
        queue = self.source.queue
        runner = self.runner
        size = self.batch_size
        while batch := await queue.get_batch(size):
            targets = self.targets  # read again after each wait: a reload replaces it only then
            for event in batch:
                ack = event.ack
                if ack is not None and ack.tracker.revoked:
                    ack.tracker.forget({ack.offset})  # the partition's next owner reads it again
                    self.skipped += 1
                    continue
                for target in targets:
                    target(event)
                if ack is not None:
                    ack.release()
                if runner.full:
                    await runner.wait_for_room()
                    targets = self.targets
            await self._dispatched(batch)

    async def _dispatched(self, batch: list[Event]) -> None:
        """After a batch: count it and, unless the runner is full, give the other tasks a turn (a
        long backlog must not starve the sources and the tools)."""
        self.dispatched += len(batch)
        if self.seen is not None:
            self.seen(batch[-1])
        if not self.runner.full:
            await asyncio.sleep(0)
