"""Rules that share work: many rules on one source whose only filter compares one expression.

:func:`targets` turns a source's readers into the callables a dispatcher calls per event. A run of
consecutive rules that all have no steps, no clock, one source, the same ``kinds`` and a ``where``
of one indexable form on the same expression ``E`` becomes one callable (a *group*):

- thresholds, ``E > X`` / ``E >= X`` / ``E < X`` / ``E <= X`` (``X`` a number literal): ``E`` is
  evaluated once per event and a sorted threshold index (bisect) finds the rules that match;
- equality, ``E == C`` / ``E in [C1, C2, ...]`` (``C`` a string, number, bool or None literal):
  ``E`` is evaluated once and a dict from constant to rules finds them.

Only runs of consecutive rules are merged, so fires keep the order of rule-by-rule delivery.
Everything else goes rule by rule (:attr:`Rule.on_next`). When the rules of a source do not all
read the same event kinds, the source's targets are picked per kind, so a rule never sees an event
of a kind it cannot read.

What each rule sees is what it saw rule by rule: ``seen`` (counted once per group and derived per
rule when read, :class:`~streams.rules.stats.SharedCount`), ``matched``, an error of ``E`` counted
for each rule of the group (with the rule's own rate-limited log), the matched rules fired in their
order. A rule without cooldown or tracing is fired by the group itself, as :meth:`Rule._fire` does
it, except that an argument template several rules of the group share (the same text, no
``now()``) is rendered once per event and the event's reference once; a rule with cooldown or
tracing goes through its own pipeline. When ``E`` gives a value the index cannot judge exactly as
Python would (a threshold group: anything but a non-NaN int or float; an equality group: anything
but a str, int, float, bool or None), the group falls back to each rule's own ``on_next``.
"""

from __future__ import annotations

import ast
import math
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from streams.call import CallContext, event_ref
from streams.event import Event
from streams.expressions import Compiled, compile_expression
from streams.rules.stats import RuleStats, SharedCount

__all__ = ["Member", "SharedRule", "Threshold", "index_form", "simple_member", "simple_threshold", "targets"]


class _CallShape(Protocol):
    @property
    def args(self) -> dict[str, Any]: ...


class _RuleShape(Protocol):
    @property
    def from_(self) -> list[str]: ...
    @property
    def steps(self) -> Sequence[object]: ...
    @property
    def where(self) -> str | None: ...
    @property
    def then(self) -> Sequence[_CallShape]: ...


class SharedRule(Protocol):
    """What a group reads and drives of a rule (:class:`streams.rules.pipeline.Rule`, which imports this
    module): its configuration, entry points, counters and the parts of its fire."""

    last_fire: tuple[float, Event] | None
    _latest_ts: float

    @property
    def name(self) -> str: ...
    @property
    def config(self) -> _RuleShape: ...
    @property
    def clock(self) -> object | None: ...
    @property
    def stats(self) -> RuleStats: ...
    @property
    def push(self) -> Callable[[Event], None]: ...
    @property
    def on_next(self) -> Callable[[Event], None]: ...
    @property
    def _on_fire(self) -> Callable[[Event], None]: ...
    @property
    def _kinds(self) -> frozenset[str]: ...
    @property
    def _now(self) -> Callable[[], float] | None: ...
    @property
    def _operators(self) -> bool: ...
    @property
    def _tracer(self) -> object | None: ...
    @property
    def _calls(self) -> Sequence[tuple[str, Compiled]]: ...
    @property
    def _submit(self) -> Callable[[str, dict[str, Any], CallContext], bool]: ...
    def _step_failed(self, label: str, exc: BaseException, item: Event) -> None: ...
    def _crashed(self, exc: BaseException, event: Event) -> None: ...
    def _render_failed(self, index: int, tool: str, event: Event, exc: Exception) -> None: ...
    def _submit_failed(self, tool: str, exc: Exception) -> None: ...


