"""Multi-event patterns: `sequence`, `join_latest`, `absence`; and live (virtual time) == replay."""

from __future__ import annotations

import random
from typing import Any

import pytest
from reactivex.testing import TestScheduler

from daemon.errors import RuleError
from streams.event import Event
from tests.streams.rules.helpers import Recorder, ev, make_rule, run

ORDER_FILL = {
    "sequence": {"first": "source == 'orders'", "then": "source == 'fills'", "within_seconds": 5},
}


def order(ts: float, key: str = "o1", **data: Any) -> Event:
    return ev(ts, key, "orders", **data)


def fill(ts: float, key: str = "o1", **data: Any) -> Event:
    return ev(ts, key, "fills", **data)


def seq_rule(rec: Recorder, step: dict[str, Any] = ORDER_FILL, **cfg: Any) -> Any:
    return make_rule(
        [step],
        rec,
        from_=["orders", "fills"],
        args={"k": "{key}", "a": "{first.n}", "b": "{data.n}", "dt": "{elapsed_seconds}"},
        **cfg,
    )


# -- sequence ------------------------------------------------------------------------------------------


def test_sequence_matches_a_then_b_across_sources_for_the_same_key() -> None:
    """A (orders) then B (fills) for the same key within 5 s fires once, with A's data as `first`."""
    rec = Recorder()
    run(seq_rule(rec), [order(0, n=1), fill(1, "other", n=9), fill(3, n=2), fill(4, n=3)])
    assert rec.args == [{"k": "o1", "a": 1, "b": 2, "dt": 3}]  # one A is matched once


def test_sequence_timeout_is_strict() -> None:
    """Sequence timeouts: B must come less than `within_seconds` after A; at exactly 5 s it is too late."""
    rec = Recorder()
    run(seq_rule(rec), [order(0, n=1), fill(5, n=2), order(10, n=3), fill(14.999, n=4)])
    assert [a["b"] for a in rec.args] == [4]


def test_sequence_b_before_a_does_not_match_and_a_newer_a_replaces_the_pending_one() -> None:
    """Order matters (B then A is no match); one pending A per key, the newest."""
    rec = Recorder()
    run(seq_rule(rec), [fill(0, n=1), order(1, n=2), order(3, n=3), fill(4, n=4)])
    assert rec.args == [{"k": "o1", "a": 3, "b": 4, "dt": 1}]


def test_sequence_keys_are_isolated() -> None:
    """Per-key isolation: an A of one key is never completed by a B of another."""
    rec = Recorder()
    run(seq_rule(rec), [order(0, "x", n=1), order(1, "y", n=2), fill(2, "y", n=3), fill(3, "z", n=4)])
    assert [(a["k"], a["a"], a["b"]) for a in rec.args] == [("y", 2, 3)]


def test_sequence_can_emit_timeouts_instead() -> None:
    """`emit: timeout` reports each A that no B followed in time, at A's deadline."""
    rec = Recorder()
    step = {"sequence": {**ORDER_FILL["sequence"], "emit": "timeout"}}
    run(seq_rule(rec, step), [order(0, "x", n=1), order(1, "y", n=2), fill(2, "y", n=3), order(20, "z", n=4)])
    assert [(t, a["k"], a["a"]) for t, a in zip(rec.times, rec.args, strict=True)] == [(5, "x", 1)]


def test_sequence_needs_allowed_lateness_for_out_of_order_sources() -> None:
    """A fill recorded after its order but arriving first is late without allowed lateness, and
    matched with it (the reorder buffer puts events back in event-time order)."""
    events = [fill(2, n=2), order(1, n=1), fill(30, "z", n=0)]
    rec = Recorder()
    strict = seq_rule(rec)
    run(strict, events)
    assert rec.args == [] and strict.stats.late == 1
    rec = Recorder()
    run(seq_rule(rec, allowed_lateness_seconds=3), events)
    assert [(a["a"], a["b"]) for a in rec.args] == [(1, 2)]


# -- join_latest ----------------------------------------------------------------------------------------


def join_rule(rec: Recorder, **join: Any) -> Any:
    return make_rule(
        [
            {
                "join_latest": {
                    "sources": {"spot": "spot_feed", "perp": "perp_feed"},
                    "value": "float(data.p)",
                    **join,
                }
            }
        ],
        rec,
        from_=["spot_feed", "perp_feed", "news"],
        args={"basis": "{perp - spot}", "k": "{key}"},
    )


