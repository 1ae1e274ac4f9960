"""Tests for the safe expression language and argument templates."""

from __future__ import annotations

import math
import time
import types
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.errors import ExpressionError, RuleError
from streams.event import Event
from streams.expressions import (
    FUNCTIONS,
    INLINE_NAMES,
    MAX_EXPRESSION_LENGTH,
    compile_expression,
    compile_template,
    field_name_problem,
    inline_source,
    is_constant_template,
)
from streams.rules.row import make_row

DATA: dict[str, Any] = {
    "p": "65000.1",
    "q": "0.5",
    "n": 3,
    "x": 2.5,
    "s": " Hello ",
    "side": "buy",
    "a": {"b": {"c": 7}},
    "l": [1, 2, 3],
    "none": None,
    "zero": 0,
    "flag": True,
    "_id": "abc",
}
EVENT = Event(
    source="binance",
    ts=1_700_000_000.5,
    received_at=1_700_000_001.0,
    key="BTCUSDT",
    data=DATA,
    meta={"seq": 42, "topic": "trades"},
)


def event_with(data: Any) -> Event:
    """An event like EVENT carrying ``data``."""
    return EVENT._replace(data=data)


def evaluate(text: str, event: Event = EVENT) -> Any:
    return compile_expression(text)(event)


# --------------------------------------------------------------------------------------------
# Correctness
# --------------------------------------------------------------------------------------------

