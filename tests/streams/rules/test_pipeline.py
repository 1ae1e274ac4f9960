"""Rules: a `where` that raises keeps the rule alive; cooldown is per key, in event time."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import pytest
from reactivex.testing import ReactiveTest, TestScheduler

from handlers.base import CallContext
from streams.event import GAP, Event
from streams.rules import operators
from streams.rules.operators import StepOperator
from streams.rules.pipeline import Rule, RuleConfig
from streams.rules.steps import where


def ev(ts: float, key: str = "BTC", **data: Any) -> Event:
    return Event("feed", ts, ts, key, data, {"seq": int(ts * 1000)})


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], CallContext]] = []

    def __call__(self, tool: str, args: dict[str, Any], ctx: CallContext) -> bool:
        self.calls.append((tool, args, ctx))
        return True


def rule(rec: Recorder, **cfg: Any) -> Rule:
    body = {"from": ["feed"], "then": [{"tool": "t", "args": {"p": "{data.p}"}}], **cfg}
    return Rule("r", RuleConfig.model_validate(body), rec)


def test_where_that_raises_drops_event_and_rule_survives() -> None:
    """Events whose `where` raises are dropped and counted; later events still fire."""
    rec = Recorder()
    r = rule(rec, where="float(data.p) > 10")
    r.on_next(ev(1, p="20"))
    r.on_next(ev(2, q="missing p"))  # KeyError
    r.on_next(ev(3, p="not a number"))  # ValueError
    r.on_next(ev(4, p="30"))
    assert [c[1]["p"] for c in rec.calls] == ["20", "30"]
    assert r.stats.errors == 2 and r.stats.matched == 2 and r.stats.seen == 4


def test_cooldown_is_per_key_in_event_time() -> None:
    """After firing for a key the rule stays quiet for that key only, for cooldown_seconds of event time."""
    rec = Recorder()
    r = rule(rec, cooldown_seconds=10)
    for ts, key in [
        (0, "BTC"),
        (1, "ETH"),
        (5, "BTC"),
        (9.999, "BTC"),
        (10, "BTC"),
        (10.5, "ETH"),
        (11, "ETH"),
    ]:
        r.on_next(ev(ts, key, p=str(ts)))
    fired = [(c[2].event.key, c[2].event.ts) for c in rec.calls if c[2].event]
    assert fired == [("BTC", 0), ("ETH", 1), ("BTC", 10), ("ETH", 11)]
    assert r.stats.suppressed == 3


def test_cooldown_in_virtual_time_with_test_scheduler() -> None:
    """Driven by the reactivex TestScheduler, cooldown lets through exactly the events outside the window."""
    scheduler = TestScheduler()
    rec = Recorder()
    r = rule(rec, cooldown_seconds=5)
    times = [210, 220, 230, 260, 300, 310]  # virtual ticks; event time = tick / 10 s
    hot = scheduler.create_hot_observable([ReactiveTest.on_next(t, ev(t / 10, p=str(t))) for t in times])
    hot.subscribe(r.on_next)
    scheduler.start()
    assert [c[1]["p"] for c in rec.calls] == ["210", "260", "310"]


def test_cooldown_reopens_when_time_goes_backwards() -> None:
    """An event older than the last fire (skew, replay restart) is not muted until time catches up."""
    rec = Recorder()
    r = rule(rec, cooldown_seconds=10)
    r.on_next(ev(100, p="a"))
    r.on_next(ev(50, p="b"))
    assert [c[1]["p"] for c in rec.calls] == ["a", "b"]


def test_cooldown_state_is_bounded() -> None:
    """Per-key cooldown state never exceeds max_keys; the least recently fired key is forgotten."""
    rec = Recorder()
    r = rule(rec, cooldown_seconds=100, max_keys=2)
    for key in ["a", "b", "c"]:
        r.on_next(ev(1, key, p=key))
    r.on_next(ev(2, "a", p="a2"))  # "a" was forgotten when "c" arrived → fires again
    r.on_next(ev(2, "c", p="c2"))  # "c" is still remembered → suppressed
    assert [c[1]["p"] for c in rec.calls] == ["a", "b", "c", "a2"]


def test_gap_events_only_reach_rules_that_ask_for_them() -> None:
    """Rules see data events by default; `kinds: [gap]` makes a rule react to reconnect gaps."""
    rec_data, rec_gap = Recorder(), Recorder()
    data_rule = rule(rec_data)
    gap_rule = Rule(
        "g",
        RuleConfig.model_validate(
            {
                "from": "feed",
                "kinds": ["gap"],
                "then": [{"tool": "t", "args": {"s": "{data.outage_seconds}"}}],
            }
        ),
        rec_gap,
    )
    gap = Event("feed", 1.0, 1.0, None, {"outage_seconds": 2.5}, {}, GAP)
    for r in (data_rule, gap_rule):
        r.on_next(gap)
        r.on_next(ev(2, p="1"))
    assert [c[1] for c in rec_data.calls] == [{"p": "1"}]
    assert [c[1] for c in rec_gap.calls] == [{"s": 2.5}]


def test_render_error_skips_only_that_call() -> None:
    """A template that raises skips its call, counts it, and the rule's other calls still go out."""
    rec = Recorder()
    r = Rule(
        "r",
        RuleConfig.model_validate(
            {
                "from": "feed",
                "then": [{"tool": "a", "args": {"x": "{data.nope}"}}, {"tool": "b", "args": {"y": 1}}],
            }
        ),
        rec,
    )
    r.on_next(ev(1, p="1"))
    assert [c[0] for c in rec.calls] == ["b"] and r.stats.render_errors == 1


