"""Safe expressions for rule ``where`` conditions and templates for tool arguments.

An expression is a small subset of Python expression syntax, for example
``float(data.p) * float(data.q) > 250000`` or ``lower(data.side) == "buy" and key in ["BTC", "ETH"]``.

It is compiled once, when the configuration is loaded, into a tree of plain closures (one per
node, with the common shapes specialised). The user's text is parsed with :func:`ast.parse`,
every node is checked against a whitelist, and nothing is ever passed to ``eval``/``exec``.

Names
    ``data meta key source ts received_at kind`` are the fields of the :class:`Event` being
    evaluated; ``True False None`` and str/int/float literals are allowed too. Inside a rule's
    steps, the computed fields added by earlier steps (``set``, ``window`` aggregates, ...) are
    names too: they are passed to :func:`compile_expression` as ``names`` and read from the
    :class:`~streams.rules.row.Row`'s field dict.
Fields
    ``a.b`` reads key ``"b"`` of the mapping ``a`` (never a real attribute); names starting with
    ``_`` are refused (write ``data["_id"]`` for such keys). ``a[i]`` and ``a[i:j:k]`` index
    mappings, lists, tuples and strings.
Operators
    ``+ - * / // % **``, unary ``- + not``, ``and or``, ``== != < <= > >= in not in`` (chains
    too), ``x if c else y``, list and tuple literals.
Functions
    only the names in :data:`FUNCTIONS`, called by name with positional arguments:
    ``abs min max round floor ceil sqrt pct float int str bool len lower upper strip startswith
    endswith contains get coalesce now``. Method calls (``data.s.upper()``) are refused with a
    hint (``upper(data.s)``). ``now()`` is the wall clock, unless the caller passes another
    clock (a replay passes its event-time clock, so replays stay deterministic).

Resource guards, checked while evaluating: ``*`` refuses str/list/tuple operands, ``+`` refuses
to build a str/list/tuple longer than :data:`MAX_SEQUENCE_LENGTH`, ``%`` refuses string
formatting, ``**`` needs numbers and an exponent with ``abs() <= MAX_POWER_EXPONENT`` (and an int
result of at most :data:`MAX_POWER_BITS` bits), ``int()`` refuses strings longer than
:data:`MAX_INT_STRING_LENGTH`, ``round()`` refuses more than :data:`MAX_ROUND_DIGITS` digits.

Compile errors raise :class:`~daemon.errors.ExpressionError` with a 1-based column (a character
index into the whole text, so for a one-line expression it is the column). Errors while
evaluating (``KeyError`` for a missing field, ``TypeError``, ``ZeroDivisionError``,
``ValueError`` from a guard, ...) are ordinary exceptions and propagate to the caller.

Templates (:func:`compile_template`) render tool arguments: strings with ``{expr}``
placeholders (``{{`` and ``}}`` are literal braces), recursively inside dicts and lists.
"""

from __future__ import annotations

import ast
import keyword
import math
import operator
import re
import time
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from types import MappingProxyType
from typing import Any, Final, NoReturn

from daemon.errors import ExpressionError
from streams.event import READABLE_FIELDS, Event

__all__ = [
    "FUNCTIONS",
    "INLINE_NAMES",
    "MAX_DEPTH",
    "MAX_EXPRESSION_LENGTH",
    "MAX_INT_STRING_LENGTH",
    "MAX_NODES",
    "MAX_POWER_BITS",
    "MAX_POWER_EXPONENT",
    "MAX_ROUND_DIGITS",
    "MAX_SEQUENCE_LENGTH",
    "Compiled",
    "compile_expression",
    "compile_template",
    "field_name_problem",
    "inline_source",
    "is_constant_template",
]

Compiled = Callable[[Event], Any]
"""A compiled expression or template: call it with an event to get the value."""

MAX_EXPRESSION_LENGTH: Final = 2_000
"""Longest expression text accepted, in characters."""
MAX_NODES: Final = 200
"""Most syntax nodes (names, literals, operations, calls, ...) in one expression."""
MAX_DEPTH: Final = 100
"""Deepest nesting of syntax nodes in one expression."""
MAX_SEQUENCE_LENGTH: Final = 1_000_000
"""Longest str/list/tuple that ``+`` may build."""
MAX_POWER_EXPONENT: Final = 100
"""Largest ``abs()`` of the exponent of ``**``."""
MAX_POWER_BITS: Final = 10_000
"""Largest int, in bits, that ``**`` may build."""
MAX_INT_STRING_LENGTH: Final = 100
"""Longest string ``int()`` will parse (CPython's int parsing is quadratic)."""
MAX_ROUND_DIGITS: Final = 100
"""Largest ``abs()`` of the ``ndigits`` argument of ``round()``."""

# --------------------------------------------------------------------------------------------
# Whitelisted functions
# --------------------------------------------------------------------------------------------


def _int(value: Any = 0, base: int | None = None) -> int:
    if isinstance(value, str | bytes | bytearray) and len(value) > MAX_INT_STRING_LENGTH:
        raise ValueError(f"int() refuses strings longer than {MAX_INT_STRING_LENGTH} characters")
    return int(value) if base is None else int(value, base)


def _round(number: Any, ndigits: int | None = None) -> Any:
    if ndigits is None:
        return round(number)
    if not isinstance(ndigits, int):
        raise TypeError(f"round() needs an int number of digits, got {type(ndigits).__name__}")
    if abs(ndigits) > MAX_ROUND_DIGITS:
        raise ValueError(f"round() refuses more than {MAX_ROUND_DIGITS} digits")
    return round(number, ndigits)


