"""reactivex operators of the rule layer that the library does not have.

Each keeps its state per event key, bounded by ``max_keys`` (the least recently updated key
is forgotten first), because ``group_by`` groups never complete on an endless stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reactivex import Observable, abc

from streams.event import Event

__all__ = ["cooldown_by_key"]


def cooldown_by_key(
    seconds: float,
    *,
    max_keys: int = 100_000,
    on_suppressed: Callable[[Event], None] | None = None,
) -> Callable[[Observable[Event]], Observable[Event]]:
    """Let an event through only if its key has not let one through in the last ``seconds``.

    Time is the event's own time (``Event.ts``), so the rule behaves the same live and on a
    replay. An event whose time is earlier than the last one let through for its key (clock
    skew, a replay restarted) opens the key again rather than muting it until time catches up.
    """

    def operator(source: Observable[Event]) -> Observable[Event]:
        def subscribe(observer: abc.ObserverBase[Event], scheduler: abc.SchedulerBase | None = None) -> Any:
            last: dict[Any, float] = {}

            def on_next(event: Event) -> None:
                key = event.key
                ts = event.ts
                previous = last.get(key)
                if previous is not None and previous <= ts < previous + seconds:
                    if on_suppressed is not None:
                        on_suppressed(event)
                    return
                if previous is not None:
                    del last[key]  # re-insert at the end: dict order = least recently updated first
                elif len(last) >= max_keys:
                    del last[next(iter(last))]
                last[key] = ts
                observer.on_next(event)

            return source.subscribe(on_next, observer.on_error, observer.on_completed, scheduler=scheduler)

        return Observable(subscribe)

    return operator