CASES: list[tuple[str, Any]] = [
    # arithmetic
    ("1 + 2 * 3", 7),
    ("(1 + 2) * 3", 9),
    ("7 // 2", 3),
    ("7 % 3", 1),
    ("7 / 2", 3.5),
    ("2 ** 10", 1024),
    ("2 ** -1", 0.5),
    ("data.n ** 2", 9),
    ("-data.n", -3),
    ("+data.x", 2.5),
    ("data.n - 1 - 1", 1),
    ("float(data.p) * float(data.q)", 65000.1 * 0.5),
    ("float(data.p) * float(data.q) > 250000", False),
    ("float(data.p) * float(data.q) > 30000", True),
    ("data.x * data.n + 1", 8.5),
    ("'a' + 'b'", "ab"),
    ("data.s + '!'", " Hello !"),
    ("data.l + [4]", [1, 2, 3, 4]),
    # comparisons and chains
    ("data.n == 3", True),
    ("data.n != 3", False),
    ("data.n >= 3", True),
    ("data.n <= 2", False),
    ("0 < data.n < 5", True),
    ("0 < data.n < 2", False),
    ("5 > data.n > 3", False),
    ("1 <= data.n == 3 != 4", True),
    ("data.side in ['buy', 'sell']", True),
    ("data.side not in ('buy', 'sell')", False),
    ("data.side in [data.s, 'x']", False),
    ("2 in data.l", True),
    ("'p' in data", True),
    ("'ell' in data.s", True),
    ("data.none == None", True),
    # boolean logic with Python's value semantics
    ("data.zero and data.missing", 0),
    ("data.n or data.missing", 3),
    ("data.none or 'default'", "default"),
    ("data.flag and data.n", 3),
    ("data.zero or data.none or 'last'", "last"),
    ("data.n and data.x and data.side", "buy"),
    ("not data.zero", True),
    ("not data.n", False),
    # ternary
    ("data.n if data.flag else data.missing", 3),
    ("'big' if data.n > 10 else 'small'", "small"),
    ("1 if True else data.missing", 1),
    # subscripts and fields
    ("data.l[0]", 1),
    ("data.l[-1]", 3),
    ("data.l[1:]", [2, 3]),
    ("data.l[::-1]", [3, 2, 1]),
    ("data.l[data.zero:data.n - 1]", [1, 2]),
    ("data.s[1:3]", "He"),
    ("data.l[data.n - 2]", 2),
    ("data['p']", "65000.1"),
    ("data['_id']", "abc"),
    ("data.a.b.c", 7),
    ("data['a']['b'].c", 7),
    ("data.a['b']['c'] + 1", 8),
    ("meta.seq", 42),
    ("meta['topic']", "trades"),
    ("[1, data.n][1]", 3),
    # names
    ("key", "BTCUSDT"),
    ("source", "binance"),
    ("ts", 1_700_000_000.5),
    ("received_at - ts", 0.5),
    ("kind", "data"),
    ("None", None),
    ("True", True),
    ("[1, data.n]", [1, 3]),
    ("(1, 'a')", (1, "a")),
    ("(data.n, 'a')", (3, "a")),
    ("[]", []),
    # functions
    ("abs(-2)", 2),
    ("abs(data.n - 10)", 7),
    ("min(data.l)", 1),
    ("max(3, data.n, 1)", 3),
    ("max(data.l) - min(data.l)", 2),
    ("round(2.567, 2)", 2.57),
    ("round(2.5)", 2),
    ("round(data.x)", 2),
    ("float('1e3')", 1000.0),
    ("int('42')", 42),
    ("int('ff', 16)", 255),
    ("int(data.x)", 2),
    ("str(data.n)", "3"),
    ("str(data.x)", "2.5"),
    ("bool(data.zero)", False),
    ("len(data.l)", 3),
    ("len(data.s)", 7),
    ("lower(upper(data.side))", "buy"),
    ("upper(data.side)", "BUY"),
    ("strip(data.s)", "Hello"),
    ("startswith(key, 'BTC')", True),
    ("endswith(key, 'USD')", False),
    ("endswith(key, ('USD', 'USDT'))", True),
    ("contains(data.l, 2)", True),
    ("contains(data.s, 'xyz')", False),
    ("coalesce(data.none, data.zero, 5)", 0),
    ("coalesce(data.none, None)", None),
    ("coalesce(data.none, data.n) * 2", 6),
    # white space and several lines
    ("  data.n  ", 3),
    ("(data.n +\n 1)", 4),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_expression_values(text: str, expected: Any) -> None:
    """Each expression evaluates on EVENT to the value Python itself would give."""
    value = evaluate(text)
    assert value == expected
    assert type(value) is type(expected)


def test_compiled_function_reads_the_event_each_time() -> None:
    """One compiled expression gives different results for different events."""
    is_big = compile_expression("float(data.p) * float(data.q) > 250000")
    assert is_big(event_with({"p": "65000.1", "q": "0.5"})) is False
    assert is_big(event_with({"p": "65000.1", "q": "4"})) is True


def test_now_is_evaluated_at_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """now() reads the clock when evaluated, not once at compile time."""
    ticks = iter([100.0, 200.0])
    monkeypatch.setattr(time, "time", lambda: next(ticks))
    since = compile_expression("now() - ts")
    assert since(EVENT._replace(ts=50.0)) == 50.0
    assert since(EVENT._replace(ts=50.0)) == 150.0


def test_fields_work_on_any_mapping() -> None:
    """Field access works on read-only mappings too, not only on dicts."""
    event = event_with(types.MappingProxyType({"a": types.MappingProxyType({"b": 1})}))
    assert evaluate("data.a.b + data['a']['b']", event) == 2


def test_field_access_is_never_getattr() -> None:
    """``data.keys`` is the key 'keys' (missing here), never the dict method."""
    with pytest.raises(KeyError):
        evaluate("data.keys")
    assert evaluate("data.keys", event_with({"keys": 5})) == 5
    with pytest.raises(TypeError, match="only mappings have fields"):
        evaluate("data.side.upper")


def test_functions_mapping_is_read_only() -> None:
    """The whitelist cannot be extended at run time."""
    with pytest.raises(TypeError):
        FUNCTIONS["getattr"] = getattr  # type: ignore[index]
    assert "getattr" not in FUNCTIONS
    assert set(FUNCTIONS) == {
        "abs", "min", "max", "round", "floor", "ceil", "sqrt", "pct", "float", "int", "str", "bool",
        "len", "lower", "upper", "strip", "startswith", "endswith", "contains", "get", "coalesce", "now",
    }  # fmt: skip


# --------------------------------------------------------------------------------------------
# Compile errors
# --------------------------------------------------------------------------------------------

ERRORS: list[tuple[str, str, int]] = [
    ("data.p + x", "unknown name 'x'", 10),
    ("open", "unknown name 'open'", 1),
    ("float(data.p.upper())", r"write upper\(data.p\)", 14),
    ("startswith(data.s.strip(), 'H')", r"write strip\(data.s\)", 19),
    ("data.p.format(1)", "method calls are not allowed", 8),
    ("data.__class__", "starting with '_'", 6),
    ("data._x", "starting with '_'", 6),
    ("data.a.__globals__.x", "starting with '_'", 8),
    ("().__class__", "starting with '_'", 4),
    ("().__class__.__bases__[0].__subclasses__()", "method calls are not allowed", 27),
    ("vwap(data.p, data.q)", "'vwap' is a window aggregate", 1),
    ("1 + (lambda: 1)()", "only functions can be called", 6),
    ("1 + (lambda: 1)", "lambda", 6),
    ("[x for x in data.l]", "comprehensions", 1),
    ("max(x for x in data.l)", "generator", 4),  # a lone generator argument starts at "("
    ("data.p +", "syntax error", 9),
    ("(data.p", "never closed", 1),
    ("data.p + )", "syntax error", 10),
    ("__import__('os')", "'__import__' is not an allowed function", 1),
    ("getattr(data, 'p')", "'getattr' is not an allowed function", 1),
    ("data('p')", "'data' is not a function", 1),
    ("len", "must be called", 1),
    ("now(1)", r"now\(\) takes 0", 1),
    ("round()", r"round\(\) takes 1 to 2", 1),
    ("coalesce()", r"at least 1", 1),
    ("data.l[0]()", "only functions can be called", 1),
    ("min(data.l, key=abs)", "keyword arguments", 13),
    ("max(*data.l)", "'\\*' arguments", 5),
    ("len(**data)", "'\\*\\*' arguments", 5),
    ("data.p is None", "'is' is not allowed", 8),
    ("data.p is not None", "'is not' is not allowed", 8),
    ("data.n << 2", "'<<' is not allowed", 8),
    ("data.n & 1", "'&' is not allowed", 8),
    ("~data.n", "'~' is not allowed", 1),
    ("{1, 2}", "set literals", 1),
    ("{'a': 1}", "dict literals", 1),
    ("f'{data}'", "f-strings", 1),
    ("(x := 1)", "assignment expressions", 2),
    ("[*data.l]", "unpacking", 2),
    ("await data", "await", 1),
    ("b'x'", "bytes literals", 1),
    ("1j", "complex numbers", 1),
    ("...", "Ellipsis is not allowed", 1),
    ("data.l[1.5:]", "slice bounds must be ints", 8),
    ("", "empty", 1),
    ("   ", "empty", 1),
    ("  data.p + x", "unknown name 'x'", 12),
    ("'é' + x", "unknown name 'x'", 7),
    ("'éé' + )", "syntax error", 8),
    ("(data.n +\n x)", "unknown name 'x'", 12),
]


@pytest.mark.parametrize(("text", "reason", "column"), ERRORS)
def test_compile_errors_point_at_the_offending_column(text: str, reason: str, column: int) -> None:
    """Refused expressions raise ExpressionError with the reason and the 1-based column of the culprit."""
    with pytest.raises(ExpressionError, match=reason) as caught:
        compile_expression(text)
    assert caught.value.column == column
    assert caught.value.text == text
    assert isinstance(caught.value, RuleError)


def test_too_long_text_is_refused() -> None:
    """Text longer than the cap is refused before parsing, pointing just past the cap."""
    text = "1+" * (MAX_EXPRESSION_LENGTH // 2) + "1"
    with pytest.raises(ExpressionError, match="too long") as caught:
        compile_expression(text)
    assert caught.value.column == MAX_EXPRESSION_LENGTH + 1
    at_cap = "'" + "x" * (MAX_EXPRESSION_LENGTH - 2) + "'"
    assert len(evaluate(at_cap)) == MAX_EXPRESSION_LENGTH - 2


def test_too_many_nodes_are_refused() -> None:
    """An expression with more than MAX_NODES parts is refused even if short and shallow."""
    text = "[" + ", ".join(["data.n"] * 100) + "]"
    with pytest.raises(ExpressionError, match="too complex"):
        compile_expression(text)
    assert len(evaluate("[" + ", ".join(["data.n"] * 60) + "]")) == 60


@pytest.mark.parametrize(
    "text", ["-" * 150 + "1", "-" * 1999 + "1", "not " * 120 + "1", "[" * 150 + "1" + "]" * 150]
)
def test_deep_nesting_is_refused(text: str) -> None:
    """Deeply nested expressions are refused at compile time, never with RecursionError."""
    with pytest.raises(ExpressionError, match="nested too deeply"):
        compile_expression(text)


def test_redundant_parentheses_are_not_nesting() -> None:
    """Parentheses add no syntax nodes, so many of them are fine."""
    assert evaluate("(" * 150 + "data.n" + ")" * 150) == 3


def test_non_string_expression_is_refused() -> None:
    """Passing a number where an expression is expected is a compile error, not a crash."""
    with pytest.raises(ExpressionError, match="must be a string"):
        compile_expression(5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Runtime errors and resource guards
# --------------------------------------------------------------------------------------------

RUNTIME_ERRORS: list[tuple[str, type[Exception]]] = [
    ("data.missing", KeyError),
    ("data.a.b.missing", KeyError),
    ("meta.nothing", KeyError),
    ("data.l[10]", IndexError),
    ("1 / 0", ZeroDivisionError),
    ("data.n // data.zero", ZeroDivisionError),
    ("data.n.x", TypeError),
    ("ts[0]", TypeError),
    ("data.l['x']", TypeError),
    ("data.p + 1", TypeError),
    ("lower(data.n)", TypeError),
    ("float(data.side)", ValueError),
    ("-data.side", TypeError),
    ("data.p < 1", TypeError),
]


@pytest.mark.parametrize(("text", "error"), RUNTIME_ERRORS)
def test_runtime_errors_propagate(text: str, error: type[Exception]) -> None:
    """Errors while evaluating are ordinary exceptions for the rule to count, not compile errors."""
    compiled = compile_expression(text)
    with pytest.raises(error):
        compiled(EVENT)


GUARDED: list[tuple[str, type[Exception], str]] = [
    ("'a' * 10**9", TypeError, "refuses to repeat"),
    ("data.l * 1000000", TypeError, "refuses to repeat"),
    ("3 * data.side", TypeError, "refuses to repeat"),
    ("10**10**10", ValueError, "exponents beyond"),
    ("9**9**9", ValueError, "exponents beyond"),
    ("2 ** 1000", ValueError, "exponents beyond"),
    ("(10 ** 100) ** 100", ValueError, "bits"),
    ("(-8) ** 0.5", ValueError, "complex"),
    ("'a' ** 2", TypeError, "needs a number"),
    ("2 ** data.side", TypeError, "needs a number"),
    ("int(data.big)", ValueError, "longer than 100"),
    ("int(data.big, 16)", ValueError, "longer than 100"),
    ("data.long + data.long", ValueError, "longer than"),
    ("[data.long] + data.longlist", ValueError, "longer than"),
    ("'%999999999d' % data.n", TypeError, "formatting"),
    ("round(10, -10 ** 9)", ValueError, "digits"),
]


@pytest.mark.parametrize(("text", "error", "message"), GUARDED)
def test_resource_guards_refuse_abuse(text: str, error: type[Exception], message: str) -> None:
    """Operations that could exhaust CPU or memory raise an ordinary exception instead."""
    big = "9" * 5000
    data = {**DATA, "big": big, "long": "x" * 600_000, "longlist": [0] * 1_000_000}
    compiled = compile_expression(text)
    with pytest.raises(error, match=message):
        compiled(event_with(data))


def test_guards_leave_reasonable_values_alone() -> None:
    """Values within the limits pass the guards."""
    data = {**DATA, "num": "1" * 100, "long": "x" * 500_000}
    assert evaluate("int(data.num)", event_with(data)) == int("1" * 100)
    assert len(evaluate("data.long + data.long", event_with(data))) == 1_000_000
    assert evaluate("2 ** 100") == 2**100
    assert evaluate("round(1234, -2)") == 1200
    assert evaluate("data.n * 2.0") == 6.0


# --------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------


def render(template: Any, event: Event = EVENT) -> Any:
    return compile_template(template)(event)


def test_template_mixes_text_and_placeholders() -> None:
    """Placeholders inside text are rendered with str(); None renders as nothing."""
    assert render("big trade {data.q} @ {data.p}") == "big trade 0.5 @ 65000.1"
    assert render("{key}: {data.x}") == "BTCUSDT: 2.5"
    assert render("x{data.none}y") == "xy"
    assert render("{data.flag}!") == "True!"
    assert render("{data.n}{data.n}") == "33"
    assert render("n={data.n * 2}, l={data.l}") == "n=6, l=[1, 2, 3]"


def test_single_placeholder_keeps_the_native_value() -> None:
    """A string that is exactly one placeholder gives the value itself, not its text."""
    assert render("{float(data.q)}") == 0.5
    assert render("{data.l}") == [1, 2, 3]
    assert render("{data.none}") is None
    assert render("{data.n}") == 3
    assert render(" {data.n}") == " 3"


def test_template_nested_structures() -> None:
    """Dict values and list items are templated recursively; keys and other scalars stay as they are."""
    template = {
        "text": "k={key}",
        "qty": "{float(data.q)}",
        "tags": ["x", "{key}", {"deep": "{data.a.b.c}"}],
        "n": 5,
        "f": 1.5,
        "b": False,
        "z": None,
        "t": ("{data.n}",),
        "{key}": "literal key",
    }
    assert render(template) == {
        "text": "k=BTCUSDT",
        "qty": 0.5,
        "tags": ["x", "BTCUSDT", {"deep": 7}],
        "n": 5,
        "f": 1.5,
        "b": False,
        "z": None,
        "t": [3],
        "{key}": "literal key",
    }


def test_template_escapes() -> None:
    """``{{`` and ``}}`` are literal braces, and braces inside quoted strings do not end a placeholder."""
    assert render("{{literal}} {data.n}") == "{literal} 3"
    assert render("{{}}") == "{}"
    assert render("}}{{") == "}{"
    assert render("{{{data.n}}}") == "{3}"
    assert render("x {coalesce(data.none, '}')} y") == "x } y"
    assert render('{"{" + data.side}') == "{buy"


def test_constant_templates_pass_through() -> None:
    """Values without placeholders are returned as the very same object."""
    value = {"a": ["x", 1], "b": "plain"}
    assert compile_template(value)(EVENT) is value
    assert render("plain text") == "plain text"
    assert render(5) == 5
    assert render(None) is None


@pytest.mark.parametrize(
    ("value", "constant"),
    [
        ("plain", True),
        (5, True),
        (None, True),
        ({"a": ["x", 1.5, True]}, True),
        ("a {key}", False),
        ("{{x}}", False),
        ("a } b", False),
        ({"a": [1, {"b": "{key}"}]}, False),
        (["x", ("{key}",)], False),
    ],
)
def test_is_constant_template(value: Any, constant: bool) -> None:
    """is_constant_template is true exactly when there is no brace to interpret anywhere."""
    assert is_constant_template(value) is constant


@pytest.mark.parametrize(
    ("template", "reason", "column"),
    [
        ("price: {data.p + x}", "unknown name 'x'", 18),
        ("ab {data.p +} c", "syntax error", 13),
        ("{data.s.upper()}", r"upper\(data.s\)", 9),
        ("a {data.p", "never closed", 3),
        ("a } b", "single '}'", 3),
        ("ok {key} }", "single '}'", 10),
        ("x {} y", "empty placeholder", 3),
        ("x { } y", "empty placeholder", 3),
        ("{ data.p + x }", "unknown name 'x'", 12),
    ],
)
def test_template_errors_point_into_the_string(template: str, reason: str, column: int) -> None:
    """Template errors carry the 1-based column within the whole template string."""
    with pytest.raises(ExpressionError, match=reason) as caught:
        compile_template(template)
    assert caught.value.column == column
    assert caught.value.text == template


def test_template_error_inside_nested_value() -> None:
    """An error deep in a dict/list names the offending string and the column inside it."""
    with pytest.raises(ExpressionError) as caught:
        compile_template({"args": ["ok {key}", "bad {nope}"]})
    assert caught.value.text == "bad {nope}"
    assert caught.value.column == 6


def test_event_data_is_never_rendered_as_a_template() -> None:
    """A placeholder whose value contains braces inserts that text literally."""
    nasty = "{__import__('os').system('x')} {data.secret} {{"
    event = event_with({"msg": nasty, "secret": "s3cr3t"})
    assert render("got {data.msg}", event) == "got " + nasty
    assert render("{data.msg}", event) == nasty
    assert render({"m": ["{data.msg}"]}, event) == {"m": [nasty]}


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

ESCAPE_NAMES = [
    "__class__", "__globals__", "__builtins__", "__import__", "__subclasses__", "__dict__", "__code__",
    "__mro__", "__bases__", "__getattribute__", "__init__", "_x", "mro", "open", "exec", "eval", "compile",
    "getattr", "setattr", "globals", "locals", "vars", "dir", "type", "object", "os", "sys", "subclasses",
    "func_globals", "gi_frame", "f_back", "f_globals", "cr_frame", "keys", "items", "get", "format",
]  # fmt: skip
ALLOWED_NAMES = ["data", "meta", "key", "source", "ts", "received_at", "kind", "True", "False", "None"]
ALLOWED_FUNCTIONS = list(FUNCTIONS)
LITERALS = [
    "0", "1", "-1", "2.5", "100", "10**9", "''", "'a'", "'__class__'", "'__globals__'", "'p'", "[]", "()",
]  # fmt: skip
BINARY = [
    "+", "-", "*", "/", "//", "%", "**", "==", "<", ">=", "in", "not in", "and", "or", "is", "<<", "|", "@",
]  # fmt: skip
RAW_TOKENS = [
    *ESCAPE_NAMES, *ALLOWED_NAMES, *LITERALS, *BINARY, "(", ")", "[", "]", ".", ",", ":", "lambda", "for",
    "if", "else", "not", "{", "}", "*", "**", ":=", "yield", "await", "import", "'", "\\", "#",
]  # fmt: skip

FIELDS = ["a", "s", "l", "n", "p", "b", "keys"]
KEY_LITERALS = ["'a'", "'s'", "'l'", "'__class__'", "'__globals__'", "'__builtins__'", "0", "-1"]
SAFE_BINARY = ["+", "-", "*", "/", "//", "%", "**", "==", "!=", "<", ">=", "in", "not in", "and", "or"]


def fmt(pattern: str, *parts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Strings made by filling ``pattern`` with one draw from each strategy."""
    return st.tuples(*parts).map(lambda t: pattern.format(*t))


# Expressions built only from allowed syntax: they mostly compile, so evaluation is exercised.
safe_atoms = st.sampled_from([*ALLOWED_NAMES, *LITERALS, "data.a", "data.s", "data.l", "data.n", "meta"])


def _extend_safe(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        fmt("{}.{}", inner, st.sampled_from(FIELDS)),
        fmt("{}[{}]", inner, st.one_of(inner, st.sampled_from(KEY_LITERALS))),
        fmt("{}[{}:{}]", inner, inner, inner),
        fmt("{}({})", st.sampled_from(ALLOWED_FUNCTIONS), inner),
        fmt("{}({}, {})", st.sampled_from(ALLOWED_FUNCTIONS), inner, inner),
        fmt("{} {} {}", inner, st.sampled_from(SAFE_BINARY), inner),
        fmt("{} if {} else {}", inner, inner, inner),
        fmt("not {}", inner),
        fmt("-{}", inner),
        fmt("[{}, {}]", inner, inner),
        fmt("({}, {})", inner, inner),
    )


# Escape attempts: dangerous names, attribute chains, calls, lambdas, comprehensions, ...
hostile_atoms = st.sampled_from([*ALLOWED_NAMES, *LITERALS, *ESCAPE_NAMES, "data.a", "data.s", "data.l"])
attribute_names = st.sampled_from([*ESCAPE_NAMES, *FIELDS])
callees = st.sampled_from([*ESCAPE_NAMES, *ALLOWED_FUNCTIONS])


def _extend_hostile(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        fmt("{}.{}", inner, attribute_names),
        fmt("{}[{}]", inner, st.one_of(inner, st.sampled_from(KEY_LITERALS))),
        fmt("{}({})", callees, inner),
        fmt("{}({}, {})", callees, inner, inner),
        fmt("{}.{}({})", inner, attribute_names, inner),
        fmt("({})({})", inner, inner),
        fmt("{} {} {}", inner, st.sampled_from(BINARY), inner),
        fmt("{} if {} else {}", inner, inner, inner),
        fmt("({})", inner),
        fmt("(lambda: {})()", inner),
        fmt("(lambda x: x.{})({})", attribute_names, inner),
        fmt("[x for x in {}]", inner),
        fmt("[x.{} for x in {}]", attribute_names, inner),
        fmt("{{{}: {}}}", inner, inner),
        fmt("f'{{{}}}'", inner),
        fmt("(x := {})", inner),
        fmt("{}(*{})", callees, inner),
        fmt("{}(**{})", callees, inner),
        fmt("{}(key={})", callees, inner),
    )


expression_strings = st.one_of(
    st.recursive(safe_atoms, _extend_safe, max_leaves=10),
    st.recursive(hostile_atoms, _extend_hostile, max_leaves=10),
    st.recursive(safe_atoms, _extend_safe, max_leaves=6).flatmap(
        lambda safe: st.recursive(hostile_atoms, _extend_hostile, max_leaves=4).map(
            lambda hostile: f"{safe} or {hostile}"
        )
    ),
    st.lists(st.sampled_from(RAW_TOKENS), min_size=1, max_size=12).map(" ".join),
    st.lists(st.sampled_from(RAW_TOKENS), min_size=1, max_size=12).map("".join),
)

plain_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
plain_values = st.recursive(
    plain_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
data_dicts = st.fixed_dictionaries(
    {
        "a": plain_values,
        "s": st.text(max_size=8),
        "l": st.lists(plain_scalars, max_size=4),
        "n": st.integers(),
    },
    optional={"p": plain_values, "b": plain_values, "__class__": plain_values, "keys": plain_values},
)

PLAIN_TYPES = (int, float, str, bool, type(None), list, tuple, dict)
DANGEROUS_TYPES = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, type,
                   types.CodeType, types.FrameType, types.GeneratorType)  # fmt: skip


def _assert_plain(value: Any, depth: int = 0) -> None:
    assert not isinstance(value, DANGEROUS_TYPES), f"escaped: {value!r}"
    assert type(value) in PLAIN_TYPES, f"unexpected type {type(value)!r}"
    assert depth < 50
    if isinstance(value, list | tuple):
        for item in value:
            _assert_plain(item, depth + 1)
    elif isinstance(value, dict):
        for k, v in value.items():
            _assert_plain(k, depth + 1)
            _assert_plain(v, depth + 1)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=expression_strings, data=data_dicts)
def test_sandbox_never_leaks_python_objects(text: str, data: dict[str, Any]) -> None:
    """Whatever is written, compiling refuses it or evaluating yields plain data or an ordinary exception."""
    try:
        compiled = compile_expression(text)
    except ExpressionError:
        return
    assert callable(compiled)
    try:
        value = compiled(event_with(data))
    except Exception:  # any ordinary exception is an acceptable outcome
        return
    _assert_plain(value)


@settings(max_examples=300, deadline=None)
@given(
    a=st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)),
    b=st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)),
)
def test_arithmetic_matches_python(a: int | float, b: int | float) -> None:
    """``data.a + data.b * 2`` gives exactly what Python computes for the same numbers."""
    assert compile_expression("data.a + data.b * 2")(event_with({"a": a, "b": b})) == a + b * 2


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(st.integers(-(10**9), 10**9), st.floats(allow_nan=False), st.text(max_size=6)),
    low=st.integers(-100, 100),
    high=st.integers(-100, 100),
)
def test_chain_matches_python(value: Any, low: int, high: int) -> None:
    """A comparison chain mixed with and/or agrees with Python's own evaluation."""
    compiled = compile_expression("data.low <= data.v < data.high or data.v == 'x'")
    event = event_with({"v": value, "low": low, "high": high})
    try:
        expected: Any = low <= value < high or value == "x"
    except TypeError:
        with pytest.raises(TypeError):
            compiled(event)
        return
    assert compiled(event) == expected


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.one_of(st.text(alphabet="ab {}", max_size=4), st.just("{data.n}")), max_size=6))
def test_template_rendering_matches_format(pieces: list[str]) -> None:
    """Rendering a template agrees with str.format on the same text, or both refuse it."""
    template = "".join(pieces)
    try:
        expected: Any = template.format(data=types.SimpleNamespace(n=3))
    except (ValueError, IndexError, KeyError, AttributeError):
        expected = None
    try:
        compiled: Callable[[Event], Any] | None = compile_template(template)
    except ExpressionError:
        compiled = None
    if compiled is None:
        assert expected is None
        return
    rendered = compiled(EVENT)
    if template == "{data.n}":
        assert rendered == 3
    else:
        assert rendered == expected


def test_float_rendering_is_repr_like() -> None:
    """Floats in text render with Python's shortest round-trip form."""
    assert render("{data.v}!", event_with({"v": 0.1 + 0.2})) == "0.30000000000000004!"
    assert math.isclose(render("{data.v}", event_with({"v": 1e-7})), 1e-7)


# --------------------------------------------------------------------------------------------
# Computed fields, the replay clock and the functions added for rule steps
# --------------------------------------------------------------------------------------------


def test_computed_fields_are_names_in_scope() -> None:
    """Names passed as computed fields read the row's field dict; others stay unknown."""
    row = make_row(EVENT, {"price": 10.0, "vwap": 9.5})
    assert compile_expression("price - vwap", {"price", "vwap"})(row) == 0.5
    assert compile_template("{key} {round(price * 2)}", {"price"})(row) == "BTCUSDT 20"
    with pytest.raises(ExpressionError, match="computed fields here: price, vwap") as caught:
        compile_expression("price + volume", {"price", "vwap"})
    assert caught.value.column == 9


@pytest.mark.parametrize(
    ("name", "problem"),
    [("price", None), ("basis_bps", None), ("data", "event field"), ("max", "function name"),
     ("_x", "must not start"), ("1x", "identifier"), ("a-b", "identifier"), ("class", "keyword"),
     ("None", "keyword")],
)  # fmt: skip
def test_computed_field_names_are_checked(name: str, problem: str | None) -> None:
    """Field names must be identifiers that shadow nothing the language already means."""
    reason = field_name_problem(name)
    assert (reason is None) if problem is None else (reason is not None and problem in reason)


def test_now_can_be_replaced_by_a_replay_clock() -> None:
    """`now()` reads the clock the caller passes (a replay passes event time); default the wall clock."""
    assert compile_expression("now() - ts", now=lambda: 1_700_000_010.5)(EVENT) == 10.0
    assert compile_template("{now()}", now=lambda: 7.0)(EVENT) == 7.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("get(data, 'p')", "65000.1"),
        ("get(data, 'missing')", None),
        ("get(data, 'missing', 0)", 0),
        ("get(data.l, 10, -1)", -1),
        ("get(data.l, 1)", 2),
        ("get(data.none, 'x', 3)", 3),
        ("pct(110, 100)", 10.0),
        ("round(pct(float(data.p), 65000), 6)", round((65000.1 - 65000) / 65000 * 100, 6)),
        ("floor(data.x)", 2),
        ("ceil(data.x)", 3),
        ("sqrt(16)", 4.0),
    ],
)
def test_added_functions(text: str, expected: Any) -> None:
    """get (with a default), pct, floor, ceil and sqrt."""
    assert evaluate(text) == expected


