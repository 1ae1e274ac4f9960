"""reactivex operators of the rule layer that the library does not have.

Each operator is a function ``Observable[Event] -> Observable[Event]`` built with
``Observable(subscribe)``; its state is created per subscription. State that depends on the
event key is kept per key in an ``OrderedDict`` bounded by ``max_keys`` (the least recently
updated key is forgotten first, counted as ``evicted``), because ``group_by`` groups never
complete on an endless stream.

Time is event time (``Event.ts``). Operators that need timers (a tumbling window closing,
``debounce``, ``sample``, ``sequence`` timeouts, ``absence``) schedule them on the rule's
:class:`~streams.rules.clock.EventClock`, which fires them when the watermark passes — driven
by events, and, live, by a tick on the rule's reactivex scheduler during silence.

Nothing here lets an exception escape into reactivex (which would send ``on_error`` and
dispose the whole pipeline): user expressions are called inside ``try``, and a failure is
reported to :attr:`StepContext.fail` (counted per rule, logged rate-limited) and drops that
one event.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from reactivex import Observable, abc
from reactivex.disposable import Disposable

from streams.event import Event
from streams.expressions import Compiled
from streams.rules.aggregates import WindowProgram, WindowState
from streams.rules.clock import EventClock
from streams.rules.row import fields_of, make_row
from streams.rules.stats import RuleStats

__all__ = [
    "Operator",
    "StepContext",
    "absence",
    "changed",
    "cooldown",
    "cooldown_by_key",
    "crossing",
    "debounce",
    "distinct",
    "event_time_gate",
    "join_latest",
    "rekey",
    "sample",
    "sequence",
    "set_fields",
    "throttle",
    "where",
    "window",
]

Operator = Callable[[Observable[Event]], Observable[Event]]
Emit = Callable[[Event], None]
OnNext = Callable[[Event], None]

S = TypeVar("S")

_MISSING: Any = object()
_new = tuple.__new__


@dataclass
class StepContext:
    """What a step's operator needs from its rule."""

    stats: RuleStats
    clock: EventClock | None
    max_keys: int
    #: ``fail(step label, exception, item)``: count and log an event a step had to drop.
    fail: Callable[[str, BaseException, Event], None]

    def need_clock(self) -> EventClock:
        if self.clock is None:  # pragma: no cover - the rule creates one when a step needs it
            raise RuntimeError("this step needs the rule's event clock")
        return self.clock


def _operator(build: Callable[[Emit], OnNext]) -> Operator:
    """An operator whose per-subscription ``on_next`` is ``build(emit)``."""

    def operator(source: Observable[Event]) -> Observable[Event]:
        def subscribe(observer: abc.ObserverBase[Event], scheduler: abc.SchedulerBase | None = None) -> Any:
            # `observer` is reactivex's auto-detaching observer: once the subscription is disposed
            # it drops what a late timer would still emit (and the rule's clock forgets its timers).
            subscription = source.subscribe(
                build(observer.on_next), observer.on_error, observer.on_completed, scheduler=scheduler
            )
            return Disposable(subscription.dispose)

        return Observable(subscribe)

    return operator


def _admit(states: OrderedDict[Any, S], key: Any, state: S, bound: int, stats: RuleStats) -> S:
    """Store the state of a key new to ``states`` and return it.

    With ``bound`` keys held already, the least recently updated one is forgotten first (counted
    as ``evicted``). A key already held is refreshed by the caller with ``move_to_end``, inline:
    that is the per-event path; this is the rarer one.
    """
    if len(states) >= bound:
        states.popitem(last=False)
        stats.evicted += 1
    states[key] = state
    return state


def _with_fields(item: Event, extra: dict[str, Any], ts: float | None = None) -> Event:
    fields = dict(fields_of(item))
    fields.update(extra)
    return make_row(item, fields, ts=ts)


def _later(item: Event, ts: float, extra: dict[str, Any] | None = None) -> Event:
    """``item`` emitted by a timer at event time ``ts`` (with ``extra`` fields).

    The item's source record was released long ago; its delivery acknowledgement (``meta["ack"]``,
    Kafka) is left out so the tool calls of a timer's output do not try to hold a finished record:
    what timers emit is derived from in-memory state and is at-most-once.
    """
    fields = dict(fields_of(item))
    if extra:
        fields.update(extra)
    meta = item[5]
    if "ack" in meta:
        meta = {k: v for k, v in meta.items() if k != "ack"}
    return make_row(item, fields, ts=ts, meta=meta)


