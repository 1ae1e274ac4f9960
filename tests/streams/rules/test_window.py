"""Steps `where`, `set`, `key` and `window` with its aggregates, in event time and virtual time."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from reactivex.testing import TestScheduler

from daemon.errors import RuleError
from streams.rules.aggregates import WindowProgram, compile_aggregates
from streams.rules.pipeline import Rule, RuleConfig
from tests.streams.rules.helpers import Recorder, ev, make_rule, run

ALL = {
    "n": "count()",
    "total": "sum(x)",
    "mean": "avg(x)",
    "low": "min(x)",
    "high": "max(x)",
    "open": "first(x)",
    "close": "last(x)",
    "sd": "stddev(x)",
    "vw": "vwap(x, v)",
    "chg": "pct_change(x)",
}
SET_XV = {"set": {"x": "float(data.x)", "v": "float(data.v)"}}


def reference(window: list[tuple[float, float]]) -> dict[str, Any]:
    """The aggregates of ``window`` [(x, v), ...], computed from scratch."""
    xs = [x for x, _ in window]
    n = len(xs)
    mean = sum(xs) / n
    volume = sum(v for _, v in window)
    return {
        "n": n,
        "total": sum(xs),
        "mean": mean,
        "low": min(xs),
        "high": max(xs),
        "open": xs[0],
        "close": xs[-1],
        "sd": math.sqrt(sum((x - mean) ** 2 for x in xs) / n),
        "vw": sum(x * v for x, v in window) / volume if volume else None,
        "chg": (xs[-1] - xs[0]) / xs[0] * 100 if xs[0] else None,
    }


def assert_close(got: dict[str, Any], want: dict[str, Any]) -> None:
    for name, value in want.items():
        if value is None or isinstance(value, int):
            assert got[name] == value, (name, got[name], value)
        else:
            assert math.isclose(got[name], value, rel_tol=1e-9, abs_tol=1e-7), (name, got[name], value)


# -- where / set / key ------------------------------------------------------------------------------


def test_set_adds_fields_in_order_and_later_steps_use_them() -> None:
    """`set` computes fields in order (later ones use earlier ones); `where` and templates read them."""
    rec = Recorder()
    r = make_rule(
        [
            {"set": {"price": "float(data.p)", "notional": "price * float(data.q)"}},
            {"where": "notional >= 100"},
        ],
        rec,
        args={"text": "{key} {notional}", "n": "{notional}"},
    )
    run(r, [ev(1, p="10", q="5"), ev(2, p="10", q="20"), ev(3, p="1", q="100")])
    assert rec.args == [{"text": "BTC 200.0", "n": 200.0}, {"text": "BTC 100.0", "n": 100.0}]


def test_set_that_raises_drops_only_that_event_and_counts_it() -> None:
    """An expression raising inside a step drops that event; the rule keeps running; errors counted."""
    rec = Recorder()
    r = make_rule([{"set": {"price": "float(data.p)"}}], rec, args={"p": "{price}"})
    run(r, [ev(1, p="1"), ev(2, q="no p"), ev(3, p="x"), ev(4, p="4")])
    assert rec.args == [{"p": 1.0}, {"p": 4.0}]
    assert r.stats.errors == 2 and r.stats.fired == 2


def test_key_step_rekeys_for_later_per_key_steps() -> None:
    """`key` replaces the event key: a later per-key window groups by it."""
    rec = Recorder()
    r = make_rule(
        [{"key": "data.account"}, {"window": {"count": 10, "aggregates": {"n": "count()"}}}],
        rec,
        args={"k": "{key}", "n": "{n}"},
    )
    run(r, [ev(1, "BTC", account="a"), ev(2, "ETH", account="a"), ev(3, "BTC", account="b")])
    assert rec.args == [{"k": "a", "n": 1}, {"k": "a", "n": 2}, {"k": "b", "n": 1}]


def test_fields_used_before_they_exist_are_refused_when_building() -> None:
    """A computed field used before the step that adds it is a build error, not a run-time surprise."""
    with pytest.raises(RuleError, match=r"steps\.0\.where: column 1: unknown name 'price'"):
        make_rule([{"where": "price > 1"}, {"set": {"price": "1"}}], Recorder())
    with pytest.raises(RuleError, match="unknown name 'vwap'"):
        make_rule([{"set": {"p": "1"}}], Recorder(), args={"x": "{vwap}"})


# -- sliding windows ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0, 7.0, 12.0]),  # time step
            st.sampled_from(["a", "b"]),
            st.floats(min_value=-1e4, max_value=1e5, allow_nan=False).map(lambda x: round(x, 2)),
            st.sampled_from([0.0, 0.1, 1.0, 2.5, 40.0]),
        ),
        min_size=1,
        max_size=60,
    )
)
def test_sliding_time_window_matches_a_from_scratch_computation(
    steps: list[tuple[float, str, float, float]],
) -> None:
    """On every event, each aggregate equals the same aggregate computed from scratch over the key's
    events in (ts - 10, ts]: all of them (shifted sums and extremes), only plain running sums (two
    sum(x) terms: sum(x) and sum(v)), and vwap with pct_change (one sum(v), one sum(x*v): the
    written-out path)."""
    for names in (ALL, ("n", "total", "mean", "open", "close", "vw", "chg"), ("vw", "chg")):
        check_sliding_time_window({name: ALL[name] for name in names}, steps)


def check_sliding_time_window(
    aggregates: dict[str, str], steps: list[tuple[float, str, float, float]]
) -> None:
    rec = Recorder()
    r = make_rule([SET_XV, {"window": {"seconds": 10, "aggregates": aggregates}}], rec)
    ts = 1000.0
    seen: list[tuple[float, str, float, float]] = []
    expected = []
    for dt, key, x, v in steps:
        ts += dt
        seen.append((ts, key, x, v))
        window = [(x2, v2) for t2, k2, x2, v2 in seen if k2 == key and ts - 10 < t2 <= ts]
        expected.append(reference(window))
        r.on_next(ev(ts, key, x=x, v=v))
    assert len(rec.rows) == len(expected)
    for (_ts, _key, fields), want in zip(rec.rows, expected, strict=True):
        assert list(fields) == ["x", "v", *aggregates]
        assert_close(fields, {name: want[name] for name in aggregates})


def test_sliding_window_boundary_excludes_the_event_exactly_one_window_old() -> None:
    """The window is (ts - seconds, ts]: an event exactly `seconds` older has left."""
    rec = Recorder()
    r = make_rule([SET_XV, {"window": {"seconds": 10, "aggregates": {"n": "count()", "o": "first(x)"}}}], rec)
    run(r, [ev(0, x=1, v=1), ev(9.999, x=2, v=1), ev(10, x=3, v=1)])
    assert [f["n"] for _, _, f in rec.rows] == [1, 2, 2]
    assert rec.rows[-1][2]["o"] == 2.0


def test_window_after_a_silence_starts_empty() -> None:
    """Empty windows: after a gap longer than the window nothing old survives (count 1, pct_change 0),
    and a time window never emits for periods without events."""
    rec = Recorder()
    r = make_rule(
        [SET_XV, {"window": {"seconds": 5, "aggregates": {"n": "count()", "c": "pct_change(x)"}}}], rec
    )
    run(r, [ev(0, x=100, v=1), ev(1, x=110, v=1), ev(100, x=50, v=1)])
    assert [(t, f["n"], f["c"]) for t, _, f in rec.rows] == [(0, 1, 0.0), (1, 2, 10.0), (100, 1, 0.0)]


def test_window_state_is_per_key_unless_per_key_is_false() -> None:
    """Per-key isolation: each key has its own window; `per_key: false` shares one."""
    events = [ev(1, "a", x=1, v=1), ev(2, "b", x=10, v=1), ev(3, "a", x=3, v=1)]
    rec = Recorder()
    run(make_rule([SET_XV, {"window": {"seconds": 60, "aggregates": {"s": "sum(x)"}}}], rec), events)
    assert [f["s"] for _, _, f in rec.rows] == [1.0, 10.0, 4.0]
    rec = Recorder()
    shared = {"window": {"seconds": 60, "per_key": False, "aggregates": {"s": "sum(x)"}}}
    run(make_rule([SET_XV, shared], rec), events)
    assert [f["s"] for _, _, f in rec.rows] == [1.0, 11.0, 14.0]


def test_min_events_holds_back_thin_windows() -> None:
    """With min_events the window emits only once it holds that many events."""
    rec = Recorder()
    r = make_rule([SET_XV, {"window": {"count": 3, "min_events": 3, "aggregates": {"n": "count()"}}}], rec)
    run(r, [ev(t, x=t, v=1) for t in range(5)])
    assert rec.times == [2, 3, 4]


def test_sliding_count_window_keeps_the_last_n() -> None:
    """A sliding count window aggregates the key's last `count` events."""
    rec = Recorder()
    r = make_rule([SET_XV, {"window": {"count": 3, "aggregates": {"s": "sum(x)", "lo": "min(x)"}}}], rec)
    run(r, [ev(t, x=x, v=1) for t, x in enumerate([5, 1, 4, 8, 9, 2])])
    assert [(f["s"], f["lo"]) for _, _, f in rec.rows] == [
        (5.0, 5.0),
        (6.0, 1.0),
        (10.0, 1.0),
        (13.0, 1.0),
        (21.0, 4.0),
        (19.0, 2.0),
    ]


