"""The shared evaluator (streams/rules/shared.py) against rule-by-rule delivery: same fires, same order,
same per-rule stats, on random rule sets and events."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.call import CallContext
from streams.event import Event
from streams.rules import replay, shared
from streams.rules.pipeline import Rule, RuleConfig
from streams.rules.replay import Fired

EXPRS = ["float(data.p) * float(data.q)", "data.v", "data.v * 2", "data.a / data.b", "data.s", "key"]
OPS = [">", ">=", "<", "<="]
OTHER = ["data.v > 1 and data.b < 3", "data.s != 'x'", "data.v in data.s"]  # no index: rule by rule
#: arguments: shared by several rules, raising on some events (a missing field), the rule's own clock
ARGS = [{"v": "{data}"}, {"t": "{key} {data.v}"}, {"v": "{data.v}"}, {"n": "{now()}"}, {"c": "fixed"}]
TOOLS = ["x", "x", "x", "no", "boom"]  # accepted, refused, raising (see `Submit`)

# few distinct numbers, so that events often sit exactly on a threshold
number = st.one_of(
    st.sampled_from([-1, 0, 0.5, 1, 2, 2.0]), st.integers(-3, 3), st.floats(-3, 3, allow_nan=False)
)
value = st.one_of(number, st.none(), st.text(max_size=2), st.just(math.nan), st.booleans())
constant = st.sampled_from([-1, 0, 1, 2.0, 0.5, "a", "", "1", True, False, None])  # few: events hit them


@st.composite
def rule(draw: st.DrawFn, main: str, form: str) -> dict[str, Any]:
    """Mostly ``main`` in ``form`` (runs of them share work), sometimes another shape."""
    shape = draw(st.integers(0, 9))
    expr = main if shape > 3 else draw(st.sampled_from(EXPRS))
    threshold = form == "threshold" if shape > 3 and form != "mixed" else draw(st.booleans())
    if shape == 0:
        where = draw(st.sampled_from(OTHER))
    elif threshold:
        where = f"{expr} {draw(st.sampled_from(OPS))} {draw(number)!r}"
    elif draw(st.booleans()):
        where = f"{expr} == {draw(constant)!r}"
    else:
        where = f"{expr} in {draw(st.lists(constant, max_size=3))!r}"
    calls = [
        {"tool": draw(st.sampled_from(TOOLS)), "args": draw(st.sampled_from(ARGS))}
        for _ in range(draw(st.integers(1, 2)))
    ]
    config: dict[str, Any] = {"from": "t", "where": where, "then": calls}
    if draw(st.integers(0, 3)) == 0:
        config["cooldown_seconds"] = draw(st.sampled_from([0.5, 2]))
    if draw(st.integers(0, 4)) == 0:
        config["kinds"] = draw(st.sampled_from([["gap"], ["data", "gap"]]))
    return config


@st.composite
def event(draw: st.DrawFn) -> tuple[Any, dict[str, Any]]:
    data = {}
    for field in ("p", "q", "v", "a", "b", "s"):
        if draw(st.integers(0, 5)) > 0:
            data[field] = draw(st.one_of(number, number, value, number.map(str), constant))
    return draw(st.one_of(constant, st.none())), data


class Submit:
    """What each call would have done: tool ``x`` accepts, ``no`` refuses, ``boom`` raises."""

    def __init__(self, rule: str, calls: list[str]) -> None:
        self.rule, self.calls = rule, calls

    def __call__(self, tool: str, args: dict[str, Any], ctx: CallContext) -> bool:
        assert ctx.event is not None and ctx.rule == self.rule and ctx.tool == tool
        self.calls.append(f"{ctx.call_id} {ctx.event.ts} {tool} {args!r}")
        if tool == "boom":
            raise RuntimeError("tool queue broke")
        return tool == "x"


def run(configs: list[dict[str, Any]], events: list[tuple[Any, dict[str, Any], str]]) -> Any:
    """Every rule over ``events`` as the dispatcher delivers them: the calls, the stats, the last fires."""
    calls: list[str] = []
    rules = [
        Rule(f"r{i}", RuleConfig.model_validate(c), Submit(f"r{i}", calls), None)
        for i, c in enumerate(configs)
    ]
    targets = shared.targets(rules)
    for i, (key, data, kind) in enumerate(events):
        event = Event("t", float(i), float(i), key, data, {"seq": i}, kind)
        for target in targets:
            target(event)
    stats = {r.name: r.stats.as_dict() for r in rules}
    last = {r.name: r.last_fire[1].ts if r.last_fire else None for r in rules}
    errors = {r.name: r.first_render_error for r in rules}
    return calls, stats, last, errors


@settings(max_examples=300, deadline=None)
@given(
    configs=st.tuples(st.sampled_from(EXPRS), st.sampled_from(["threshold", "member", "mixed"])).flatmap(
        lambda main: st.lists(rule(*main), min_size=1, max_size=12)
    ),
    events=st.lists(st.tuples(event(), st.sampled_from(["data", "data", "gap"])), max_size=25),
)
def test_shared_agrees_with_rule_by_rule(
    configs: list[dict[str, Any]],
    events: list[tuple[tuple[Any, dict[str, Any]], str]],
) -> None:
    flat = [(key, data, kind) for (key, data), kind in events]
    got = run(configs, flat)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(shared, "targets", lambda rules: [r.on_next for r in rules])
        want = run(configs, flat)
    assert got == want


def test_equality_index_matches_as_python_compares() -> None:
    """None, bools, 1 == 1.0 == True, strings, NaN, unhashable values: the dict lookup agrees with ``==``."""
    wheres = ["data.k == None", "data.k in [None, 1]", "data.k == True", "data.k == 1.0", "data.k == 'a'"]
    wheres += ["data.k in []", "data.k in ['a', 0, False]", "data.k == -0.0", "data.k in [null, true]"]
    configs = [{"from": "t", "where": w, "then": [{"tool": "x", "args": {"v": "{data}"}}]} for w in wheres]
    values = [None, 1, True, 1.0, "a", 0, False, 0.0, "1", math.nan, [1], {"a": 1}, 2]
    events = [("k", {"k": v}, "data") for v in values] + [("k", {}, "data")]
    got = run(configs, events)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(shared, "targets", lambda rules: [r.on_next for r in rules])
        want = run(configs, events)
    assert got == want
    assert got[1]["r0"]["matched"] == 1 and got[1]["r1"]["matched"] == 4  # None; None, 1, True, 1.0


def test_replay_fires_through_the_groups_as_rule_by_rule() -> None:
    """``reflexd replay``'s engine uses the groups: the same calls, in the same order, as rule by rule."""
    configs = {
        f"r{i}": RuleConfig.model_validate(
            {"from": "t", "where": w, "then": [{"tool": "x", "args": {"t": "{key} {data.v}"}}]}
        )
        for i, w in enumerate(
            ["data.v > 1", "data.v > 0", "data.v <= 2", "key == 'a'", "key in ['b', 'a', 'b']"]
        )
    }
    events = [
        Event("t", float(i), float(i), k, {"v": v}, {"seq": i})
        for i, (k, v) in enumerate([("a", 3), ("b", 1), ("c", "x"), ("a", 0.5), ("b", None)])
    ]

    def fires() -> tuple[list[Fired], dict[str, dict[str, int]]]:
        out: list[Fired] = []
        result = replay.replay_rules(configs, ["t"], events, out.append)
        return out, {name: r.stats.as_dict() for name, r in result.rules.items()}

    got = fires()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(shared, "targets", lambda rules: [r.on_next for r in rules])
        want = fires()
    assert got == want
    assert len(got[0]) == 2 + 3 + 2 + 2 + 3  # r0..r4


