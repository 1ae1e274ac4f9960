"""The Event record: one small immutable value per message, created on the hot path.

Build one with ``Event(...)`` where speed does not matter, and with :func:`new_event` (same
arguments, about 60 ns cheaper) in a source's read loop.

Also the two checks every source applies while it builds events, kept here so that every
source (and ``reflexd replay``) applies the same ones:

- **Keys** (:data:`KEY_TYPES`, :func:`key_problem`): a key is a scalar — text, a number, a
  boolean or null. A key field holding a list or an object is a decode error: the message is
  counted and dropped at the source (a rule groups state by key, and such a key cannot be one).
- **Event time** (:data:`MAX_FUTURE_SECONDS`, :class:`ProgressBound`): live, an event whose time
  is more than ``max_future_seconds`` ahead of the wall clock when it arrived is counted
  (``future``) and dropped, so one message in the wrong unit cannot move a rule's watermark
  years ahead. A replay has no wall clock: :class:`ProgressBound` judges each event against
  the recording's own progress instead.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from streams.ack import Ack

__all__ = [
    "DATA",
    "GAP",
    "KEY_TYPES",
    "MAX_FUTURE_SECONDS",
    "READABLE_FIELDS",
    "Event",
    "ProgressBound",
    "key_problem",
    "new_event",
]

DATA = "data"
GAP = "gap"

#: Types an event key may have (what JSON scalars decode to). Check with ``type(key) in KEY_TYPES``.
KEY_TYPES: frozenset[type] = frozenset({str, int, float, bool, type(None)})

MAX_FUTURE_SECONDS = 300.0
"""Default ``max_future_seconds`` of a source: how far ahead of the wall clock an event time may be."""


class Event(NamedTuple):
    """One message from a source.

    A NamedTuple: immutable, and as cheap to build as a tuple (it is created for every message).

    - ``source``: name of the source that produced it
    - ``ts``: event time, seconds since the epoch (the payload's time field, else ``received_at``)
    - ``received_at``: wall-clock time reflexd received it, seconds since the epoch
    - ``key``: partitioning key (a symbol, a Kafka key) or None
    - ``data``: the decoded payload
    - ``meta``: transport details (sequence number, topic, partition, offset, headers, ...)
    - ``kind``: ``"data"`` for payloads, ``"gap"`` for a reconnect marker (``data`` holds the outage)
    - ``ack``: the delivery acknowledgement of a record promised at-least-once (Kafka), else None;
      a transport handle, never recorded, journaled or readable by an expression
    """

    source: str
    ts: float
    received_at: float
    key: Any
    data: Any
    meta: dict[str, Any]
    kind: str = DATA
    ack: Ack | None = None


_tuple_new = tuple.__new__


def new_event(
    source: str,
    ts: float,
    received_at: float,
    key: Any,
    data: Any,
    meta: dict[str, Any],
    kind: str = DATA,
    ack: Ack | None = None,
) -> Event:
    """``Event(...)`` for the hot path: the same value, without the NamedTuple's ``__new__`` (that
    one is reached through ``type.__call__``; a plain function call costs ~60 ns less per event)."""
    event: Event = _tuple_new(Event, (source, ts, received_at, key, data, meta, kind, ack))
    return event


#: The fields an expression or a template can name: all but the transport handle ``ack``.
READABLE_FIELDS: tuple[str, ...] = tuple(name for name in Event._fields if name != "ack")


def key_problem(value: Any) -> str | None:
    """Why ``value`` cannot be an event key (None if it can: a scalar)."""
    if type(value) in KEY_TYPES:
        return None
    return f"key is a {type(value).__name__}, not a scalar"


class ProgressBound:
    """``max_future_seconds`` for a recording, judged against its own progress (deterministic).

    :meth:`admit` is True for an event time at most ``max_future`` seconds after the newest time
    admitted so far (the first event sets the start). A time beyond that is *future*: the caller
    counts and drops the event, and it moves nothing. If the next event is also beyond it, and
    within ``max_future`` of the one just refused, the recording itself jumped forward (the
    recorder was down for a while): that event is admitted and becomes the new reference, so a
    gap in a recording costs its first event, not the rest of the file. Time going backwards is
    never refused (it is the rules' business: late events). NaN is admitted and moves nothing.
    """

    __slots__ = ("_refused", "limit", "max_future", "newest")

    def __init__(self, max_future: float | None) -> None:
        self.max_future = math.inf if max_future is None else max_future
        self.newest = -math.inf
        self.limit = math.inf  # newest + max_future; no limit before the first event
        self._refused: float | None = None  # the time last refused, if the event before was refused

    def admit(self, ts: float) -> bool:
        if ts > self.limit:
            refused = self._refused
            if refused is None or abs(ts - refused) > self.max_future:
                self._refused = ts
                return False
        self._refused = None
        if ts > self.newest:
            self.newest = ts
            self.limit = ts + self.max_future
        return True