# ------------------------------------------------------------------------------------------------
# Stateless steps
# ------------------------------------------------------------------------------------------------


def where(predicate: Compiled, ctx: StepContext, label: str) -> Operator:
    """Pass the items for which ``predicate`` is true."""
    fail = ctx.fail

    def build(emit: Emit) -> OnNext:
        def on_next(item: Event) -> None:
            try:
                ok = predicate(item)
            except Exception as exc:
                fail(label, exc, item)
                return
            if ok:
                emit(item)

        return on_next

    return _operator(build)


def set_fields(assignments: tuple[tuple[str, Compiled], ...], ctx: StepContext, label: str) -> Operator:
    """Add computed fields, in order (a later one can use an earlier one)."""
    fail = ctx.fail

    def build(emit: Emit) -> OnNext:
        def on_next(item: Event) -> None:
            fields = dict(fields_of(item))
            row = make_row(item, fields)
            try:
                for name, fn in assignments:
                    fields[name] = fn(row)
            except Exception as exc:
                fail(label, exc, item)
                return
            emit(row)

        return on_next

    return _operator(build)


def rekey(key: Compiled, ctx: StepContext, label: str) -> Operator:
    """Replace the event key (the key every later per-key step groups by)."""
    fail = ctx.fail

    def build(emit: Emit) -> OnNext:
        def on_next(item: Event) -> None:
            try:
                value = key(item)
                hash(value)
            except Exception as exc:
                fail(label, exc, item)
                return
            if len(item) > 7:
                emit(make_row(item, fields_of(item), key=value))
            else:
                emit(_new(Event, (*item[:3], value, *item[4:])))

        return on_next

    return _operator(build)


# ------------------------------------------------------------------------------------------------
# Windows
# ------------------------------------------------------------------------------------------------


def window(
    program: WindowProgram,
    ctx: StepContext,
    label: str,
    *,
    seconds: float | None,
    count: int | None,
    tumbling: bool,
    per_key: bool,
    min_events: int,
    max_events: int,
) -> Operator:
    """Aggregate over a time or count window, sliding (emit per event) or tumbling (emit per window).

    - sliding, time: on each event, the aggregates over the events of its key with
      ``ts - seconds < t <= ts``;
    - sliding, count: on each event, over the last ``count`` events of its key;
    - tumbling, time: windows ``[k*seconds, (k+1)*seconds)`` of event time; each non-empty one
      is emitted once when the watermark reaches its end, with ``ts`` = the end and fields
      ``window_start`` / ``window_end``; empty windows emit nothing;
    - tumbling, count: every ``count`` events of a key, once.

    Emitted rows carry the newest event of the window plus the aggregates (only when the window
    holds at least ``min_events``). A sliding window holds at most ``max_events`` (the oldest
    beyond are dropped, counted as ``overflow``).
    """
    stats = ctx.stats
    fail = ctx.fail
    max_keys = ctx.max_keys
    evaluate = program.evaluate
    add = program.add
    remove_oldest = program.remove_oldest
    results = program.results

    if not tumbling or count is not None:  # no timers: a window moves (or closes) on its own events
        sliding = not tumbling
        length = count if count is not None else 0  # of a count window, in events

        def build_untimed(emit: Emit) -> OnNext:
            states: OrderedDict[Any, WindowState] = OrderedDict()

            def on_next(item: Event) -> None:
                try:
                    values = evaluate(item)
                except Exception as exc:
                    fail(label, exc, item)
                    return
                k = item[3] if per_key else None
                st = states.get(k)
                if st is None:
                    st = _admit(states, k, WindowState(program, sliding), max_keys, stats)
                else:
                    states.move_to_end(k)
                ts = item[1]
                if sliding:
                    entries = st.entries
                    assert entries is not None
                    if seconds is not None:
                        cutoff = ts - seconds
                        while entries and entries[0][0] <= cutoff:
                            remove_oldest(st)
                    else:
                        while st.n >= length:
                            remove_oldest(st)
                    add(st, ts, values)
                    while st.n > max_events:
                        remove_oldest(st)
                        stats.overflow += 1
                else:  # tumbling by count: complete (and forgotten) at its `count`-th event
                    add(st, ts, values)
                    if st.n < length:
                        return
                    del states[k]
                if st.n >= min_events:
                    emit(make_row(item, results(st, dict(fields_of(item)))))

            return on_next

        return _operator(build_untimed)

    assert seconds is not None
    clock = ctx.need_clock()
    size = seconds

    def build_tumbling_time(emit: Emit) -> OnNext:
        states: OrderedDict[Any, WindowState] = OrderedDict()

        def flush(st: WindowState) -> None:
            if st.n >= min_events:
                end = st.start + size
                out = dict(fields_of(st.item))
                out["window_start"] = st.start
                out["window_end"] = end
                emit(_later(st.item, end, results(st, out)))

        def close(arg: tuple[Any, WindowState]) -> None:
            k, st = arg
            if states.get(k) is st:
                del states[k]
                flush(st)

        def on_next(item: Event) -> None:
            try:
                values = evaluate(item)
            except Exception as exc:
                fail(label, exc, item)
                return
            k = item[3] if per_key else None
            ts = item[1]
            start = math.floor(ts / size) * size
            st = states.get(k)
            if st is not None and st.start != start:  # its close timer has not fired (clock skew)
                del states[k]
                flush(st)
                st = None
            if st is None:
                st = _admit(states, k, WindowState(program, False), max_keys, stats)
                st.start = start
                clock.call_at(start + size, close, (k, st))
            else:
                states.move_to_end(k)
            add(st, ts, values)
            st.item = item

        return on_next

    return _operator(build_tumbling_time)