def _need_str(function: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    raise TypeError(f"{function}() needs a string, got {type(value).__name__}")


def _lower(s: Any) -> str:
    return _need_str("lower", s).lower()


def _upper(s: Any) -> str:
    return _need_str("upper", s).upper()


def _strip(s: Any) -> str:
    return _need_str("strip", s).strip()


def _startswith(s: Any, prefix: Any) -> bool:
    return _need_str("startswith", s).startswith(prefix)


def _endswith(s: Any, suffix: Any) -> bool:
    return _need_str("endswith", s).endswith(suffix)


def _contains(container: Any, item: Any) -> bool:
    return item in container


def _coalesce(*values: Any) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


def _now() -> float:
    return time.time()


def _floor(x: Any) -> Any:
    return math.floor(x)


def _ceil(x: Any) -> Any:
    return math.ceil(x)


def _sqrt(x: Any) -> float:
    return math.sqrt(x)


def _pct(value: Any, reference: Any) -> Any:
    """Percent change from ``reference`` to ``value``: ``(value - reference) / reference * 100``."""
    return (value - reference) / reference * 100.0


_MISSING: Final = object()


def _get(container: Any, index: Any, default: Any = None) -> Any:
    """``container[index]`` for mappings, lists, tuples and strings; ``default`` when it is missing."""
    if isinstance(container, Mapping):
        value = container.get(index, _MISSING)
        return default if value is _MISSING else value
    if isinstance(container, str | list | tuple):
        try:
            return container[index]
        except (IndexError, TypeError):
            return default
    if container is None:
        return default
    raise TypeError(f"get() needs a mapping, list or string, got {type(container).__name__}")


FUNCTIONS: Final[Mapping[str, Callable[..., Any]]] = MappingProxyType(
    {
        "abs": abs,
        "min": min,
        "max": max,
        "round": _round,
        "floor": _floor,
        "ceil": _ceil,
        "sqrt": _sqrt,
        "pct": _pct,
        "float": float,
        "int": _int,
        "str": str,
        "bool": bool,
        "len": len,
        "lower": _lower,
        "upper": _upper,
        "strip": _strip,
        "startswith": _startswith,
        "endswith": _endswith,
        "contains": _contains,
        "get": _get,
        "coalesce": _coalesce,
        "now": _now,
    }
)
"""The functions an expression may call, by name."""

# (fewest, most) positional arguments; None means any number.
_ARITY: Final[Mapping[str, tuple[int, int | None]]] = {
    "abs": (1, 1),
    "min": (1, None),
    "max": (1, None),
    "round": (1, 2),
    "floor": (1, 1),
    "ceil": (1, 1),
    "sqrt": (1, 1),
    "pct": (2, 2),
    "float": (0, 1),
    "int": (0, 2),
    "str": (0, 1),
    "bool": (0, 1),
    "len": (1, 1),
    "lower": (1, 1),
    "upper": (1, 1),
    "strip": (1, 1),
    "startswith": (2, 2),
    "endswith": (2, 2),
    "contains": (2, 2),
    "get": (2, 3),
    "coalesce": (1, None),
    "now": (0, 0),
}
# Aggregates of the `window` step (streams.rules.aggregates): named in errors when called here.
_WINDOW_AGGREGATES: Final = frozenset(
    {"count", "sum", "avg", "first", "last", "stddev", "vwap", "pct_change"}
)
# Functions whose result never depends on anything but their arguments (may be constant-folded).
_IMPURE: Final = frozenset({"now"})
# Functions that always return a number or a bool (or raise): their results need no sequence guard.
_NUMERIC_RESULT: Final = frozenset(
    {
        "abs",
        "round",
        "floor",
        "ceil",
        "sqrt",
        "float",
        "int",
        "bool",
        "len",
        "startswith",
        "endswith",
        "contains",
        "pct",
        "now",
    }
)

# --------------------------------------------------------------------------------------------
# Runtime helpers (guards)
# --------------------------------------------------------------------------------------------

_SIZED: Final = (str, bytes, bytearray, list, tuple)
_STRINGS: Final = (str, bytes, bytearray)
_FIELD_INDEX: Final[Mapping[str, int]] = {name: Event._fields.index(name) for name in READABLE_FIELDS}
_COMPUTED_INDEX: Final = len(Event._fields)  # a Row keeps its computed fields after the event's (rules.row)


def _field(value: Any, name: str) -> Any:
    """``value.name``: the key ``name`` of a mapping, and nothing else."""
    if isinstance(value, Mapping):
        return value[name]
    raise TypeError(f"cannot read field {name!r} of a {type(value).__name__} (only mappings have fields)")


def _item(value: Any, index: Any) -> Any:
    """``value[index]`` for mappings, lists, tuples and strings only."""
    kind = type(value)
    if kind is dict or kind is list or kind is str or kind is tuple or isinstance(value, Mapping | Sequence):
        return value[index]
    raise TypeError(f"cannot index a {kind.__name__} value")


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, _SIZED) and isinstance(b, _SIZED) and len(a) + len(b) > MAX_SEQUENCE_LENGTH:
        raise ValueError(f"'+' refuses to build a {type(a).__name__} longer than {MAX_SEQUENCE_LENGTH}")
    return a + b


def _mul(a: Any, b: Any) -> Any:
    if isinstance(a, _SIZED) or isinstance(b, _SIZED):
        raise TypeError("'*' refuses to repeat a string, list or tuple")
    return a * b


def _mod(a: Any, b: Any) -> Any:
    if isinstance(a, _STRINGS):
        raise TypeError("'%' string formatting is not allowed")
    return a % b


def _power(base: Any, exponent: Any) -> Any:
    if isinstance(base, _SIZED) or not isinstance(base, int | float):
        raise TypeError(f"'**' needs a number as base, got {type(base).__name__}")
    if not isinstance(exponent, int | float):
        raise TypeError(f"'**' needs a number as exponent, got {type(exponent).__name__}")
    if not abs(exponent) <= MAX_POWER_EXPONENT:  # also refuses nan
        raise ValueError(f"'**' refuses exponents beyond +/-{MAX_POWER_EXPONENT}")
    if isinstance(base, int) and isinstance(exponent, int) and base.bit_length() * exponent > MAX_POWER_BITS:
        raise ValueError(f"'**' refuses to build an int of more than {MAX_POWER_BITS} bits")
    result = base**exponent
    if isinstance(result, complex):
        raise ValueError("'**' would give a complex number")
    return result


