"""Rows: events carrying the computed fields of a rule's steps.

A :class:`Row` *is* an :class:`~streams.event.Event` (a subclass, so every consumer of events —
tool runner, journal, templates — takes it as is) that declares one more field, ``fields``: the
dict of computed fields that ``set``, ``window``, ``crossing``, ``join_latest``, ... added. The
event's fields keep their positions and ``fields`` comes right after them (:data:`FIELDS_INDEX`),
so an expression compiled for events reads a row the same way, and a computed field ``vwap`` is
``row.fields["vwap"]``. ``Row(...)``, ``row._replace(...)``, ``row._asdict()``, ``repr`` and
pickling all know the field.

A plain event flowing through steps that add nothing stays a plain event: a row is only built
when a step adds a field. :func:`make_row` builds one on the hot path (one tuple plus the dict).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import EllipsisType
from typing import Any, Final

from streams.ack import Ack
from streams.event import DATA, Event

__all__ = ["FIELDS_INDEX", "Row", "fields_of", "make_row"]

FIELDS_INDEX: Final = len(Event._fields)
"""Position of ``fields`` in a row: right after the event's own fields."""

_new = tuple.__new__
_getitem: Any = tuple.__getitem__  # mypy sees a Row as an Event, a tuple of the event's fields only
_EMPTY: dict[str, Any] = {}


class Row(Event):
    """An event plus its computed fields: ``Row(source, ts, ..., ack, fields={...})``; on the hot
    path, :func:`make_row` from an event."""

    __slots__ = ()
    _fields = (*Event._fields, "fields")  # type: ignore[assignment]  # mypy fixes a NamedTuple's names

    def __new__(
        cls,
        source: str,
        ts: float,
        received_at: float,
        key: Any,
        data: Any,
        meta: dict[str, Any],
        kind: str = DATA,
        ack: Ack | None = None,
        fields: dict[str, Any] | None = None,
    ) -> Row:
        row: Row = _new(
            cls, (source, ts, received_at, key, data, meta, kind, ack, {} if fields is None else fields)
        )
        return row

    # NamedTuple's own _make and _replace count the event's fields: these count a row's

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Row:  # type: ignore[override]
        row: Row = _new(cls, iterable)
        if len(row) != len(cls._fields):
            raise TypeError(f"expected {len(cls._fields)} values for a Row, got {len(row)}")
        return row

    def _replace(self, **changes: Any) -> Row:
        row = self._make([changes.pop(name, value) for name, value in zip(self._fields, self, strict=True)])
        if changes:
            raise ValueError(f"not fields of a Row: {', '.join(changes)}")
        return row

    @property
    def fields(self) -> dict[str, Any]:
        """The computed fields: name → value."""
        value: dict[str, Any] = _getitem(self, FIELDS_INDEX)
        return value

    def __repr__(self) -> str:
        return (
            f"Row({', '.join(f'{name}={value!r}' for name, value in zip(self._fields, self, strict=True))})"
        )

    def as_event(self) -> Event:
        """The plain event (without the computed fields)."""
        return Event(*_getitem(self, slice(0, FIELDS_INDEX)))


def fields_of(item: Event) -> dict[str, Any]:
    """The computed fields of ``item`` (an empty, read-only-by-convention dict for a plain event)."""
    if len(item) > FIELDS_INDEX:
        value: dict[str, Any] = item[FIELDS_INDEX]  # type: ignore[assignment]  # a Row: after the event
        return value
    return _EMPTY


def make_row(
    item: Event,
    fields: dict[str, Any],
    *,
    ts: float | None = None,
    key: Any = ...,
    ack: Ack | EllipsisType | None = ...,
) -> Row:
    """A row with ``item``'s event fields (``ts``/``key``/``ack`` may be replaced) and ``fields``."""
    # plain subscripts and tuple concatenation: tuple.__getitem__ called unbound costs ~3x more
    event = item if len(item) == FIELDS_INDEX else item[:FIELDS_INDEX]
    if ts is None and key is ... and ack is ... and event[6]:  # the event's fields unchanged
        row: Row = _new(Row, event + (fields,))  # noqa: RUF005  # concatenating: faster than (*event, f)
        return row
    source, item_ts, received_at, item_key, data, meta, kind, item_ack = event
    row = _new(
        Row,
        (
            source,
            item_ts if ts is None else ts,
            received_at,
            item_key if key is ... else key,
            data,
            meta,
            kind or DATA,
            item_ack if ack is ... else ack,
            fields,
        ),
    )
    return row
