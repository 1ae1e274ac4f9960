"""Runtime pieces shared by the rule steps' operators (each step's own operator is in its module
under :mod:`streams.rules.steps`).

An operator is a function ``Observable[Event] -> Observable[Event]`` built with :func:`operator`
from ``build(emit) -> on_next``; its state is created per subscription. State that depends on
the event key is kept per key in an ``OrderedDict`` bounded by ``max_keys`` (:func:`admit`: the
least recently updated key is forgotten first, counted as ``evicted``), because ``group_by``
groups never complete on an endless stream.

Time is event time (``Event.ts``). Operators that need timers (a tumbling window closing,
``debounce``, ``sample``, ``sequence`` timeouts, ``absence``) schedule them on the rule's
:class:`~streams.rules.clock.EventClock`, which fires them when the watermark passes — driven
by events, and, live, by a tick on the rule's reactivex scheduler during silence; what a timer
emits is built with :func:`later`. :func:`event_time_gate` stands in front of the first
time-driven step of a rule.

Nothing here lets an exception escape into reactivex (which would send ``on_error`` and
dispose the whole pipeline): user expressions are called inside ``try``, and a failure is
reported to :attr:`StepContext.fail` (counted per rule, logged rate-limited) and drops that
one event.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from reactivex import Observable, abc
from reactivex.disposable import Disposable

from streams.event import Event
from streams.expressions import Compiled
from streams.rules.clock import EventClock
from streams.rules.row import fields_of, make_row
from streams.rules.spec import Emit, OnNext, Operator, StepContext
from streams.rules.stats import RuleStats

__all__ = [
    "Emit",
    "OnNext",
    "Operator",
    "StepContext",
    "StepOperator",
    "admit",
    "event_time_gate",
    "later",
    "operator",
    "quiet_keys",
    "with_fields",
]

S = TypeVar("S")


class StepOperator:
    """An operator whose per-subscription ``on_next`` is ``build(emit)``: a reactivex operator
    (``observable.pipe(op)``), and, through :attr:`build`, a link a rule chains directly — each
    step's ``on_next`` calling the next one's, without an observer hop per step."""

    __slots__ = ("build", "gate", "test")

    def __init__(
        self,
        build: Callable[[Emit], OnNext],
        *,
        test: tuple[str, Compiled] | None = None,
        gate: EventClock | None = None,
    ) -> None:
        self.build = build
        #: a stateless filter's (label, predicate): what its ``on_next`` does, for a rule to run inline
        #: (failures reported to ``fail(label, ...)``, items for which it is false dropped)
        self.test = test
        #: the event-time gate without allowed lateness: items older than this clock's watermark are
        #: counted as ``late`` and dropped, the others passed on (what its ``on_next`` does)
        self.gate = gate

    def __call__(self, source: Observable[Event]) -> Observable[Event]:
        build = self.build

        def subscribe(observer: abc.ObserverBase[Event], scheduler: abc.SchedulerBase | None = None) -> Any:
            # `observer` is reactivex's auto-detaching observer: once the subscription is disposed
            # it drops what a late timer would still emit (and the rule's clock forgets its timers).
            subscription = source.subscribe(
                build(observer.on_next), observer.on_error, observer.on_completed, scheduler=scheduler
            )
            return Disposable(subscription.dispose)

        return Observable(subscribe)


def operator(build: Callable[[Emit], OnNext], *, test: tuple[str, Compiled] | None = None) -> Operator:
    """An operator whose per-subscription ``on_next`` is ``build(emit)`` (a :class:`StepOperator`);
    ``test``: it is a stateless filter, (label, predicate) (see :attr:`StepOperator.test`)."""
    return StepOperator(build, test=test)


def admit(states: OrderedDict[Any, S], key: Any, state: S, bound: int, stats: RuleStats) -> S:
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


def keep_per_key(
    keep: Callable[[Callable[[], Any], Callable[[Any], None]], None], states: dict[Any, Any], bound: int
) -> None:
    """Register ``states`` (key → the step's state for it, least recently updated first) with
    ``keep`` (:meth:`StepContext.keep`) as the step's saved state: saved as its items, restored
    keeping the newest ``bound`` of them."""

    def restore(saved: list[tuple[Any, Any]]) -> None:
        states.clear()
        states.update(saved[-bound:])

    keep(lambda: list(states.items()), restore)


def with_fields(item: Event, extra: dict[str, Any], ts: float | None = None) -> Event:
    """``item`` with the computed fields ``extra`` added (and its time replaced by ``ts``)."""
    fields = dict(fields_of(item))
    fields.update(extra)
    return make_row(item, fields, ts=ts)


def later(item: Event, ts: float, extra: dict[str, Any] | None = None) -> Event:
    """``item`` emitted by a timer at event time ``ts`` (with ``extra`` fields).

    The item's source record was released long ago; its delivery acknowledgement (``ack``, Kafka)
    is left out so the tool calls of a timer's output do not try to hold a finished record: what
    timers emit is derived from in-memory state and is at-most-once.
    """
    fields = dict(fields_of(item))
    if extra:
        fields.update(extra)
    return make_row(item, fields, ts=ts, ack=None)


def event_time_gate(ctx: StepContext) -> Operator:
    """In front of the first time-driven step: drop late items, release the rest in time order.

    An item is late when its time is behind the watermark (``max_ts - allowed_lateness``); it
    is counted and dropped. With no allowed lateness that is every item older than the newest
    one seen; otherwise items are held by the clock until the watermark passes them.
    """
    clock = ctx.need_clock()
    stats = ctx.stats

    lateness = clock.lateness

    def build(emit: Emit) -> OnNext:
        if lateness <= 0:

            def on_next(item: Event) -> None:
                if item.ts >= clock.watermark:
                    emit(item)
                else:
                    stats.late += 1

            return on_next

        hold = clock.hold

        def release_acknowledged(item: Event) -> None:
            ack = item.ack
            assert ack is not None  # only items holding an ack are held this way
            try:
                emit(item)
            finally:
                ack.release()

        def on_next_held(item: Event) -> None:
            ts = item.ts
            if ts >= clock.watermark:
                ack = item.ack
                if ack is None:
                    hold(ts, emit, item)
                else:  # a record promised at-least-once stays uncommitted while it waits here
                    ack.hold()
                    hold(ts, release_acknowledged, item)
            else:
                stats.late += 1

        return on_next_held

    return StepOperator(build, gate=clock if lateness <= 0 else None)


def quiet_keys(ctx: StepContext, *, seconds: float, per_key: bool, absence: bool, repeat: bool) -> Operator:
    """The runtime of ``debounce`` and ``absence``: per key, its last item and a deadline ``seconds``
    after it, fired once the watermark passes the deadline (a key that got more items waits for
    the new one).

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
                emit(later(last, now, {"silent_seconds": now - last.ts, "last_ts": last.ts}))
            else:
                emit(later(last, deadline))

        def on_next(item: Event) -> None:
            k = item.key if per_key else None
            deadline = item.ts + seconds
            st = states.get(k)
            if st is None:
                st = admit(states, k, [item, deadline], max_keys, stats)
                clock.call_at(deadline, fire, (k, st))
            else:
                states.move_to_end(k)
                st[0] = item
                if not absence or deadline > st[1]:
                    st[1] = deadline

        def restore(saved: list[tuple[Any, Event, float]]) -> None:
            states.clear()
            for k, last, deadline in saved[-max_keys:]:
                st = states[k] = [last, deadline]
                clock.call_at(deadline, fire, (k, st))

        ctx.keep(lambda: [(k, st[0], st[1]) for k, st in states.items()], restore)
        return on_next

    return operator(build)
