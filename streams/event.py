"""The Event record: one small immutable value per message, created on the hot path."""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["DATA", "GAP", "Event"]

DATA = "data"
GAP = "gap"


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
    """

    source: str
    ts: float
    received_at: float
    key: Any
    data: Any
    meta: dict[str, Any]
    kind: str = DATA
