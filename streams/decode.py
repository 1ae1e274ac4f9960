"""Decoding is pure: one raw message (bytes or text) → its key, its event time and its data.

The websocket source (each frame), the replay source (each line of a file) and ``reflexd
replay`` (raw files) all decode here, so a message means the same wherever it is read; none of
it needs a socket to be tested.

- **Data**: JSON (orjson) by default; ``text`` keeps the message as text (UTF-8, undecodable
  bytes replaced). A message that is not JSON raises :class:`NotJson`.
- **Key** (``key_field``): that field of a JSON object; None when the field is missing or the
  message is not an object. A key is a scalar — text, a number, a boolean or null
  (:data:`KEY_TYPES`, :func:`key_problem`): a field holding a list or an object raises
  :class:`BadKey` (a rule groups its state by key, and such a value cannot be one).
- **Event time** (``time_field`` in ``time_unit``, :data:`TIME_SCALE`): that field's number, in
  seconds; text holding a number is read the same way, and other text as an ISO-8601 time
  (``2026-01-15T12:00:00.123Z``; without an offset it is UTC). A message without one (the field
  missing or null) has none, and the caller decides what that means: a live source uses the
  arrival time, ``reflexd replay`` skips the line. A time field holding anything else (a boolean,
  a list, an object, text that is neither, a number that is not finite) raises :class:`BadTime`:
  counted as a decode error (``bad_time``), never replaced by the arrival time.
- **Event-time bound** (``max_future_seconds``, default :data:`MAX_FUTURE_SECONDS`): live, an event
  whose time is more than that ahead of the wall clock when it arrived is counted (``future``)
  and dropped, so one message in the wrong unit cannot move a rule's watermark years ahead. A
  replay has no wall clock: :class:`ProgressBound` judges each event against the recording's own
  progress instead. Kafka and ccxt sources apply the live bound to their records' times too
  (:func:`future_limit`).
- Field names may be paths: ``data.s`` reads ``{"data": {"s": …}}`` (Binance's combined streams).
  The top-level key wins: a message holding the key ``"data.s"`` itself (what the name always
  meant) is read as before, and the path is walked only when that key is absent or null. The path
  is split once, when the decoder is built; a name without a dot costs nothing more.

Two shapes of decoder, the same rules:

- :func:`make_live_decoder` (the websocket read loop, once per frame): ``decode(raw, now, meta)``
  returns the :class:`~streams.event.Event` itself, timed by the arrival time ``now`` when the
  message has no time, and raises :class:`TooFarAhead` for a time more than
  ``max_future_seconds`` after ``now``. Building the event here keeps the loop at one Python
  call per message.
- :func:`make_decoder` (replays): ``decode(raw)`` returns ``(key, time or None, data)``; the caller
  applies its :class:`ProgressBound`.

:class:`DecodeFields` declares ``key_field`` / ``time_field`` / ``time_unit`` once, for every
source configuration that decodes this way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from daemon.errors import DecodeError, ExpressionError, SourceError
from streams.event import DATA, Event
from streams.expressions import Compiled, compile_expression

__all__ = [
    "KEY_TYPES",
    "MAX_FUTURE_SECONDS",
    "TIME_SCALE",
    "BadKey",
    "BadTime",
    "Decode",
    "DecodeFields",
    "LiveDecode",
    "NotJson",
    "ProgressBound",
    "TimeUnit",
    "TooFarAhead",
    "future_limit",
    "key_problem",
    "make_decoder",
    "make_live_decoder",
    "parse_time",
]

#: Types an event key may have (what JSON scalars decode to). Check with ``type(key) in KEY_TYPES``.
KEY_TYPES: frozenset[type] = frozenset({str, int, float, bool, type(None)})

MAX_FUTURE_SECONDS = 300.0
"""Default ``max_future_seconds`` of a source: how far ahead of the wall clock an event time may be."""

TimeUnit = Literal["s", "ms", "us", "ns"]

#: Units of a time field, as the number one second is in each.
TIME_SCALE: dict[str, float] = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}

#: ``decode(raw) -> (key, event time in seconds or None, data)``; raises :class:`NotJson`,
#: :class:`BadKey` or :class:`BadTime`.
Decode = Callable[[bytes | str], tuple[Any, float | None, Any]]

#: ``decode(raw, now, meta) -> Event``; raises :class:`NotJson`, :class:`BadKey`, :class:`BadTime` or
#: :class:`TooFarAhead`. ``raw`` may be any bytes-like payload (a websocket frame's is a bytearray).
LiveDecode = Callable[[bytes | bytearray | memoryview | str, float, dict[str, Any]], Event]


class NotJson(DecodeError):
    """The message is not JSON (``reason``: ``not JSON (<the parser's message>)``)."""

    def __init__(self, source: str, error: str) -> None:
        super().__init__(source, f"not JSON ({error})")


class BadKey(DecodeError):
    """The key field holds a list or an object.

    ``problem`` says what it holds (:func:`key_problem`); ``time`` is the message's event time (None
    if it has none), for a caller that judges a missing time first.
    """

    def __init__(self, source: str, key_field: str | None, problem: str, time: float | None) -> None:
        super().__init__(source, f"{problem} in key field {key_field!r}")
        self.problem = problem
        self.time = time


class BadTime(DecodeError):
    """The time field holds something that is not a time (:func:`parse_time`): a decode error,
    ``problem`` ``bad_time: ...`` names what it holds."""

    def __init__(self, source: str, time_field: str | None, value: Any) -> None:
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        self.problem = f"bad_time: {type(value).__name__} {shown} in time field {time_field!r}"
        super().__init__(source, self.problem)
        self.value = value


class TooFarAhead(SourceError):
    """The message's event time is more than ``max_future_seconds`` after the arrival time: counted
    as ``future`` and dropped, not a decode error. ``time`` is the event time, ``now`` the arrival."""

    def __init__(self, source: str, time: float, now: float) -> None:
        super().__init__(source, f"event time {time!r} is {time - now:.0f} s ahead of the clock")
        self.time = time
        self.now = now


class DecodeFields(BaseModel):
    """Where the key and the event time of a JSON message are, and which messages are events at all
    (a mixin of source configurations)."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    key_field: str | None = Field(
        None,
        description="Field of a JSON message used as the event key; a dotted name is a path (`data.s`) "
        "when the message has no top-level key of that very name.",
    )
    time_field: str | None = Field(
        None,
        description="Field of a JSON message holding the event time (a replay source needs it for pacing): "
        "a number in `time_unit`, or an ISO-8601 text (`2026-01-15T12:00:00.123Z`); a dotted name is a "
        "path, as for `key_field`. A value that is neither is a decode error (`bad_time`).",
    )
    time_unit: TimeUnit = Field("ms", description="Unit of `time_field`.")
    trace_field: str | None = Field(
        None,
        description="Field of a JSON message holding a W3C `traceparent`: the parent of the span of a rule "
        "that fires on it (with `daemon.tracing`; read only when a rule fires). A dotted name is a path.",
    )
    where: str | None = Field(
        None,
        description="Expression (the rules' language) a message must satisfy to become an event, e.g. "
        "`data.e == 'trade'` to drop a subscription reply; a message for which it is false, or which it "
        "cannot evaluate (a missing field), is dropped before any rule and counted as `filtered`, not "
        "as an error.",
    )

    @field_validator("where")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                compile_expression(value)
            except ExpressionError as exc:
                raise ValueError(str(exc)) from None
        return value

    def compiled_where(self) -> Compiled | None:
        """The ``where`` filter, compiled (None without one): call it with an event."""
        return None if self.where is None else compile_expression(self.where)

    def replay_file(self) -> str | None:
        """The file of raw messages this source reads, if it reads one: ``reflexd replay FILE`` with
        that file decodes it as this source does. None here; the replay source names its ``path``."""
        return None


def parse_time(value: Any, scale: float) -> float | None:
    """``value`` of a time field as seconds (None if it is not a time): a number in the unit whose
    second is ``scale``, text holding such a number, or an ISO-8601 text (UTC without an offset).
    Non-finite times are not times."""
    if type(value) is int or type(value) is float:
        seconds = value / scale
    elif type(value) is str:
        try:
            seconds = float(value) / scale
        except ValueError:
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                return None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            seconds = moment.timestamp()
    else:
        return None
    return seconds if math.isfinite(seconds) else None


def _path(name: str | None) -> tuple[str, ...] | None:
    """The nested path a dotted field name also means (None for a plain name)."""
    if name is None or "." not in name:
        return None
    parts = tuple(name.split("."))
    return parts if all(parts) else None  # "a..b", ".a": only ever the literal key


def _walk(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path`` in ``data`` (None if a step is missing or not an object)."""
    value: Any = data
    for part in path:
        if type(value) is not dict:
            return None
        value = value.get(part)
    return value


def future_limit(max_future_seconds: float | None) -> float:
    """``max_future_seconds`` as a number to compare with (null: no bound, infinity)."""
    return math.inf if max_future_seconds is None else max_future_seconds


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


def make_live_decoder(
    source: str,
    key_field: str | None = None,
    time_field: str | None = None,
    time_unit: TimeUnit = "ms",
    *,
    text: bool = False,
    max_future: float | None = None,
) -> LiveDecode:
    """The decoder of ``source``'s messages as they arrive: ``decode(raw, now, meta)`` is the event
    (``text``: the message as text, no key, timed ``now``). ``max_future``: seconds an event time
    may be ahead of ``now`` (None: no bound)."""
    build = tuple.__new__  # Event(...) / new_event(...) without a second call per message
    if text:

        def decode_text(raw: bytes | bytearray | memoryview | str, now: float, meta: dict[str, Any]) -> Event:
            data = raw if isinstance(raw, str) else str(raw, "utf-8", "replace")
            event: Event = build(Event, (source, now, now, None, data, meta, DATA, None))
            return event

        return decode_text

    scale = TIME_SCALE[time_unit]
    limit = future_limit(max_future)
    loads = orjson.loads
    not_json = orjson.JSONDecodeError
    key_types = KEY_TYPES
    key_path = _path(key_field)
    time_path = _path(time_field)
    walk = _walk
    parse = parse_time

    def decode(raw: bytes | bytearray | memoryview | str, now: float, meta: dict[str, Any]) -> Event:
        try:
            data = loads(raw)
        except not_json as exc:
            raise NotJson(source, str(exc)) from exc
        key = None
        ts = now
        if type(data) is dict:
            if time_field is not None:
                t = data.get(time_field)
                if t is None and time_path is not None:
                    t = walk(data, time_path)
                if type(t) is int or type(t) is float:
                    ts = t / scale
                elif t is not None:
                    parsed = parse(t, scale)
                    if parsed is None:
                        raise BadTime(source, time_field, t)
                    ts = parsed
            if key_field is not None:
                key = data.get(key_field)
                if key is None and key_path is not None:
                    key = walk(data, key_path)
                if type(key) is not str and type(key) not in key_types:  # a list/object cannot be a key
                    raise BadKey(source, key_field, key_problem(key) or "", None if ts is now else ts)
            if ts - now > limit:  # e.g. µs read as ms: would poison the watermark
                raise TooFarAhead(source, ts, now)
        event: Event = build(Event, (source, ts, now, key, data, meta, DATA, None))
        return event

    return decode


def make_decoder(
    source: str,
    key_field: str | None = None,
    time_field: str | None = None,
    time_unit: TimeUnit = "ms",
    *,
    text: bool = False,
) -> Decode:
    """The decoder of ``source``'s messages read from a file: ``decode(raw)`` is ``(key, event time
    in seconds or None, data)`` (``text``: the message as text, no key, no time).

    The same rules as :func:`make_live_decoder`, which builds the event itself for the live hot
    path; the two are written side by side (a shared helper would be a second call per message)
    and ``tests/streams/test_decode.py`` runs every case through both.
    """
    if text:

        def decode_text(raw: bytes | str) -> tuple[Any, float | None, Any]:
            return None, None, raw if isinstance(raw, str) else raw.decode("utf-8", "replace")

        return decode_text

    scale = TIME_SCALE[time_unit]
    loads = orjson.loads
    not_json = orjson.JSONDecodeError
    key_types = KEY_TYPES
    key_path = _path(key_field)
    time_path = _path(time_field)
    walk = _walk
    parse = parse_time

    def decode(raw: bytes | str) -> tuple[Any, float | None, Any]:
        try:
            data = loads(raw)
        except not_json as exc:
            raise NotJson(source, str(exc)) from exc
        key = None
        ts = None
        if type(data) is dict:
            if time_field is not None:
                t = data.get(time_field)
                if t is None and time_path is not None:
                    t = walk(data, time_path)
                if type(t) is int or type(t) is float:
                    ts = t / scale
                elif t is not None:
                    ts = parse(t, scale)
                    if ts is None:
                        raise BadTime(source, time_field, t)
            if key_field is not None:
                key = data.get(key_field)
                if key is None and key_path is not None:
                    key = walk(data, key_path)
                if type(key) is not str and type(key) not in key_types:  # a list/object cannot be a key
                    raise BadKey(source, key_field, key_problem(key) or "", ts)
        return key, ts, data

    return decode