# ------------------------------------------------------------------------------------------------
# Value changes
# ------------------------------------------------------------------------------------------------


def crossing(
    value: Compiled,
    level: Compiled,
    ctx: StepContext,
    label: str,
    *,
    direction: str,
    hysteresis: float,
    hysteresis_pct: float,
    per_key: bool,
) -> Operator:
    """Emit when ``value`` crosses ``level`` (edge-triggered, with a dead band against chattering).

    The value is *above* once ``value > level + band`` and *below* once ``value < level - band``
    (``band = hysteresis + |level| * hysteresis_pct / 100``); in between it keeps its side. A
    crossing is a change of side (never the first side seen); it is emitted for ``up`` (below →
    above), ``down`` (above → below) or ``both``, with fields ``direction`` and ``level``.
    """
    stats = ctx.stats
    fail = ctx.fail
    max_keys = ctx.max_keys
    up = direction in ("up", "both")
    down = direction in ("down", "both")
    pct = hysteresis_pct / 100.0

    def build(emit: Emit) -> OnNext:
        sides: OrderedDict[Any, int] = OrderedDict()

        def on_next(item: Event) -> None:
            try:
                v = value(item)
                lvl = level(item)
                band = hysteresis + abs(lvl) * pct if pct else hysteresis
                if v > lvl + band:
                    side = 1
                elif v < lvl - band:
                    side = -1
                else:
                    return
            except Exception as exc:
                fail(label, exc, item)
                return
            k = item[3] if per_key else None
            old = sides.get(k)
            if old is None:
                _admit(sides, k, side, max_keys, stats)
                return
            sides.move_to_end(k)
            if old == side:
                return
            sides[k] = side
            if (up and side == 1) or (down and side == -1):
                emit(_with_fields(item, {"direction": "up" if side == 1 else "down", "level": lvl}))

        return on_next

    return _operator(build)


def changed(value: Compiled, ctx: StepContext, label: str, *, per_key: bool, emit_first: bool) -> Operator:
    """Emit when ``value`` differs from its previous value (per key); field ``previous``."""
    stats = ctx.stats
    fail = ctx.fail
    max_keys = ctx.max_keys

    def build(emit: Emit) -> OnNext:
        last: OrderedDict[Any, Any] = OrderedDict()

        def on_next(item: Event) -> None:
            try:
                v = value(item)
                k = item[3] if per_key else None
                old = last.get(k, _MISSING)
                same = old is not _MISSING and bool(old == v)
            except Exception as exc:
                fail(label, exc, item)
                return
            if old is _MISSING:
                _admit(last, k, v, max_keys, stats)
                if emit_first:
                    emit(_with_fields(item, {"previous": None}))
                return
            last.move_to_end(k)
            if same:
                return
            last[k] = v
            emit(_with_fields(item, {"previous": old}))

        return on_next

    return _operator(build)