def test_join_latest_combines_the_latest_value_of_each_source_per_key() -> None:
    """Once both sides have a value, every update emits both latest values (per key)."""
    rec = Recorder()
    run(
        join_rule(rec),
        [
            ev(0, "BTC", "spot_feed", p=100),
            ev(1, "ETH", "perp_feed", p=10),
            ev(2, "BTC", "perp_feed", p=103),
            ev(3, "BTC", "spot_feed", p=101),
            ev(4, "BTC", "news", p=0),
            ev(5, "ETH", "spot_feed", p=9),
        ],
    )
    assert rec.args == [{"basis": 3.0, "k": "BTC"}, {"basis": 2.0, "k": "BTC"}, {"basis": 1.0, "k": "ETH"}]


def test_join_latest_max_age_and_emit_on() -> None:
    """A side older than max_age_seconds does not join; emit_on limits which side's updates emit."""
    rec = Recorder()
    run(
        join_rule(rec, max_age_seconds=10),
        [
            ev(0, "BTC", "spot_feed", p=100),
            ev(20, "BTC", "perp_feed", p=103),
            ev(21, "BTC", "spot_feed", p=102),
        ],
    )
    assert rec.args == [{"basis": 1.0, "k": "BTC"}]
    rec = Recorder()
    run(
        join_rule(rec, emit_on="perp"),
        [
            ev(0, "BTC", "spot_feed", p=100),
            ev(1, "BTC", "perp_feed", p=103),
            ev(2, "BTC", "spot_feed", p=101),
        ],
    )
    assert rec.args == [{"basis": 3.0, "k": "BTC"}]


def test_join_latest_checks_its_sources_when_built() -> None:
    """Joining a source the rule does not read, or an alias that is not a name, fails at build time."""
    with pytest.raises(RuleError, match="'nope' is not one of this rule's sources"):
        make_rule([{"join_latest": {"sources": ["feed", "nope"]}}], Recorder(), from_=["feed", "other"])
    with pytest.raises(RuleError, match="must be an identifier"):
        make_rule(
            [{"join_latest": {"sources": ["feed", "other-feed"]}}], Recorder(), from_=["feed", "other-feed"]
        )


# -- absence -----------------------------------------------------------------------------------------


def test_absence_fires_once_per_silence_and_re_arms_on_the_next_event() -> None:
    """No event for 10 s fires at last + 10 (with the last event's data); the next event re-arms it."""
    rec = Recorder()
    r = make_rule(
        [{"absence": 10}], rec, args={"s": "{silent_seconds}", "last": "{last_ts}", "v": "{data.v}"}
    )
    run(r, [ev(0, v=1), ev(5, v=2), ev(30, v=3), ev(35, v=4), ev(60, v=5)])
    assert [(t, a) for t, a in zip(rec.times, rec.args, strict=True)] == [
        (15, {"s": 10, "last": 5, "v": 2}),
        (45, {"s": 10, "last": 35, "v": 4}),
    ]


def test_absence_repeat_fires_every_period_while_silent() -> None:
    """With `repeat`, a long silence fires every `seconds` until the next event."""
    rec = Recorder()
    r = make_rule([{"absence": {"seconds": 10, "repeat": True}}], rec, args={"s": "{silent_seconds}"})
    run(r, [ev(0), ev(35), ev(36)])
    assert [(t, a["s"]) for t, a in zip(rec.times, rec.args, strict=True)] == [(10, 10), (20, 20), (30, 30)]


def test_absence_per_key() -> None:
    """`per_key: true` watches each key's silence separately."""
    rec = Recorder()
    r = make_rule([{"absence": {"seconds": 10, "per_key": True}}], rec, args={"k": "{key}"})
    run(r, [ev(0, "a"), ev(1, "b"), ev(8, "a"), ev(25, "c")])
    assert [(t, a["k"]) for t, a in zip(rec.times, rec.args, strict=True)] == [(11, "b"), (18, "a")]


def test_absence_of_matching_events_only() -> None:
    """Events filtered out before `absence` do not count as activity, but they do move time."""
    rec = Recorder()
    r = make_rule([{"where": "data.ok"}, {"absence": 10}], rec)
    run(r, [ev(0, ok=True), ev(4, ok=False), ev(9, ok=False), ev(11, ok=False)])
    assert rec.times == [10]


def test_silent_feed_fires_in_virtual_time_and_re_arms() -> None:
    """Live: a silent feed is reported on the scheduler's clock (no later event needed), once per
    silence, and again after the feed resumes and stops."""
    scheduler = TestScheduler()
    fired_at: list[float] = []
    rec = Recorder()

    def submit(tool: str, args: dict[str, Any], ctx: Any) -> bool:
        fired_at.append(scheduler.clock)
        return rec(tool, args, ctx)

    r = make_rule([{"absence": 30}], rec, scheduler=scheduler)
    r._submit = submit
    for t in (100.0, 110.0, 200.0):
        scheduler.schedule_absolute(t, lambda _s, _st, t=t: r.on_next(ev(t)))
    scheduler.advance_to(1000.0)
    assert fired_at == [140.0, 230.0] and rec.times == [140, 230]


