"""The event-time clock of one rule: watermark, reorder buffer and timers.

Every rule with a time-driven step (a time window, ``debounce``, ``sample``, ``sequence``,
``join_latest``, ``absence``) owns one :class:`EventClock`. Time is *event time* — the
``ts`` of the events — never the wall clock, so a rule gives the same output live and on a
replay of what it saw live.

Watermark
    ``max_ts - allowed_lateness``, where ``max_ts`` is the newest event time the rule has seen.
    An event older than the watermark when it arrives is *late*: counted, and dropped by the
    time-driven steps. Events within the allowed lateness are held in a bounded reorder buffer
    and released in event-time order once the watermark passes them, so the steps always see
    time go forward. The watermark never goes back, so an event time years ahead (a unit
    error) would make everything after it late: sources drop such events before they get here
    (``max_future_seconds``, see :mod:`streams.decode`).
Timers
    Steps schedule callbacks at event times (a window's end, a debounce deadline, an absence
    deadline). They fire when the watermark reaches them, in time order, *before* an event
    with the same time (so "no event for 10 s" at t=110 fires before an event at t=110).
Silence
    Events move the watermark. When nothing arrives, a live rule still has to notice that
    time passed (a debounce must end, a silent feed must be reported): a tick on the rule's
    reactivex scheduler (the AsyncIOScheduler in the daemon, a TestScheduler in tests) moves
    the watermark by the wall time elapsed since the newest event arrived —
    ``max_ts + (wall_now - wall_at_max_ts) - allowed_lateness`` — exactly when the next timer
    is due. Without a scheduler (``reflexd replay``) only events move time: the rule's own,
    and through :meth:`EventClock.tick` every event of the replay (the replay's stand-in for
    the wall clock); :meth:`EventClock.finish` fires what is due by the end of the input.

Everything here runs on the event loop's thread; nothing blocks and nothing allocates per
event except a heap entry for an event held for reordering.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Callable
from typing import Any

from reactivex import abc
from reactivex.scheduler import VirtualTimeScheduler

__all__ = ["MAX_BUFFERED_EVENTS", "EventClock"]

MAX_BUFFERED_EVENTS = 100_000
"""Most events one rule holds for reordering; past it the oldest is released early (counted)."""

_TIMER, _EVENT = 0, 1  # at equal times, timers fire before events are released
_TICK_SLACK = 1e-3  # a tick this close to a timer's wall time counts as due (float rounding)

_Entry = tuple[float, int, int, Callable[[Any], None], Any]


def _wall_clock(scheduler: abc.SchedulerBase) -> Callable[[], float]:
    """A cheap seconds counter that advances with ``scheduler``'s notion of time."""
    if isinstance(scheduler, VirtualTimeScheduler):
        return lambda: float(scheduler.clock)
    loop = getattr(scheduler, "_loop", None)  # AsyncIOScheduler: the loop's monotonic clock
    if loop is not None and callable(getattr(loop, "time", None)):
        loop_time: Callable[[], float] = loop.time
        if getattr(loop_time, "__func__", None) is asyncio.BaseEventLoop.time:
            return time.monotonic  # what asyncio's loop.time() returns, without its Python frame
        return loop_time
    return lambda: scheduler.to_seconds(scheduler.now)