def _in(a: Any, b: Any) -> bool:
    return a in b


def _not_in(a: Any, b: Any) -> bool:
    return a not in b


def _eq(a: Any, b: Any) -> Any:
    return a == b


def _ne(a: Any, b: Any) -> Any:
    return a != b


def _lt(a: Any, b: Any) -> Any:
    return a < b


def _le(a: Any, b: Any) -> Any:
    return a <= b


def _gt(a: Any, b: Any) -> Any:
    return a > b


def _ge(a: Any, b: Any) -> Any:
    return a >= b


def _sub(a: Any, b: Any) -> Any:
    return a - b


def _truediv(a: Any, b: Any) -> Any:
    return a / b


def _floordiv(a: Any, b: Any) -> Any:
    return a // b


def _plain_add(a: Any, b: Any) -> Any:
    return a + b


def _plain_mul(a: Any, b: Any) -> Any:
    return a * b


def _plain_mod(a: Any, b: Any) -> Any:
    return a % b


def _constant(value: Any) -> Compiled:
    def constant(event: Event) -> Any:
        return value

    return constant


# --------------------------------------------------------------------------------------------
# Specialised closure factories
# --------------------------------------------------------------------------------------------

_Factory2 = Callable[[Compiled, Compiled], Compiled]
_FactoryC = Callable[[Compiled, Any], Compiled]

# Comparisons, both sides evaluated.
_CMP_VV: Final[Mapping[type[ast.cmpop], _Factory2]] = {
    ast.Eq: lambda g, r: lambda e: g(e) == r(e),
    ast.NotEq: lambda g, r: lambda e: g(e) != r(e),
    ast.Lt: lambda g, r: lambda e: g(e) < r(e),
    ast.LtE: lambda g, r: lambda e: g(e) <= r(e),
    ast.Gt: lambda g, r: lambda e: g(e) > r(e),
    ast.GtE: lambda g, r: lambda e: g(e) >= r(e),
    ast.In: lambda g, r: lambda e: g(e) in r(e),
    ast.NotIn: lambda g, r: lambda e: g(e) not in r(e),
}
# Comparisons with a constant right side (the usual ``x > 100``).
_CMP_VC: Final[Mapping[type[ast.cmpop], _FactoryC]] = {
    ast.Eq: lambda g, c: lambda e: g(e) == c,
    ast.NotEq: lambda g, c: lambda e: g(e) != c,
    ast.Lt: lambda g, c: lambda e: g(e) < c,
    ast.LtE: lambda g, c: lambda e: g(e) <= c,
    ast.Gt: lambda g, c: lambda e: g(e) > c,
    ast.GtE: lambda g, c: lambda e: g(e) >= c,
    ast.In: lambda g, c: lambda e: g(e) in c,
    ast.NotIn: lambda g, c: lambda e: g(e) not in c,
}
_CMP_FUNC: Final[Mapping[type[ast.cmpop], Callable[[Any, Any], Any]]] = {
    ast.Eq: _eq,
    ast.NotEq: _ne,
    ast.Lt: _lt,
    ast.LtE: _le,
    ast.Gt: _gt,
    ast.GtE: _ge,
    ast.In: _in,
    ast.NotIn: _not_in,
}
# The same as C functions, for a comparison of an event field with a constant (_field_vs_constant).
_CMP_TEST: Final[Mapping[type[ast.cmpop], Callable[[Any, Any], Any]]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def _field_vs_constant(field: tuple[int, str], test: Callable[[Any, Any], Any], c: Any) -> Compiled:
    """``data.e == 'trade'``: the field read inline, compared with ``test`` (an ``operator`` function)."""
    index, key = field
    if test is operator.eq:  # the commonest test, written out: no call of the operator function

        def field_equals(e: Event) -> Any:
            v = e[index]
            return (v[key] if type(v) is dict else _field(v, key)) == c

        return field_equals

    def field_test(e: Event) -> Any:
        v = e[index]
        return test(v[key] if type(v) is dict else _field(v, key), c)

    return field_test


_CMP_SYMBOL: Final[Mapping[type[ast.cmpop], str]] = {
    ast.Is: "is",
    ast.IsNot: "is not",
}

# Arithmetic on operands known to be numbers (no sequence guard needed), inlined.
_NUM_VV: Final[Mapping[type[ast.operator], _Factory2]] = {
    ast.Add: lambda g, r: lambda e: g(e) + r(e),
    ast.Sub: lambda g, r: lambda e: g(e) - r(e),
    ast.Mult: lambda g, r: lambda e: g(e) * r(e),
    ast.Div: lambda g, r: lambda e: g(e) / r(e),
}
_NUM_VC: Final[Mapping[type[ast.operator], _FactoryC]] = {
    ast.Add: lambda g, c: lambda e: g(e) + c,
    ast.Sub: lambda g, c: lambda e: g(e) - c,
    ast.Mult: lambda g, c: lambda e: g(e) * c,
    ast.Div: lambda g, c: lambda e: g(e) / c,
}
# Every allowed operator as a function: (guarded, for unknown operands; plain, for numbers).
_Func2 = Callable[[Any, Any], Any]
_BINOP_FUNC: Final[Mapping[type[ast.operator], tuple[_Func2, _Func2]]] = {
    ast.Add: (_add, _plain_add),
    ast.Sub: (_sub, _sub),
    ast.Mult: (_mul, _plain_mul),
    ast.Div: (_truediv, _truediv),
    ast.FloorDiv: (_floordiv, _floordiv),
    ast.Mod: (_mod, _plain_mod),
    ast.Pow: (_power, _power),
}
_BINOP_SYMBOL: Final[Mapping[type[ast.operator], str]] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.BitAnd: "&",
}

