"""Decoding without sockets: raw message → key, event time, data (the same for the live and the replay shape);
scalar keys; the event-time bound of replays; reflexd replay reading raw files and recordings."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.errors import DecodeError
from streams.decode import (
    TIME_SCALE,
    BadKey,
    BadTime,
    DecodeFields,
    NotJson,
    ProgressBound,
    TooFarAhead,
    future_limit,
    key_problem,
    make_decoder,
    make_live_decoder,
)
from streams.event import Event
from streams.replay import ReplaySourceConfig
from streams.rules.replay import ReplayInput, read_input
from streams.websocket import WebSocketSourceConfig

NOW = 1_768_485_600.5
T_MS = 1_768_485_600_139


def both(raw: bytes | str, **fields: Any) -> tuple[tuple[Any, float | None, Any], Event]:
    """What the replay decoder and the live decoder (at NOW) make of ``raw``."""
    return make_decoder("s", **fields)(raw), make_live_decoder("s", **fields)(raw, NOW, {"seq": 1})


def test_a_trade_gives_its_key_its_time_in_seconds_and_the_whole_message() -> None:
    """key_field and time_field are read from the object; the live decoder builds the very event."""
    message = {"e": "trade", "s": "BTCUSDT", "p": "65000.10", "T": T_MS}
    decoded, event = both(orjson.dumps(message), key_field="s", time_field="T")
    assert decoded == ("BTCUSDT", T_MS / 1e3, message)
    assert event == Event("s", T_MS / 1e3, NOW, "BTCUSDT", message, {"seq": 1})
    assert type(event) is Event and event.kind == "data" and event.ack is None


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_time_units(unit: str) -> None:
    """A time in s, ms, µs or ns is the same second."""
    raw = orjson.dumps({"T": 1_768_485_600 * int(TIME_SCALE[unit])})
    decoded, event = both(raw, time_field="T", time_unit=unit)
    assert decoded[1] == event.ts == 1_768_485_600.0


def test_a_null_time_field_means_no_time() -> None:
    """Null is an absent time: none for a replay, the arrival time live."""
    decoded, event = both(orjson.dumps({"T": None}), time_field="T")
    assert decoded[1] is None
    assert event.ts == NOW


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1768485600139", 1_768_485_600.139),
        ("2026-01-15T14:00:00.139Z", 1_768_485_600.139),
        ("2026-01-15T15:00:00.139+01:00", 1_768_485_600.139),
        ("2026-01-15T14:00:00.139", 1_768_485_600.139),  # no offset: UTC
        ("2026-01-15 14:00:00", 1_768_485_600.0),
    ],
)
def test_iso_8601_and_numeric_text_are_times(value: str, seconds: float) -> None:
    """ISO-8601 text (UTC when it has no offset) and text holding a number in time_unit are event times."""
    decoded, event = both(orjson.dumps({"T": value}), time_field="T")
    assert decoded[1] == pytest.approx(seconds, abs=1e-6)
    assert event.ts == decoded[1]


@pytest.mark.parametrize("value", [True, [1], {"t": 1}, "soon", "", "nan", "inf", "2026-13-45T99:00:00Z"])
def test_a_time_field_that_is_not_a_time_is_a_decode_error(value: Any) -> None:
    """A boolean, a list, an object, text that is neither a number nor ISO-8601, a non-finite number: BadTime
    (a decode error, reason bad_time), never the arrival time in its place."""
    raw = orjson.dumps({"T": value, "s": "K"})
    with pytest.raises(BadTime) as replayed:
        make_decoder("s", "s", "T")(raw)
    with pytest.raises(BadTime) as live:
        make_live_decoder("s", "s", "T")(raw, NOW, {})
    assert isinstance(live.value, DecodeError)
    assert replayed.value.problem == live.value.problem
    assert live.value.problem.startswith("bad_time: ") and "'T'" in live.value.problem


def test_missing_fields_give_no_key_and_no_time() -> None:
    """A message without the configured fields decodes; its key is None and it has no time of its own."""
    decoded, event = both(b'{"x": 1}', key_field="s", time_field="T")
    assert decoded == (None, None, {"x": 1})
    assert (event.key, event.ts) == (None, NOW)


@pytest.mark.parametrize("value", [[1, 2], 7, "text", None, 1.5])
def test_a_message_that_is_not_an_object_has_no_key_and_no_time(value: Any) -> None:
    """JSON that is not an object is data as it is: no key, no time (and never a bad key)."""
    decoded, event = both(orjson.dumps(value), key_field="s", time_field="T")
    assert decoded == (None, None, value)
    assert (event.key, event.ts, event.data) == (None, NOW, value)


@pytest.mark.parametrize("key", ["BTC", 1, 1.5, True, None])
def test_scalars_are_keys(key: Any) -> None:
    """Text, numbers, booleans and null are taken as they are."""
    decoded, event = both(orjson.dumps({"k": key}), key_field="k")
    assert decoded[0] == event.key == key
    assert type(decoded[0]) is type(key)


@pytest.mark.parametrize(
    ("key", "problem"), [([1, 2], "key is a list, not a scalar"), ({"a": 1}, "key is a dict, not a scalar")]
)
def test_a_list_or_an_object_is_a_bad_key_naming_what_it_is(key: Any, problem: str) -> None:
    """BadKey is a DecodeError naming the source, the field and the type; it carries the time it saw."""
    raw = orjson.dumps({"k": key, "T": T_MS})
    for decode in (make_decoder("s", "k", "T"), lambda r: make_live_decoder("s", "k", "T")(r, NOW, {})):
        with pytest.raises(BadKey) as info:
            decode(raw)
        assert isinstance(info.value, DecodeError)
        assert (info.value.source, info.value.problem, info.value.time) == ("s", problem, T_MS / 1e3)
        assert info.value.reason == f"{problem} in key field 'k'"
    with pytest.raises(BadKey) as untimed:
        make_decoder("s", "k", "T")(orjson.dumps({"k": key}))
    assert untimed.value.time is None


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe", b'{"T": NaN}', "[1,"])
def test_what_is_not_json_raises_not_json_with_the_parsers_reason(raw: bytes | str) -> None:
    """Not JSON (and JSON's NaN, which orjson refuses) is a DecodeError saying what the parser said."""
    for decode in (make_decoder("s", "k", "T"), lambda r: make_live_decoder("s", "k", "T")(r, NOW, {})):
        with pytest.raises(NotJson) as info:
            decode(raw)
        assert isinstance(info.value, DecodeError) and info.value.source == "s"
        assert info.value.reason.startswith("not JSON (") and info.value.reason.endswith(")")


def test_text_keeps_the_message_as_text() -> None:
    """decode: text replaces undecodable bytes and ignores key and time fields; text input stays text."""
    raw = b'{"s": "A", "T": 1}\xff'
    decoded, event = both(raw, key_field="s", time_field="T", text=True)
    assert decoded == (None, None, '{"s": "A", "T": 1}\ufffd')
    assert (event.key, event.ts, event.data) == (None, NOW, '{"s": "A", "T": 1}\ufffd')
    assert make_decoder("s", text=True)("héllo") == (None, None, "héllo")


def test_text_and_bytes_decode_alike() -> None:
    """A frame received as text decodes as its UTF-8 bytes do."""
    message = {"s": "É", "T": T_MS}
    assert make_decoder("s", "s", "T")(orjson.dumps(message).decode()) == make_decoder("s", "s", "T")(
        orjson.dumps(message)
    )


@pytest.mark.parametrize("text", [False, True], ids=["json", "text"])
@pytest.mark.parametrize("raw", [b'{"s": "\xc3\x89", "T": 1768485600139}', b'{"s": 1}\xff', b"{not json"])
def test_the_live_decoder_reads_a_bytearray_or_memoryview_as_its_bytes(raw: bytes, text: bool) -> None:
    """The websocket source hands frame payloads over as websockets holds them (a bytearray): every
    bytes-like form of a message decodes to the same event, or fails with the same error."""
    decode = make_live_decoder("s", "s", "T", text=text)
    outcomes = []
    for form in (raw, bytearray(raw), memoryview(raw)):
        try:
            outcomes.append(decode(form, NOW, {"seq": 1}))
        except NotJson as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1] == outcomes[2]


