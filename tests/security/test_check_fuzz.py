"""``reflexd check`` never crashes: on any input it exits 0 or 2, every error is ``file:line ...``,
no traceback is printed and no value from the environment is shown.

A Hypothesis property mutates valid configurations (the repository's config.yaml, the registry's
example of every component type, a rule with steps) in their structure (types, keys, YAML oddities,
huge and odd scalars, tags, anchors, deep nesting, placeholders) and in their bytes (BOM, CRLF, tabs,
NUL, invalid UTF-8, garbage, truncation), and runs the function ``reflexd check`` calls in-process.
Every crash it found is kept below as a fixed regression case; a few of the nastiest inputs also go
through the real ``reflexd`` executable.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.cli import main
from daemon.registry import builtin_registry
from daemon.yamlio import MAX_CONFIG_BYTES, MAX_DEPTH

ROOT = Path(__file__).resolve().parents[2]
REFLEXD = Path(sys.executable).parent / "reflexd"

CANARY = "Zq9canary7Xw"
"""A secret: it must never appear in anything ``check`` prints."""

ENV = {
    "FUZZ_SECRET": CANARY,
    "FUZZ_SECRET_BRACES": CANARY + "{x",
    "FUZZ_SECRET_LONG": CANARY + "-" + "y" * 80,
    "FUZZ_SECRET_EXPR": f"data.{CANARY} > 1",
    "FUZZ_NUM": "0x10",
    "FUZZ_EXP": "1e5",
    "FUZZ_NULL": "null",
    "FUZZ_TRUE": "true",
    "FUZZ_HUGE_HEX": "0x" + "f" * 5000,
    "FUZZ_HUGE_DEC": "9" * 5000,
    "FUZZ_EMPTY": "",
    "FUZZ_YAML": "a: [1, {b: c}]\n- x",
}
SECRET_VALUES = [v for k, v in ENV.items() if k.startswith("FUZZ_SECRET")]


# --- running check ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str
    seconds: float


@contextmanager
def _environment() -> Iterator[None]:
    with patch.dict(os.environ, ENV):
        os.environ.pop("FUZZ_UNSET", None)
        yield


def check_in_process(path: Path) -> Result:
    """Run ``main(["check", "-c", path])`` with stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    with _environment(), redirect_stdout(out), redirect_stderr(err):
        code = main(["check", "-c", str(path)], registry=builtin_registry())
    return Result(code, out.getvalue(), err.getvalue(), time.monotonic() - start)