_FORBIDDEN: Final[Mapping[type[ast.AST], str]] = {
    ast.Lambda: "lambda expressions are not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "generator expressions are not allowed",
    ast.NamedExpr: "assignment expressions (:=) are not allowed",
    ast.JoinedStr: "f-strings are not allowed (use a template for tool arguments)",
    ast.FormattedValue: "f-strings are not allowed (use a template for tool arguments)",
    ast.Starred: "'*' unpacking is not allowed",
    ast.Await: "'await' is not allowed",
    ast.Yield: "'yield' is not allowed",
    ast.YieldFrom: "'yield' is not allowed",
    ast.Set: "set literals are not allowed",
    ast.Dict: "dict literals are not allowed",
    ast.Slice: "a slice is only allowed inside [...]",
}

_CONSTANT_TYPES: Final = (str, int, float, bool, type(None))
# Bare names read as constants: JSON's spelling, which is what people write in YAML.
_JSON_CONSTANTS: Final[Mapping[str, Any]] = MappingProxyType({"true": True, "false": False, "null": None})
_NUMBER_TYPES: Final = (int, float, bool)

# Operators and contexts are not counted against MAX_NODES / MAX_DEPTH.
_UNCOUNTED: Final = (ast.expr_context, ast.operator, ast.boolop, ast.unaryop, ast.cmpop)

# Constant sub-expressions are folded by evaluating them once; they never look at the event.
_FOLD_EVENT: Final = Event("", 0.0, 0.0, None, None, {})


def _frozen(value: Any) -> bool:
    """True if ``value`` is immutable all the way down, so a folded constant may be shared."""
    if type(value) in _CONSTANT_TYPES:
        return True
    return type(value) is tuple and all(_frozen(v) for v in value)


@dataclass(frozen=True, slots=True)
class _Part:
    """A compiled node: its closure, whether it is a constant (and its value), whether it is a number."""

    fn: Compiled
    const: bool = False
    value: Any = None
    num: bool = False
    #: ``data.p``-like: (position of the event field, key read from it), for the fused closures
    #: of a call or a comparison on it (one frame less per use)
    field: tuple[int, str] | None = None


def _const_part(value: Any) -> _Part:
    return _Part(_constant(value), True, value, type(value) in _NUMBER_TYPES)


_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")
_LEADING_SPACE: Final = re.compile(r"[ \t\f\r\n]*")


