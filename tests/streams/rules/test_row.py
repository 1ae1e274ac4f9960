"""Rows declare their computed fields: a named field of the tuple, not a hidden slot."""

from __future__ import annotations

import pickle

from streams.event import Event
from streams.expressions import compile_expression
from streams.rules.row import FIELDS_INDEX, Row, fields_of, make_row
from tests.streams.rules.helpers import Recorder, ev, make_rule, run


class Held:
    """Stands for a delivery acknowledgement (only its identity matters here)."""


def test_fields_is_a_declared_field_of_a_row() -> None:
    """Row's field names end with `fields` (right after the event's), and constructor, _replace, _asdict,
    repr and pickling all carry it."""
    assert Row._fields == (*Event._fields, "fields") and Row._fields[FIELDS_INDEX] == "fields"
    row = Row("feed", 1.0, 2.0, "BTC", {"p": 1}, {"seq": 7}, fields={"x": 3})
    assert (row.source, row.ts, row.key, row.fields) == ("feed", 1.0, "BTC", {"x": 3})
    assert row._asdict()["fields"] == {"x": 3}
    moved = row._replace(ts=5.0, fields={"x": 4})
    assert type(moved) is Row and moved.ts == 5.0 and moved.fields == {"x": 4} and moved.data == {"p": 1}
    assert repr(row).endswith("kind='data', ack=None, fields={'x': 3})")
    again = pickle.loads(pickle.dumps(row))
    assert type(again) is Row and again == row
    assert Row("feed", 1.0, 2.0, None, {}, {}).fields == {}
    assert type(row.as_event()) is Event and row.as_event() == Event(
        "feed", 1.0, 2.0, "BTC", {"p": 1}, {"seq": 7}
    )


def test_make_row_keeps_the_event_and_replaces_only_what_it_is_told() -> None:
    """make_row copies the event's fields by position, replaces ts/key/ack when given, and an
    expression reads a computed field of the row by name."""
    ack = Held()
    event = Event("feed", 1.0, 2.0, "BTC", {"p": 1}, {"seq": 7}, ack=ack)  # type: ignore[arg-type]
    row = make_row(event, {"x": 3})
    assert row == Row(*event, fields={"x": 3}) and row.ack is ack
    later = make_row(row, {"x": 4}, ts=9.0, key="ETH", ack=None)
    assert (later.ts, later.key, later.ack, later.fields, later.meta) == (
        9.0,
        "ETH",
        None,
        {"x": 4},
        {"seq": 7},
    )
    assert fields_of(event) == {} and fields_of(row) == {"x": 3}
    assert compile_expression("x * 2 + data.p", {"x"})(row) == 7


def test_steps_that_add_nothing_pass_the_event_itself() -> None:
    """A plain event through where/throttle stays the same Event object (key: an Event with the new key);
    a step that adds a field makes a Row."""
    rec = Recorder()
    first = ev(1.0, p=1)
    run(make_rule([{"where": "data.p > 0"}, {"throttle": 10}], rec), [first, ev(2.0, p=2)])
    assert len(rec.calls) == 1 and rec.calls[0][2].event is first
    rec = Recorder()
    run(make_rule([{"key": "data.p"}], rec), [first])
    rekeyed = rec.calls[0][2].event
    assert type(rekeyed) is Event and rekeyed == first._replace(key=1)
    rec = Recorder()
    run(make_rule([{"set": {"x": "data.p * 10"}}, {"key": "x"}], rec), [first])
    (event,) = [ctx.event for _t, _a, ctx in rec.calls]
    assert type(event) is Row and event.fields == {"x": 10} and event.key == 10 and event.data is first.data
