"""The Event value (its hot-path constructor, the ack field) and the checks every source applies while building events: scalar keys, and a replay's event-time bound."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from daemon.errors import ExpressionError
from daemon.state import event_record
from streams.ack import OffsetTracker
from streams.event import Event, ProgressBound, key_problem, new_event
from streams.expressions import compile_expression
from streams.rules.replay import ReplayInput, decode_record, encode_event, read_input
from streams.rules.row import make_row


def admitted(bound: ProgressBound, times: list[float]) -> list[float]:
    return [t for t in times if bound.admit(t)]


def test_scalars_are_keys_lists_and_objects_are_not() -> None:
    """Text, numbers, booleans and null are keys; a list or an object is refused with its type named."""
    assert [key_problem(k) for k in ("BTC", 1, 1.5, True, None)] == [None] * 5
    assert key_problem([1, 2]) == "key is a list, not a scalar"
    assert key_problem({"a": 1}) == "key is a dict, not a scalar"


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


def test_one_time_far_ahead_is_refused_and_moves_nothing() -> None:
    """A time in µs among times in s is refused; the times after it are judged against the sane ones."""
    bound = ProgressBound(300)
    times = [1000.0, 1001.0, 1002.0e6, 1003.0, 1004.0]
    assert admitted(bound, times) == [1000.0, 1001.0, 1003.0, 1004.0]
    assert bound.newest == 1004.0


def test_a_gap_in_the_recording_costs_one_event() -> None:
    """Two times in a row past the bound and close together are a jump of the recording: the second goes on."""
    bound = ProgressBound(300)
    assert admitted(bound, [0.0, 10.0, 3600.0, 3601.0, 3602.0]) == [0.0, 10.0, 3601.0, 3602.0]


def test_two_bad_times_apart_are_both_refused() -> None:
    """Refused times that are not close to each other (or not in a row) never open a new timeline."""
    bound = ProgressBound(300)
    assert admitted(bound, [0.0, 1e9, 2e9, 1.0, 1e9, 2.0, 1e9]) == [0.0, 1.0, 2.0]


def test_time_going_back_and_nan_are_admitted_without_moving_the_bound() -> None:
    """Older times are the rules' business (late), not the bound's; NaN never moves it."""
    bound = ProgressBound(300)
    verdicts = [bound.admit(t) for t in (100.0, 50.0, math.nan, 390.0, 1000.0)]
    assert verdicts == [True, True, True, True, False]
    assert bound.newest == 390.0


def test_no_bound_admits_everything() -> None:
    """max_future_seconds: null turns the bound off."""
    assert admitted(ProgressBound(None), [0.0, 1e12, 5.0]) == [0.0, 1e12, 5.0]


@pytest.mark.parametrize("recording", [False, True], ids=["raw", "recording"])
def test_read_input_skips_list_keys_and_future_times_with_counts(tmp_path: Path, recording: bool) -> None:
    """`reflexd replay` input: a list key is a bad line, a µs time a future drop; both counted, the rest read.
    A gap event (reflexd's own wall clock) is never judged by the bound."""
    rows = [(1_000_000, "A"), (1_001_000, [1, 2]), (1_002_000_000, "A"), (1_003_000, "A")]
    lines = []
    for t, key in rows:
        if recording:
            lines.append({"source": "s", "ts": t / 1000, "key": key, "data": {"T": t}})
        else:
            lines.append({"T": t, "k": key})
    if recording:
        lines.append({"source": "s", "ts": 1.7e9, "key": None, "kind": "gap", "data": {}})
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    item = (
        ReplayInput(path, max_future={"s": 300.0})
        if recording
        else ReplayInput(path, "s", key_field="k", time_field="T", max_future={"s": 300.0})
    )
    events = list(read_input(item))
    assert [e.ts for e in events if e.kind == "data"] == [1000.0, 1003.0]
    assert (item.bad_lines, item.future, item.events) == (1, 1, len(events))
    assert item.first_error is not None and "list" in item.first_error
    assert item.first_future is not None and item.first_future.startswith(f"{path}:3: ")