class _Compiler:
    """Validates one parsed expression and builds its closure tree."""

    def __init__(
        self,
        text: str,
        source: str,
        prefix: int,
        names: Collection[str] = (),
        now: Callable[[], float] | None = None,
    ) -> None:
        self.text = text  # what the user wrote (for errors)
        self.source = source  # what was parsed: ``text`` without leading white space
        self.prefix = prefix  # len(text) - len(source)
        self.names = names  # computed fields in scope
        self.now = now
        self.line_starts = [0] + [m.end() for m in _LINE_BREAK.finditer(source)]

    # -- columns and errors -----------------------------------------------------------------

    def char_column(self, lineno: int, char_offset: int) -> int:
        """1-based column in ``text`` of a 1-based line and 0-based character offset in ``source``."""
        line = min(max(lineno, 1), len(self.line_starts))
        return self.prefix + self.line_starts[line - 1] + max(char_offset, 0) + 1

    def byte_column(self, lineno: int, byte_offset: int) -> int:
        """Like :meth:`char_column` for an AST position (UTF-8 byte offset in the line)."""
        line = min(max(lineno, 1), len(self.line_starts))
        start = self.line_starts[line - 1]
        end = self.line_starts[line] if line < len(self.line_starts) else len(self.source)
        prefix = self.source[start:end].encode("utf-8")[: max(byte_offset, 0)]
        return self.char_column(line, len(prefix.decode("utf-8", errors="ignore")))

    def node_column(self, node: ast.AST) -> int:
        return self.byte_column(getattr(node, "lineno", 1), getattr(node, "col_offset", 0))

    def fail(self, reason: str, node: ast.AST | None = None, column: int | None = None) -> NoReturn:
        if column is None:
            column = self.node_column(node) if node is not None else 1
        raise ExpressionError(self.text, reason, column)

    def name_end_column(self, node: ast.Attribute) -> int:
        """Column of the field name in ``value.name`` (the offending token, not the start of ``value``)."""
        return self.end_column(node) - len(node.attr)

    def end_column(self, node: ast.expr) -> int:
        end_line = node.end_lineno if node.end_lineno is not None else node.lineno
        end_col = node.end_col_offset if node.end_col_offset is not None else node.col_offset
        return self.byte_column(end_line, end_col)

    def operator_column(self, left: ast.expr, right: ast.expr, symbol: str) -> int:
        """Column of the operator ``symbol`` written between ``left`` and ``right`` (else of ``right``)."""
        start = self.end_column(left) - self.prefix - 1
        stop = self.node_column(right) - self.prefix - 1
        found = self.source.find(symbol, start, max(stop, start))
        return self.prefix + found + 1 if found >= 0 else self.node_column(right)

    # -- the walk ---------------------------------------------------------------------------

    def check_size(self, root: ast.expr) -> None:
        """Refuse expressions with too many nodes or too deep a nesting, before compiling."""
        stack: list[tuple[ast.AST, int]] = [(root, 1)]
        count = 0
        while stack:
            node, depth = stack.pop()
            count += 1
            if count > MAX_NODES:
                self.fail(f"expression is too complex (more than {MAX_NODES} parts)", column=1)
            if depth > MAX_DEPTH:
                self.fail(f"expression is nested too deeply (more than {MAX_DEPTH} levels)", node)
            children = ast.iter_child_nodes(node)
            stack.extend((child, depth + 1) for child in children if not isinstance(child, _UNCOUNTED))

    def compile(self, node: ast.AST) -> _Part:
        handler = _HANDLERS.get(type(node))
        if handler is None:
            reason = _FORBIDDEN.get(type(node), f"{type(node).__name__} is not allowed in an expression")
            self.fail(reason, node)
        return handler(self, node)

    def fold(self, part: _Part) -> _Part:
        """Evaluate a part built only from constants now, if that works and gives an immutable value."""
        try:
            value = part.fn(_FOLD_EVENT)
        except Exception:  # the error will happen (and be reported) when evaluating instead
            return part
        return _const_part(value) if _frozen(value) else part

    # -- leaves -----------------------------------------------------------------------------

    def constant(self, node: ast.Constant) -> _Part:
        value = node.value
        if type(value) not in _CONSTANT_TYPES:
            what = {bytes: "bytes literals are", complex: "complex numbers are"}.get(type(value))
            what = what or f"{value!r} is"
            self.fail(f"{what} not allowed", node)
        return _const_part(value)

    def name(self, node: ast.Name) -> _Part:
        index = _FIELD_INDEX.get(node.id)
        if index is not None:
            return _Part(itemgetter(index))
        name = node.id
        if name in self.names:
            at = _COMPUTED_INDEX

            def computed_field(e: Event) -> Any:
                return e[at][name]  # type: ignore[index]  # a Row: the computed-field dict

            return _Part(computed_field)
        if name in _JSON_CONSTANTS:  # JSON's (and YAML's) spelling of True, False, None
            return _const_part(_JSON_CONSTANTS[name])
        if name in FUNCTIONS:
            self.fail(f"function {name!r} must be called, as in {name}(...)", node)
        allowed = ", ".join(READABLE_FIELDS)
        computed = f"; computed fields here: {', '.join(sorted(self.names))}" if self.names else ""
        self.fail(f"unknown name {name!r} (an expression can use {allowed}{computed})", node)

    # -- access -----------------------------------------------------------------------------

    def attribute(self, node: ast.Attribute) -> _Part:
        name = node.attr
        if name.startswith("_"):
            self.fail(
                f"field names starting with '_' are not allowed (write [{name!r}] for such a key)",
                column=self.name_end_column(node),
            )
        inner = node.value
        if isinstance(inner, ast.Name) and inner.id in _FIELD_INDEX:
            index = _FIELD_INDEX[inner.id]

            def field_of_event(e: Event) -> Any:
                v = e[index]
                if type(v) is dict:
                    return v[name]
                return _field(v, name)

            return _Part(field_of_event, field=(index, name))
        get = self.compile(inner).fn

        def field_of(e: Event) -> Any:
            v = get(e)
            if type(v) is dict:
                return v[name]
            return _field(v, name)

        return _Part(field_of)

    def slice_bound(self, node: ast.expr | None) -> _Part:
        if node is None:
            return _const_part(None)
        part = self.compile(node)
        if part.const and part.value is not None and type(part.value) not in (int, bool):
            self.fail(f"slice bounds must be ints, not {type(part.value).__name__}", node)
        return part

    def subscript(self, node: ast.Subscript) -> _Part:
        get = self.compile(node.value).fn
        index_node = node.slice
        if isinstance(index_node, ast.Slice):
            lo, hi, st = (self.slice_bound(b) for b in (index_node.lower, index_node.upper, index_node.step))
            index: _Part
            if lo.const and hi.const and st.const:
                index = _Part(_constant(None), True, slice(lo.value, hi.value, st.value))
            else:
                lo_fn, hi_fn, st_fn = lo.fn, hi.fn, st.fn

                def make_slice(e: Event) -> slice:
                    return slice(lo_fn(e), hi_fn(e), st_fn(e))

                index = _Part(make_slice)
        else:
            index = self.compile(index_node)

        if index.const:
            key = index.value
            if isinstance(node.value, ast.Name) and node.value.id in _FIELD_INDEX:
                field_index = _FIELD_INDEX[node.value.id]

                def item_of_event(e: Event) -> Any:
                    v = e[field_index]
                    if type(v) is dict:
                        return v[key]
                    return _item(v, key)

                return _Part(item_of_event)

            def item_const(e: Event) -> Any:
                v = get(e)
                if type(v) is dict:
                    return v[key]
                return _item(v, key)

            return _Part(item_const)
        get_index = index.fn

        def item(e: Event) -> Any:
            return _item(get(e), get_index(e))

        return _Part(item)

    # -- operators --------------------------------------------------------------------------

    def binop(self, node: ast.BinOp) -> _Part:
        op = type(node.op)
        funcs = _BINOP_FUNC.get(op)
        if funcs is None:
            symbol = _BINOP_SYMBOL.get(op, op.__name__)
            column = self.operator_column(node.left, node.right, symbol)
            hint = {"&": " (use 'and')", "|": " (use 'or')"}.get(symbol, "")
            self.fail(f"operator {symbol!r} is not allowed{hint}", column=column)
        left, right = self.compile(node.left), self.compile(node.right)
        numbers = left.num and right.num
        l_fn, r_fn = left.fn, right.fn
        fn: Compiled
        if numbers and op in _NUM_VV:
            fn = _NUM_VC[op](l_fn, right.value) if right.const else _NUM_VV[op](l_fn, r_fn)
        else:
            func = funcs[1] if numbers else funcs[0]
            if right.const:
                c = right.value

                def binop_const(e: Event) -> Any:
                    return func(l_fn(e), c)

                fn = binop_const
            else:

                def binop(e: Event) -> Any:
                    return func(l_fn(e), r_fn(e))

                fn = binop
        part = _Part(fn, num=numbers)
        return self.fold(part) if left.const and right.const else part

    def unaryop(self, node: ast.UnaryOp) -> _Part:
        operand = self.compile(node.operand)
        get = operand.fn
        fn: Compiled
        if isinstance(node.op, ast.Not):

            def not_(e: Event) -> bool:
                return not get(e)

            fn, num = not_, True
        elif isinstance(node.op, ast.USub):

            def neg(e: Event) -> Any:
                return -get(e)

            fn, num = neg, operand.num
        elif isinstance(node.op, ast.UAdd):

            def pos(e: Event) -> Any:
                return +get(e)

            fn, num = pos, operand.num
        else:
            self.fail("operator '~' is not allowed", node)
        part = _Part(fn, num=num)
        return self.fold(part) if operand.const else part

    def boolop(self, node: ast.BoolOp) -> _Part:
        parts = [self.compile(v) for v in node.values]
        fns = tuple(p.fn for p in parts)
        fn: Compiled
        if isinstance(node.op, ast.And):
            if len(fns) == 2:
                a, b = fns

                def both(e: Event) -> Any:
                    return a(e) and b(e)

                fn = both
            else:

                def all_of(e: Event) -> Any:
                    value: Any = True
                    for f in fns:
                        value = f(e)
                        if not value:
                            return value
                    return value

                fn = all_of
        elif len(fns) == 2:
            a, b = fns

            def either(e: Event) -> Any:
                return a(e) or b(e)

            fn = either
        else:

            def any_of(e: Event) -> Any:
                value: Any = False
                for f in fns:
                    value = f(e)
                    if value:
                        return value
                return value

            fn = any_of
        part = _Part(fn, num=all(p.num for p in parts))
        return self.fold(part) if all(p.const for p in parts) else part

    def comparator(self, node: ast.expr, op: type[ast.cmpop]) -> _Part:
        """A right-hand side; a list literal after ``in`` is built as a tuple (a constant, if it can be)."""
        if op in (ast.In, ast.NotIn) and isinstance(node, ast.List):
            return self.tuple_(ast.Tuple(elts=node.elts))
        return self.compile(node)

    def compare(self, node: ast.Compare) -> _Part:
        ops: list[type[ast.cmpop]] = []
        operands = [node.left, *node.comparators]
        for i, op_node in enumerate(node.ops):
            op = type(op_node)
            if op not in _CMP_FUNC:
                symbol = _CMP_SYMBOL.get(op, op.__name__)
                column = self.operator_column(operands[i], operands[i + 1], symbol)
                self.fail(f"operator {symbol!r} is not allowed (use '==' or '!=')", column=column)
            ops.append(op)
        left = self.compile(node.left)
        rights = [self.comparator(r, op) for r, op in zip(node.comparators, ops, strict=True)]
        fn: Compiled
        if len(ops) == 1:
            (op,), (right,) = ops, rights
            if right.const and left.field is not None and op in _CMP_TEST:
                fn = _field_vs_constant(left.field, _CMP_TEST[op], right.value)
            elif right.const:
                fn = _CMP_VC[op](left.fn, right.value)
            else:
                fn = _CMP_VV[op](left.fn, right.fn)
        else:
            first = left.fn
            steps = tuple((_CMP_FUNC[op], r.fn) for op, r in zip(ops, rights, strict=True))

            def chain(e: Event) -> Any:
                a = first(e)
                result: Any = True
                for func, get in steps:
                    b = get(e)
                    result = func(a, b)
                    if not result:
                        return result
                    a = b
                return result

            fn = chain
        part = _Part(fn)
        return self.fold(part) if left.const and all(r.const for r in rights) else part

    def ifexp(self, node: ast.IfExp) -> _Part:
        test, body, orelse = self.compile(node.test), self.compile(node.body), self.compile(node.orelse)
        if test.const:
            return body if test.value else orelse
        t, b, o = test.fn, body.fn, orelse.fn

        def if_else(e: Event) -> Any:
            return b(e) if t(e) else o(e)

        return _Part(if_else, num=body.num and orelse.num)

    # -- calls and literals -----------------------------------------------------------------

    def call(self, node: ast.Call) -> _Part:
        func = node.func
        if isinstance(func, ast.Attribute):
            receiver = ast.unparse(func.value)
            if func.attr in FUNCTIONS:
                args = ", ".join([receiver, *(ast.unparse(a) for a in node.args)])
                hint = f"; write {func.attr}({args}) instead"
            else:
                hint = f"; the functions are: {', '.join(FUNCTIONS)}"
            self.fail(f"method calls are not allowed{hint}", column=self.name_end_column(func))
        if not isinstance(func, ast.Name):
            self.fail("only functions can be called, by name, as in len(data.items)", func)
        name = func.id
        function = FUNCTIONS.get(name)
        if name == "now" and self.now is not None:
            function = self.now
        if function is None and name in _WINDOW_AGGREGATES:
            self.fail(
                f"{name!r} is a window aggregate: compute it in a window step "
                f"(aggregates: {{my_{name}: {name}(...)}}) and use my_{name} here",
                func,
            )
        if function is None:
            what = "is not a function" if name in _FIELD_INDEX else "is not an allowed function"
            self.fail(f"{name!r} {what} (the functions are: {', '.join(FUNCTIONS)})", func)
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                self.fail("'*' arguments are not allowed", arg)
        if node.keywords:
            keyword = node.keywords[0]
            if keyword.arg is None:
                self.fail("'**' arguments are not allowed", keyword)
            self.fail(f"keyword arguments are not allowed ({keyword.arg}=...)", keyword)
        fewest, most = _ARITY[name]
        count = len(node.args)
        if count < fewest or (most is not None and count > most):
            if most is None:
                expected = f"at least {fewest}"
            else:
                expected = str(fewest) if fewest == most else f"{fewest} to {most}"
            self.fail(f"{name}() takes {expected} argument(s), got {count}", node)
        parts = [self.compile(a) for a in node.args]
        fns = tuple(p.fn for p in parts)
        fn: Compiled
        if count == 0:

            def call0(e: Event) -> Any:
                return function()

            fn = call0
        elif count == 1 and parts[0].field is not None:  # float(data.p): the field read inline
            index, key = parts[0].field

            def call_field(e: Event) -> Any:
                v = e[index]
                return function(v[key] if type(v) is dict else _field(v, key))

            fn = call_field
        elif count == 1:
            (a,) = fns

            def call1(e: Event) -> Any:
                return function(a(e))

            fn = call1
        elif count == 2:
            a, b = fns

            def call2(e: Event) -> Any:
                return function(a(e), b(e))

            fn = call2
        else:

            def call_n(e: Event) -> Any:
                return function(*[f(e) for f in fns])

            fn = call_n
        part = _Part(fn, num=name in _NUMERIC_RESULT)
        return self.fold(part) if name not in _IMPURE and all(p.const for p in parts) else part

    def list_(self, node: ast.List) -> _Part:
        fns = tuple(self.compile(elt).fn for elt in node.elts)

        def make_list(e: Event) -> list[Any]:
            return [f(e) for f in fns]

        return _Part(make_list)

    def tuple_(self, node: ast.Tuple) -> _Part:
        parts = [self.compile(elt) for elt in node.elts]
        if all(p.const for p in parts):
            return _const_part(tuple(p.value for p in parts))
        fns = tuple(p.fn for p in parts)

        def make_tuple(e: Event) -> tuple[Any, ...]:
            return tuple([f(e) for f in fns])

        return _Part(make_tuple)


