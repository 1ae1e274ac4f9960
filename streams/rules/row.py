"""Rows: events carrying computed fields through a rule's steps.

A :class:`Row` *is* an :class:`~streams.event.Event` (a subclass, so every consumer of events
— tool runner, journal, templates — takes it as is) with one more tuple slot: the dict of
computed fields that ``set``, ``window``, ``crossing``, ``join_latest``, ... added. The first
seven slots are the event's, at the same positions, so an expression compiled for events
reads a row the same way; a computed field ``vwap`` compiles to ``row[FIELDS_INDEX]["vwap"]``.

A plain event flowing through steps that add nothing stays a plain event: a row is only built
when a step adds a field (one ``tuple.__new__`` plus a dict).
"""

from __future__ import annotations

from types import EllipsisType
from typing import Any

from streams.ack import Ack
from streams.event import DATA, Event

__all__ = ["FIELDS_INDEX", "Row", "fields_of", "make_row"]

FIELDS_INDEX = len(Event._fields)
"""Position of the computed-fields dict in a row (right after the event's own fields)."""

_new = tuple.__new__
_getitem: Any = tuple.__getitem__  # past the 7 named slots, mypy's view of Event's length
_EMPTY: dict[str, Any] = {}


class Row(Event):
    """An event plus its computed fields (``row.fields``). Build with :func:`make_row`."""

    __slots__ = ()

    @property
    def fields(self) -> dict[str, Any]:
        value: dict[str, Any] = _getitem(self, FIELDS_INDEX)
        return value

    def __repr__(self) -> str:
        parts = ", ".join(f"{name}={value!r}" for name, value in zip(self._fields, self, strict=False))
        return f"Row({parts}, fields={self.fields!r})"

    def __getnewargs__(self) -> tuple[Any, ...]:  # pragma: no cover - pickling support
        return tuple(self)

    def as_event(self) -> Event:
        """The plain event (without the computed fields)."""
        return Event(*_getitem(self, slice(0, FIELDS_INDEX)))


def fields_of(item: Event) -> dict[str, Any]:
    """The computed fields of ``item`` (an empty, read-only-by-convention dict for a plain event)."""
    if len(item) > FIELDS_INDEX:
        value: dict[str, Any] = _getitem(item, FIELDS_INDEX)
        return value
    return _EMPTY


def make_row(
    item: Event,
    fields: dict[str, Any],
    *,
    ts: float | None = None,
    key: Any = ...,
    meta: dict[str, Any] | None = None,
    ack: Ack | EllipsisType | None = ...,
) -> Row:
    """A row with ``item``'s event slots (``ts``/``key``/``meta``/``ack`` may be replaced) and ``fields``."""
    source, item_ts, received_at, item_key, data, item_meta, kind, item_ack = _getitem(
        item, slice(0, FIELDS_INDEX)
    )
    row: Row = _new(
        Row,
        (
            source,
            item_ts if ts is None else ts,
            received_at,
            item_key if key is ... else key,
            data,
            item_meta if meta is None else meta,
            kind or DATA,
            item_ack if ack is ... else ack,
            fields,
        ),
    )
    return row
