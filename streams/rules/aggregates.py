"""Window aggregates: ``count sum avg min max first last stddev vwap pct_change``.

An aggregate is written as a call, ``vwap(price, float(data.q))``, whose arguments are ordinary
expressions evaluated once per event when it enters the window (the same argument written in
several aggregates is evaluated once). :func:`compile_aggregates` checks and compiles them;
:class:`WindowProgram` keeps the per-window state and computes the results.

Sliding windows remove events as they leave, so sums are running sums (added and subtracted);
they are recomputed exactly from the window's events once as many events have left as it holds
(bounding floating-point drift at an amortised O(1) cost), and at once when a departing value
was so large that what remains would be mostly rounding error. ``stddev`` sums deviations from
a shift (a value in the window) to avoid cancellation, and re-shifts when the values in the
window have moved far from it. ``min``/``max`` use monotonic queues.

=============  =========================================================================
``count()``     events in the window
``sum(x)``      sum of ``x``
``avg(x)``      mean of ``x``
``min(x)``      smallest ``x``
``max(x)``      largest ``x``
``first(x)``    ``x`` of the oldest event in the window (any value, not only numbers)
``last(x)``     ``x`` of the newest event (any value)
``stddev(x)``   population standard deviation of ``x`` (0 for one event)
``vwap(p, v)``  ``sum(p * v) / sum(v)``; null when ``sum(v)`` is 0
``pct_change(x)``  ``(last(x) - first(x)) / first(x) * 100``, in percent; null when ``first(x)`` is 0
=============  =========================================================================

Arguments of every aggregate but ``first``/``last`` must be finite numbers (int or float);
an event whose argument is not is refused by the window (an error counted by the rule).
"""

from __future__ import annotations

import ast
import math
import warnings
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

from daemon.errors import ExpressionError
from streams.expressions import INLINE_NAMES, Compiled, compile_expression, inline_source

__all__ = [
    "AGGREGATES",
    "RECOMPUTE_SLACK",
    "SlidingCode",
    "WindowProgram",
    "WindowState",
    "compile_aggregates",
]

#: name → (fewest, most) arguments
AGGREGATES: Final[Mapping[str, tuple[int, int]]] = {
    "count": (0, 0),
    "sum": (1, 1),
    "avg": (1, 1),
    "min": (1, 1),
    "max": (1, 1),
    "first": (1, 1),
    "last": (1, 1),
    "stddev": (1, 1),
    "vwap": (2, 2),
    "pct_change": (1, 1),
}
_ANY_VALUE: Final = frozenset({"first", "last"})

RECOMPUTE_SLACK: Final = 64
"""Running sums are recomputed after ``len(window) + RECOMPUTE_SLACK`` removals."""
_CANCELLATION: Final = 1e8  # removing a term this many times larger than what is left: recompute

# result ops
_COUNT, _SUM, _AVG, _VWAP, _STDDEV, _FIRST, _LAST, _PCT, _MIN, _MAX = range(10)
# running-sum term ops
_T_X, _T_XY, _T_DX, _T_DX2 = range(4)


def _char_offset(text: str, lineno: int, byte_col: int) -> int:
    """0-based character index in ``text`` of an AST (line, UTF-8 byte column) position."""
    lines = text.splitlines(keepends=True)
    before = sum(len(line) for line in lines[: max(lineno - 1, 0)])
    line = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
    return before + len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))


