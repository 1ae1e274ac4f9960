"""Recordings, and running rules over them offline (``reflexd record`` / ``reflexd replay``).

Recording format
    JSON Lines, one event per line, exactly what the source put in its queue::

        {"source":"btc","ts":1768485600.139,"received_at":1768485600.2,"key":"BTCUSDT",
         "kind":"data","meta":{"seq":1},"data":{"e":"trade","p":"65000.10",...}}

    ``ts`` is the event time in seconds, ``received_at`` the wall clock when reflexd got it;
    reconnect ``gap`` events are recorded too. Files from several sources can be replayed
    together; they are merged by event time.
Raw files
    ``SOURCE=FILE`` replays a file of raw messages (one JSON value per line, as a ``replay``
    source reads) decoded as ``SOURCE`` decodes them: its ``key_field``, ``time_field`` and
    ``time_unit``. A plain ``FILE`` that is the ``path`` of a configured ``replay`` source is
    read that way too.
Bad input
    A line that is not JSON, not a recording line, or whose key is a list or an object is
    counted and skipped. An event more than its source's ``max_future_seconds`` ahead of the
    file's own progress (:class:`~streams.decode.ProgressBound`: the newest event time so far) is
    counted as ``future`` and skipped, as the live source would have dropped it against the wall
    clock (``gap`` events carry reflexd's own clock and are not judged): one time in the wrong
    unit cannot move the rules' clocks years ahead. The bound is per file and per source, so a
    replay gives the same output every time it is run.
Replay
    Every rule reads the events of its sources in event-time order, without a scheduler: only
    event times move the rules' clocks, so the output depends on nothing but the input (run it
    twice, get the same bytes). The newest event time of the whole replay plays the part the
    wall clock plays live: it moves every rule's clock, so a rule notices that its own sources
    went silent while others went on, and lines come out in the order a live daemon would have
    fired them. At the end each rule fires what is due by the last event time of the input.
    Tools are never built or called: each call a rule makes is reported, with the event time of
    the item that fired it, and the rule name, tool name and rendered arguments. A tool that
    escalates to a language model (``llm``) is no exception: its call is reported with the prompt
    it would send, no model is called, and the rules reading its answers (``from: [the tool]``,
    which is not a source) see no events in a replay.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NamedTuple

import orjson

from streams.call import CallContext
from streams.decode import (
    MAX_FUTURE_SECONDS,
    BadKey,
    BadTime,
    NotJson,
    ProgressBound,
    TimeUnit,
    key_problem,
    make_decoder,
)
from streams.event import DATA, GAP, Event
from streams.expressions import Compiled
from streams.reconnect import Reconnector
from streams.rules import shared
from streams.rules.pipeline import Rule, RuleConfig

__all__ = [
    "Fired",
    "FiredFormat",
    "Pacer",
    "RecordResult",
    "ReplayInput",
    "ReplayResult",
    "decode_record",
    "encode_event",
    "format_fired",
    "format_time",
    "is_record",
    "merge_by_time",
    "read_input",
    "record_source",
    "replay_rules",
]


# -- the recording format -------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return str(value)


def encode_event(event: Event) -> bytes:
    """One recording line (with its newline). The delivery acknowledgement (``event.ack``) is left out."""
    record = {
        "source": event.source,
        "ts": event.ts,
        "received_at": event.received_at,
        "key": event.key,
        "kind": event.kind,
        "meta": event.meta,
        "data": event.data,
    }
    return orjson.dumps(record, default=_jsonable, option=orjson.OPT_NON_STR_KEYS) + b"\n"


def is_record(value: Any) -> bool:
    """True if ``value`` (a decoded line) looks like a recording line."""
    return isinstance(value, dict) and "source" in value and "ts" in value and "data" in value


def decode_record(value: Any) -> Event:
    """An event from a decoded recording line; raises ValueError if it is not one."""
    if not is_record(value):
        raise ValueError("not a recording line (needs source, ts and data)")
    ts = value["ts"]
    if type(ts) is not float and type(ts) is not int:
        raise ValueError(f"ts must be a number, not {type(ts).__name__}")
    source = value["source"]
    if not isinstance(source, str):
        raise ValueError("source must be a string")
    kind = value.get("kind", DATA)
    if kind not in (DATA, GAP):
        raise ValueError(f"kind must be data or gap, not {kind!r}")
    received = value.get("received_at", ts)
    meta = value.get("meta")
    key = value.get("key")
    problem = key_problem(key)
    if problem is not None:
        raise ValueError(problem)
    return Event(
        source,
        float(ts),
        float(received) if isinstance(received, int | float) else float(ts),
        key,
        value["data"],
        meta if isinstance(meta, dict) else {},
        kind,
    )


# -- inputs ---------------------------------------------------------------------------------------


@dataclass
class ReplayInput:
    """One file to replay: a recording (``source`` None) or raw messages decoded as ``source``."""

    path: Path
    source: str | None = None
    key_field: str | None = None
    time_field: str | None = None
    time_unit: TimeUnit = "ms"
    #: ``max_future_seconds`` per source name (a source not listed gets the default; None: no bound)
    max_future: Mapping[str, float | None] = field(default_factory=dict)
    #: the source's ``where:`` filter (raw files only: a recording holds what passed it)
    where: Compiled | None = None
    events: int = 0
    filtered: int = 0  # raw messages the source's `where:` refused
    bad_lines: int = 0
    first_error: str | None = None
    future: int = 0  # events dropped: time beyond max_future_seconds of the file's progress
    first_future: str | None = None

    def bad(self, lineno: int, reason: str) -> None:
        self.bad_lines += 1
        if self.first_error is None:
            self.first_error = f"{self.path}:{lineno}: {reason}"

    def bound(self, source: str) -> ProgressBound:
        """A fresh event-time bound for ``source``'s events in this file."""
        return ProgressBound(self.max_future.get(source, MAX_FUTURE_SECONDS))

    def ahead(self, lineno: int, ts: float, newest: float) -> None:
        self.future += 1
        if self.first_future is None:
            self.first_future = (
                f"{self.path}:{lineno}: {format_time(ts)}, {ts - newest:.0f} s after {format_time(newest)}"
            )