def test_max_events_bounds_a_sliding_window_and_counts_overflow() -> None:
    """A sliding time window never holds more than max_events; what it had to drop is counted."""
    rec = Recorder()
    r = make_rule([SET_XV, {"window": {"seconds": 60, "max_events": 2, "aggregates": {"n": "count()"}}}], rec)
    run(r, [ev(t, x=1, v=1) for t in range(5)])
    assert [f["n"] for _, _, f in rec.rows] == [1, 2, 2, 2, 2]
    assert r.stats.overflow == 3


def test_window_keys_are_bounded_by_max_keys() -> None:
    """Per-key window state is bounded: the least recently updated key is forgotten (and counted)."""
    rec = Recorder()
    r = make_rule([SET_XV, {"window": {"seconds": 60, "aggregates": {"n": "count()"}}}], rec, max_keys=2)
    run(r, [ev(1, "a", x=1, v=1), ev(2, "b", x=1, v=1), ev(3, "c", x=1, v=1), ev(4, "a", x=1, v=1)])
    assert [f["n"] for _, _, f in rec.rows] == [1, 1, 1, 1]  # "a" was forgotten when "c" came
    assert r.stats.evicted == 2


def test_bad_aggregate_inputs_are_errors_and_leave_the_window_untouched() -> None:
    """A non-number or NaN/inf argument is refused: counted as an error, the window unchanged."""
    rec = Recorder()
    r = make_rule(
        [{"set": {"x": "data.x"}}, {"window": {"count": 10, "aggregates": {"s": "sum(x)", "l": "last(x)"}}}],
        rec,
    )
    run(
        r, [ev(1, x=1), ev(2, x="2"), ev(3, x=float("nan")), ev(4, x=float("inf")), ev(5, x=None), ev(6, x=5)]
    )
    assert [f["s"] for _, _, f in rec.rows] == [1, 6]
    assert r.stats.errors == 4