def test_a_dotted_field_name_is_the_key_with_a_dot_first_then_a_path() -> None:
    """``a.b`` names the top-level key "a.b" when the message has it (what it always meant), and the
    nested field ``{"a": {"b": …}}`` otherwise (Binance's combined streams: ``data.s``)."""
    for decode in (make_decoder("s", "a.b", "t.ms"), lambda raw: make_live_decoder("s", "a.b", "t.ms")(raw, NOW, {})):
        both_ways = b'{"a.b": "K", "t.ms": 1000, "a": {"b": "P"}, "t": {"ms": 2000}}'
        nested = b'{"a": {"b": "P"}, "t": {"ms": 2000}}'
        got = [decode(raw) for raw in (b'{"a.b": "K", "t.ms": 1000}', both_ways, nested)]
        assert [(g.key, g.ts) if isinstance(g, Event) else g[:2] for g in got] == [("K", 1.0), ("K", 1.0), ("P", 2.0)]


def test_a_binance_combined_stream_message_reads_through_data() -> None:
    """``{"stream": …, "data": {…}}``: key ``data.s`` and time ``data.T`` reach into the payload; a path
    through a non-object, or a missing step, is no key and no time; an empty segment is only a literal key."""
    trade = {"stream": "btcusdt@trade", "data": {"e": "trade", "s": "BTCUSDT", "T": T_MS, "p": "1"}}
    decoded, event = both(orjson.dumps(trade), key_field="data.s", time_field="data.T")
    assert decoded == ("BTCUSDT", T_MS / 1e3, trade)
    assert (event.key, event.ts) == ("BTCUSDT", T_MS / 1e3)
    for odd in ({"data": "text"}, {"data": {"x": 1}}, {"data": [1]}, {"result": None, "id": 1}):
        decoded, event = both(orjson.dumps(odd), key_field="data.s", time_field="data.T")
        assert decoded[:2] == (None, None) and (event.key, event.ts) == (None, NOW)
    assert make_decoder("s", "a..b")(b'{"a": {"": {"b": 1}}, "a..b": 2}')[0] == 2
    assert make_decoder("s", "a..b")(b'{"a": {"": {"b": 1}}}')[0] is None