_OPS: dict[type[ast.cmpop], str] = {ast.Gt: ">", ast.GtE: ">=", ast.Lt: "<", ast.LtE: "<="}
#: the values an equality group looks up in its dict: hashing and ``==`` agree on them
_PLAIN = frozenset({str, int, float, bool, type(None)})

Target = Callable[[Event], None]


class Threshold:
    """``<expr> <op> <number>``: the expression's canonical text, the operator and the number."""

    __slots__ = ("expr", "op", "value")

    def __init__(self, expr: str, op: str, value: int | float) -> None:
        self.expr, self.op, self.value = expr, op, value


class Member:
    """``<expr> == <constant>`` or ``<expr> in [<constants>]``: the expression's canonical text and
    the constants."""

    __slots__ = ("expr", "values")

    def __init__(self, expr: str, values: tuple[Any, ...]) -> None:
        self.expr, self.values = expr, values


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


_NOT_CONSTANT = object()
_JSON_NAMES: dict[str, Any] = {"true": True, "false": False, "null": None}


def _constant(node: ast.expr) -> Any:
    """The value of a str, number, bool or None literal (not NaN), else ``_NOT_CONSTANT``."""
    if isinstance(node, ast.Constant) and (node.value is None or type(node.value) in (str, bool)):
        return node.value
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:  # what an expression reads them as
        return _JSON_NAMES[node.id]
    number = _number(node)
    return _NOT_CONSTANT if number is None else number