def test_first_and_last_take_any_value() -> None:
    """`first`/`last` are not limited to numbers."""
    rec = Recorder()
    r = make_rule(
        [{"window": {"count": 5, "aggregates": {"a": "first(data.side)", "b": "last(data.side)"}}}], rec
    )
    run(r, [ev(1, side="buy"), ev(2, side="sell")])
    assert rec.rows[-1][2] == {"a": "buy", "b": "sell"}


def test_vwap_and_pct_change_are_null_when_undefined() -> None:
    """vwap of zero volume and pct_change from zero are null, not a crash."""
    rec = Recorder()
    r = make_rule(
        [SET_XV, {"window": {"count": 5, "aggregates": {"vw": "vwap(x, v)", "c": "pct_change(x)"}}}], rec
    )
    run(r, [ev(1, x=0, v=0), ev(2, x=5, v=0)])
    assert [(f["vw"], f["c"]) for _, _, f in rec.rows] == [(None, None), (None, None)]


def test_running_sums_do_not_drift_over_a_long_stream() -> None:
    """After 200,000 events with large and small values passing through, the running sums still match
    a from-scratch computation (they are recomputed as the window turns over)."""
    program = compile_aggregates({"s": "sum(x)", "sd": "stddev(x)", "vw": "vwap(x, v)"}, {"x", "v"})
    assert program is not None
    rnd = random.Random(7)
    rec = Recorder()
    r = make_rule(
        [
            SET_XV,
            {"window": {"count": 50, "aggregates": {"s": "sum(x)", "sd": "stddev(x)", "vw": "vwap(x, v)"}}},
        ],
        rec,
    )
    xs: list[tuple[float, float]] = []
    for i in range(200_000):
        x = rnd.choice([1e12, -1e12, 1e-3, 65000.0]) * rnd.random() if i % 1000 == 0 else 65000 + rnd.random()
        v = rnd.random()
        xs.append((x, v))
        r.on_next(ev(i, x=x, v=v))
    assert_close(
        rec.rows[-1][2],
        {k: reference(xs[-50:])[k] for k in ("sd", "vw")} | {"s": sum(x for x, _ in xs[-50:])},
    )