def distinct(
    value: Compiled,
    ctx: StepContext,
    label: str,
    *,
    per_key: bool,
    max_values: int,
    seconds: float | None,
) -> Operator:
    """Emit an item only the first time its ``value`` is seen (in the last ``seconds``, if set).

    Remembers at most ``max_values`` values (the least recently seen is forgotten first, and
    would count as new again).
    """
    stats = ctx.stats
    fail = ctx.fail

    def build(emit: Emit) -> OnNext:
        seen: OrderedDict[Any, float] = OrderedDict()

        def on_next(item: Event) -> None:
            try:
                v = value(item)
                slot = (item[3], v) if per_key else v
                when = seen.get(slot)
            except Exception as exc:  # e.g. an unhashable value
                fail(label, exc, item)
                return
            ts = item[1]
            if when is not None:
                seen.move_to_end(slot)
                seen[slot] = ts
                if seconds is None or ts - when < seconds:
                    return
            else:  # `_admit` inline: a new value is the common case here, not a rare one
                if len(seen) >= max_values:
                    seen.popitem(last=False)
                    stats.evicted += 1
                seen[slot] = ts
            emit(item)

        return on_next

    return _operator(build)


# ------------------------------------------------------------------------------------------------
# Rate limits
# ------------------------------------------------------------------------------------------------


def throttle(ctx: StepContext, *, seconds: float, max_events: int, per_key: bool) -> Operator:
    """Let the first ``max_events`` items of each interval through; the interval starts at the
    first item and lasts ``seconds`` of event time; the rest are counted as ``suppressed``.

    An item older than its key's interval start (time went back: clock skew, a replay
    restarted) starts a new interval instead of being muted until time catches up.
    """
    stats = ctx.stats
    max_keys = ctx.max_keys

    def build(emit: Emit) -> OnNext:
        intervals: OrderedDict[Any, list[Any]] = OrderedDict()

        def on_next(item: Event) -> None:
            k = item[3] if per_key else None
            ts = item[1]
            st = intervals.get(k)
            if st is None:
                st = _admit(intervals, k, [ts, 0], max_keys, stats)
            else:
                intervals.move_to_end(k)
                if not st[0] <= ts < st[0] + seconds:
                    st[0] = ts
                    st[1] = 0
            if st[1] < max_events:
                st[1] += 1
                emit(item)
            else:
                stats.suppressed += 1

        return on_next

    return _operator(build)


def cooldown_by_key(
    seconds: float,
    *,
    max_keys: int = 100_000,
    on_suppressed: Callable[[Event], None] | None = None,
    on_evicted: Callable[[], None] | None = None,
    per_key: bool = True,
) -> Operator:
    """Let an event through only if its key has not let one through in the last ``seconds``.

    Time is the event's own time (``Event.ts``), so the rule behaves the same live and on a
    replay. An event whose time is earlier than the last one let through for its key (clock
    skew, a replay restarted) opens the key again rather than muting it until time catches up.
    """

    def build(emit: Emit) -> OnNext:
        last: dict[Any, float] = {}

        def on_next(event: Event) -> None:
            key = event[3] if per_key else None
            ts = event[1]
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

        return on_next

    return _operator(build)


def cooldown(ctx: StepContext, *, seconds: float, per_key: bool) -> Operator:
    """:func:`cooldown_by_key` for a rule: what it mutes counts as ``suppressed``, the keys it
    forgets (beyond the rule's ``max_keys``) as ``evicted``."""
    stats = ctx.stats

    def suppressed(_event: Event) -> None:
        stats.suppressed += 1

    def evicted() -> None:
        stats.evicted += 1

    return cooldown_by_key(
        seconds, max_keys=ctx.max_keys, on_suppressed=suppressed, on_evicted=evicted, per_key=per_key
    )


# ------------------------------------------------------------------------------------------------
# Timer-driven steps (they need the rule's event clock)
# ------------------------------------------------------------------------------------------------