# -- live == replay --------------------------------------------------------------------------------


STEPS: list[dict[str, Any]] = [
    {"set": {"x": "float(data.x)"}},
    {"window": {"seconds": 20, "mode": "tumbling", "aggregates": {"n": "count()", "hi": "max(x)"}}},
]
TIMER_RULES: list[list[dict[str, Any]]] = [
    STEPS,
    [{"debounce": 7}],
    [{"absence": {"seconds": 15, "per_key": True}}],
    [{"sample": 10}],
    [{"sequence": {"first": "data.x > 5", "then": "data.x < 3", "within_seconds": 12, "emit": "timeout"}}],
]


@pytest.mark.parametrize("steps", TIMER_RULES, ids=["tumbling", "debounce", "absence", "sample", "sequence"])
@pytest.mark.parametrize("lateness", [0.0, 4.0])
def test_live_in_virtual_time_gives_the_replay_output(steps: list[dict[str, Any]], lateness: float) -> None:
    """The same events give the same fired items (times, keys, fields), whether time is moved by a
    scheduler's clock between events (live) or only by the events (replay). The live feed delivers
    each event some latency after its event time, with silences long enough for timers to fire."""
    rnd = random.Random(11)
    events = []
    ts = 1000.0
    for _ in range(300):
        ts += rnd.choice([0.1, 0.5, 1.0, 2.0, 3.0, 25.0, 40.0])
        events.append(ev(round(ts, 3), rnd.choice("ab"), x=rnd.randint(0, 9)))

    replay = Recorder()
    run(
        make_rule(steps, replay, allowed_lateness_seconds=lateness, args={"x": "{data.x}"}),
        events,
        finish=False,
    )

    scheduler = TestScheduler()
    live = Recorder()
    fired_at: list[float] = []

    def submit(tool: str, args: dict[str, Any], ctx: Any) -> bool:
        fired_at.append(scheduler.clock)
        return live(tool, args, ctx)

    rule = make_rule(
        steps, live, scheduler=scheduler, allowed_lateness_seconds=lateness, args={"x": "{data.x}"}
    )
    rule._submit = submit
    deliveries = set()
    for event in events:  # delivered 0.25 s after its event time, in order
        deliveries.add(event.ts + 0.25)
        scheduler.schedule_absolute(event.ts + 0.25, lambda _s, _st, e=event: rule.on_next(e))
    scheduler.advance_to(events[-1].ts + 0.25)

    assert live.rows == replay.rows and live.args == replay.args
    assert len(replay.rows) > 5
    # live, timers fired on the scheduler's clock during silences, not only when events came
    assert any(at not in deliveries for at in fired_at)


# -- delivery acknowledgements (Kafka records carry event.ack) ----------------------------------------


class FakeAck:
    def __init__(self) -> None:
        self.holds = 1
        self.log: list[str] = []

    def hold(self) -> None:
        self.holds += 1
        self.log.append("hold")

    def release(self) -> None:
        self.holds -= 1
        self.log.append("release")


def test_held_events_keep_their_record_unfinished_and_timer_rows_drop_the_ack() -> None:
    """An event waiting in the reorder buffer holds its acknowledgement until released into the
    steps; rows a timer emits later do not carry the (long finished) acknowledgement."""
    rec = Recorder()
    r = make_rule([{"debounce": 5}], rec, allowed_lateness_seconds=2)
    ack = FakeAck()
    first = Event("feed", 10.0, 10.0, "k", {"v": 1}, {"offset": 1}, ack=ack)
    r.on_next(first)
    assert ack.holds == 2  # the dispatcher's hold + the buffer's
    ack.release()  # the dispatcher is done with it; the record is still not finished
    assert ack.holds == 1
    r.on_next(ev(12.5, "other"))  # watermark 10.5: the event is released into debounce
    assert ack.log == ["hold", "release", "release"] and ack.holds == 0
    r.on_next(ev(30, "other"))  # the debounce timer fires at 15
    (row_ts, _key, _fields) = rec.rows[0]
    event = rec.calls[0][2].event
    assert row_ts == 15 and event is not None and event.ack is None and event.meta["offset"] == 1


def test_a_disposed_rule_fires_nothing_more() -> None:
    """After dispose(), pending timers are forgotten and the scheduler's ticks do nothing."""
    scheduler = TestScheduler()
    rec = Recorder()
    r = make_rule([{"debounce": 5}, {"absence": 30}], rec, scheduler=scheduler)
    scheduler.schedule_absolute(100.0, lambda _s, _st: r.on_next(ev(100.0)))
    scheduler.advance_to(101.0)
    assert r.clock is not None and r.clock.pending == 1
    r.dispose()
    r.on_next(ev(102.0))
    scheduler.advance_to(500.0)
    assert rec.calls == [] and r.clock.pending == 0