_HANDLERS: Final[Mapping[type[ast.AST], Callable[[_Compiler, Any], _Part]]] = {
    ast.Constant: _Compiler.constant,
    ast.Name: _Compiler.name,
    ast.Attribute: _Compiler.attribute,
    ast.Subscript: _Compiler.subscript,
    ast.BinOp: _Compiler.binop,
    ast.UnaryOp: _Compiler.unaryop,
    ast.BoolOp: _Compiler.boolop,
    ast.Compare: _Compiler.compare,
    ast.IfExp: _Compiler.ifexp,
    ast.Call: _Compiler.call,
    ast.List: _Compiler.list_,
    ast.Tuple: _Compiler.tuple_,
}


def field_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot be a computed field, or None if it can."""
    if not isinstance(name, str) or not name.isidentifier() or not name.isascii():
        return "a computed field name must be an identifier (letters, digits, '_')"
    if name.startswith("_"):
        return "computed field names must not start with '_'"
    if keyword.iskeyword(name) or name in ("True", "False", "None"):
        return f"{name!r} is a Python keyword"
    if name in _JSON_CONSTANTS:
        return f"{name!r} means {_JSON_CONSTANTS[name]!r} in an expression"
    if name in _FIELD_INDEX:
        return f"{name!r} is an event field (data, meta, key, source, ts, received_at, kind)"
    if name in FUNCTIONS:
        return f"{name!r} is a function name"
    return None


# Operators from other languages, found in text that does not parse (string literals blanked out):
# a lone ``=`` (not part of == != <= >= :=), ``&&``, ``||`` and a ``!`` that is not ``!=``.
_FOREIGN_OPERATOR: Final = re.compile(r"(?<![=!<>:])=(?!=)|&&|\|\||!(?!=)")
_FOREIGN_HINT: Final[Mapping[str, str]] = {
    "=": "use == to compare ('=' does not compare or assign here)",
    "&&": "use 'and' instead of '&&'",
    "||": "use 'or' instead of '||'",
    "!": "use 'not' instead of '!'",
}


def _blank_strings(source: str) -> str:
    """``source`` with the inside of every string literal replaced by spaces (same length)."""
    out = list(source)
    quote = ""
    i = 0
    while i < len(source):
        ch = source[i]
        if quote:
            if ch == "\\":
                out[i] = " "
                if i + 1 < len(source):
                    out[i + 1] = " "
                i += 2
                continue
            if ch == quote:
                quote = ""
            else:
                out[i] = " "
        elif ch in "'\"":
            quote = ch
        i += 1
    return "".join(out)


def _syntax_hint(source: str) -> tuple[str, int] | None:
    """For text that does not parse: an operator from another language in it, as (what to write
    instead, its 0-based offset in ``source``), or None."""
    match = _FOREIGN_OPERATOR.search(_blank_strings(source))
    if match is None:
        return None
    return _FOREIGN_HINT[match.group(0)], match.start()


def compile_expression(
    text: str, names: Collection[str] = (), *, now: Callable[[], float] | None = None
) -> Compiled:
    """Compile ``text`` into a function of an :class:`Event`.

    ``names`` are computed fields in scope (read from a :class:`~streams.rules.row.Row`);
    ``now`` replaces the wall clock behind ``now()``.

    Raises :class:`ExpressionError` (with a 1-based column) if the text is not a valid, allowed
    expression. The returned function raises ordinary exceptions (``KeyError``, ``TypeError``,
    ``ValueError``, ...) when the event does not fit the expression.
    """
    if not isinstance(text, str):
        raise ExpressionError(str(text), f"an expression must be a string, not {type(text).__name__}", 1)
    if len(text) > MAX_EXPRESSION_LENGTH:
        reason = f"expression is too long (more than {MAX_EXPRESSION_LENGTH} characters)"
        raise ExpressionError(text, reason, MAX_EXPRESSION_LENGTH + 1)
    prefix = _LEADING_SPACE.match(text)
    skipped = prefix.end() if prefix is not None else 0
    source = text[skipped:]
    if not source.strip():
        raise ExpressionError(text, "expression is empty", 1)
    compiler = _Compiler(text, source, skipped, names, now)
    try:
        with warnings.catch_warnings():  # SyntaxWarnings ("is" with a literal, ...) are not for the log
            warnings.simplefilter("ignore")
            tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        hint = _syntax_hint(source)
        if hint is not None:
            reason, offset = hint
            raise ExpressionError(text, f"syntax error: {reason}", skipped + offset + 1) from None
        reason = exc.msg or "invalid syntax"
        if exc.lineno is None or exc.offset is None or exc.offset < 1:
            column = len(text) + 1
            reason = f"{reason} (the expression ends too early)" if exc.offset == 0 else reason
        else:
            column = min(compiler.char_column(exc.lineno, exc.offset - 1), len(text) + 1)
        raise ExpressionError(text, f"syntax error: {reason}", column) from None
    except (RecursionError, MemoryError):
        raise ExpressionError(text, "expression is nested too deeply", 1) from None
    except ValueError as exc:  # e.g. NUL characters on some Python versions
        raise ExpressionError(text, f"syntax error: {exc}", 1) from None
    compiler.check_size(tree.body)
    return compiler.compile(tree.body).fn


#: what the lines :func:`inline_source` writes refer to
INLINE_NAMES: Final[Mapping[str, Any]] = MappingProxyType({"_field": _field, "_float": FUNCTIONS["float"]})


def inline_source(text: str, names: Collection[str] = ()) -> str | None:
    """``text`` as a Python expression reading the event from a variable ``item`` (helpers from
    :data:`INLINE_NAMES`), for a step that compiles its own ``on_next``: one frame less per use.
    None unless ``text`` is one of the simplest forms: a number, an event field (``ts``), a computed
    field of ``names`` (``vwap``), a field of an event field (``data.p``), or ``float()`` of one of
    those. The expression computes what :func:`compile_expression`'s function does, raising the same
    exceptions; give it only text that :func:`compile_expression` accepted."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return _inline(tree.body, names)