# -- tumbling windows --------------------------------------------------------------------------------


def test_tumbling_time_window_emits_once_per_window_at_its_end() -> None:
    """Tumbling windows [k*10, (k+1)*10) emit once, when event time passes their end, with ts = end
    and window_start/window_end fields; an empty window emits nothing."""
    rec = Recorder()
    r = make_rule(
        [
            SET_XV,
            {"window": {"seconds": 10, "mode": "tumbling", "aggregates": {"n": "count()", "s": "sum(x)"}}},
        ],
        rec,
    )
    run(
        r,
        [ev(1, x=1, v=1), ev(5, x=2, v=1), ev(12, x=4, v=1), ev(45, x=8, v=1), ev(47, x=16, v=1)],
        finish=False,
    )
    assert [(t, f["window_start"], f["window_end"], f["n"], f["s"]) for t, _, f in rec.rows] == [
        (10, 0, 10, 2, 3.0),
        (20, 10, 20, 1, 4.0),  # closed by the event at 45; windows 20-30 and 30-40 were empty
    ]
    r.finish()  # the end of a replay fires only what is due by the last event (47): 40-50 stays open
    assert len(rec.rows) == 2
    r.on_next(ev(50, x=0, v=1))
    assert rec.rows[-1][0] == 50 and rec.rows[-1][2]["s"] == 24.0


def test_tumbling_windows_close_per_key_on_any_keys_progress() -> None:
    """Event time is the rule's: another key's event closes a quiet key's window."""
    rec = Recorder()
    r = make_rule(
        [SET_XV, {"window": {"seconds": 10, "mode": "tumbling", "aggregates": {"n": "count()"}}}], rec
    )
    run(r, [ev(1, "a", x=1, v=1), ev(2, "b", x=1, v=1), ev(15, "b", x=1, v=1)], finish=False)
    assert sorted((t, k, f["n"]) for t, k, f in rec.rows) == [(10, "a", 1), (10, "b", 1)]


def test_tumbling_count_window() -> None:
    """A tumbling count window emits every `count` events of a key, then starts over."""
    rec = Recorder()
    r = make_rule([SET_XV, {"window": {"count": 2, "mode": "tumbling", "aggregates": {"s": "sum(x)"}}}], rec)
    run(r, [ev(t, x=t, v=1) for t in range(1, 6)])
    assert [(t, f["s"]) for t, _, f in rec.rows] == [(2, 3.0), (4, 7.0)]