def test_get_refuses_what_is_not_a_container() -> None:
    """get() reads mappings, lists and strings only."""
    with pytest.raises(TypeError, match="get\\(\\) needs a mapping"):
        evaluate("get(data.n, 'x')")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data.flag == true", True),
        ("data.zero == false", True),
        ("data.none == null", True),
        ("coalesce(data.none, null, false)", False),
        ("[true, false, null]", [True, False, None]),
        ("data.true", "field"),
        ("data['null']", "item"),
    ],
)
def test_json_spellings_of_true_false_null(text: str, expected: Any) -> None:
    """`true`, `false`, `null` read as True, False, None; `data.true` still reads the key "true"."""
    event = event_with({**DATA, "true": "field", "null": "item"})
    assert compile_expression(text)(event) == expected


def test_json_constant_names_cannot_be_computed_fields() -> None:
    """A computed field named `true`, `false` or `null` could never be read: the name is refused."""
    for name in ("true", "false", "null"):
        reason = field_name_problem(name)
        assert reason is not None and "in an expression" in reason


@pytest.mark.parametrize(
    ("text", "hint", "column"),
    [
        ("key = 'BTCUSDT'", "use == to compare", 5),
        ("key == 'a=b' and data.s = 'x'", "use == to compare", 25),
        ("key == 1 && data.n > 2", "use 'and' instead of '&&'", 10),
        ("key == 1 || data.n > 2", "use 'or' instead of '||'", 10),
        ("!(key == 'BTC')", "use 'not' instead of '!'", 1),
        ("  !data.flag", "use 'not' instead of '!'", 3),
        ("data.n & 1", "use 'and'", 8),
        ("data.n | 1", "use 'or'", 8),
    ],
)
def test_operators_from_other_languages_name_the_fix(text: str, hint: str, column: int) -> None:
    """`=`, `&&`, `||`, `!` (and `&`, `|`) are refused with what to write instead, at their column."""
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text)
    assert hint in caught.value.reason
    assert caught.value.column == column


