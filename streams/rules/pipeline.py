"""Rules: reactivex pipelines from source queues to the tool runner.

::

    source queue ──► Dispatcher (one task per source, batches) ──► Rule.on_next: kind + where
        (errors counted) ──► Subject ──► cooldown per key ──► fire: render args ──► runner.submit

The dispatcher calls ``on_next`` from a task on the event loop (no ``observe_on``: it costs a
loop callback per event). Pipelines are subscribed with the AsyncIOScheduler so that time
operators run on the loop, never on timer threads. A ``where`` that raises drops that event
and is counted per rule; the rule keeps running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from reactivex import Observable, abc
from reactivex.subject import Subject

from daemon.logs import RateLimitedLog, get_logger
from handlers.base import CallContext
from handlers.runner import ToolRunner
from streams.base import Source
from streams.event import Event
from streams.rules.expressions import compile_expression, compile_template
from streams.rules.operators import cooldown_by_key

__all__ = ["Dispatcher", "Rule", "RuleConfig", "RuleStats", "ToolCallConfig"]

log = get_logger("rule")

Submit = Callable[[str, dict[str, Any], CallContext], bool]


EventKind = Literal["data", "gap"]


def _data_only() -> list[EventKind]:
    return ["data"]


class ToolCallConfig(BaseModel):
    """One entry of a rule's ``then``."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    tool: str = Field(description="Name of a tool under `tools:`.")
    args: dict[str, Any] = Field(
        default_factory=dict, description="Arguments; strings may hold `{expression}` placeholders."
    )


