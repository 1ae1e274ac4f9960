"""Rules that share work: many rules on one source whose only filter is ``where: <expr> <op> <number>``.

:func:`targets` turns a source's readers into the callables a dispatcher calls per event. A run of
consecutive rules that all have no steps, no clock, one source, the same ``kinds`` and a ``where``
of the form ``E > X`` / ``E >= X`` / ``E < X`` / ``E <= X`` (the same ``E``, ``X`` a number
literal) becomes one callable: ``E`` is evaluated once per event and a sorted threshold index
(bisect) finds the rules that match. Only runs of consecutive rules are merged, so fires keep the
order of rule-by-rule delivery. Everything else goes rule by rule (:attr:`Rule.on_next`).

What each rule sees is what it saw rule by rule: ``seen`` and ``matched`` per rule, an error of
``E`` counted for each rule of the group (with the rule's own rate-limited log), the matched
rules fired in their order through their own pipeline (cooldown, templates, then). When ``E``
gives anything but a non-NaN int or float, the group falls back to each rule's own ``on_next``.
"""

from __future__ import annotations

import ast
import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from streams.event import Event
from streams.expressions import Compiled, compile_expression

if TYPE_CHECKING:
    from streams.rules.pipeline import Rule

__all__ = ["Threshold", "simple_threshold", "targets"]

_OPS: dict[type[ast.cmpop], str] = {ast.Gt: ">", ast.GtE: ">=", ast.Lt: "<", ast.LtE: "<="}


class Threshold:
    """``<expr> <op> <number>``: the expression's canonical text, the operator and the number."""

    __slots__ = ("expr", "op", "value")

    def __init__(self, expr: str, op: str, value: int | float) -> None:
        self.expr, self.op, self.value = expr, op, value


def _number(node: ast.expr) -> int | float | None:
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        sign = -1 if isinstance(node.op, ast.USub) else 1
        node = node.operand
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = node.value
        assert isinstance(value, int | float)
        if isinstance(value, float) and math.isnan(value):
            return None
        return sign * value
    return None


def simple_threshold(text: str) -> Threshold | None:
    """The threshold form of a ``where``, or None if it has another shape (or uses ``now()``)."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    body = tree.body
    if not isinstance(body, ast.Compare) or len(body.ops) != 1:
        return None
    op = _OPS.get(type(body.ops[0]))
    value = _number(body.comparators[0])
    if op is None or value is None:
        return None
    if any(isinstance(node, ast.Name) and node.id == "now" for node in ast.walk(body.left)):
        return None  # now() is each rule's own clock
    return Threshold(ast.unparse(body.left), op, value)


def _eligible(rule: Rule) -> Threshold | None:
    config = rule.config
    if config.steps or rule.clock is not None or len(config.from_) != 1 or not config.where:
        return None
    return simple_threshold(config.where)


class _Group:
    """Rules ``E op X`` with one ``E``: one evaluation of ``E`` and four sorted lookups per event."""

    def __init__(self, rules: list[Rule], thresholds: list[Threshold]) -> None:
        self.rules = rules
        self.kinds = rules[0]._kinds
        self.replay = rules[0]._now is not None
        self.left: Compiled = compile_expression(thresholds[0].expr, now=rules[0]._now)
        self.stats = [rule.stats for rule in rules]
        self.pushes = [rule.subject.on_next if rule._operators else rule._on_fire for rule in rules]
        self.latest = -math.inf  # the newest event time the group saw (replay: each rule's now())
        index: dict[str, list[tuple[int | float, int]]] = {op: [] for op in _OPS.values()}
        for position, t in enumerate(thresholds):
            index[t.op].append((t.value, position))
        self.index: dict[str, tuple[list[int | float], list[int]]] = {}
        for op, entries in index.items():
            entries.sort()
            self.index[op] = ([v for v, _ in entries], [p for _, p in entries])
        self.single_op = sum(1 for entries in index.values() if entries) == 1

    def matching(self, v: int | float) -> list[int]:
        """Positions of the rules whose ``v op X`` is true, in rule order."""
        out: list[int] = []
        values, positions = self.index[">"]
        if values:
            out += positions[: bisect_left(values, v)]
        values, positions = self.index[">="]
        if values:
            out += positions[: bisect_right(values, v)]
        values, positions = self.index["<"]
        if values:
            out += positions[bisect_right(values, v) :]
        values, positions = self.index["<="]
        if values:
            out += positions[bisect_left(values, v) :]
        out.sort()
        return out

    def sync_time(self, rule: Rule) -> None:
        if self.latest > rule._latest_ts:
            rule._latest_ts = self.latest

    def __call__(self, event: Event) -> None:
        if event.kind not in self.kinds:
            return
        if self.replay and event.ts > self.latest:
            self.latest = event.ts
        rules = self.rules
        try:
            v = self.left(event)
        except Exception as exc:
            for rule in rules:
                rule.stats.seen += 1
                try:
                    rule._step_failed("where", exc, event)
                except Exception as crash:
                    rule._crashed(crash, event)
            return
        if type(v) not in (int, float) or v != v:  # strings, None, NaN...: each rule on its own
            for rule in rules:
                self.sync_time(rule)
                rule.on_next(event)
            return
        for stats in self.stats:
            stats.seen += 1
        pushes = self.pushes
        for position in self.matching(v):
            rule = rules[position]
            rule.stats.matched += 1
            try:
                if self.replay:
                    self.sync_time(rule)
                pushes[position](event)
            except Exception as exc:
                rule._crashed(exc, event)


def targets(rules: Sequence[Rule]) -> list[Callable[[Event], None]]:
    """What to call per event for ``rules`` (in their order): shared groups and single rules."""
    out: list[Callable[[Event], None]] = []
    run: list[Rule] = []
    run_t: list[Threshold] = []

    def close() -> None:
        if len(run) > 1:
            out.append(_Group(list(run), list(run_t)))
        else:
            out.extend(rule.on_next for rule in run)
        run.clear()
        run_t.clear()

    for rule in rules:
        t = _eligible(rule)
        if t is None:
            close()
            out.append(rule.on_next)
            continue
        if run and (t.expr != run_t[0].expr or rule._kinds != run[0]._kinds):
            close()
        run.append(rule)
        run_t.append(t)
    close()
    return out