def check_subprocess(path: Path) -> Result:
    """Run the installed ``reflexd check -c path``."""
    start = time.monotonic()
    env = {**ENV, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.run(
        [str(REFLEXD), "check", "-c", str(path)], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
    )
    return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def assert_clean(path: Path, result: Result) -> None:
    """Exit 0 with a plan, or 2 with nothing but ``file:line`` errors; no traceback, no secret."""
    both = result.out + result.err
    assert "Traceback" not in both, both
    for secret in SECRET_VALUES:
        assert secret not in both and secret[:8] not in both, both
    assert result.code in (0, 2), (result.code, both)
    if result.code == 0:
        assert result.out.startswith(f"{path}: ok"), result.out
        assert result.err == "", result.err
        return
    lines = result.err.splitlines()
    assert lines, "exit 2 without an error"
    assert re.fullmatch(r"reflexd: \d+ configuration error\(s\)", lines[-1]), lines[-1]
    issue = re.compile(re.escape(str(path)) + r":\d+(: | \S)")
    for line in lines[:-1]:
        assert issue.match(line), f"not file:line: {line!r}"


def write(folder: Path, data: str | bytes) -> Path:
    """The configuration as ``folder/config.yaml``, beside the shipped sample (``data/sample-trades.jsonl``
    resolves there, so `check`'s look at replay files sees a real one)."""
    path = folder / "config.yaml"
    sample = folder / "data" / "sample-trades.jsonl"
    if not sample.exists():
        sample.parent.mkdir(exist_ok=True)
        sample.symlink_to(ROOT / "data" / "sample-trades.jsonl")
    path.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return path


# --- regression cases: crashes, misreports and leaks found (and fixed), with neighbours kept as guards --

HEX_5000 = "0x" + "f" * 5000
DEC_5000 = "9" * 5000
GOOD = """\
sources:
  feed:
    type: replay
    path: data/sample-trades.jsonl
    time_field: T
tools:
  alert: {type: log}
rules:
  big:
    from: feed
    then: [{tool: alert, args: {text: "{data.p}"}}]
"""

REGRESSIONS: dict[str, str | bytes] = {
    # Huge integers: int(text, 16) has no digit limit, but printing the value (errors, check's plan,
    # pydantic's str coercion) raised ValueError "Exceeds the limit (4300 digits)": exit 1, traceback.
    "hex in a float field": GOOD.replace("time_field: T", f"time_field: T\n    speed: {HEX_5000}"),
    "hex in an int field": GOOD.replace("sources:\n", f"daemon: {{shutdown_timeout_seconds: {HEX_5000}}}\nsources:\n"),
    "hex in a str field": GOOD.replace("time_field: T", f"time_field: {HEX_5000}"),
    "hex in tool args": GOOD.replace('args: {text: "{data.p}"}', f"args: {{n: {HEX_5000}}}"),
    "hex in a list": GOOD.replace("from: feed", f"from: [feed, {HEX_5000}]"),
    "decimal in an int field": GOOD.replace("sources:\n", f"daemon: {{journal: {{max_rows: {DEC_5000}}}}}\nsources:\n"),
    "huge env hex in an int field": GOOD.replace("time_field: T", "time_field: T\n    queue: {max_events: '${FUZZ_HUGE_HEX}'}"),
    "huge env decimal in an int field": GOOD.replace("time_field: T", "time_field: T\n    queue:\n      max_events: ${FUZZ_HUGE_DEC}"),
    # A relative module name made import_module raise TypeError, uncaught.
    "relative plugin module": GOOD.replace("type: replay", 'type: ".x:y"'),
    "dotted-only plugin module": GOOD.replace("type: replay", 'type: "..:y"'),
    "plugin module with NUL": GOOD.replace("type: replay", 'type: "a\\0b:y"'),
    "plugin attribute path with empty part": GOOD.replace("type: replay", 'type: "tests.plugins:COUNTER..x"'),
    "plugin of the wrong kind": GOOD.replace("type: replay", 'type: "tests.plugins:COUNTER"'),
    "plugin name from the environment": GOOD.replace("type: replay", 'type: "${FUZZ_SECRET}:x"'),
    # Keys with line breaks printed raw split one error over two lines, the second without file:line.
    "key with a line break": GOOD.replace("    time_field: T", '    "time\\nfield": T'),
    "section name with a line break": GOOD.replace("  alert: {type: log}", '  "al\\r\\nert": {type: log}'),
    # Values from the environment were printed by errors.
    "secret in an int field": GOOD.replace("time_field: T", "time_field: T\n    speed: ${FUZZ_SECRET}"),
    "secret in a where expression": GOOD.replace("from: feed", "from: feed\n    where: ${FUZZ_SECRET_BRACES}"),
    "secret as a tool name": GOOD.replace("tool: alert", "tool: '${FUZZ_SECRET_LONG}'"),
    # ... and printed by the plan of a valid configuration (exit 0).
    "valid where from the environment": GOOD.replace("from: feed", "from: feed\n    where: ${FUZZ_SECRET_EXPR}"),
    "valid step from the environment": GOOD.replace(
        "from: feed", "from: feed\n    steps:\n      - set: {a: '1'}\n      - where: ${FUZZ_SECRET_EXPR}"
    ),
    # The size cap was reported without a line.
    "file over the size cap": GOOD + "#" * MAX_CONFIG_BYTES,
    # A rule key written as an escaped surrogate pair: the rule's error had no field path (IndexError).
    "surrogate pair as a rule key": GOOD.replace("from: feed", '"\\ud800\\udc00": [feed]'),
}


@pytest.mark.parametrize("name", list(REGRESSIONS))
def test_regression_inputs_exit_0_or_2_with_file_line(name: str, tmp_path: Path) -> None:
    """Each input (a crash, misreport or leak found before, or a neighbour of one) exits 0 or 2, file:line only."""
    path = write(tmp_path, REGRESSIONS[name])
    assert_clean(path, check_in_process(path))


def test_huge_numbers_are_reported_as_too_large(tmp_path: Path) -> None:
    """A 5,000-digit integer (hex or decimal) in a number field is `file:line path: number too large`."""
    for text, where in [
        (REGRESSIONS["hex in an int field"], "1 daemon.shutdown_timeout_seconds"),
        (REGRESSIONS["hex in a float field"], "6 sources.feed.speed"),
        (REGRESSIONS["decimal in an int field"], "1 daemon.journal.max_rows"),
        (REGRESSIONS["huge env hex in an int field"], "6 sources.feed.queue.max_events"),
        (REGRESSIONS["huge env decimal in an int field"], "7 sources.feed.queue.max_events"),
    ]:
        path = write(tmp_path, text)
        result = check_in_process(path)
        assert result.code == 2
        assert f"{path}:{where}: number too large" in result.err, result.err


def test_bad_plugin_references_are_config_errors(tmp_path: Path) -> None:
    """Any malformed or failing `module:attr` type is `file:line path: reason`, exit 2."""
    for name in ("relative plugin module", "dotted-only plugin module", "plugin module with NUL"):
        path = write(tmp_path, REGRESSIONS[name])
        result = check_in_process(path)
        assert result.code == 2
        assert result.err.startswith(f"{path}:3 sources.feed.type: plugin type "), result.err


def test_file_over_the_size_cap_is_reported_at_line_1(tmp_path: Path) -> None:
    """A file over the size cap is `FILE:1: file is too large ...`."""
    path = write(tmp_path, REGRESSIONS["file over the size cap"])
    result = check_in_process(path)
    assert result.code == 2
    assert result.err.startswith(f"{path}:1: file is too large"), result.err


# --- the real executable, end to end ---------------------------------------------------------------

NASTIEST = [
    "hex in a str field",
    "huge env decimal in an int field",
    "relative plugin module",
    "key with a line break",
    "file over the size cap",
]


@pytest.mark.parametrize("name", NASTIEST)
def test_reflexd_check_executable_exits_2(name: str, tmp_path: Path) -> None:
    """`reflexd check -c FILE` (a real process) exits 2 with file:line errors on the nastiest inputs."""
    path = write(tmp_path, REGRESSIONS[name])
    result = check_subprocess(path)
    assert result.code == 2, result
    assert_clean(path, result)


def test_reflexd_check_executable_exits_0_on_a_secret_number(tmp_path: Path) -> None:
    """A webhook header from ${VAR} holding `1e5` is valid: exit 0, and the value is not printed."""
    text = GOOD.replace(
        "  alert: {type: log}",
        "  alert: {type: log}\n  hook:\n    type: webhook\n    url: https://example.test/h\n"
        "    headers:\n      X-Api-Key: ${FUZZ_EXP}",
    )
    path = write(tmp_path, text)
    result = check_subprocess(path)
    assert_clean(path, result)
    assert result.code == 0 and "headers=***" in result.out


# --- the property ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """YAML text written verbatim where a scalar or key goes."""

    text: str


@dataclass(frozen=True)
class Map:
    """A mapping as pairs, so keys can repeat or be raw YAML."""

    pairs: tuple[tuple[Any, Any], ...]


def to_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return Map(tuple((k, to_tree(v)) for k, v in value.items()))
    if isinstance(value, list):
        return [to_tree(v) for v in value]
    return value


def _scalar(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, str):
        return json.dumps(value)  # a double-quoted YAML scalar
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _key(key: Any) -> str:
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key):
        return key
    return _scalar(key)