def read_input(item: ReplayInput) -> Iterator[Event]:
    """The events of one file, in file order (a bad line is counted and skipped)."""
    loads = orjson.loads
    source = item.source
    bounds: dict[str, ProgressBound] = {}
    if source is not None:
        bounds[source] = item.bound(source)
    decode = make_decoder(source or "", item.key_field, item.time_field, item.time_unit)  # raw files
    no_time = f"no number in time field {item.time_field!r}"
    keep = item.where if source is not None else None
    with item.path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if source is None:  # a recording
                try:
                    value = loads(line)
                except orjson.JSONDecodeError as exc:
                    item.bad(lineno, f"not JSON ({exc})")
                    continue
                try:
                    event = decode_record(value)
                except (ValueError, TypeError) as exc:
                    item.bad(lineno, str(exc))
                    continue
            else:  # raw messages, decoded as their source decodes them
                try:
                    key, seconds, value = decode(line)
                except NotJson as exc:
                    item.bad(lineno, exc.reason)
                    continue
                except BadKey as exc:  # a missing time is named first, as it was
                    item.bad(lineno, exc.reason if exc.time is not None else no_time)
                    continue
                except BadTime as exc:
                    item.bad(lineno, exc.reason)
                    continue
                if keep is not None:  # before the time check: a control frame has no time
                    event = Event(source, seconds or 0.0, seconds or 0.0, key, value, {"line": lineno})
                    try:
                        passed = bool(keep(event))
                    except Exception:  # a missing field refuses, as live
                        passed = False
                    if not passed:
                        item.filtered += 1
                        continue
                if seconds is None:
                    item.bad(lineno, no_time)
                    continue
                event = Event(source, seconds, seconds, key, value, {"line": lineno})
            if event.kind == DATA:  # a gap's time is reflexd's own wall clock, never a peer's field
                bound = bounds.get(event.source)
                if bound is None:
                    bound = bounds[event.source] = item.bound(event.source)
                if not bound.admit(event.ts):
                    item.ahead(lineno, event.ts, bound.newest)
                    continue
            item.events += 1
            yield event


def merge_by_time(streams: Iterable[Iterator[Event]]) -> Iterator[Event]:
    """Merge per-file event streams by event time; ties keep file order, then line order."""
    return heapq.merge(*streams, key=lambda e: e.ts)


# -- replay ---------------------------------------------------------------------------------------


class Fired(NamedTuple):
    """One tool call a rule would have made."""

    ts: float
    rule: str
    tool: str
    args: dict[str, Any]


@dataclass
class ReplayResult:
    events: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # events of sources not in the configuration
    fired: int = 0
    rules: dict[str, Rule] = field(default_factory=dict)


def replay_rules(
    rules: Mapping[str, RuleConfig],
    sources: Iterable[str],
    events: Iterable[Event],
    report: Callable[[Fired], None],
    *,
    pace: Callable[[Event], None] | None = None,
) -> ReplayResult:
    """Run ``rules`` over ``events`` (in the order given) in event time; report every call.

    ``sources`` are the configured source names; events of other sources are counted in
    ``skipped``. ``pace(event)`` is called before each event (to replay at a speed).
    """
    result = ReplayResult()

    def make_submit(rule_name: str) -> Callable[[str, dict[str, Any], CallContext], bool]:
        def submit(tool: str, args: dict[str, Any], ctx: CallContext) -> bool:
            ts = ctx.event.ts if ctx.event is not None else math.nan
            result.fired += 1
            report(Fired(ts, rule_name, tool, args))
            return True

        return submit

    for name, config in rules.items():
        result.rules[name] = Rule(name, config, make_submit(name), None)
    known = set(sources)
    targets: dict[str, list[Callable[[Event], None]]] = {
        src: shared.targets([rule for rule in result.rules.values() if src in rule.config.from_])
        for src in known
    }
    skipped = result.skipped
    timed = [rule.tick for rule in result.rules.values() if rule.clock is not None]
    now = -math.inf
    count = 0
    for event in events:
        if pace is not None:
            pace(event)
        count += 1
        readers = targets.get(event.source)
        if readers is None:
            skipped[event.source] = skipped.get(event.source, 0) + 1
            continue
        if event.ts > now:  # the replay's clock: what the wall clock is to a live daemon
            now = event.ts
            for tick in timed:
                tick(now)
        for on_next in readers:
            on_next(event)
    for rule in result.rules.values():
        rule.finish(now if now > -math.inf else None)
    result.events = count
    return result