def test_call_ids_are_stable_per_rule_event_and_call() -> None:
    """The same event gives the same call id (idempotency key); different calls differ."""
    rec = Recorder()
    r = Rule(
        "r",
        RuleConfig.model_validate({"from": "feed", "then": [{"tool": "a"}, {"tool": "a"}]}),
        rec,
    )
    e = ev(1, p="1")
    r.on_next(e)
    r.on_next(e)
    ids = [c[2].call_id for c in rec.calls]
    assert ids[0] == ids[2] and ids[1] == ids[3] and ids[0] != ids[1]


class _Records(logging.Handler):
    """The ``reflexd`` loggers' records, caught on the logger itself (its propagation may be off)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def reflexd_logs() -> Iterator[_Records]:
    handler = _Records()
    logger = logging.getLogger("reflexd")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize(
    "cfg",
    [
        {"cooldown_seconds": 5},
        {"steps": [{"window": {"seconds": 60, "aggregates": {"n": "count()"}}}]},
        {"steps": [{"changed": "data.p"}]},
    ],
    ids=["cooldown", "window", "changed"],
)
def test_unhashable_keys_are_counted_and_logged_once_without_tracebacks(
    cfg: dict[str, Any], reflexd_logs: _Records
) -> None:
    """200 events whose key is a list fail inside per-key state: counted as rule errors, logged once
    with a sample (no traceback per event), and the next good event still fires."""
    rec = Recorder()
    r = rule(rec, **cfg)
    for i in range(200):
        r.on_next(Event("feed", 1 + i / 1000, 1.0, [1, 2], {"p": str(i)}, {"seq": i}))
    r.on_next(ev(2, p="x"))
    r.on_next(ev(10, p="y"))
    assert r.stats.errors == 200
    assert [c[1]["p"] for c in rec.calls][-1] == "y"
    assert not [rec for rec in reflexd_logs.records if rec.exc_info]
    assert 1 <= len(reflexd_logs.records) <= 3
    sample = reflexd_logs.records[0]
    fields = getattr(sample, "fields", {})
    assert "TypeError" in fields["error"] and fields["key"] == "[1, 2]" and fields["rule"] == "r"


def test_a_submit_that_raises_is_counted_and_logged_rate_limited(reflexd_logs: _Records) -> None:
    """A sink (the runner's submit) raising on every call: each is counted as rejected, one log record."""

    def broken_submit(tool: str, args: dict[str, Any], ctx: CallContext) -> bool:
        raise RuntimeError("runner is broken")

    r = Rule("r", RuleConfig.model_validate({"from": ["feed"], "then": [{"tool": "t"}]}), broken_submit)
    for i in range(100):
        r.on_next(ev(i, p="1"))
    assert r.stats.rejected == 100 and r.stats.fired == 100
    assert not [rec for rec in reflexd_logs.records if rec.exc_info]
    assert len(reflexd_logs.records) == 1


def plain_operator(build: Any, **_: Any) -> operators.StepOperator:
    """A step operator without ``test`` / ``gate``: what a rule runs as a step, never inline."""
    return StepOperator(build)


@pytest.mark.parametrize(
    ("cfg", "inlined"),
    [
        (
            {
                "where": "data.x != 3",
                "steps": [
                    {"where": "data.x > 0"},
                    {"window": {"seconds": 5, "aggregates": {"n": "count()"}}},
                ],
            },
            (True, True),
        ),
        ({"steps": [{"where": "data.x > 0"}, {"throttle": {"seconds": 2}}]}, (False, False)),  # no clock
        (
            {
                "steps": [
                    {"window": {"seconds": 5, "aggregates": {"s": "sum(float(data.x))"}}},
                    {"where": "s > 2"},
                ]
            },
            (False, True),
        ),
        (
            {
                "allowed_lateness_seconds": 1.5,
                "steps": [
                    {"where": "data.x > 0"},
                    {"window": {"seconds": 5, "aggregates": {"n": "count()"}}},
                ],
            },
            (True, False),
        ),
        ({"steps": [{"where": "data.x > 0"}, {"set": {"y": "data.x * 2"}}]}, (False, False)),
    ],
)
@pytest.mark.parametrize("live", [False, True])
def test_a_time_driven_rule_runs_its_leading_where_step_and_gate_inline_as_the_steps_would(
    cfg: dict[str, Any], inlined: tuple[bool, bool], live: bool
) -> None:
    """A time-driven rule runs a leading `where` step and the event-time gate (without allowed
    lateness) in its own on_next, without their frames: the same fires and counters (errors, late)
    as the steps themselves, and, once disposed, nothing counted past `matched`."""
    times = [1, 2, 1.5, 4, math.nan, 3.9, 9, 8, 20, 12, 21, 21]
    xs: list[Any] = [1, "a", 2, 3, -1, 5, None, 4, 2, "b", 1, 3]
    body = {"from": ["feed"], "then": [{"tool": "t"}], **cfg}
    runs = []
    for inline in (True, False):
        rec = Recorder()
        with pytest.MonkeyPatch.context() as patch:
            if not inline:  # the steps without what lets a rule run them inline
                patch.setattr(operators, "StepOperator", plain_operator)
                patch.setattr(where, "operator", plain_operator)
            r = Rule("r", RuleConfig.model_validate(body), rec, TestScheduler() if live else None)
        assert (r._test is not None, r._gate is not None) == (inlined if inline else (False, False))
        for t, x in zip(times[:9], xs[:9], strict=True):
            r.on_next(Event("feed", t, t, "BTC", {"x": x}, {}))
        r.dispose()
        for t, x in zip(times[9:], xs[9:], strict=True):
            r.on_next(Event("feed", t, t, "BTC", {"x": x}, {}))
        runs.append(([(c[2].event.ts, c[2].event.data) for c in rec.calls if c[2].event], r.stats.as_dict()))
    assert runs[0] == runs[1]
    assert runs[0][1]["errors"] > 0
    assert runs[0][0]
