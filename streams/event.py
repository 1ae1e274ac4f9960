"""The Event record: one small immutable value per message, created on the hot path.

Build one with ``Event(...)`` where speed does not matter, and with :func:`new_event` (same
arguments, about 60 ns cheaper) in a source's read loop.

Its journaled form (:func:`event_record`, :func:`event_from_record`) is what the tool runner
writes to a journal and the daemon reads back. The checks a source applies while it builds
events (scalar keys, the event-time bound) live with the decoding, in :mod:`streams.decode`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from streams.ack import Ack

__all__ = [
    "ANSWER",
    "DATA",
    "GAP",
    "READABLE_FIELDS",
    "Event",
    "event_from_record",
    "event_record",
    "new_event",
]

DATA = "data"
GAP = "gap"
ANSWER = "answer"  # a language model's answer (an ``llm`` tool's event)


class Event(NamedTuple):
    """One message from a source.

    A NamedTuple: immutable, and as cheap to build as a tuple (it is created for every message).

    - ``source``: name of the source that produced it
    - ``ts``: event time, seconds since the epoch (the payload's time field, else ``received_at``)
    - ``received_at``: wall-clock time reflexd received it, seconds since the epoch
    - ``key``: partitioning key (a symbol, a Kafka key) or None
    - ``data``: the decoded payload
    - ``meta``: transport details (sequence number, topic, partition, offset, headers, ...)
    - ``kind``: ``"data"`` for payloads, ``"gap"`` for a reconnect marker (``data`` holds the outage),
      ``"answer"`` for a language model's answer (the event of an ``llm`` tool)
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


def event_record(event: Any, *, data: bool = True) -> dict[str, Any] | None:
    """The journaled form of an event: everything but transport handles (the Kafka ack); without
    ``data`` only where it came from."""
    if event is None:
        return None
    record = {
        "source": event.source,
        "ts": event.ts,
        "received_at": event.received_at,
        "key": event.key,
        "meta": event.meta,
        "kind": event.kind,
    }
    if data:
        record["data"] = event.data
    return record


def event_from_record(record: dict[str, Any] | None) -> Event | None:
    """Rebuild an event from its journaled form (for recovered and replayed invocations)."""
    if not record:
        return None
    return Event(
        record.get("source", ""),
        float(record.get("ts") or 0.0),
        float(record.get("received_at") or 0.0),
        record.get("key"),
        record.get("data"),
        dict(record.get("meta") or {}),
        record.get("kind", "data"),
    )