def test_tumbling_window_closes_during_silence_in_virtual_time() -> None:
    """Live (with a scheduler), a window closes when its end is reached on the scheduler's clock even
    if no further event arrives: virtual time 210 for the window [200, 210)."""
    scheduler = TestScheduler()
    fired_at: list[float] = []
    rec = Recorder()

    def submit(tool: str, args: dict[str, Any], ctx: Any) -> bool:
        fired_at.append(scheduler.clock)
        return rec(tool, args, ctx)

    r = Rule(
        "r",
        RuleConfig.model_validate(
            {
                "from": "feed",
                "steps": [
                    SET_XV,
                    {"window": {"seconds": 10, "mode": "tumbling", "aggregates": {"n": "count()"}}},
                ],
                "then": [{"tool": "t"}],
            }
        ),
        submit,
        scheduler,
    )
    for t in (201.0, 204.0):
        scheduler.schedule_absolute(t, lambda _s, _st, t=t: r.on_next(ev(t, x=1, v=1)))
    scheduler.advance_to(209.0)
    assert rec.rows == []
    scheduler.advance_to(300.0)
    assert fired_at == [210.0] and rec.rows[0][0] == 210 and rec.rows[0][2]["n"] == 2


# -- event time: late events and allowed lateness ----------------------------------------------------


def test_late_events_are_counted_and_dropped_by_time_driven_steps() -> None:
    """Without allowed lateness an event older than the newest seen is late: counted, not windowed."""
    rec = Recorder()
    r = make_rule([SET_XV, {"window": {"seconds": 60, "aggregates": {"s": "sum(x)"}}}], rec)
    run(r, [ev(10, x=1, v=1), ev(20, x=2, v=1), ev(15, x=100, v=1), ev(21, x=4, v=1)])
    assert [f["s"] for _, _, f in rec.rows] == [1.0, 3.0, 7.0]
    assert r.stats.late == 1


def test_allowed_lateness_reorders_and_then_drops() -> None:
    """Events within allowed_lateness are put back in event-time order; older ones are still late."""
    rec = Recorder()
    r = make_rule(
        [SET_XV, {"window": {"seconds": 60, "aggregates": {"s": "sum(x)", "c": "last(x)"}}}],
        rec,
        allowed_lateness_seconds=10,
    )
    run(r, [ev(10, x=1, v=1), ev(20, x=2, v=1), ev(15, x=4, v=1), ev(40, x=8, v=1), ev(25, x=16, v=1)])
    assert [(t, f["c"], f["s"]) for t, _, f in rec.rows] == [
        (10, 1.0, 1.0),
        (15, 4.0, 5.0),
        (20, 2.0, 7.0),
        (40, 8.0, 15.0),
    ]
    assert r.stats.late == 1  # ts 25 came when the watermark was already 40 - 10 = 30


def test_plain_rules_do_not_drop_out_of_order_events() -> None:
    """Rules without time-driven steps have no watermark: out-of-order events are not late."""
    rec = Recorder()
    r = make_rule([{"where": "data.x > 0"}], rec)
    run(r, [ev(10, x=1), ev(5, x=1)])
    assert rec.times == [10, 5] and r.stats.late == 0


def test_aggregate_arguments_are_evaluated_once_each() -> None:
    """The same argument used by several aggregates is one input (evaluated once per event)."""
    program = compile_aggregates(
        {"a": "vwap(x, v)", "b": "pct_change(x)", "c": "sum(v)", "d": "count()"}, {"x", "v"}
    )
    assert program is not None and len(program.inputs) == 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("vwapp(x, v)", "unknown aggregate 'vwapp'"),
        ("vwap(x)", "vwap() takes 2 argument(s), got 1"),
        ("count(x)", "count() takes 0 argument(s), got 1"),
        ("sum(x, key=1)", "plain positional arguments"),
        ("x + 1", "an aggregate is a call"),
        ("sum(nope)", "unknown name 'nope'"),
        ("sum(x", "syntax error"),
    ],
)
def test_aggregate_errors_name_the_problem(spec: str, message: str) -> None:
    """Bad aggregates are refused with a reason and a column."""
    errors: list[Any] = []
    compile_aggregates({"a": spec}, {"x", "v"}, on_error=lambda name, exc: errors.append(exc))
    assert len(errors) == 1 and message in errors[0].reason and errors[0].column >= 1