def test_operator_hints_ignore_string_literals() -> None:
    """`!=`, `==`, `<=` and operators inside quotes get no hint; a plain syntax error stays one."""
    assert compile_expression("key != '!' and key != 'a=b' and data.n <= 3")(EVENT) is True
    with pytest.raises(ExpressionError) as caught:
        compile_expression("key == '&&' and (")
    assert "instead" not in caught.value.reason and "never closed" in caught.value.reason


def _outcome(fn: Callable[[Event], Any], item: Event) -> tuple[str, Any]:
    try:
        return ("value", fn(item))
    except Exception as exc:
        return (type(exc).__name__, str(exc))


@pytest.mark.parametrize(
    "data",
    [
        {"p": "1.5", "e": "trade"},
        {"p": 2, "e": "b"},
        types.MappingProxyType({"p": "3", "e": "a"}),  # a mapping that is not a dict
        {"e": "trade"},  # no p
        {"p": "x", "q": 1},  # p not a number, no e
        ["p", "e"],  # not a mapping
        None,
        {"p": None, "e": None},
    ],
)
def test_a_function_or_comparison_of_a_field_gives_what_reading_the_field_first_gives(data: Any) -> None:
    """``float(data.p)`` and ``data.e == 'trade'`` read the field inline (one closure): the same
    values and the same errors as the field read on its own, then the call or the comparison."""
    e = Event("s", 1.0, 1.0, "k", data, {"note": "n"})
    row = make_row(e, {"v": 1})
    read_p, read_e = compile_expression("data.p"), compile_expression("data.e")
    read_note = compile_expression("meta.note")
    cases: list[tuple[str, Callable[[Event], Any]]] = [
        ("float(data.p)", lambda x: float(read_p(x))),
        ("str(data.p)", lambda x: str(read_p(x))),
        ("len(meta.note)", lambda x: len(read_note(x))),
        ("data.e == 'trade'", lambda x: read_e(x) == "trade"),
        ("data.e != 'trade'", lambda x: read_e(x) != "trade"),
        ("data.e < 'b'", lambda x: read_e(x) < "b"),
        ("data.e >= 'b'", lambda x: read_e(x) >= "b"),
    ]
    for text, expected in cases:
        fn = compile_expression(text)
        for item in (e, row):
            assert _outcome(fn, item) == _outcome(expected, item), (text, data)