def test_groups_only_runs_of_the_same_expression_and_form() -> None:
    configs = [
        {"from": "t", "where": w, "then": [{"tool": "x"}]}
        for w in [
            "data.v > 1",
            "data.v  >= 2",
            "data.w > 1",
            "data.w > 2",
            "data.w > 3 and data.v",
            "data.w < 1",
            "key == 'a'",
            "key in ['b', 'c']",
            "key == data.s",
            "data.w == 1",
            "data.w == 2",
            "data.w > 3",
            "data.w == null",
            "data.w in [true, 'x']",
        ]
    ]
    rules = {f"r{i}": RuleConfig.model_validate(c) for i, c in enumerate(configs)}
    built = [Rule(name, c, lambda *a: True) for name, c in rules.items()]
    kinds = [type(t).__name__ for t in shared.targets(built)]
    # r0+r1, r2+r3, r4 (an `and`), r5 alone, r6+r7, r8 (not a constant), r9+r10, r11 (another form),
    # r12+r13 (null and true read as None and True)
    assert kinds == [
        "_Thresholds",
        "_Thresholds",
        "function",
        "function",
        "_Members",
        "function",
        "_Members",
        "function",
        "_Members",
    ]


def test_seen_counts_across_regrouping() -> None:
    """A group counts each event once for all its rules; regrouped (a reload), the counts go on."""
    configs = [
        RuleConfig.model_validate({"from": "t", "where": f"data.v > {i}", "then": [{"tool": "x"}]})
        for i in range(3)
    ]
    rules = [Rule(f"r{i}", c, lambda *a: True, None) for i, c in enumerate(configs)]
    rounds: list[list[Any]] = [[1, 5, "s"], [2, 0]]
    for round_, values in enumerate(rounds):
        (group,) = shared.targets(rules)
        for i, v in enumerate(values):
            group(Event("t", float(round_ * 10 + i), 0.0, None, {"v": v}, {}))
        group(Event("t", 99.0, 0.0, None, {}, {}, "gap"))  # a kind the rules do not read
    assert [r.stats.seen for r in rules] == [5, 5, 5]
    assert [r.stats.matched for r in rules] == [3, 2, 1]  # v = 1, 5, 2: > 0; 5, 2: > 1; 5: > 2