def test_aggregate_argument_error_column_points_into_the_spec() -> None:
    """The column of an error inside an argument is counted from the start of the whole spec."""
    errors: list[Any] = []
    compile_aggregates({"a": "vwap(x, nope)"}, {"x"}, on_error=lambda name, exc: errors.append(exc))
    assert errors[0].column == 9


# -- the compiled sliding time window ----------------------------------------------------------------

PLAIN = {
    "n": "count()",
    "total": "sum(x)",
    "mean": "avg(x)",
    "open": "first(x)",
    "close": "last(x)",
    "vw": "vwap(x, v)",
    "chg": "pct_change(x)",
    "side": "last(data.side)",
    "vw2": "vwap(v, x)",
}
_VALUES = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: round(x, 2)),
    st.integers(-5, 5),
    st.sampled_from([0.0, 1e15, float("nan"), float("inf"), "7", None, True]),
)


@settings(max_examples=150, deadline=None)
@example(  # 1e15 leaves a window holding 3.37: the running sum says 3.375 until recomputed
    [
        (0.0, "a", 1e15, 1, "buy"),
        (3.0, "a", 3.37, 1, "buy"),
        (3.0, "a", 2.0, 2, "sell"),
        (6.0, "a", 2.0, 1, 1),
    ],
    {"total", "vw"},
    True,
    100_000,
    1,
    False,
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.5, 3.0, 6.0, 11.0]),
            st.sampled_from(["a", "b", "c"]),
            _VALUES,
            _VALUES,
            st.sampled_from(["buy", "sell", 1]),
        ),
        min_size=1,
        max_size=80,
    ),
    st.sets(st.sampled_from(sorted(PLAIN)), min_size=1),
    st.booleans(),
    st.sampled_from([1, 3, 100_000]),
    st.sampled_from([1, 2]),
    st.booleans(),
)
def test_compiled_sliding_window_equals_the_generic_one(
    steps: list[tuple[float, str, Any, Any, Any]],
    names: set[str],
    per_key: bool,
    max_events: int,
    min_events: int,
    computed: bool,
) -> None:
    """A sliding time window of plain running sums runs as one compiled function
    (:meth:`WindowProgram.sliding_code`); the generic path (the program's own functions) gives the
    same rows, the same floats bit for bit, the same counters and the same saved state, on rows and
    plain events, through errors, overflow, key eviction and cancellation recomputes."""
    window = {
        "seconds": 10,
        "per_key": per_key,
        "max_events": max_events,
        "min_events": min_events,
        "aggregates": {name: PLAIN[name] for name in sorted(names)},
    }
    if computed:  # inputs are computed fields: the window reads a row
        pipeline: list[dict[str, Any]] = [{"set": {"x": "data.x", "v": "data.v"}}, {"window": window}]
    else:  # inputs read the event: the window reads a plain event
        window["aggregates"] = {
            k: a.replace("x", "float(data.x)").replace("(v", "(data.v").replace(" v)", " data.v)")
            for k, a in window["aggregates"].items()
        }
        pipeline = [{"window": window}]
    runs = []
    for compiled in (True, False):
        rec = Recorder()
        with pytest.MonkeyPatch.context() as patch:
            if not compiled:
                patch.setattr(WindowProgram, "sliding_code", lambda self: None)
            r = make_rule(pipeline, rec, max_keys=2)
        ts = 1000.0
        for dt, key, x, v, side in steps:
            ts += dt
            r.on_next(ev(ts, key, x=x, v=v, side=side))
        snapshot = r.snapshot().dumps()
        runs.append((repr(rec.rows), r.stats.as_dict(), snapshot))
    assert runs[0] == runs[1]