def test_a_nested_key_holding_an_object_is_a_bad_key() -> None:
    """The scalar-key rule holds for a nested key too."""
    with pytest.raises(BadKey):
        make_decoder("s", "data.s")(b'{"data": {"s": {"x": 1}}}')


def test_live_times_beyond_max_future_raise_too_far_ahead() -> None:
    """Live, a time more than max_future after the arrival is refused (not a decode error); at the limit it
    passes; without a bound nothing is refused."""
    decode = make_live_decoder("s", time_field="T", time_unit="s", max_future=300.0)
    assert decode(orjson.dumps({"T": NOW + 300}), NOW, {}).ts == NOW + 300
    with pytest.raises(TooFarAhead) as info:
        decode(orjson.dumps({"T": NOW + 301}), NOW, {})
    assert not isinstance(info.value, DecodeError)
    assert (info.value.time, info.value.now) == (NOW + 301, NOW)
    unbounded = make_live_decoder("s", time_field="T", time_unit="s")
    assert unbounded(orjson.dumps({"T": NOW * 1000}), NOW, {}).ts == NOW * 1000
    assert decode(orjson.dumps({"T": 0}), NOW, {}).ts == 0.0  # the past is the rules' business (late)


def test_a_bad_key_is_reported_before_a_time_too_far_ahead() -> None:
    """A message with both problems is a decode error (as the websocket source always counted it)."""
    with pytest.raises(BadKey):
        make_live_decoder("s", "k", "T", "s", max_future=1.0)(orjson.dumps({"k": [1], "T": NOW * 2}), NOW, {})


def test_future_limit() -> None:
    """max_future_seconds null is no bound."""
    assert future_limit(None) == math.inf
    assert future_limit(2.5) == 2.5


def test_the_websocket_and_replay_sources_declare_the_fields_once() -> None:
    """Both source configurations take key_field/time_field/time_unit from DecodeFields, with its defaults;
    only the replay source names a file of raw messages for `reflexd replay`."""
    ws = WebSocketSourceConfig(type="websocket", url="ws://127.0.0.1:1/", key_field="s", time_field="T")
    replay = ReplaySourceConfig(type="replay", path="in.jsonl", time_unit="us")
    for config in (ws, replay):
        assert isinstance(config, DecodeFields)
        for name in ("key_field", "time_field", "time_unit"):
            assert repr(type(config).model_fields[name]) == repr(DecodeFields.model_fields[name])
    assert (ws.key_field, ws.time_field, ws.time_unit) == ("s", "T", "ms")
    assert (replay.key_field, replay.time_field, replay.time_unit) == (None, None, "us")
    assert (ws.replay_file(), replay.replay_file()) == (None, "in.jsonl")


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(key=scalars, t=st.integers(0, 2**53), extra=st.dictionaries(st.text(), json_values, max_size=4))
def test_any_object_with_a_scalar_key_and_a_numeric_time_round_trips(
    key: Any, t: int, extra: dict[str, Any]
) -> None:
    """For any JSON object, the decoders read back the key and the time that were written, and the data whole."""
    message = {**extra, "k": key, "T": t}
    decoded, event = both(orjson.dumps(message), key_field="k", time_field="T")
    assert decoded == (key, t / 1e3, message)
    assert (event.key, event.ts, event.data) == (key, t / 1e3, message)