class EventClock:
    """Watermark, reorder buffer and timer queue of one rule (see the module docstring)."""

    __slots__ = (
        "_buffered",
        "_heap",
        "_running",
        "_scheduler",
        "_seq",
        "_tick",
        "_tick_due",
        "_wall",
        "_wall_at_max",
        "disposed",
        "forced",
        "lateness",
        "max_buffered",
        "max_ts",
        "now",
        "on_error",
        "watermark",
    )

    def __init__(
        self,
        lateness: float = 0.0,
        scheduler: abc.SchedulerBase | None = None,
        max_buffered: int = MAX_BUFFERED_EVENTS,
    ) -> None:
        self.lateness = lateness
        self.max_buffered = max_buffered
        self.max_ts = -math.inf  # newest event time seen
        self.watermark = -math.inf  # events older than this are late
        self.now = -math.inf  # event time of what is being processed (a timer, a released event)
        self.forced = 0  # events released before the watermark reached them (buffer full)
        self.disposed = False
        #: Called with an exception a timer callback raised (the callback is dropped, time goes on).
        self.on_error: Callable[[BaseException], None] | None = None
        self._heap: list[_Entry] = []
        self._seq = 0
        self._buffered = 0
        self._running = False
        self._scheduler = scheduler
        self._wall: Callable[[], float] | None = _wall_clock(scheduler) if scheduler is not None else None
        self._wall_at_max = 0.0
        self._tick: abc.DisposableBase | None = None
        self._tick_due = math.inf

    @property
    def live(self) -> bool:
        """True when silence moves time (a scheduler ticks), False when only events do (replay)."""
        return self._wall is not None

    @property
    def pending(self) -> int:
        """Timers and held events not yet due."""
        return len(self._heap)

    @property
    def buffered(self) -> int:
        """Events held for reordering."""
        return self._buffered

    # -- time moves ----------------------------------------------------------------------------

    def observe(self, ts: float) -> None:
        """An event with time ``ts`` reached the rule: move the watermark (fires what is due)."""
        if ts > self.max_ts:  # NaN never moves time
            self.max_ts = ts
            wall = self._wall
            if wall is not None:
                self._wall_at_max = wall()
            mark = ts - self.lateness
            if mark > self.watermark:
                if self._heap or self._running:
                    self.advance(mark)
                else:  # nothing waits: just move time
                    self.watermark = mark
                    if mark > self.now:
                        self.now = mark

    def advance(self, mark: float) -> None:
        """Move the watermark to ``mark`` (never back) and fire, in time order, what is due."""
        if mark > self.watermark:
            self.watermark = mark
        if self._running:  # called from a callback: the loop below picks the new entries up
            return
        self._running = True
        heap = self._heap
        try:
            while heap and heap[0][0] <= self.watermark:
                at, kind, _seq, fn, arg = heapq.heappop(heap)
                if kind == _EVENT:
                    self._buffered -= 1
                if at > self.now:
                    self.now = at
                try:
                    fn(arg)
                except Exception as exc:
                    if self.on_error is None:
                        raise
                    self.on_error(exc)
            if self.watermark > self.now:
                self.now = self.watermark
        finally:
            self._running = False
        if self._wall is not None:
            self._arm_tick()

    def tick(self, now: float) -> None:
        """The input as a whole has reached event time ``now`` (a replay's stand-in for the wall
        clock's silence ticks): move the watermark to ``now - lateness``."""
        mark = now - self.lateness
        if mark > self.watermark:
            self.advance(mark)

    def finish(self, until: float | None = None) -> None:
        """End of a finite input: release every held event and fire what is due by the newest event
        time (or ``until``, the end of the whole input, if later)."""
        end = self.max_ts if until is None else max(self.max_ts, until)
        if end > -math.inf:
            self.advance(end)

    # -- restarts ------------------------------------------------------------------------------

    def snapshot(self) -> tuple[float, float, float]:
        """Where event time had got: (newest event time, watermark, now). Timers and held events
        are the steps' to save (a held event, within the allowed lateness, is not kept)."""
        return (self.max_ts, self.watermark, self.now)

    def restore(self, saved: tuple[float, float, float]) -> None:
        """Take event time up where a previous run left it (never back). Live, the silence until
        the next event is counted from now: the downtime itself moves no timer."""
        max_ts, watermark, now = saved
        if max_ts > self.max_ts:
            self.max_ts = max_ts
            if self._wall is not None:
                self._wall_at_max = self._wall()
        self.watermark = max(self.watermark, watermark)
        self.now = max(self.now, now)

    # -- scheduling ----------------------------------------------------------------------------

    def call_at(self, at: float, fn: Callable[[Any], None], arg: Any = None) -> None:
        """Call ``fn(arg)`` when the watermark reaches event time ``at`` (at once if it already has)."""
        if at < self.now:
            at = self.now
        self._seq += 1
        heapq.heappush(self._heap, (at, _TIMER, self._seq, fn, arg))
        if at <= self.watermark:
            self.advance(self.watermark)
        elif self._wall is not None and at < self._tick_due:
            self._arm_tick()

    def hold(self, ts: float, fn: Callable[[Any], None], item: Any) -> None:
        """Release ``item`` to ``fn`` once the watermark reaches ``ts`` (the reorder buffer)."""
        self._seq += 1
        heapq.heappush(self._heap, (ts, _EVENT, self._seq, fn, item))
        self._buffered += 1
        while self._buffered > self.max_buffered:
            self.forced += 1
            self.advance(self._heap[0][0])
        if ts <= self.watermark:
            self.advance(self.watermark)

    # -- live ticks ----------------------------------------------------------------------------

    def _arm_tick(self) -> None:
        heap = self._heap
        wall = self._wall
        if not heap or wall is None or self.disposed or self._scheduler is None:
            return
        due = heap[0][0]
        if self._tick is not None:
            if self._tick_due <= due:
                return
            self._tick.dispose()
        # wall seconds until max_ts + elapsed - lateness reaches `due`
        delay = due + self.lateness - self.max_ts - (wall() - self._wall_at_max)
        self._tick_due = due
        self._tick = self._scheduler.schedule_relative(max(delay, 0.0), self._on_tick)

    def _on_tick(self, scheduler: abc.SchedulerBase, state: Any = None) -> None:
        self._tick = None
        self._tick_due = math.inf
        wall = self._wall
        if self.disposed or wall is None:
            return
        mark = self.max_ts + (wall() - self._wall_at_max) - self.lateness
        heap = self._heap
        if heap and heap[0][0] <= mark + _TICK_SLACK:
            mark = max(mark, heap[0][0])
        if mark > self.watermark:
            self.advance(mark)
        else:
            self._arm_tick()

    def dispose(self) -> None:
        """Stop ticking and forget every timer and held event."""
        self.disposed = True
        if self._tick is not None:
            self._tick.dispose()
            self._tick = None
        self._heap.clear()
        self._buffered = 0