def test_rules_are_given_only_the_kinds_they_read() -> None:
    """Rules of a source that read different kinds: each kind goes only to the rules that read it."""
    got: list[str] = []

    def submit(tool: str, args: dict[str, Any], ctx: CallContext) -> bool:
        got.append(tool)
        return True

    configs = [
        {"from": "t", "where": "data.v > 1", "kinds": ["gap"], "then": [{"tool": "g"}]},
        {"from": "t", "where": "data.v > 1", "then": [{"tool": "d"}]},
        {"from": "t", "where": "data.v > 2", "then": [{"tool": "d2"}]},
    ]
    rules = [Rule(f"r{i}", RuleConfig.model_validate(c), submit, None) for i, c in enumerate(configs)]
    (target,) = shared.targets(rules)
    assert isinstance(target, shared._ByKind) and len(target.table["data"]) == 1  # r1 + r2: one group
    target(Event("t", 1.0, 1.0, None, {"v": 3}, {}, "gap"))
    target(Event("t", 2.0, 2.0, None, {"v": 3}, {}))
    assert got == ["g", "d", "d2"]
    assert [r.stats.seen for r in rules] == [1, 1, 1]


@settings(max_examples=200, deadline=None)
@given(
    calls=st.lists(
        st.tuples(
            st.sampled_from([1768485600.25, 1768485600.25, 0.0, -1.5, math.nan, 1e20]),
            st.sampled_from(["r1", "r2", 'r"3']),
            st.sampled_from(["alert", "t\u00e9l\u00e9"]),
            st.integers(0, 3),
        ),
        max_size=12,
    ),
    fmt=st.sampled_from(["text", "jsonl"]),
)
def test_fired_format_prints_what_format_fired_prints(
    calls: list[tuple[float, str, str, int]], fmt: str
) -> None:
    """``reflexd replay``'s line formatter, which keeps the time and arguments of the previous call, prints
    every call exactly as :func:`replay.format_fired` does (the same arguments object or not)."""
    shared_args: list[dict[Any, Any]] = [{"t": "a b"}, {"n": 1.5, "d": {"x": [1, None]}}, {1: "int key"}, {}]
    line = replay.FiredFormat(fmt)
    for ts, rule, tool, which in calls:
        for args in (shared_args[which], dict(shared_args[which])):
            fired = Fired(ts, rule, tool, args)
            assert line(fired) == replay.format_fired(fired, fmt)
