"""The Event value: its hot-path constructor and the ack field (the checks a source applies while building
events, scalar keys and the event-time bound, are tested with the decoding: test_decode.py)."""

from __future__ import annotations

import orjson
import pytest

from daemon.errors import ExpressionError
from streams.ack import OffsetTracker
from streams.event import Event, event_record, new_event
from streams.expressions import compile_expression
from streams.rules.replay import decode_record, encode_event
from streams.rules.row import make_row


def test_new_event_builds_the_same_value_as_the_constructor() -> None:
    """The hot-path constructor gives an Event equal to Event(...), defaults (kind, ack) included."""
    ack = OffsetTracker().received(3)
    built = new_event("s", 1.0, 2.0, "k", {"p": 1}, {"seq": 1})
    assert type(built) is Event and built == Event("s", 1.0, 2.0, "k", {"p": 1}, {"seq": 1})
    assert (built.kind, built.ack) == ("data", None)
    acked = new_event("s", 1.0, 2.0, "k", {}, {}, "gap", ack)
    assert acked == Event("s", 1.0, 2.0, "k", {}, {}, kind="gap", ack=ack) and acked.ack is ack


def test_the_ack_is_a_field_never_recorded_journaled_or_readable() -> None:
    """A Kafka ack rides in Event.ack: the recording and the journal leave it out, meta stays as the
    source made it, and an expression cannot name it."""
    ack = OffsetTracker().received(7)
    event = Event("orders", 1.0, 2.0, "k", {"id": 7}, {"offset": 7}, ack=ack)
    line = encode_event(event)
    assert line == encode_event(event._replace(ack=None)) and b"ack" not in line
    assert decode_record(orjson.loads(line)) == event._replace(ack=None)
    record = event_record(event)
    assert record is not None and "ack" not in record and record["meta"] == {"offset": 7}
    with pytest.raises(ExpressionError, match="unknown name 'ack'"):
        compile_expression("ack")
    row = make_row(event, {"x": 1})
    assert row.ack is ack and row.fields == {"x": 1} and make_row(row, {}, ack=None).ack is None