def event_time_gate(ctx: StepContext) -> Operator:
    """In front of the first time-driven step: drop late items, release the rest in time order.

    An item is late when its time is behind the watermark (``max_ts - allowed_lateness``); it
    is counted and dropped. With no allowed lateness that is every item older than the newest
    one seen; otherwise items are held by the clock until the watermark passes them.
    """
    clock = ctx.need_clock()
    stats = ctx.stats

    def build(emit: Emit) -> OnNext:
        if clock.lateness <= 0:

            def on_next(item: Event) -> None:
                if item[1] >= clock.watermark:
                    emit(item)
                else:
                    stats.late += 1

            return on_next

        hold = clock.hold

        def release_acknowledged(item: Event) -> None:
            try:
                emit(item)
            finally:
                item[5]["ack"].release()

        def on_next_held(item: Event) -> None:
            ts = item[1]
            if ts >= clock.watermark:
                ack = item[5].get("ack")
                if ack is None:
                    hold(ts, emit, item)
                else:  # a record promised at-least-once stays uncommitted while it waits here
                    ack.hold()
                    hold(ts, release_acknowledged, item)
            else:
                stats.late += 1

        return on_next_held

    return _operator(build)


def _quiet_keys(ctx: StepContext, *, seconds: float, per_key: bool, absence: bool, repeat: bool) -> Operator:
    """``debounce`` and ``absence``: per key, its last item and a deadline ``seconds`` after it,
    fired once the watermark passes the deadline (a key that got more items waits for the new one).

    ``debounce`` emits the last item at its deadline; each item sets the deadline. ``absence``
    emits it at the moment the silence is noticed, with ``silent_seconds`` and ``last_ts``; an
    older item never brings the deadline forward; with ``repeat`` it fires again every
    ``seconds`` until an item comes. The items themselves are not passed on.
    """
    clock = ctx.need_clock()
    stats = ctx.stats
    max_keys = ctx.max_keys

    def build(emit: Emit) -> OnNext:
        states: OrderedDict[Any, list[Any]] = OrderedDict()  # key → [last item, deadline]

        def fire(arg: tuple[Any, list[Any]]) -> None:
            k, st = arg
            if states.get(k) is not st:
                return
            now = clock.now
            if st[1] > now:  # more items came: wait until the new deadline
                clock.call_at(st[1], fire, arg)
                return
            last, deadline = st
            if repeat:
                st[1] = now + seconds
                clock.call_at(st[1], fire, arg)
            else:
                del states[k]
            if absence:
                emit(_later(last, now, {"silent_seconds": now - last[1], "last_ts": last[1]}))
            else:
                emit(_later(last, deadline))

        def on_next(item: Event) -> None:
            k = item[3] if per_key else None
            deadline = item[1] + seconds
            st = states.get(k)
            if st is None:
                st = _admit(states, k, [item, deadline], max_keys, stats)
                clock.call_at(deadline, fire, (k, st))
            else:
                states.move_to_end(k)
                st[0] = item
                if not absence or deadline > st[1]:
                    st[1] = deadline

        return on_next

    return _operator(build)


def debounce(ctx: StepContext, *, seconds: float, per_key: bool) -> Operator:
    """Emit a key's last item once it has been quiet for ``seconds`` (``ts`` = that moment)."""
    return _quiet_keys(ctx, seconds=seconds, per_key=per_key, absence=False, repeat=False)


def sample(ctx: StepContext, *, seconds: float, per_key: bool) -> Operator:
    """At each multiple of ``seconds`` of event time, emit the latest item of each key that had
    one in the period just ended (``ts`` = the period's end)."""
    clock = ctx.need_clock()
    stats = ctx.stats
    max_keys = ctx.max_keys

    def build(emit: Emit) -> OnNext:
        states: OrderedDict[Any, list[Any]] = OrderedDict()  # key → [latest item, pending]

        def fire(arg: tuple[Any, list[Any]]) -> None:
            k, st = arg
            if states.get(k) is not st or not st[1]:
                return
            st[1] = False
            emit(_later(st[0], clock.now))

        def on_next(item: Event) -> None:
            k = item[3] if per_key else None
            st = states.get(k)
            if st is None:
                st = _admit(states, k, [item, False], max_keys, stats)
            else:
                states.move_to_end(k)
                st[0] = item
            if not st[1]:
                st[1] = True
                clock.call_at((math.floor(item[1] / seconds) + 1) * seconds, fire, (k, st))

        return on_next

    return _operator(build)