_INLINE_TEXTS = [
    "data.p",
    "float(data.p)",
    " float( data.p )",
    "meta.seq",
    "ts",
    "key",
    "vwap",
    "float(vwap)",
    "12",
    "3.5e-2",
    "0.25",
    "data.vwap",
]
_NOT_INLINE = [
    "data.p * 2",
    "data['p']",
    "int(data.p)",
    "true",
    "-1",
    "lower(data.s)",
    "1e999",
    "x.p",
    "now()",
]
_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=False),
    st.sampled_from(["1.5", "abc", " 2 ", "nan", ""]),
    st.lists(st.integers(), max_size=2),
)


def _result(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "value", repr(fn())
    except Exception as exc:
        return type(exc).__name__, str(exc)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_INLINE_TEXTS),
    st.one_of(st.dictionaries(st.sampled_from(["p", "q", "vwap"]), _ANY_VALUE, max_size=3), _ANY_VALUE),
    st.one_of(st.none(), st.dictionaries(st.sampled_from(["vwap", "x"]), _ANY_VALUE, max_size=2)),
)
def test_inline_source_computes_what_the_compiled_expression_does(text: str, data: Any, fields: Any) -> None:
    """The Python text a step compiles into its own on_next (:func:`inline_source`) gives the compiled
    expression's value, or raises its exception with its message, on events and rows of any shape."""
    event = Event("feed", 5.0, 5.0, "BTC", data, {"seq": 7})
    item = event if fields is None else make_row(event, fields)
    source = inline_source(text, {"vwap", "x"})
    assert source is not None
    fn = compile_expression(text, {"vwap", "x"})
    namespace = dict(INLINE_NAMES)
    assert _result(lambda: eval(source, namespace, {"item": item})) == _result(lambda: fn(item))


def test_inline_source_is_none_for_anything_but_the_simplest_forms() -> None:
    for text in _NOT_INLINE:
        assert inline_source(text, {"vwap"}) is None, text
    assert inline_source("vwap", ()) is None  # not a computed field here