def _inline(node: ast.expr, names: Collection[str]) -> str | None:
    if isinstance(node, ast.Constant):
        value = node.value
        if type(value) is int:
            return repr(value) if -(10**15) < value < 10**15 else None
        return repr(value) if type(value) is float and math.isfinite(value) else None
    if isinstance(node, ast.Name):
        index = _FIELD_INDEX.get(node.id)
        if index is not None:
            return f"item[{index}]"  # as compiled: the event field first, then a computed one
        return f"item[{_COMPUTED_INDEX}][{node.id!r}]" if node.id in names else None
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in _FIELD_INDEX:
        if node.attr.startswith("_"):
            return None
        field = f"item[{_FIELD_INDEX[node.value.id]}]"
        return f"({field}[{node.attr!r}] if type({field}) is dict else _field({field}, {node.attr!r}))"
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "float"
        and len(node.args) == 1
        and not node.keywords
    ):
        inner = _inline(node.args[0], names)
        return None if inner is None else f"_float({inner})"
    return None


# --------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------


def _placeholder_end(text: str, start: int) -> int:
    """Index of the ``}`` closing the placeholder whose expression starts at ``start``, or -1.

    Braces inside string literals do not count, so ``{coalesce(data.x, "}")}`` works.
    """
    depth = 0
    quote = ""
    i = start
    n = len(text)
    while i < n:
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    return -1


