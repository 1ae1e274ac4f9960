"""Steps `crossing`, `changed`, `distinct`, `throttle`, `cooldown`, `debounce` and `sample`."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex.testing import TestScheduler

from streams.rules.steps import crossing as crossing_step
from tests.streams.rules.helpers import Recorder, ev, make_rule, run

PRICE = {"set": {"price": "float(data.p)"}}


def prices(values: list[float], key: str = "BTC", start: float = 0.0) -> list[Any]:
    return [ev(start + i, key, p=str(v)) for i, v in enumerate(values)]


# -- crossing ----------------------------------------------------------------------------------------


def test_crossing_without_hysteresis_fires_on_every_change_of_side() -> None:
    """With no dead band every crossing of the level is an edge; the first side seen is not one."""
    rec = Recorder()
    r = make_rule([PRICE, {"crossing": {"value": "price", "level": "100"}}], rec, args={"d": "{direction}"})
    run(r, prices([101, 99, 101, 100, 99]))  # 100 is on neither side: it keeps "above"
    assert [(t, a["d"]) for t, a in zip(rec.times, rec.args, strict=True)] == [
        (1, "down"),
        (2, "up"),
        (4, "down"),
    ]


def test_hysteresis_stops_chattering_around_the_level() -> None:
    """A value wobbling inside level ± hysteresis fires nothing; it fires once it leaves the band."""
    rec = Recorder()
    r = make_rule(
        [PRICE, {"crossing": {"value": "price", "level": "100", "hysteresis": 1}}],
        rec,
        args={"d": "{direction}", "lvl": "{level}"},
    )
    wobble = [98, 100.5, 99.5, 100.9, 99.1, 100.2, 101.5, 100.5, 99.5, 100.9, 99.2, 98.9, 100, 101.1]
    run(r, prices(wobble))
    assert [(t, a["d"]) for t, a in zip(rec.times, rec.args, strict=True)] == [
        (6, "up"),
        (11, "down"),
        (13, "up"),
    ]
    assert rec.args[0]["lvl"] == 100


def test_hysteresis_in_percent_of_the_level() -> None:
    """hysteresis_pct scales the dead band with the level."""
    rec = Recorder()
    r = make_rule([PRICE, {"crossing": {"value": "price", "level": "1000", "hysteresis_pct": 1}}], rec)
    run(r, prices([980, 1005, 1009, 1011, 995, 989]))  # band: 990 .. 1010
    assert rec.times == [3, 5]


@pytest.mark.parametrize(
    "band", [{"hysteresis": float("inf")}, {"hysteresis": float("nan")}, {"hysteresis_pct": float("nan")}]
)
def test_a_dead_band_that_is_not_a_finite_number_is_a_config_error(band: dict[str, float]) -> None:
    """``hysteresis: .inf`` (or NaN) would never let a value cross: refused when the rule is built,
    not turned into an error per event by the compiled step."""
    (name,) = band
    with pytest.raises(ValueError, match=f"{name}[\\s\\S]*finite number"):
        crossing_step.CrossingConfig.model_validate({"value": "price", "level": "100", **band})


def test_crossing_another_field_and_one_direction() -> None:
    """The level may be another field; `direction: up` ignores downward crossings."""
    rec = Recorder()
    r = make_rule(
        [
            {"set": {"fast": "float(data.fast)", "slow": "float(data.slow)"}},
            {"crossing": {"value": "fast", "level": "slow", "direction": "up"}},
        ],
        rec,
    )
    pairs = [(1, 2), (3, 2), (1, 2), (2, 3), (4, 3)]
    run(r, [ev(i, fast=f, slow=s) for i, (f, s) in enumerate(pairs)])
    assert rec.times == [1, 4]


def test_crossing_state_is_per_key() -> None:
    """Per-key isolation: one key's side never influences another's."""
    rec = Recorder()
    r = make_rule([PRICE, {"crossing": {"value": "price", "level": "100"}}], rec, args={"k": "{key}"})
    events = [
        ev(0, "a", p="90"),
        ev(1, "b", p="110"),
        ev(2, "a", p="110"),
        ev(3, "b", p="120"),
        ev(4, "b", p="90"),
    ]
    run(r, events)
    assert [(t, a["k"]) for t, a in zip(rec.times, rec.args, strict=True)] == [(2, "a"), (4, "b")]


def test_crossing_errors_are_counted() -> None:
    """A value that cannot be compared (null, a string) is an error for that event only."""
    rec = Recorder()
    r = make_rule([{"crossing": {"value": "data.p", "level": "100"}}], rec)
    run(r, [ev(0, p=90), ev(1, p=None), ev(2, p="x"), ev(3, p=110)])
    assert rec.times == [3] and r.stats.errors == 2


# -- changed / distinct -------------------------------------------------------------------------------


def test_changed_emits_only_changes_with_the_previous_value() -> None:
    """`changed` is edge-triggered per key and carries `previous`; the first value is not a change."""
    rec = Recorder()
    r = make_rule([{"changed": "data.status"}], rec, args={"from": "{previous}", "to": "{data.status}"})
    statuses = [("a", "new"), ("b", "new"), ("a", "new"), ("a", "filled"), ("b", "new"), ("a", "filled")]
    run(r, [ev(i, k, status=s) for i, (k, s) in enumerate(statuses)])
    assert rec.args == [{"from": "new", "to": "filled"}]


def test_changed_can_emit_the_first_value() -> None:
    """`emit_first: true` also emits the first value of each key, with previous = null."""
    rec = Recorder()
    r = make_rule([{"changed": {"value": "data.s", "emit_first": True}}], rec, args={"p": "{previous}"})
    run(r, [ev(0, s=1), ev(1, s=1), ev(2, s=2)])
    assert rec.args == [{"p": None}, {"p": 1}]


def test_distinct_emits_first_sightings_only() -> None:
    """`distinct` lets an item through the first time its value is seen (across keys by default)."""
    rec = Recorder()
    r = make_rule([{"distinct": "data.account"}], rec, args={"a": "{data.account}"})
    run(r, [ev(0, "BTC", account="x"), ev(1, "ETH", account="x"), ev(2, "BTC", account="y")])
    assert rec.args == [{"a": "x"}, {"a": "y"}]


def test_distinct_forgets_after_seconds_and_is_bounded() -> None:
    """With `seconds` a value unseen that long is new again; max_values bounds what is remembered."""
    rec = Recorder()
    r = make_rule([{"distinct": {"value": "data.a", "seconds": 10}}], rec, args={"a": "{data.a}"})
    run(r, [ev(0, a=1), ev(5, a=1), ev(14, a=1), ev(25, a=1)])  # seen at 5 renews it; 25 - 14 >= 10
    assert rec.times == [0, 25]
    rec = Recorder()
    r = make_rule([{"distinct": {"value": "data.a", "max_values": 2}}], rec)
    run(r, [ev(0, a=1), ev(1, a=2), ev(2, a=3), ev(3, a=1)])
    assert rec.times == [0, 1, 2, 3] and r.stats.evicted == 2


def test_distinct_unhashable_values_are_errors() -> None:
    """A list value cannot be remembered: counted as an error, not a crash."""
    rec = Recorder()
    r = make_rule([{"distinct": "data.a"}], rec)
    run(r, [ev(0, a=[1]), ev(1, a=2)])
    assert rec.times == [1] and r.stats.errors == 1


# -- throttle / cooldown ------------------------------------------------------------------------------


def test_throttle_lets_the_first_n_per_interval_through_per_key() -> None:
    """`throttle` passes the first max_events of each interval of a key; the rest are suppressed."""
    rec = Recorder()
    r = make_rule([{"throttle": {"seconds": 10, "max_events": 2}}], rec, args={"k": "{key}"})
    times = [(0, "a"), (1, "a"), (2, "b"), (3, "a"), (9.9, "a"), (10, "a"), (11, "a"), (12, "a")]
    run(r, [ev(t, k) for t, k in times])
    assert [(t, a["k"]) for t, a in zip(rec.times, rec.args, strict=True)] == [
        (0, "a"),
        (1, "a"),
        (2, "b"),
        (10, "a"),
        (11, "a"),
    ]
    assert r.stats.suppressed == 3


def test_throttle_shorthand_global_and_time_going_back() -> None:
    """`throttle: N` is seconds; per_key false throttles all keys together; an older event reopens."""
    rec = Recorder()
    r = make_rule([{"throttle": {"seconds": 5, "per_key": False}}], rec)
    run(r, [ev(0, "a"), ev(1, "b"), ev(6, "b"), ev(3, "a")])
    assert rec.times == [0, 6, 3]
    rec = Recorder()
    run(make_rule([{"throttle": 5}], rec), [ev(0), ev(4), ev(5)])
    assert rec.times == [0, 5]


def test_cooldown_step_mutes_per_key_after_an_item_passes() -> None:
    """The `cooldown` step mutes a key for `seconds` after one of its items passed."""
    rec = Recorder()
    r = make_rule([{"where": "data.x > 0"}, {"cooldown": 10}], rec, args={"k": "{key}"})
    run(r, [ev(0, "a", x=1), ev(1, "b", x=1), ev(5, "a", x=1), ev(10, "a", x=1), ev(10.5, "b", x=1)])
    assert [(t, a["k"]) for t, a in zip(rec.times, rec.args, strict=True)] == [(0, "a"), (1, "b"), (10, "a")]
    assert r.stats.suppressed == 2


# -- debounce -------------------------------------------------------------------------------------------


def test_debounce_emits_the_last_item_after_a_quiet_period() -> None:
    """A burst becomes one item: the last one, emitted when its key was quiet `seconds` (ts = then)."""
    rec = Recorder()
    r = make_rule([{"debounce": 5}], rec, args={"v": "{data.v}", "k": "{key}"})
    events = [ev(0, "a", v=1), ev(2, "a", v=2), ev(3, "b", v=10), ev(6, "a", v=3), ev(20, "a", v=4)]
    run(r, events)
    assert [(t, a["k"], a["v"]) for t, a in zip(rec.times, rec.args, strict=True)] == [
        (8, "b", 10),  # b quiet from 3 to 8
        (11, "a", 3),  # a quiet from 6 to 11
    ]  # the item at 20 would be due at 25: after the end of this input, so never emitted


def test_debounce_fires_during_silence_in_virtual_time() -> None:
    """Live (TestScheduler), a debounced item is emitted on the scheduler's clock with no event
    after it: 5 virtual seconds after the last item."""
    scheduler = TestScheduler()
    fired_at: list[float] = []
    rec = Recorder()

    def submit(tool: str, args: dict[str, Any], ctx: Any) -> bool:
        fired_at.append(scheduler.clock)
        return rec(tool, args, ctx)

    r = make_rule([{"debounce": 5}], rec, scheduler=scheduler, args={"v": "{data.v}"})
    r._submit = submit
    for t, v in [(100.0, 1), (102.0, 2), (103.0, 3)]:
        scheduler.schedule_absolute(t, lambda _s, _st, t=t, v=v: r.on_next(ev(t, v=v)))
    scheduler.advance_to(107.9)
    assert rec.args == []
    scheduler.advance_to(200.0)
    assert fired_at == [108.0] and rec.args == [{"v": 3}] and rec.times == [108]


# -- sample ---------------------------------------------------------------------------------------------


def test_sample_emits_the_latest_item_of_each_period_at_its_end() -> None:
    """Periods are multiples of `seconds`; each period with items emits its latest one at its end;
    empty periods emit nothing."""
    rec = Recorder()
    r = make_rule([{"sample": 10}], rec, args={"v": "{data.v}"})
    run(r, [ev(1, v=1), ev(4, v=2), ev(10, v=3), ev(35, v=4), ev(41, v=5)])
    assert [(t, a["v"]) for t, a in zip(rec.times, rec.args, strict=True)] == [(10, 2), (20, 3), (40, 4)]


def test_sample_is_per_key() -> None:
    """Each key is sampled separately."""
    rec = Recorder()
    r = make_rule([{"sample": 10}], rec, args={"k": "{key}", "v": "{data.v}"})
    run(r, [ev(1, "a", v=1), ev(2, "b", v=2), ev(3, "a", v=3), ev(12, "b", v=4)])
    assert sorted((t, a["k"], a["v"]) for t, a in zip(rec.times, rec.args, strict=True)) == [
        (10, "a", 3),
        (10, "b", 2),
    ]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.one_of(st.floats(90, 110).map(lambda x: f"{x:.1f}"), st.sampled_from(["x", None, 100])),
            st.one_of(st.floats(95, 105), st.sampled_from([None, "100", 0.0, -0.0])),
        ),
        max_size=60,
    ),
    st.sampled_from(
        [("float(data.p)", "data.l"), ("price", "100"), ("data.p", "level_in"), ("float(data.p)", "99.5")]
    ),
    st.sampled_from(["up", "down", "both"]),
    st.sampled_from([0.0, 0.5]),
    st.sampled_from([0.0, 0.01, 1.0]),
    st.booleans(),
)
def test_crossing_reads_simple_expressions_inline_as_it_would_call_them(
    events: list[tuple[str, Any, Any]],
    exprs: tuple[str, str],
    direction: str,
    hysteresis: float,
    hysteresis_pct: float,
    per_key: bool,
) -> None:
    """The crossing's compiled on_next writes simple `value` / `level` expressions in
    (:func:`streams.expressions.inline_source`): the same fires, errors and state as calling them."""
    value, level = exprs
    steps: list[dict[str, Any]] = [
        {"set": {"price": "float(data.p)", "level_in": "data.l"}},
        {
            "crossing": {
                "value": value,
                "level": level,
                "direction": direction,
                "hysteresis": hysteresis,
                "hysteresis_pct": hysteresis_pct,
                "per_key": per_key,
            }
        },
    ]
    if value == "float(data.p)":
        steps = steps[1:]  # the crossing reads the plain event
    runs = []
    for inline in (True, False):
        rec = Recorder()
        with pytest.MonkeyPatch.context() as patch:
            if not inline:
                patch.setattr(crossing_step, "inline_source", lambda *_: None)
            r = make_rule(steps, rec, args={"d": "{direction}", "l": "{level}"}, max_keys=2)
        for i, (key, p, lvl) in enumerate(events):
            r.on_next(ev(i, key, p=p, l=lvl))
        runs.append((rec.args, r.stats.as_dict(), r.snapshot().dumps()))
    assert runs[0] == runs[1]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.one_of(st.floats(90, 110).map(lambda x: f"{x:.2f}"), st.sampled_from(["x", None, 100, "nan"])),
            st.sampled_from(["1", "0.5", "0", "y"]),
        ),
        max_size=60,
    ),
    st.booleans(),
    st.sampled_from(["float(data.p)", "data.p"]),
)
def test_a_crossing_after_a_window_takes_the_value_the_window_computed_for_its_row(
    events: list[tuple[str, Any, Any]], between: bool, value: str
) -> None:
    """A crossing reading the same expression of the event as the window before it takes the value
    the window computed for the row it emitted (StepContext.values) instead of computing it again:
    the same fires, errors and state as computing it; with a step between them (a new row) it computes."""
    steps: list[dict[str, Any]] = [
        {"window": {"seconds": 5, "aggregates": {"vw": f"vwap({value}, float(data.q))", "n": "count()"}}},
        {"crossing": {"value": value, "level": "vw", "hysteresis_pct": 0.01}},
    ]
    if between:
        steps.insert(1, {"set": {"twice": "n * 2"}})
    real = crossing_step.inline_source
    runs = []
    for handed in (True, False):
        rec = Recorder()
        with pytest.MonkeyPatch.context() as patch:
            if not handed:  # the crossing asks for no value
                patch.setattr(
                    crossing_step, "inline_source", lambda text, *names: real(text, *names) if names else None
                )
            r = make_rule(steps, rec, args={"d": "{direction}", "l": "{level}"}, max_keys=2)
        for i, (key, p, q) in enumerate(events):
            r.on_next(ev(i, key, p=p, q=q))
        runs.append((rec.args, r.stats.as_dict(), r.snapshot().dumps()))
    assert runs[0] == runs[1]
