"""The shared evaluator (streams/rules/shared.py) against rule-by-rule delivery: same fires, same order,
same per-rule stats, on random rule sets and events."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.event import Event
from streams.rules import replay, shared
from streams.rules.pipeline import Rule, RuleConfig
from streams.rules.replay import Fired

EXPRS = ["float(data.p) * float(data.q)", "data.v", "data.v * 2", "data.a / data.b", "data.s"]
OPS = [">", ">=", "<", "<="]
OTHER = ["data.v > 1 and data.b < 3", "data.s == 'x'"]  # not a threshold: rule by rule

# few distinct numbers, so that events often sit exactly on a threshold
number = st.one_of(
    st.sampled_from([-1, 0, 0.5, 1, 2, 2.0]), st.integers(-3, 3), st.floats(-3, 3, allow_nan=False)
)
value = st.one_of(number, st.none(), st.text(max_size=2), st.just(math.nan), st.booleans())


@st.composite
def rule(draw: st.DrawFn, main: str) -> dict[str, Any]:
    """Mostly ``main`` against a number (runs of them share work), sometimes another shape."""
    shape = draw(st.integers(0, 7))
    if shape == 0:
        where = draw(st.sampled_from(OTHER))
    else:
        expr = main if shape > 2 else draw(st.sampled_from(EXPRS))
        where = f"{expr} {draw(st.sampled_from(OPS))} {draw(number)!r}"
    config: dict[str, Any] = {"from": "t", "where": where, "then": [{"tool": "x", "args": {"v": "{data}"}}]}
    if draw(st.booleans()):
        config["cooldown_seconds"] = draw(st.sampled_from([0.5, 2]))
    if draw(st.integers(0, 4)) == 0:
        config["kinds"] = ["gap"]
    return config


@st.composite
def event(draw: st.DrawFn) -> dict[str, Any]:
    data = {}
    for field in ("p", "q", "v", "a", "b", "s"):
        if draw(st.integers(0, 5)) > 0:
            data[field] = draw(st.one_of(number, number, value, number.map(str)))
    return data


def run(configs: list[dict[str, Any]], datas: list[dict[str, Any]], kinds: list[str]) -> Any:
    rules = {f"r{i}": RuleConfig.model_validate(c) for i, c in enumerate(configs)}
    events = [
        Event("t", float(i), float(i), None, d, {"seq": i}, k)
        for i, (d, k) in enumerate(zip(datas, kinds, strict=True))
    ]
    fired: list[Fired] = []
    result = replay.replay_rules(rules, ["t"], events, fired.append)
    return [repr(f) for f in fired], {name: r.stats.as_dict() for name, r in result.rules.items()}


@settings(max_examples=150, deadline=None)
@given(
    configs=st.sampled_from(EXPRS).flatmap(lambda main: st.lists(rule(main), min_size=1, max_size=12)),
    events=st.lists(st.tuples(event(), st.sampled_from(["data", "data", "gap"])), max_size=25),
)
def test_shared_agrees_with_rule_by_rule(
    configs: list[dict[str, Any]],
    events: list[tuple[dict[str, Any], str]],
) -> None:
    datas, kinds = [d for d, _ in events], [k for _, k in events]
    got = run(configs, datas, kinds)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(shared, "targets", lambda rules: [r.on_next for r in rules])
        want = run(configs, datas, kinds)
    assert got == want


def test_groups_only_runs_of_the_same_expression() -> None:
    configs = [
        {"from": "t", "where": w, "then": [{"tool": "x"}]}
        for w in [
            "data.v > 1",
            "data.v  >= 2",
            "data.w > 1",
            "data.w > 2",
            "data.w > 3 and data.v",
            "data.w < 1",
        ]
    ]
    rules = {f"r{i}": RuleConfig.model_validate(c) for i, c in enumerate(configs)}
    built = [Rule(name, c, lambda *a: True) for name, c in rules.items()]
    kinds = [type(t).__name__ for t in shared.targets(built)]
    assert kinds == ["_Thresholds", "_Thresholds", "function", "function"]  # r0+r1, r2+r3, r4 (an `and`), r5 alone