def _parse_call(text: str) -> tuple[str, list[tuple[str, int]]]:
    """``name(arg, ...)`` → (name, [(argument text, 0-based start column in ``text``)])."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError(str(text), "an aggregate looks like vwap(price, qty) or count()", 1)
    stripped = text.lstrip()
    skipped = len(text) - len(stripped)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(stripped, mode="eval")
    except SyntaxError as exc:
        column = skipped + (exc.offset or 1)
        raise ExpressionError(text, f"syntax error: {exc.msg}", min(column, len(text) + 1)) from None
    except (ValueError, RecursionError, MemoryError):
        raise ExpressionError(text, "syntax error", 1) from None
    call = tree.body
    known = ", ".join(AGGREGATES)
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise ExpressionError(text, f"an aggregate is a call of one of: {known}", skipped + 1)
    name = call.func.id
    if name not in AGGREGATES:
        raise ExpressionError(text, f"unknown aggregate {name!r} (one of: {known})", skipped + 1)
    if call.keywords or any(isinstance(a, ast.Starred) for a in call.args):
        raise ExpressionError(text, f"{name}() takes plain positional arguments", skipped + 1)
    fewest, most = AGGREGATES[name]
    if not fewest <= len(call.args) <= most:
        expected = str(fewest) if fewest == most else f"{fewest} to {most}"
        raise ExpressionError(
            text, f"{name}() takes {expected} argument(s), got {len(call.args)}", skipped + 1
        )
    args = []
    for arg in call.args:
        segment = ast.get_source_segment(stripped, arg)
        assert segment is not None
        start = _char_offset(stripped, arg.lineno, arg.col_offset)
        args.append((segment, skipped + start))
    return name, args


@dataclass(frozen=True)
class _Aggregate:
    name: str  # output field
    op: int
    a: int = 0
    b: int = 0


class WindowState:
    """One window's contents (per key): a sliding window keeps its events, a tumbling one only sums."""

    __slots__ = (
        "entries",
        "ext",
        "first",
        "item",
        "last",
        "mono",
        "n",
        "removed",
        "seq",
        "shift",
        "start",
        "sums",
    )

    def __init__(self, program: WindowProgram, sliding: bool) -> None:
        self.n = 0
        self.sums: list[Any] = [0] * len(program.terms)
        self.shift: tuple[Any, ...] = ()
        self.entries: deque[tuple[float, int, tuple[Any, ...]]] | None = deque() if sliding else None
        self.mono: list[deque[tuple[Any, int]]] = [deque() for _ in program.extremes] if sliding else []
        self.ext: list[Any] = [None] * len(program.extremes)
        self.first: tuple[Any, ...] = ()
        self.last: tuple[Any, ...] = ()
        self.removed = 0
        self.seq = 0
        self.start = 0.0  # tumbling: the window's start
        self.item: Any = None  # tumbling: the newest event (emitted when the window closes)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as one tuple of plain values (a checkpoint of 100k windows: the default, slots
        and deques one object at a time, took seconds each way)."""
        entries = None if self.entries is None else list(self.entries)
        mono = [list(dq) for dq in self.mono]
        fields = (self.n, self.sums, self.shift, entries, mono, self.ext, self.first, self.last)
        return _window_state, (*fields, self.removed, self.seq, self.start, self.item)


def _window_state(
    n: int,
    sums: list[Any],
    shift: tuple[Any, ...],
    entries: list[tuple[float, int, tuple[Any, ...]]] | None,
    mono: list[list[tuple[Any, int]]],
    ext: list[Any],
    first: tuple[Any, ...],
    last: tuple[Any, ...],
    removed: int,
    seq: int,
    start: float,
    item: Any,
) -> WindowState:
    """A :class:`WindowState` from what its ``__reduce__`` saved."""
    st = WindowState.__new__(WindowState)
    st.n, st.sums, st.shift, st.ext, st.first, st.last = n, sums, shift, ext, first, last
    st.entries = None if entries is None else deque(entries)
    st.mono = [deque(dq) for dq in mono]
    st.removed, st.seq, st.start, st.item = removed, seq, start, item
    return st


@dataclass(frozen=True)
class SlidingCode:
    """A sliding window's per-event work as Python lines (:meth:`WindowProgram.sliding_code`), for a
    step that compiles them into its ``on_next``. The lines read ``item`` (the event), ``ts`` (its
    time), ``st`` (its window) and ``entries`` (``st.entries``); they name their own locals ``_*``."""

    #: what the lines refer to (the input expressions, helpers): the globals to compile them with
    names: dict[str, Any]
    #: the inputs into ``_v0, _v1, ...`` and the tuple ``_values``; raises as :attr:`WindowProgram.evaluate`
    evaluate: list[str]
    #: ``_values`` into the window; leaves ``_n`` (events in it) and ``_sums`` (its running sums)
    add: list[str]
    #: the oldest event out of a non-empty window
    remove: list[str]
    #: (output field, expression) for each aggregate, reading ``_n``, ``_sums``, ``_v*`` and ``_first``
    #: (the oldest event's values)
    results: list[tuple[str, str]]


def _need_number(x: Any) -> None:
    """Raise unless ``x`` is an int or a finite float (the slow path of the inputs' check)."""
    kind = type(x)
    if kind is float:
        if not math.isfinite(x):
            raise ValueError(f"window aggregates need finite numbers, got {x!r}")
    elif kind is not int:
        raise TypeError(f"window aggregates need numbers, got {kind.__name__} {x!r:.40}")


class WindowProgram:
    """Compiled aggregates of one ``window`` step.

    The per-event work (:attr:`evaluate`, :meth:`add`, :meth:`remove_oldest`, :meth:`results`)
    walks tuples made once here: the inputs unrolled for one or two of them, the running sums split
    by kind of term, the aggregates as plain tuples.
    """

    def __init__(
        self,
        inputs: list[Compiled],
        numeric: set[int],
        aggregates: list[_Aggregate],
        terms: list[tuple[int, int, int]],
        extremes: list[tuple[int, bool]],
        sources: list[str | None] | None = None,
        keys: list[str | None] | None = None,
    ) -> None:
        self.inputs = tuple(inputs)
        #: each input as a Python expression of ``item`` (:func:`~streams.expressions.inline_source`),
        #: or None: what :meth:`sliding_code` writes instead of calling the input
        self.sources: tuple[str | None, ...] = (
            tuple(sources) if sources is not None else (None,) * len(inputs)
        )
        #: each input that reads the event alone, as its inline text without computed fields (the key
        #: of :attr:`~streams.rules.spec.StepContext.values`), or None
        self.keys: tuple[str | None, ...] = tuple(keys) if keys is not None else (None,) * len(inputs)
        self.numeric = tuple(sorted(numeric))
        self.aggregates = tuple(aggregates)
        # (slot, op, i, j): running sum number `slot` of `op` over inputs i (and j)
        self.terms = tuple((k, op, i, j) for k, (op, i, j) in enumerate(terms))
        # (slot, input, is_max)
        self.extremes = tuple((m, i, is_max) for m, (i, is_max) in enumerate(extremes))
        self.names = tuple(a.name for a in aggregates)
        # the terms by kind: sum(x) (slot, i); sum(x*y) (slot, i, j); shifted sums (slot, i)
        self._x = tuple((k, i) for k, op, i, _j in self.terms if op == _T_X)
        self._xy = tuple((k, i, j) for k, op, i, j in self.terms if op == _T_XY)
        self._dx = tuple((k, i) for k, op, i, _j in self.terms if op == _T_DX)
        self._dx2 = tuple((k, i) for k, op, i, _j in self.terms if op == _T_DX2)
        self._results = tuple((a.name, a.op, a.a, a.b) for a in aggregates)
        #: the inputs of one event; raises if an expression does, or if a number is not a finite number
        self.evaluate: Callable[[Any], tuple[Any, ...]] = self._evaluator()
        #: ``add(state, ts, values)``: one event into a window; ``remove_oldest(state)``: the oldest
        #: out of a sliding one
        self.add: Callable[[WindowState, float, tuple[Any, ...]], None] = self._add_any
        self.remove_oldest: Callable[[WindowState], None] = self._remove_any
        if not (self._dx or self._dx2 or self.extremes):
            self.add, self.remove_oldest = self._plain_sums()

    def sliding_code(self) -> SlidingCode | None:
        """What :meth:`evaluate`, :meth:`add`, :meth:`remove_oldest` and :meth:`results` do to a sliding
        window, written out as Python lines for a step to compile into its own ``on_next`` (one frame
        per event instead of four); None unless the aggregates keep only plain running sums (no
        ``stddev``, ``min``, ``max``). The lines compute the same values in the same order."""
        if self._dx or self._dx2 or self.extremes:
            return None
        count = len(self.inputs)
        names: dict[str, Any] = {f"_f{i}": fn for i, fn in enumerate(self.inputs)}
        names.update(INLINE_NAMES)
        names.update(_need=_need_number, _recompute=self.recompute, _cancellation=_CANCELLATION)
        names.update(_slack=RECOMPUTE_SLACK, _slots=len(self.terms))
        values = "".join(f"_v{i}, " for i in range(count))
        evaluate = [f"_v{i} = {source or f'_f{i}(item)'}" for i, source in enumerate(self.sources)]
        for i in self.numeric:  # after every input, as evaluate() does: finite floats pass at once
            evaluate += [f"if type(_v{i}) is not float or _v{i} - _v{i} != 0.0:", f"    _need(_v{i})"]
        evaluate.append(f"_values = ({values})")
        add = [
            "_n = st.n = st.n + 1",
            "if _n == 1:",
            "    st.shift = _values",
            "    st.first = _values",
            "st.last = _values",
            "_sums = st.sums",
            *(f"_sums[{k}] += _v{i}" for k, i in self._x),
            *(f"_sums[{k}] += _v{i} * _v{j}" for k, i, j in self._xy),
            "_seq = st.seq = st.seq + 1",
            "entries.append((ts, _seq, _values))",
        ]
        lost = []
        remove = ["_old = entries.popleft()[2]", "_n = st.n = st.n - 1", "if _n == 0:"]
        remove += ["    st.sums = [0] * _slots", "    st.removed = 0", "else:", "    _sums = st.sums"]
        terms = [(k, f"_old[{i}]") for k, i in self._x] + [
            (k, f"_old[{i}] * _old[{j}]") for k, i, j in self._xy
        ]
        for t, (k, term) in enumerate(terms):
            remove += [f"    _c{t} = {term}", f"    _l{t} = _sums[{k}] = _sums[{k}] - _c{t}"]
            # abs() written out (a builtin call less per term; the same comparison, -0.0 and NaN included)
            lost.append(
                f"(_c{t} if _c{t} >= 0 else -_c{t}) > _cancellation * (_l{t} if _l{t} >= 0 else -_l{t})"
            )
        remove.append("    _removed = st.removed = st.removed + 1")
        remove += [f"    if {' or '.join([*lost, '_removed > _n + _slack'])}:", "        _recompute(st)"]
        results = []
        for name, op, a, b in self._results:
            if op == _VWAP:
                value = f"_sums[{a}] / _sums[{b}] if _sums[{b}] else None"
            elif op == _PCT:
                value = f"(_v{a} - _first[{a}]) / _first[{a}] * 100.0 if _first[{a}] else None"
            elif op == _COUNT:
                value = "_n"
            elif op == _SUM:
                value = f"_sums[{a}]"
            elif op == _AVG:
                value = f"_sums[{a}] / _n"
            elif op == _FIRST:
                value = f"_first[{a}]"
            else:
                assert op == _LAST
                value = f"_v{a}"
            results.append((name, value))
        return SlidingCode(names, evaluate, add, remove, results)

    def _evaluator(self) -> Callable[[Any], tuple[Any, ...]]:
        inputs, numeric, need = self.inputs, self.numeric, _need_number
        if len(inputs) == 1 and numeric == (0,):
            (f0,) = inputs

            def evaluate1(item: Any) -> tuple[Any, ...]:
                a = f0(item)
                if type(a) is not float or a - a != 0.0:  # not a finite float: int, or an error
                    need(a)
                return (a,)

            return evaluate1
        if len(inputs) == 2 and numeric == (0, 1):
            f0, f1 = inputs

            def evaluate2(item: Any) -> tuple[Any, ...]:
                a = f0(item)
                b = f1(item)
                if type(a) is not float or a - a != 0.0:
                    need(a)
                if type(b) is not float or b - b != 0.0:
                    need(b)
                return (a, b)

            return evaluate2

        def evaluate(item: Any) -> tuple[Any, ...]:
            values = tuple([fn(item) for fn in inputs])
            for i in numeric:
                need(values[i])
            return values

        return evaluate

    # -- changes ---------------------------------------------------------------------------------

    def _plain_sums(
        self,
    ) -> tuple[Callable[[WindowState, float, tuple[Any, ...]], None], Callable[[WindowState], None]]:
        """``add`` and ``remove_oldest`` for aggregates that keep only plain running sums (count, sum,
        avg, vwap, first, last, pct_change): what :meth:`_add_any` and :meth:`_remove_any` do for them,
        without the terms and extremes they do not have."""
        xs, xys, slots, recompute = self._x, self._xy, len(self.terms), self.recompute
        cancellation, slack = _CANCELLATION, RECOMPUTE_SLACK
        if len(xs) <= 1 and len(xys) <= 1:  # e.g. vwap (one sum(v), one sum(p*v)): written out
            return self._one_of_each(xs, xys)

        def add(st: WindowState, ts: float, values: tuple[Any, ...]) -> None:
            n = st.n = st.n + 1
            if n == 1:
                st.shift = values
                st.first = values
            st.last = values
            sums = st.sums
            for k, i in xs:
                sums[k] += values[i]
            for k, i, j in xys:
                sums[k] += values[i] * values[j]
            entries = st.entries
            if entries is not None:
                seq = st.seq = st.seq + 1
                entries.append((ts, seq, values))

        def remove_oldest(st: WindowState) -> None:
            entries = st.entries
            assert entries is not None
            values = entries.popleft()[2]
            n = st.n = st.n - 1
            if n == 0:
                st.sums = [0] * slots
                st.removed = 0
                return
            sums = st.sums
            lost = False  # a term so large that what remains is mostly rounding error
            for k, i in xs:
                c = values[i]
                left = sums[k] = sums[k] - c
                if abs(c) > cancellation * abs(left):
                    lost = True
            for k, i, j in xys:
                c = values[i] * values[j]
                left = sums[k] = sums[k] - c
                if abs(c) > cancellation * abs(left):
                    lost = True
            removed = st.removed = st.removed + 1
            if lost or removed > n + slack:
                recompute(st)

        return add, remove_oldest

    def _one_of_each(
        self, xs: tuple[tuple[int, int], ...], xys: tuple[tuple[int, int, int], ...]
    ) -> tuple[Callable[[WindowState, float, tuple[Any, ...]], None], Callable[[WindowState], None]]:
        """:meth:`_plain_sums` with at most one ``sum(x)`` and one ``sum(x*y)``, without loops."""
        has_x, has_xy = bool(xs), bool(xys)
        kx, ix = xs[0] if xs else (0, 0)
        kxy, ixy, jxy = xys[0] if xys else (0, 0, 0)
        slots, recompute = len(self.terms), self.recompute
        cancellation, slack = _CANCELLATION, RECOMPUTE_SLACK

        def add(st: WindowState, ts: float, values: tuple[Any, ...]) -> None:
            n = st.n = st.n + 1
            if n == 1:
                st.shift = values
                st.first = values
            st.last = values
            sums = st.sums
            if has_x:
                sums[kx] += values[ix]
            if has_xy:
                sums[kxy] += values[ixy] * values[jxy]
            entries = st.entries
            if entries is not None:
                seq = st.seq = st.seq + 1
                entries.append((ts, seq, values))

        def remove_oldest(st: WindowState) -> None:
            entries = st.entries
            assert entries is not None
            values = entries.popleft()[2]
            n = st.n = st.n - 1
            if n == 0:
                st.sums = [0] * slots
                st.removed = 0
                return
            sums = st.sums
            lost = False  # a term so large that what remains is mostly rounding error
            if has_x:
                c = values[ix]
                left = sums[kx] = sums[kx] - c
                if abs(c) > cancellation * abs(left):
                    lost = True
            if has_xy:
                c = values[ixy] * values[jxy]
                left = sums[kxy] = sums[kxy] - c
                if abs(c) > cancellation * abs(left):
                    lost = True
            removed = st.removed = st.removed + 1
            if lost or removed > n + slack:
                recompute(st)

        return add, remove_oldest

    def _add_any(self, st: WindowState, ts: float, values: tuple[Any, ...]) -> None:
        n = st.n = st.n + 1
        if n == 1:
            st.shift = values
            st.first = values
        st.last = values
        sums = st.sums
        for k, i in self._x:
            sums[k] += values[i]
        for k, i, j in self._xy:
            sums[k] += values[i] * values[j]
        if self._dx or self._dx2:
            shift = st.shift
            for k, i in self._dx:
                sums[k] += values[i] - shift[i]
            for k, i in self._dx2:
                d = values[i] - shift[i]
                sums[k] += d * d
        entries = st.entries
        if entries is not None:
            seq = st.seq = st.seq + 1
            entries.append((ts, seq, values))
            for m, i, is_max in self.extremes:
                dq = st.mono[m]
                x = values[i]
                if is_max:
                    while dq and dq[-1][0] <= x:
                        dq.pop()
                else:
                    while dq and dq[-1][0] >= x:
                        dq.pop()
                dq.append((x, seq))
        else:
            ext = st.ext
            for m, i, is_max in self.extremes:
                x = values[i]
                current = ext[m]
                if n == 1 or (x > current if is_max else x < current):
                    ext[m] = x

    def _remove_any(self, st: WindowState) -> None:
        """Drop the oldest event of a sliding window."""
        entries = st.entries
        assert entries is not None
        _ts, seq, values = entries.popleft()
        n = st.n = st.n - 1
        if n == 0:
            st.sums = [0] * len(self.terms)
            for dq in st.mono:
                dq.clear()
            st.removed = 0
            return
        for dq in st.mono:
            if dq[0][1] == seq:
                dq.popleft()
        sums = st.sums
        lost = False  # a term so large that what remains is mostly rounding error
        for k, i in self._x:
            c = values[i]
            left = sums[k] = sums[k] - c
            if abs(c) > _CANCELLATION * abs(left):
                lost = True
        for k, i, j in self._xy:
            c = values[i] * values[j]
            left = sums[k] = sums[k] - c
            if abs(c) > _CANCELLATION * abs(left):
                lost = True
        if self._dx or self._dx2:
            shift = st.shift
            for k, i in self._dx:
                c = values[i] - shift[i]
                left = sums[k] = sums[k] - c
                if abs(c) > _CANCELLATION * abs(left):
                    lost = True
            for k, i in self._dx2:
                d = values[i] - shift[i]
                c = d * d
                left = sums[k] = sums[k] - c
                if abs(c) > _CANCELLATION * abs(left):
                    lost = True
        removed = st.removed = st.removed + 1
        if lost or removed > n + RECOMPUTE_SLACK:
            self.recompute(st)

    def recompute(self, st: WindowState) -> None:
        """Rebuild the running sums of a sliding window from its events (bounds float drift)."""
        entries = st.entries
        assert entries is not None
        st.removed = 0
        if not entries:
            st.sums = [0] * len(self.terms)
            return
        st.shift = shift = entries[0][2]
        sums: list[Any] = [0] * len(self.terms)
        for _ts, _seq, values in entries:
            for k, op, i, j in self.terms:
                x = values[i]
                if op == _T_X:
                    sums[k] += x
                elif op == _T_XY:
                    sums[k] += x * values[j]
                elif op == _T_DX:
                    sums[k] += x - shift[i]
                else:
                    d = x - shift[i]
                    sums[k] += d * d
        st.sums = sums

    # -- results ---------------------------------------------------------------------------------

    def results(self, st: WindowState, out: dict[str, Any]) -> dict[str, Any]:
        """Write every aggregate of a non-empty window into ``out`` and return it."""
        n = st.n
        sums = st.sums
        entries = st.entries
        if entries is not None:
            first = entries[0][2]
            last = entries[-1][2]
        else:
            first = st.first
            last = st.last
        for name, op, a, b in self._results:
            value: Any
            if op == _VWAP:
                den = sums[b]
                value = sums[a] / den if den else None
            elif op == _PCT:
                f = first[a]
                value = (last[a] - f) / f * 100.0 if f else None
            elif op == _COUNT:
                value = n
            elif op == _SUM:
                value = sums[a]
            elif op == _AVG:
                value = sums[a] / n
            elif op == _FIRST:
                value = first[a]
            elif op == _LAST:
                value = last[a]
            elif op == _STDDEV:
                mean = sums[a] / n
                var = sums[b] / n - mean * mean
                if entries is not None and mean * mean > 16 * n * max(var, 0.0) and mean:
                    # the shift (a value that has left the window) is far from the values still
                    # in it: E[d²] - E[d]² cancels. Re-shift to a value in the window, exactly.
                    self.recompute(st)
                    sums = st.sums
                    mean = sums[a] / n
                    var = sums[b] / n - mean * mean
                value = math.sqrt(var) if var > 0 else 0.0
            else:  # _MIN, _MAX
                value = st.mono[a][0][0] if entries is not None else st.ext[a]
            out[name] = value
        return out


def compile_aggregates(
    specs: Mapping[str, str],
    names: Collection[str],
    *,
    now: Callable[[], float] | None = None,
    on_error: Callable[[str, ExpressionError], None] | None = None,
) -> WindowProgram | None:
    """Compile ``{output name: "agg(args)"}``; report each bad one to ``on_error(name, error)``.

    Returns None if any failed (and ``on_error`` was given); raises the first
    :class:`ExpressionError` otherwise.
    """
    inputs: list[Compiled] = []
    sources: list[str | None] = []
    keys: list[str | None] = []
    input_index: dict[str, int] = {}  # normalised argument text → input index
    numeric: set[int] = set()
    terms: list[tuple[int, int, int]] = []
    term_index: dict[tuple[int, int, int], int] = {}
    extremes: list[tuple[int, bool]] = []
    extreme_index: dict[tuple[int, bool], int] = {}
    aggregates: list[_Aggregate] = []
    failed = False

    def term(op: int, i: int, j: int = 0) -> int:
        key = (op, i, j)
        if key not in term_index:
            term_index[key] = len(terms)
            terms.append(key)
        return term_index[key]

    for out_name, text in specs.items():
        try:
            kind, args = _parse_call(text)
            indexes = []
            for arg_text, column in args:
                try:
                    fn = compile_expression(arg_text, names, now=now)
                except ExpressionError as exc:
                    inner = exc.column if exc.column is not None else 1
                    raise ExpressionError(text, exc.reason, column + inner) from None
                normal = ast.dump(ast.parse(arg_text.strip(), mode="eval"))
                if normal not in input_index:
                    input_index[normal] = len(inputs)
                    inputs.append(fn)
                    sources.append(inline_source(arg_text, names))
                    keys.append(inline_source(arg_text))
                index = input_index[normal]
                if kind not in _ANY_VALUE:
                    numeric.add(index)
                indexes.append(index)
        except ExpressionError as exc:
            if on_error is None:
                raise
            on_error(out_name, exc)
            failed = True
            continue
        if kind == "count":
            aggregates.append(_Aggregate(out_name, _COUNT))
        elif kind == "sum":
            aggregates.append(_Aggregate(out_name, _SUM, term(_T_X, indexes[0])))
        elif kind == "avg":
            aggregates.append(_Aggregate(out_name, _AVG, term(_T_X, indexes[0])))
        elif kind == "vwap":
            p, v = indexes
            aggregates.append(_Aggregate(out_name, _VWAP, term(_T_XY, p, v), term(_T_X, v)))
        elif kind == "stddev":
            x = indexes[0]
            aggregates.append(_Aggregate(out_name, _STDDEV, term(_T_DX, x), term(_T_DX2, x)))
        elif kind in ("first", "last", "pct_change"):
            op = {"first": _FIRST, "last": _LAST, "pct_change": _PCT}[kind]
            aggregates.append(_Aggregate(out_name, op, indexes[0]))
        else:
            key = (indexes[0], kind == "max")
            if key not in extreme_index:
                extreme_index[key] = len(extremes)
                extremes.append(key)
            aggregates.append(_Aggregate(out_name, _MAX if kind == "max" else _MIN, extreme_index[key]))
    if failed:
        return None
    return WindowProgram(inputs, numeric, aggregates, terms, extremes, sources, keys)