def emit(node: Any, indent: int = 0) -> list[str]:
    """Block-style YAML for a tree of Map / list / scalars / Raw."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(node, Map):
        for key, value in node.pairs:
            if isinstance(value, Map | list) and (value.pairs if isinstance(value, Map) else value):
                lines.append(f"{pad}{_key(key)}:")
                lines.extend(emit(value, indent + 2))
            else:
                lines.append(f"{pad}{_key(key)}: {_flow(value)}")
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, Map | list) and (item.pairs if isinstance(item, Map) else item):
                lines.append(f"{pad}-")
                lines.extend(emit(item, indent + 2))
            else:
                lines.append(f"{pad}- {_flow(item)}")
    else:
        lines.append(pad + _scalar(node))
    return lines


def _flow(value: Any) -> str:
    if isinstance(value, Map):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


#: Settings that make an example runnable here (`check` imports a python tool's function).
_CONFIG: dict[str, dict[str, Any]] = {"python": {"function": "tests.handlers.pyfuncs:echo"}}

#: Arguments for tools whose argument schema is strict (`check` judges literal arguments against it).
_ARGS: dict[str, dict[str, Any]] = {
    "ccxt_order": {"symbol": "BTC/USDT", "side": "buy", "type": "limit", "amount": 0.001, "price": "{price}"},
}


def _example_config(source: str, tools: list[str]) -> Map:
    registry = builtin_registry()
    sources = {"src": dict(registry.get("source", source).example)}
    tool_map = {f"t_{t}": {**registry.get("tool", t).example, **_CONFIG.get(t, {})} for t in tools}
    rule = {
        "from": ["src"],
        "where": "float(data.p) > 0",
        "steps": [
            {"set": {"price": "float(data.p)"}},
            {"window": {"seconds": 60, "aggregates": {"move": "pct_change(price)"}}},
            {"crossing": {"value": "price", "level": 100, "hysteresis": 1}},
        ],
        "cooldown_seconds": 5,
        "then": [{"tool": f"t_{t}", "args": _ARGS.get(t, {"text": "{key} {price}", "n": 1})} for t in tools],
    }
    daemon = {"log_level": "info", "http": {"listen": "${REFLEXD_HTTP_LISTEN:-127.0.0.1:9108}"}}
    return to_tree({"daemon": daemon, "sources": sources, "tools": tool_map, "rules": {"r": rule}})


def _secret_config() -> Map:
    tree = yaml.safe_load(
        """
        sources:
          ws:
            type: websocket
            url: wss://example.test/ws
            headers: {X-Api-Key: SECRET}
            subscribe: [{op: auth, key: SECRET}]
          k:
            type: kafka
            bootstrap_servers: localhost:9092
            topics: [t]
            group_id: g
            security: {protocol: SASL_PLAINTEXT, username: u, password: SECRET}
        tools:
          hook: {type: webhook, url: "https://example.test/h", headers: {Authorization: SECRET}}
        rules:
          r: {from: [ws, k], then: [{tool: hook, args: {token: SECRET}}]}
        """
    )
    return _replace_secret(to_tree(tree))


def _replace_secret(node: Any) -> Any:
    if isinstance(node, Map):
        return Map(tuple((k, _replace_secret(v)) for k, v in node.pairs))
    if isinstance(node, list):
        return [_replace_secret(v) for v in node]
    return Raw("${FUZZ_SECRET}") if node == "SECRET" else node


BASES: list[Map] = [
    to_tree(yaml.safe_load((ROOT / "config.yaml").read_text())),
    _example_config("replay", ["log", "file"]),
    _example_config("websocket", ["webhook", "exec"]),
    _example_config("kafka", ["kafka", "ccxt_order"]),
    _example_config("ccxt", ["python"]),
    _secret_config(),
]
for _base in BASES:
    assert "\n".join(emit(_base)), "empty base"

PLUGIN_REFS = [
    ".x:y", "..:y", "os:path", "daemon.registry:Registry", "tests.plugins:COUNTER", "x:", ":y", "a b:c",
    "a\0b:y", "tests.plugins:COUNTER.kind", "sys:modules", "tests.plugins:", "daemon.registry:_load_plugin",
    "${FUZZ_SECRET}:x", "x.${FUZZ_SECRET}:COUNTER", "tests..plugins:COUNTER", "tests.plugins:COUNTER..x",
]
ODD_SCALARS = [
    ".inf", "-.inf", ".NaN", ".nan", "-0", "+0", "1_000", "0o7", "0b101", "~", "null", "Null", "NULL", "",
    "yes", "no", "on", "off", "y", "n", "tRue", "True", "FALSE", "2024-01-01", "2024-01-01T10:00:00Z",
    "1:30", "0x1F", "0x", "0755", "-01", "1e999", "-1e-999", "1.", ".5", "1e3", "nan", "inf",
    HEX_5000, DEC_5000, "-" + DEC_5000, "0x" + "0" * 5000 + "1", DEC_5000 + ".5", "1e" + DEC_5000,
    "9" * 101, "0x" + "f" * 84, "2" * 100,
    "!!python/object/apply:os.system ['id']", "!!python/object:os.system {}", "!!binary aGVsbG8=",
    "!!str 1", "!foo x", "! 1", "!!int 1", "!<tag:yaml.org,2002:str> x",
    "&a x", "*a", "&a [1, *a]", "[*a]",
    "${FUZZ_SECRET_EXPR}", "'${FUZZ_SECRET_EXPR}'", "${FUZZ_SECRET}", "'${FUZZ_SECRET}'", "\"x${FUZZ_SECRET}y\"", "${FUZZ_SECRET_BRACES}", "'${FUZZ_SECRET_LONG}'",
    "${FUZZ_NUM}", "${FUZZ_EXP}", "${FUZZ_NULL}", "${FUZZ_TRUE}", "${FUZZ_HUGE_HEX}", "'${FUZZ_HUGE_DEC}'",
    "${FUZZ_EMPTY}", "'${FUZZ_EMPTY}'", "${FUZZ_YAML}", "${FUZZ_UNSET}", "${FUZZ_UNSET:-0x10}", "${1BAD}",
    "${", "$${FUZZ_SECRET}", "${FUZZ_SECRET}${FUZZ_NUM}",
    '"\\0"', '"\\x00nul"', '"a\\nb"', '"\\u2028"', '"\\uD800"', '"\\t"', '"\\e\\a"', "'it''s'",
    "|\n  block\n  text", ">-\n  folded", "|+\n\n", "{a: 1, a: 2}", "[1, [2, [3]]]", "{? [a] : b}", "? x",
    "{{", "}}", "[", "]", "-", "- - -", ": :", "#", "%", "@x", "`x`", '"unterminated', "'unterminated",
    '"' + "x" * 10000 + '"', "x" * 5000, "\u00e9\u4e2d\U0001f600", "\u202etxt", '"\\uFEFF"',
    *PLUGIN_REFS,
]
ODD_KEYS = [
    Raw("<<"), Raw("1"), Raw("null"), Raw("true"), Raw("~"), Raw("''"), Raw('"a\\nb"'), Raw('"\\0"'),
    Raw("'${FUZZ_SECRET}'"), Raw("${FUZZ_SECRET}"), Raw("? [a, b]"), Raw("&k key"), Raw("*k"), Raw("!!str k"),
    "a.b", "with space", "x" * 300, "type", "from", "then", "tool", "args", "steps", "sources", "é", "0x10",
]
TOOL_AND_SOURCE_TYPES = [
    "replay", "websocket", "kafka", "ccxt", "log", "file", "webhook", "exec", "python", "ccxt_order",
]

_SCALAR_STRATEGY = st.one_of(
    st.sampled_from(ODD_SCALARS).map(Raw),
    st.sampled_from(TOOL_AND_SOURCE_TYPES),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=False),
    st.text(max_size=30),
    st.booleans(),
    st.none(),
)


def _paths(node: Any, prefix: tuple[int, ...] = ()) -> Iterator[tuple[int, ...]]:
    """Every node's address as indexes (a mapping's pair index, a list's item index)."""
    yield prefix
    if isinstance(node, Map):
        for i, (_, value) in enumerate(node.pairs):
            yield from _paths(value, (*prefix, i))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