def _to_text(value: Any) -> str:
    if type(value) is str:
        return value
    return "" if value is None else str(value)


def _compile_string(text: str, names: Collection[str], now: Callable[[], float] | None) -> Compiled:
    literal: list[str] = []  # text collected since the last placeholder
    prefix = ""
    pieces: list[tuple[Compiled, str]] = []  # (placeholder, literal text after it)
    pending: Compiled | None = None
    i, n = 0, len(text)
    while i < n:
        brace = min((p for p in (text.find("{", i), text.find("}", i)) if p >= 0), default=n)
        literal.append(text[i:brace])
        if brace == n:
            break
        if text[brace] == "}":
            if text.startswith("}", brace + 1):
                literal.append("}")
                i = brace + 2
                continue
            raise ExpressionError(text, "single '}' in template (write '}}' for a literal brace)", brace + 1)
        if text.startswith("{", brace + 1):
            literal.append("{")
            i = brace + 2
            continue
        end = _placeholder_end(text, brace + 1)
        if end < 0:
            raise ExpressionError(text, "'{' is never closed (write '{{' for a literal brace)", brace + 1)
        source = text[brace + 1 : end]
        if not source.strip():
            raise ExpressionError(text, "empty placeholder '{}'", brace + 1)
        try:
            fn = compile_expression(source, names, now=now)
        except ExpressionError as exc:
            column = brace + 1 + (exc.column if exc.column is not None else 0)
            raise ExpressionError(text, f"in placeholder {{{source}}}: {exc.reason}", column) from None
        if pending is None:
            prefix = "".join(literal)
        else:
            pieces.append((pending, "".join(literal)))
        literal = []
        pending = fn
        i = end + 1
    if pending is None:
        return _constant("".join(literal))
    pieces.append((pending, "".join(literal)))
    if not prefix and len(pieces) == 1 and not pieces[0][1]:
        return pending  # the whole string is one placeholder: keep the native value
    steps = tuple(pieces)
    if len(steps) == 1:
        ((only, suffix),) = steps

        def render_one(e: Event) -> str:
            return prefix + _to_text(only(e)) + suffix

        return render_one

    def render(e: Event) -> str:
        out = [prefix]
        for fn, suffix in steps:
            out.append(_to_text(fn(e)))
            out.append(suffix)
        return "".join(out)

    return render


def is_constant_template(value: Any) -> bool:
    """True if ``value`` contains no placeholders (and no brace escapes): it can be used as is."""
    if isinstance(value, str):
        return "{" not in value and "}" not in value
    if isinstance(value, Mapping):
        return all(is_constant_template(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(is_constant_template(v) for v in value)
    return True


def compile_template(
    value: Any, names: Collection[str] = (), *, now: Callable[[], float] | None = None
) -> Compiled:
    """Compile a tool-argument template into a function of an :class:`Event`.

    - a string with ``{expr}`` placeholders renders each value with ``str()`` (``None`` gives
      ``""``); ``{{`` and ``}}`` are literal braces; a string that is exactly one placeholder gives
      the expression's value unchanged (``"{float(data.q)}"`` gives a float);
    - a mapping gives a dict with each value templated (keys are literal); a list or tuple gives
      a list;
    - anything else, and any value for which :func:`is_constant_template` is true, is returned as
      is (the same object every time: treat rendered values as read-only).

    The event's values are never templates themselves: a placeholder whose value contains
    ``{...}`` inserts that text literally.

    ``names`` and ``now`` are as for :func:`compile_expression`.

    Raises :class:`ExpressionError` whose column is 1-based within the offending template string.
    """
    if is_constant_template(value):
        return _constant(value)
    if isinstance(value, str):
        return _compile_string(value, names, now)
    if isinstance(value, Mapping):
        items = tuple((k, compile_template(v, names, now=now)) for k, v in value.items())

        def render_dict(e: Event) -> dict[Any, Any]:
            return {k: f(e) for k, f in items}

        return render_dict
    fns = tuple(compile_template(v, names, now=now) for v in value)

    def render_list(e: Event) -> list[Any]:
        return [f(e) for f in fns]

    return render_list