def format_time(ts: float) -> str:
    """``2026-01-15T14:00:01.748Z`` (UTC, milliseconds); a time that is not one is printed as is."""
    try:
        when = datetime.fromtimestamp(ts, UTC)
    except (ValueError, OverflowError, OSError):
        return repr(ts)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=_jsonable, option=orjson.OPT_NON_STR_KEYS).decode()


class FiredFormat:
    """:func:`format_fired` for a stream of calls, as ``reflexd replay`` prints them: the time text and
    the arguments' JSON are kept from the previous call when it had the same event time and the same
    arguments object (the rules of a shared group that fired on one event share their rendered
    arguments), so 1,000 rules firing on one event format the time and the arguments once."""

    def __init__(self, fmt: str = "text") -> None:
        self.jsonl = fmt == "jsonl"
        self._ts: float | None = None
        self._time = ""
        self._args: Any = None
        self._args_json = ""

    def __call__(self, fired: Fired) -> str:
        ts, args = fired.ts, fired.args
        if ts != self._ts or self._ts is None:
            self._ts, self._time = ts, format_time(ts)
        if args is not self._args or self._args is None:
            self._args, self._args_json = args, _dumps(args)
        if self.jsonl:  # orjson's compact output of the record {ts, time, rule, tool, args}, spliced
            return (
                f'{{"ts":{_dumps(ts)},"time":{_dumps(self._time)},"rule":{_dumps(fired.rule)},'
                f'"tool":{_dumps(fired.tool)},"args":{self._args_json}}}'
            )
        return f"{self._time}  {fired.rule}  {fired.tool}  {self._args_json}"


def format_fired(fired: Fired, fmt: str = "text") -> str:
    """One output line (no newline): ``TIME  RULE  TOOL  ARGS-JSON``, or a JSON object for ``jsonl``."""
    if fmt == "jsonl":
        record = {"ts": fired.ts, "time": format_time(fired.ts), "rule": fired.rule, "tool": fired.tool}
        record["args"] = fired.args
        return _dumps(record)
    return f"{format_time(fired.ts)}  {fired.rule}  {fired.tool}  {_dumps(fired.args)}"


class Pacer:
    """Sleeps so that events come at their event-time spacing divided by ``speed``."""

    def __init__(self, speed: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.speed = speed
        self.sleep = sleep
        self._origin: tuple[float, float] | None = None

    def __call__(self, event: Event) -> None:
        now = time.monotonic()
        if self._origin is None:
            self._origin = (event.ts, now)
            return
        ts0, wall0 = self._origin
        delay = wall0 + (event.ts - ts0) / self.speed - now
        if delay > 0.001:
            self.sleep(delay)


# -- recording ------------------------------------------------------------------------------------


@dataclass
class RecordResult:
    events: int = 0
    gaps: int = 0
    state: str = ""  # the source's final state
    error: str | None = None


async def record_source(
    source: Any,
    out: IO[bytes],
    *,
    duration: float | None = None,
    stop: asyncio.Event | None = None,
    flush_every: int = 256,
) -> RecordResult:
    """Run ``source`` (a :class:`streams.base.Source`) under the engine's reconnect loop and write
    every event it queues to ``out``, until ``duration`` seconds passed, ``stop`` is set, or the
    source ends (a finite replay) or fails. Nothing queued is lost: the queue is drained last."""
    result = RecordResult()
    queue = source.queue

    async def write() -> None:
        pending = 0
        while True:
            batch = await queue.get_batch(512)
            if not batch:
                break
            for event in batch:
                out.write(encode_event(event))
                result.events += 1
                if event.kind == GAP:
                    result.gaps += 1
                pending += 1
            if pending >= flush_every:
                out.flush()
                pending = 0
            for event in batch:  # written: the record may be committed (Kafka)
                if event.ack is not None:
                    event.ack.release()
        out.flush()

    reconnector = Reconnector(source, source.config.reconnect)
    running = asyncio.create_task(reconnector.run(), name=f"reflexd:record:{source.name}")
    writer = asyncio.create_task(write(), name="reflexd:record:writer")
    waits: set[asyncio.Future[Any]] = {running}
    stopper = asyncio.create_task(stop.wait()) if stop is not None else None
    if stopper is not None:
        waits.add(stopper)
    try:
        await asyncio.wait(waits, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if stopper is not None:
            stopper.cancel()
        if not running.done():
            running.cancel()
        try:
            await running
        except asyncio.CancelledError:
            pass
        queue.close()
        await writer
    result.state = source.stats.state
    result.error = source.stats.last_error if source.stats.state == "failed" else None
    return result