def _compare(text: str) -> ast.Compare | None:
    """``text`` parsed, if it is one comparison whose left side does not use ``now()``."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    body = tree.body
    if not isinstance(body, ast.Compare) or len(body.ops) != 1:
        return None
    if any(isinstance(node, ast.Name) and node.id == "now" for node in ast.walk(body.left)):
        return None  # now() is each rule's own clock
    return body


def _threshold(body: ast.Compare) -> Threshold | None:
    op = _OPS.get(type(body.ops[0]))
    value = _number(body.comparators[0])
    if op is None or value is None:
        return None
    return Threshold(ast.unparse(body.left), op, value)


def _member(body: ast.Compare) -> Member | None:
    op, right = body.ops[0], body.comparators[0]
    if isinstance(op, ast.Eq):
        items = [right]
    elif isinstance(op, ast.In) and isinstance(right, ast.List | ast.Tuple):
        items = right.elts
    else:
        return None
    values = tuple(_constant(item) for item in items)
    if any(value is _NOT_CONSTANT for value in values):
        return None
    return Member(ast.unparse(body.left), values)


def simple_threshold(text: str) -> Threshold | None:
    """The threshold form of a ``where``, or None if it has another shape (or uses ``now()``)."""
    body = _compare(text)
    return None if body is None else _threshold(body)


def simple_member(text: str) -> Member | None:
    """The equality form of a ``where`` (``E == C``, ``E in [C, ...]``), or None."""
    body = _compare(text)
    return None if body is None else _member(body)


def index_form(text: str) -> Threshold | Member | None:
    """How a ``where`` can be indexed, if it can."""
    body = _compare(text)
    return None if body is None else _threshold(body) or _member(body)


def _eligible(rule: SharedRule) -> Threshold | Member | None:
    config = rule.config
    if config.steps or rule.clock is not None or len(config.from_) != 1 or not config.where:
        return None
    return index_form(config.where)


class _Failed:
    """An argument template that raised on this event (kept so the other rules sharing it skip it too)."""

    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


_UNSET = object()
#: CallContext(tool, rule, event, call_id) built without the named tuple's ``__new__`` frame (a
#: fifth of a fire's cost): the four fields, then the defaults of the others
_new_context = tuple.__new__
_CONTEXT_DEFAULTS = tuple(CallContext._field_defaults[name] for name in CallContext._fields[4:])
assert CallContext._fields[:4] == ("tool", "rule", "event", "call_id")

#: one call of a rule fired by its group: (index in ``then``, tool, render slot, call id head, tail)
_Call = tuple[int, str, int, str, str]


class _Group:
    """Rules on one ``E``: one evaluation of ``E`` and an index lookup per event (subclasses: the
    index); the matched rules fired in rule order."""

    def __init__(self, rules: list[SharedRule]) -> None:
        self.rules = rules
        self.kinds = rules[0]._kinds
        self.replay = rules[0]._now is not None
        self.left: Compiled = compile_expression(self.expr, now=rules[0]._now)
        self.counter = SharedCount()
        for rule in rules:
            rule.stats.share_seen(self.counter)
        self.stats: list[RuleStats] = [rule.stats for rule in rules]
        self.pushes = [rule.push for rule in rules]
        self.latest = -math.inf  # the newest event time the group saw (replay: each rule's now())
        # the rules the group fires itself (no pipeline, no tracing): their calls, templates shared
        self.renders: list[Compiled] = []
        slots: dict[tuple[str, str], int] = {}
        self.direct: list[list[_Call] | None] = []
        for rule in rules:
            if rule._operators or rule._tracer is not None:
                self.direct.append(None)
                continue
            calls: list[_Call] = []
            for index, ((tool, render), call) in enumerate(zip(rule._calls, rule.config.then, strict=True)):
                shape = repr(call.args)
                key = (shape, rule.name if "now" in shape else "")  # now(): each rule's own clock
                slot = slots.get(key)
                if slot is None:
                    slot = slots[key] = len(self.renders)
                    self.renders.append(render)
                calls.append((index, tool, slot, f"{rule.name}:", f":{index}"))
            self.direct.append(calls)

    expr: str

    def matching(self, v: Any) -> Sequence[int] | None:
        """Positions of the rules whose ``where`` is true for ``E == v``, in rule order; None if the
        index cannot judge ``v`` exactly (each rule then evaluates its own ``where``)."""
        raise NotImplementedError

    def sync_time(self, rule: SharedRule) -> None:
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
            self.counter.count += 1
            for rule in rules:
                try:
                    rule._step_failed("where", exc, event)
                except Exception as crash:
                    rule._crashed(crash, event)
            return
        positions = self.matching(v)
        if positions is None:  # each rule on its own
            for rule in rules:
                self.sync_time(rule)
                rule.on_next(event)
            return
        self.counter.count += 1
        if positions:
            self.fire(event, positions)

    def fire(self, event: Event, positions: Sequence[int]) -> None:
        """The rules at ``positions`` matched ``event``: each fires (as :meth:`Rule._fire` would) or
        goes on through its pipeline."""
        rules, stats, direct, renders = self.rules, self.stats, self.direct, self.renders
        latest = self.latest if self.replay else None  # replay: each rule's now() reaches the event
        mark: tuple[float, Event] | None = None
        ref = ""
        rendered: list[Any] = []
        for position in positions:
            rule = rules[position]
            st = stats[position]
            st.matched += 1
            try:
                if latest is not None and latest > rule._latest_ts:
                    rule._latest_ts = latest
                calls = direct[position]
                if calls is None:
                    self.pushes[position](event)
                    continue
                st.fired += 1
                if mark is None:
                    mark = (time.time(), event)
                    rendered = [_UNSET] * len(renders)
                rule.last_fire = mark
                for index, tool, slot, head, tail in calls:
                    args = rendered[slot]
                    if args is _UNSET:
                        try:
                            args = renders[slot](event)
                        except Exception as exc:
                            args = _Failed(exc)
                        rendered[slot] = args
                    if type(args) is _Failed:
                        rule._render_failed(index, tool, event, args.exc)
                        continue
                    if not ref:
                        ref = event_ref(event)
                    fields = (tool, rule.name, event, head + ref + tail)
                    ctx = _new_context(CallContext, fields + _CONTEXT_DEFAULTS)
                    try:
                        accepted = rule._submit(tool, args, ctx)
                    except Exception as exc:
                        rule._submit_failed(tool, exc)
                        accepted = False
                    if accepted:
                        st.submitted += 1
                    else:
                        st.rejected += 1
            except Exception as exc:
                rule._crashed(exc, event)


class _Thresholds(_Group):
    """Rules ``E op X``: four sorted lookups per event."""

    def __init__(self, rules: list[SharedRule], forms: list[Threshold]) -> None:
        self.expr = forms[0].expr
        super().__init__(rules)
        index: dict[str, list[tuple[int | float, int]]] = {op: [] for op in _OPS.values()}
        for position, t in enumerate(forms):
            index[t.op].append((t.value, position))
        self.index: list[tuple[str, list[int | float], list[int]]] = []
        for op, entries in index.items():
            if entries:
                entries.sort()
                self.index.append((op, [v for v, _ in entries], [p for _, p in entries]))

    def matching(self, v: Any) -> Sequence[int] | None:
        if (type(v) is not float and type(v) is not int) or v != v:  # strings, None, bools, NaN...
            return None
        out: list[int] = []
        for op, values, positions in self.index:
            if op == ">":
                out += positions[: bisect_left(values, v)]
            elif op == ">=":
                out += positions[: bisect_right(values, v)]
            elif op == "<":
                out += positions[bisect_right(values, v) :]
            else:
                out += positions[bisect_left(values, v) :]
        if len(self.index) > 1 or len(out) > 1:
            out.sort()
        return out


class _Members(_Group):
    """Rules ``E == C`` / ``E in [C, ...]``: one dict lookup per event."""

    def __init__(self, rules: list[SharedRule], forms: list[Member]) -> None:
        self.expr = forms[0].expr
        super().__init__(rules)
        table: dict[Any, list[int]] = {}
        for position, m in enumerate(forms):
            for value in m.values:
                at = table.setdefault(value, [])
                if not at or at[-1] != position:  # `E in ['a', 'a']` fires once
                    at.append(position)
        self.table = table

    def matching(self, v: Any) -> Sequence[int] | None:
        if type(v) not in _PLAIN:  # lists, dicts, other types: their own ==
            return None
        return self.table.get(v, ())


class _ByKind:
    """A source's targets picked by event kind: only those whose rules read the event's kind."""

    def __init__(self, table: dict[str, list[Target]]) -> None:
        self.table = table

    def __call__(self, event: Event) -> None:
        for target in self.table.get(event.kind, ()):
            target(event)


def _group(rules: list[SharedRule], forms: list[Threshold | Member]) -> _Group:
    if isinstance(forms[0], Threshold):
        return _Thresholds(rules, [f for f in forms if isinstance(f, Threshold)])
    return _Members(rules, [f for f in forms if isinstance(f, Member)])


def targets(rules: Sequence[SharedRule]) -> list[Target]:
    """What to call per event for ``rules`` (in their order): shared groups and single rules (one
    callable choosing them by event kind when the rules do not all read the same kinds)."""
    out: list[tuple[frozenset[str], Target]] = []
    run: list[SharedRule] = []
    run_f: list[Threshold | Member] = []

    def close() -> None:
        if len(run) > 1:
            out.append((run[0]._kinds, _group(list(run), list(run_f))))
        else:
            out.extend((rule._kinds, rule.on_next) for rule in run)
        run.clear()
        run_f.clear()

    for rule in rules:
        rule.stats.share_seen(None)  # the group it was in (before a reload) counts no more for it
        form = _eligible(rule)
        if form is None:
            close()
            out.append((rule._kinds, rule.on_next))
            continue
        first = run_f[0] if run else None
        if first is not None and (
            type(form) is not type(first) or form.expr != first.expr or rule._kinds != run[0]._kinds
        ):
            close()
        run.append(rule)
        run_f.append(form)
    close()
    if len(out) > 1 and len({kinds for kinds, _ in out}) > 1:
        table: dict[str, list[Target]] = {}
        for kinds, target in out:
            for kind in sorted(kinds):
                table.setdefault(kind, []).append(target)
        return [_ByKind(table)]
    return [target for _, target in out]