class RuleConfig(BaseModel):
    """A reactive rule: which sources it reads, when it matches, what it fires."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True, populate_by_name=True)

    from_: list[str] = Field(alias="from", min_length=1, description="Source names the rule reads.")
    where: str | None = Field(None, description="Expression; the rule matches when it is true.")
    cooldown_seconds: float = Field(0.0, ge=0, description="After firing for a key, stay quiet this long.")
    kinds: list[EventKind] = Field(
        default_factory=_data_only, min_length=1, description="Event kinds the rule sees: data, gap."
    )
    max_keys: int = Field(100_000, ge=1, description="Most keys whose state the rule keeps.")
    then: list[ToolCallConfig] = Field(min_length=1, description="Tool calls made when the rule fires.")

    @field_validator("from_", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class RuleStats:
    """Counters of one rule, read at scrape time."""

    __slots__ = ("errors", "fired", "matched", "rejected", "render_errors", "seen", "submitted", "suppressed")

    def __init__(self) -> None:
        self.seen = 0  # events of the kinds the rule reads
        self.matched = 0  # `where` was true
        self.errors = 0  # `where` raised: event dropped
        self.suppressed = 0  # matched but inside the cooldown
        self.fired = 0  # made it through every step
        self.render_errors = 0  # an argument template raised: that call skipped
        self.submitted = 0  # tool calls handed to the runner
        self.rejected = 0  # tool calls the runner refused (backlog over its bound)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


def _event_ref(event: Event) -> str:
    meta = event.meta
    for field in ("offset", "seq", "line"):
        if field in meta:
            return f"{event.source}:{field}={meta[field]}:lap={meta.get('lap', 0)}:ts={event.ts!r}"
    return f"{event.source}:ts={event.ts!r}"


class Rule:
    """One configured rule, built on a reactivex Subject."""

    def __init__(
        self,
        name: str,
        config: RuleConfig,
        submit: Submit,
        scheduler: abc.SchedulerBase | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.stats = RuleStats()
        self._submit = submit
        self._kinds = frozenset(config.kinds)
        self._where = compile_expression(config.where) if config.where else None
        self._calls = [(call.tool, compile_template(call.args)) for call in config.then]
        self._error_log = RateLimitedLog(log, "rule expression raised; event dropped", interval=10.0)
        self._render_log = RateLimitedLog(log, "argument template raised; call skipped", interval=10.0)
        self.subject: Subject[Event] = Subject()
        steps: list[Callable[[Observable[Event]], Observable[Event]]] = []
        if config.cooldown_seconds > 0:
            steps.append(
                cooldown_by_key(
                    config.cooldown_seconds, max_keys=config.max_keys, on_suppressed=self._suppressed
                )
            )
        self._subscription = self.subject.pipe(*steps).subscribe(
            on_next=self._fire, on_error=self._on_error, scheduler=scheduler
        )
        # The `where` filter runs before the Subject: most events do not match, and a Subject
        # hop (lock, observer list copy, several frames) would cost more than the test itself.
        match = self._match
        push = self.subject.on_next

        def on_next(event: Event) -> None:
            if match(event):
                push(event)

        self.on_next: Callable[[Event], None] = on_next

    def _match(self, event: Event) -> bool:
        if event.kind not in self._kinds:
            return False
        stats = self.stats
        stats.seen += 1
        where = self._where
        if where is None:
            stats.matched += 1
            return True
        try:
            ok = where(event)
        except Exception as exc:
            stats.errors += 1
            self._error_log.hit(
                rule=self.name,
                error=f"{type(exc).__name__}: {exc}",
                source=event.source,
                data=repr(event.data)[:200],
            )
            return False
        if ok:
            stats.matched += 1
            return True
        return False

    def _suppressed(self, event: Event) -> None:
        self.stats.suppressed += 1

    def _fire(self, event: Event) -> None:
        stats = self.stats
        stats.fired += 1
        ref: str | None = None
        for index, (tool, render) in enumerate(self._calls):
            try:
                args = render(event)
            except Exception as exc:
                stats.render_errors += 1
                self._render_log.hit(rule=self.name, tool=tool, error=f"{type(exc).__name__}: {exc}")
                continue
            if ref is None:
                ref = _event_ref(event)
            ctx = CallContext(tool, self.name, event, f"{self.name}:{ref}:{index}")
            try:
                accepted = self._submit(tool, args, ctx)
            except Exception:
                log.exception(
                    "submitting a tool call failed", extra={"fields": {"rule": self.name, "tool": tool}}
                )
                accepted = False
            if accepted:
                stats.submitted += 1
            else:
                stats.rejected += 1

    def _on_error(self, exc: Exception) -> None:  # pragma: no cover - every step catches its own errors
        log.error("rule pipeline failed", exc_info=exc, extra={"fields": {"rule": self.name}})

    def dispose(self) -> None:
        self._subscription.dispose()


class Dispatcher:
    """Feeds one source's queue to the rules that read it, in batches, with backpressure."""

    def __init__(
        self, source: Source, rules: Sequence[Rule], runner: ToolRunner, batch_size: int = 512
    ) -> None:
        self.source = source
        self.rules = list(rules)
        self.runner = runner
        self.batch_size = batch_size
        self.dispatched = 0
        self.skipped = 0  # records of partitions revoked before they were dispatched

    async def run(self) -> None:
        """Until the source's queue is closed and drained."""
        if self.source.acknowledges:
            await self._run_acknowledged()
            return
        queue = self.source.queue
        runner = self.runner
        targets = [rule.on_next for rule in self.rules]
        size = self.batch_size
        while True:
            batch = await queue.get_batch(size)
            if not batch:
                return
            if len(targets) == 1:
                target = targets[0]
                for event in batch:
                    target(event)
                    if runner.full:
                        await runner.wait_for_room()
            else:
                for event in batch:
                    for target in targets:
                        target(event)
                    if runner.full:
                        await runner.wait_for_room()
            self.dispatched += len(batch)
            if not runner.full:
                await asyncio.sleep(0)  # a long backlog must not starve the sources and the tools

    async def _run_acknowledged(self) -> None:
        """The same loop for records promised at-least-once: each carries an Ack in meta.

        Records of a partition this consumer no longer owns are skipped (the new owner reads them
        again); every other record is released after the rules saw it, so it finishes once its
        tool calls have too.
        """
        queue = self.source.queue
        runner = self.runner
        targets = [rule.on_next for rule in self.rules]
        size = self.batch_size
        while True:
            batch = await queue.get_batch(size)
            if not batch:
                return
            for event in batch:
                ack = event.meta.get("ack")
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
            self.dispatched += len(batch)
            if not runner.full:
                await asyncio.sleep(0)