def sequence(
    first: Compiled,
    then: Compiled,
    ctx: StepContext,
    label: str,
    *,
    within: float,
    per_key: bool,
    emit_timeouts: bool,
) -> Operator:
    """A ``first`` item followed, for the same key, by a ``then`` item less than ``within`` later.

    Emits the ``then`` item with fields ``first`` (the first item's data), ``first_ts`` and
    ``elapsed_seconds``; or, with ``emit_timeouts``, the ``first`` item when no ``then`` came in
    time (``ts`` = the deadline). One pending ``first`` per key: a newer one replaces it. An
    item matching both is first checked as ``then``, then becomes the new pending ``first``.
    """
    clock = ctx.need_clock()
    stats = ctx.stats
    fail = ctx.fail
    max_keys = ctx.max_keys

    def build(emit: Emit) -> OnNext:
        pending: OrderedDict[Any, list[Any]] = OrderedDict()  # key → [first item]

        def expire(arg: tuple[Any, list[Any]]) -> None:
            k, st = arg
            if pending.get(k) is not st:
                return
            del pending[k]
            if emit_timeouts:
                a = st[0]
                extra = {"first": a[4], "first_ts": a[1], "elapsed_seconds": within}
                emit(_later(a, clock.now, extra))

        def on_next(item: Event) -> None:
            try:
                is_then = then(item)
                is_first = first(item)
            except Exception as exc:
                fail(label, exc, item)
                return
            k = item[3] if per_key else None
            ts = item[1]
            if is_then:
                st = pending.get(k)
                if st is not None:
                    a = st[0]
                    elapsed = ts - a[1]
                    if 0 <= elapsed < within:
                        del pending[k]
                        if not emit_timeouts:
                            extra = {"first": a[4], "first_ts": a[1], "elapsed_seconds": elapsed}
                            emit(_with_fields(item, extra))
            if is_first:
                # `_admit` inline (every `first` item comes here); a newer first replaces the pending one
                if k in pending:
                    del pending[k]
                elif len(pending) >= max_keys:
                    pending.popitem(last=False)
                    stats.evicted += 1
                st = pending[k] = [item]
                clock.call_at(ts + within, expire, (k, st))

        return on_next

    return _operator(build)


def join_latest(
    aliases: dict[str, str],
    value: Compiled | None,
    ctx: StepContext,
    label: str,
    *,
    max_age: float | None,
    emit_on: str | None,
    per_key: bool,
) -> Operator:
    """Combine the latest value per key of several sources.

    ``aliases`` maps each source name to the field name its value gets. An item from one of
    them updates its side; once every side has a value (each at most ``max_age`` seconds older
    than the item), a row is emitted with one field per side — on every update, or only on
    updates of the ``emit_on`` side. Items from other sources are dropped.
    """
    stats = ctx.stats
    fail = ctx.fail
    max_keys = ctx.max_keys
    sides = len(aliases)

    def build(emit: Emit) -> OnNext:
        latest: OrderedDict[Any, dict[str, tuple[float, Any]]] = OrderedDict()

        def on_next(item: Event) -> None:
            alias = aliases.get(item[0])
            if alias is None:
                return
            try:
                v = item[4] if value is None else value(item)
            except Exception as exc:
                fail(label, exc, item)
                return
            k = item[3] if per_key else None
            ts = item[1]
            st = latest.get(k)
            if st is None:
                st = _admit(latest, k, {}, max_keys, stats)
            else:
                latest.move_to_end(k)
            st[alias] = (ts, v)
            if len(st) < sides or (emit_on is not None and alias != emit_on):
                return
            if max_age is not None:
                for side_ts, _v in st.values():
                    if ts - side_ts > max_age:
                        return
            emit(_with_fields(item, {name: side[1] for name, side in st.items()}))

        return on_next

    return _operator(build)


def absence(ctx: StepContext, *, seconds: float, per_key: bool, repeat: bool) -> Operator:
    """Emit when no item (of a key, or at all) has come for ``seconds`` of event time.

    The row is the last item seen, with ``ts`` = the moment the silence reached ``seconds``
    and fields ``silent_seconds`` and ``last_ts``. It fires once per silence — the next item
    re-arms it — or, with ``repeat``, again every ``seconds`` while the silence lasts. The
    items themselves are not passed on.
    """
    return _quiet_keys(ctx, seconds=seconds, per_key=per_key, absence=True, repeat=repeat)