def _paths_where(node: Any, keep: Any, prefix: tuple[int, ...] = ()) -> Iterator[tuple[int, ...]]:
    """Addresses of mapping values for which ``keep(key, value)`` holds."""
    if isinstance(node, Map):
        for i, (key, value) in enumerate(node.pairs):
            if keep(key, value):
                yield (*prefix, i)
            yield from _paths_where(value, keep, (*prefix, i))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths_where(value, keep, (*prefix, i))


def _is_type(key: Any, value: Any) -> bool:
    return key == "type"


def _is_number(key: Any, value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


NUMBERS = [
    HEX_5000, DEC_5000, "-" + DEC_5000, "0x" + "f" * 84, "9" * 101, "${FUZZ_HUGE_HEX}", "'${FUZZ_HUGE_DEC}'",
    "${FUZZ_NUM}", "'${FUZZ_EXP}'", "${FUZZ_NULL}", "${FUZZ_TRUE}", "${FUZZ_SECRET}", "'x${FUZZ_SECRET}'",
    ".inf", "-.inf", ".nan", "-0", "1e999", "0x10", "1_000", "0o7", "true", "~", "'12'", "-1", "1e3", "0.5",
]


def _get(node: Any, path: tuple[int, ...]) -> Any:
    for i in path:
        node = node.pairs[i][1] if isinstance(node, Map) else node[i]
    return node


def _set(node: Any, path: tuple[int, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(node, Map):
        pairs = list(node.pairs)
        key, value = pairs[head]
        pairs[head] = (key, _set(value, rest, new))
        return Map(tuple(pairs))
    items = list(node)
    items[head] = _set(items[head], rest, new)
    return items


def _nested(depth: int, leaf: Any) -> Any:
    node = leaf
    for level in range(depth):
        node = [node] if level % 2 else Map((("k", node),))
    return node


@st.composite
def mutated_tree(draw: st.DrawFn) -> Any:
    tree: Any = draw(st.sampled_from(BASES))
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        paths = list(_paths(tree))
        path = draw(st.sampled_from(paths))
        target = _get(tree, path)
        op = draw(
            st.sampled_from(
                ["scalar", "retype", "drop", "rename", "duplicate", "add", "nest", "anchor", "type", "swap", "number"]
            )
        )
        if op in ("type", "number"):  # aim at the component types and the numeric fields
            aimed = list(_paths_where(tree, _is_type if op == "type" else _is_number))
            path = draw(st.sampled_from(aimed)) if aimed else path
        if op == "scalar":
            tree = _set(tree, path, draw(_SCALAR_STRATEGY))
        elif op == "retype":
            new = draw(st.sampled_from([[], Map(()), [1, "a"], Map((("a", 1),)), "text", 7, 1.5, None, True]))
            tree = _set(tree, path, new)
        elif op == "type":
            tree = _set(tree, path, Raw(json.dumps(draw(st.sampled_from(PLUGIN_REFS + TOOL_AND_SOURCE_TYPES)))))
        elif op == "number":
            tree = _set(tree, path, Raw(draw(st.sampled_from(NUMBERS))))
        elif op == "nest":
            depth = draw(st.sampled_from([2, 10, MAX_DEPTH - 3, MAX_DEPTH + 1, 200]))
            tree = _set(tree, path, _nested(depth, draw(_SCALAR_STRATEGY)))
        elif op == "anchor":
            tree = _set(tree, path, Raw(draw(st.sampled_from(["&a {b: 1}", "*a", "&a [x]", "!!map {}", "!!seq []"]))))
        elif isinstance(target, Map) and target.pairs:
            pairs = list(target.pairs)
            i = draw(st.integers(min_value=0, max_value=len(pairs) - 1))
            if op == "drop":
                del pairs[i]
            elif op == "rename":
                pairs[i] = (draw(st.one_of(st.sampled_from(ODD_KEYS), st.text(max_size=12))), pairs[i][1])
            elif op == "duplicate":
                pairs.insert(i, pairs[i])
            elif op == "add":
                pairs.append((draw(st.sampled_from(ODD_KEYS)), draw(_SCALAR_STRATEGY)))
            elif op == "swap":
                pairs[i] = (pairs[i][0], draw(st.sampled_from([Raw("<<"), Raw("*a")])))
            tree = _set(tree, path, Map(tuple(pairs)))
        elif isinstance(target, list) and target:
            items = list(target)
            i = draw(st.integers(min_value=0, max_value=len(items) - 1))
            if op == "drop":
                del items[i]
            else:
                items.insert(i, draw(_SCALAR_STRATEGY))
            tree = _set(tree, path, items)
    return tree


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    text = "\n".join(emit(draw(mutated_tree()))) + "\n"
    raw = text.encode("utf-8", "surrogatepass")
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        op = draw(
            st.sampled_from(
                ["bom", "crlf", "cr", "tab", "nul", "bad_utf8", "garbage", "truncate", "second_doc", "directive",
                 "dup_line", "oversize", "nel"]
            )
        )
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        if op == "bom":
            raw = b"\xef\xbb\xbf" + raw
        elif op == "crlf":
            raw = raw.replace(b"\n", b"\r\n")
        elif op == "cr":
            raw = raw.replace(b"\n", b"\r")
        elif op == "nel":
            raw = raw.replace(b"\n", "\u0085".encode())
        elif op == "tab":
            raw = re.sub(rb"\n  ", b"\n\t", raw, count=draw(st.integers(min_value=1, max_value=3)))
        elif op == "nul":
            raw = raw[:at] + b"\x00" + raw[at:]
        elif op == "bad_utf8":
            raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe9"])) + raw[at:]
        elif op == "garbage":
            raw = raw[:at] + draw(st.binary(min_size=1, max_size=40)) + raw[at:]
        elif op == "truncate":
            raw = raw[:at]
        elif op == "second_doc":
            raw = raw + b"---\na: 1\n"
        elif op == "directive":
            raw = draw(st.sampled_from([b"%YAML 1.1\n---\n", b"%YAML 1." + b"1" * 5000 + b"\n---\n", b"%TAG ! x\n---\n"])) + raw
        elif op == "dup_line":
            lines = raw.split(b"\n")
            i = draw(st.integers(min_value=0, max_value=len(lines) - 1))
            lines.insert(i, lines[i])
            raw = b"\n".join(lines)
        elif op == "oversize":
            raw = raw + b"#" * (MAX_CONFIG_BYTES + 1 - len(raw))
    return raw


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(mutated_bytes())
def test_check_never_crashes_on_mutated_configurations(raw: bytes) -> None:
    """Any mutation of a valid configuration makes `check` exit 0 or 2, with file:line errors only,
    no traceback, no secret printed, within 2 s."""
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), raw)
        result = check_in_process(path)
    assert_clean(path, result)
    assert result.seconds < 2.0, f"check took {result.seconds:.2f}s"


def test_bases_are_valid(tmp_path: Path) -> None:
    """Every unmutated base configuration passes `check` (so mutations start from valid input)."""
    for base in BASES:
        path = write(tmp_path, "\n".join(emit(base)) + "\n")
        result = check_in_process(path)
        assert result.code == 0, result.err