@settings(max_examples=500, deadline=None)
@given(raw=st.binary(max_size=64) | st.builds(orjson.dumps, json_values))
def test_any_bytes_decode_or_raise_a_documented_error(raw: bytes) -> None:
    """Whatever arrives, both decoders return or raise NotJson / BadKey / BadTime (TooFarAhead live), never anything
    else, and they agree (fuzz)."""
    for key_field in ("k", None):
        try:
            key, ts, data = make_decoder("s", key_field, "T")(raw)
        except (NotJson, BadKey, BadTime) as exc:
            with pytest.raises(type(exc)):
                make_live_decoder("s", key_field, "T")(raw, NOW, {})
            continue
        try:
            event = make_live_decoder("s", key_field, "T", max_future=300.0)(raw, NOW, {})
        except TooFarAhead as exc:
            assert ts is not None and ts - NOW > 300.0 and exc.time == ts
            continue
        assert (event.key, event.ts, event.data) == (key, NOW if ts is None else ts, data)


# -- keys and the replay event-time bound (moved here from test_event.py with the code) -------------


def test_scalars_are_keys_lists_and_objects_are_not() -> None:
    """Text, numbers, booleans and null are keys; a list or an object is refused with its type named."""
    assert [key_problem(k) for k in ("BTC", 1, 1.5, True, None)] == [None] * 5
    assert key_problem([1, 2]) == "key is a list, not a scalar"
    assert key_problem({"a": 1}) == "key is a dict, not a scalar"


def admitted(bound: ProgressBound, times: list[float]) -> list[float]:
    return [t for t in times if bound.admit(t)]


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


# -- the source-level `where:` filter --------------------------------------------------------------


def test_a_source_where_that_does_not_compile_is_a_config_error_at_its_path() -> None:
    """`where:` is compiled when the configuration loads: a bad expression is reported at sources.<name>.where."""
    from daemon.config import load_config_text
    from daemon.errors import ConfigError
    from daemon.registry import builtin_registry

    text = (
        "sources:\n  feed:\n    type: websocket\n    url: ws://127.0.0.1:1/\n    where: \"data.e = 'trade'\"\n"
        "tools:\n  t: {type: log}\nrules:\n  r: {from: feed, then: [{tool: t}]}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text, builtin_registry())
    assert "sources.feed.where" in str(info.value)
    good = text.replace("data.e = 'trade'", "data.e == 'trade'")
    cfg = load_config_text(good, builtin_registry()).sources["feed"].config
    assert isinstance(cfg, DecodeFields) and cfg.compiled_where() is not None
    assert WebSocketSourceConfig(type="websocket", url="ws://127.0.0.1:1/").compiled_where() is None


def test_read_input_filters_raw_messages_with_the_source_where(tmp_path: Path) -> None:
    """`reflexd replay SOURCE=FILE`: messages the source's where: refuses (false, or a field it reads is
    missing, as a subscription reply) are counted as filtered, not as bad lines; the trades are read."""
    lines = [
        {"result": None, "id": 1},
        {"e": "trade", "s": "A", "T": 1_000_000},
        {"e": "24hrTicker", "s": "A", "T": 1_001_000},
        {"e": "trade", "s": "A", "T": 1_002_000},
    ]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    where = ReplaySourceConfig(type="replay", path="x", where="data.e == 'trade'").compiled_where()
    item = ReplayInput(path, "s", key_field="s", time_field="T", where=where)
    assert [e.ts for e in read_input(item)] == [1000.0, 1002.0]
    assert (item.filtered, item.bad_lines, item.events) == (2, 0, 2)
    unfiltered = ReplayInput(path, "s", key_field="s", time_field="T")
    assert len(list(read_input(unfiltered))) == 3 and unfiltered.bad_lines == 1  # the reply: no time


async def test_the_replay_source_filters_with_where_and_counts_it(tmp_path: Path) -> None:
    """The replay source applies its where: between decoding and pacing: refused lines are counted as
    filtered (not decode errors), the rest arrive in order."""
    import asyncio

    from streams.backoff import ReconnectConfig
    from streams.reconnect import Reconnector
    from streams.replay import ReplaySource

    rows = [
        {"result": None, "id": 1},
        {"e": "trade", "T": 1000, "i": 0},
        {"e": "x", "T": 2000},
        {"e": "trade", "T": 3000, "i": 1},
    ]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    config = ReplaySourceConfig(
        type="replay", path=str(path), speed=0, time_field="T", where="data.e == 'trade'"
    )
    src = ReplaySource("rp", config, path)
    task = asyncio.create_task(Reconnector(src, ReconnectConfig()).run())
    got: list[Event] = []
    try:
        async with asyncio.timeout(5):
            while len(got) < 2:
                got.extend(await src.queue.get_batch())
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [e.data["i"] for e in got] == [0, 1]
    assert (src.stats.filtered, src.stats.decode_errors, src.stats.as_dict()["filtered"]) == (2, 0, 2)
