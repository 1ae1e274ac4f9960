"""Tests for daemon.yamlio: the strict, safe YAML reader of the configuration file."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.errors import ConfigError, ConfigIssue
from daemon.yamlio import (
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_INTEGER_DIGITS,
    EnvText,
    LoadedYaml,
    format_path,
    load_yaml_file,
    load_yaml_text,
    resolve_scalar,
)


def load(text: str, env: dict[str, str] | None = None) -> LoadedYaml:
    return load_yaml_text(text, file="cfg.yaml", env=env or {})


def data(text: str, env: dict[str, str] | None = None) -> Any:
    return load(text, env).data


def issues(text: str, env: dict[str, str] | None = None) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load(text, env)
    return info.value.issues


def only_issue(text: str, env: dict[str, str] | None = None) -> ConfigIssue:
    found = issues(text, env)
    assert len(found) == 1, found
    return found[0]


def billion_laughs() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 9):
        prev, name = chr(ord("a") + level - 1), chr(ord("a") + level)
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n"


NESTED = """\
daemon:
  log_level: info
sources:
  btc:
    type: websocket
    queue:
      max_events: 10
      when_full: drop_oldest
rules:
  r:
    then:
      - tool: alert
        args: {text: hi}
      - tool: log
"""


# --- lines and paths -------------------------------------------------------------------------------


def test_lines_of_nested_keys_and_list_items() -> None:
    """Every node's line is recorded by path; entries map to their key's line, list items to theirs."""
    loaded = load(NESTED)
    assert loaded.lines[()] == 1
    assert loaded.lines[("daemon",)] == 1
    assert loaded.lines[("daemon", "log_level")] == 2
    assert loaded.lines[("sources", "btc", "queue")] == 6
    assert loaded.lines[("sources", "btc", "queue", "when_full")] == 8
    assert loaded.lines[("rules", "r", "then", 0)] == 12
    assert loaded.lines[("rules", "r", "then", 0, "args", "text")] == 13
    assert loaded.lines[("rules", "r", "then", 1)] == 14
    assert loaded.lines[("rules", "r", "then", 1, "tool")] == 14
    assert loaded.data["rules"]["r"]["then"][1] == {"tool": "log"}
    assert loaded.file == "cfg.yaml"


def test_line_of_falls_back_to_longest_known_prefix() -> None:
    """line_of answers for unknown paths with the line of their deepest known ancestor."""
    loaded = load(NESTED)
    assert loaded.line_of(["sources", "btc", "queue", "when_full"]) == 8
    assert loaded.line_of(("sources", "btc", "queue", "no_such_key")) == 6
    assert loaded.line_of(("rules", "r", "then", 7, "tool")) == 11
    assert loaded.line_of(("nowhere",)) == 1
    assert loaded.line_of(()) == 1
    assert LoadedYaml(data=None, lines={}, file="x").line_of(("a",)) is None


def test_format_path() -> None:
    """Paths render as dotted keys with [n] for list indexes; odd keys are bracket-quoted."""
    assert format_path(("sources", "btc", "queue", "when_full")) == "sources.btc.queue.when_full"
    assert format_path(("rules", "r", "then", 0, "tool")) == "rules.r.then[0].tool"
    assert format_path((3, "a")) == "[3].a"
    assert format_path(()) == ""
    assert format_path(("tools", "a.b", "url")) == 'tools["a.b"].url'


# --- unsafe YAML -----------------------------------------------------------------------------------


def test_billion_laughs_fails_fast_without_expanding() -> None:
    """The classic 9-level alias bomb is rejected at the first anchor, well under a second."""
    text = billion_laughs()
    assert len(text.encode()) < 400
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load(text)
    assert time.perf_counter() - start < 1.0
    assert info.value.issues == [ConfigIssue("cfg.yaml", 1, "", "anchors and aliases are not allowed")]


def test_single_anchor_and_alias_rejected() -> None:
    """Even one harmless-looking anchor, or an alias, is an error at its line."""
    issue = only_issue("a: 1\nb: &x 2\nc: *x\n")
    assert (issue.line, issue.reason) == (2, "anchors and aliases are not allowed")
    issue = only_issue("a: 1\nb:\n  - &x {k: v}\n")
    assert (issue.line, issue.reason) == (3, "anchors and aliases are not allowed")


def test_python_tag_rejected() -> None:
    """!!python/object/apply and any other explicit tag is an error, nothing is executed."""
    issue = only_issue("a: 1\nb: !!python/object/apply:os.system ['echo pwned']\n")
    assert issue.line == 2
    assert "explicit tags are not allowed" in issue.reason
    for text in ("a: !!str 1\n", "a: !custom x\n", "a: ! 1\n", "a: !!map {b: 1}\n"):
        assert "explicit tags are not allowed" in only_issue(text).reason


def test_duplicate_key_reports_both_lines() -> None:
    """A duplicate key is reported at its own line, naming the line of the first occurrence."""
    issue = only_issue("sources:\n  btc: 1\n  eth: 2\n  btc: 3\n")
    assert issue == ConfigIssue("cfg.yaml", 4, "sources.btc", "duplicate key 'btc' (first at line 2)")


def test_merge_key_rejected() -> None:
    """The YAML 1.1 merge key '<<' is not supported and is reported."""
    issue = only_issue("a:\n  <<: {b: 1}\n")
    assert (issue.line, issue.reason) == (2, "merge keys ('<<') are not allowed")


def test_non_string_keys_rejected() -> None:
    """Keys that are collections or that type as int/bool/null are errors; quoted ones are fine."""
    assert "not a sequence" in only_issue("? [a, b]\n: c\n").reason
    assert "read as an integer" in only_issue("a:\n  1: x\n").reason
    assert "read as a boolean" in only_issue("true: x\n").reason
    assert "read as null" in only_issue("null: x\n").reason
    assert data("'1': x\nyes: y\n") == {"1": "x", "yes": "y"}


def test_nesting_too_deep_rejected() -> None:
    """Nesting beyond MAX_DEPTH is an error; exactly MAX_DEPTH levels load."""
    assert data("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    issue = only_issue("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    assert "nesting is deeper than" in issue.reason


def test_multiple_documents_rejected() -> None:
    """A second document in the same file is an error at the second document's marker."""
    issue = only_issue("a: 1\n---\nb: 2\n")
    assert issue.line == 2
    assert "only one YAML document" in issue.reason


def test_empty_file_gives_none() -> None:
    """An empty or comment-only file loads as None; the caller decides what that means."""
    assert data("") is None
    assert data("# nothing here\n\n") is None


# --- scalar typing ---------------------------------------------------------------------------------


def test_yaml11_booleans_stay_strings() -> None:
    """yes/no/on/off/y/n are strings; only true/false (and True/TRUE...) are booleans."""
    text = "a: yes\nb: no\nc: on\nd: off\ne: y\nf: n\ng: Yes\nh: OFF\n"
    assert data(text) == {
        "a": "yes",
        "b": "no",
        "c": "on",
        "d": "off",
        "e": "y",
        "f": "n",
        "g": "Yes",
        "h": "OFF",
    }
    loaded = data("a: true\nb: False\nc: TRUE\nd: tRue\n")
    assert loaded == {"a": True, "b": False, "c": True, "d": "tRue"}
    assert loaded["a"] is True


def test_leading_zero_integers_stay_strings() -> None:
    """0755 (octal in YAML 1.1, decimal in 1.2) is kept as the string '0755'; 0 and -0 are ints."""
    assert data("mode: 0755\nb: -012\nc: 0\nd: -0\ne: +7\n") == {
        "mode": "0755",
        "b": "-012",
        "c": 0,
        "d": 0,
        "e": 7,
    }


def test_hex_and_other_integer_forms() -> None:
    """0x hex is an int; octal 0o, underscores and sexagesimal stay strings."""
    assert data("a: 0x1F\nb: 0o17\nc: 1_000\nd: 1:30\ne: 123\n") == {
        "a": 31,
        "b": "0o17",
        "c": "1_000",
        "d": "1:30",
        "e": 123,
    }


def test_floats() -> None:
    """Decimal, exponent, .inf and .nan forms are floats; infinities and NaN are kept."""
    loaded = data("a: 1.5\nb: 1e3\nc: -2.5E-3\nd: .5\ne: .inf\nf: -.Inf\ng: .NaN\nh: 1.\n")
    assert loaded["a"] == 1.5
    assert loaded["b"] == 1000.0 and isinstance(loaded["b"], float)
    assert loaded["c"] == -0.0025
    assert loaded["d"] == 0.5
    assert loaded["e"] == math.inf
    assert loaded["f"] == -math.inf
    assert math.isnan(loaded["g"])
    assert loaded["h"] == 1.0


def test_null_variants() -> None:
    """null, Null, NULL, ~ and an empty value are None; 'none' is a string."""
    assert data("a: null\nb: Null\nc: NULL\nd: ~\ne:\nf: none\n") == {
        "a": None,
        "b": None,
        "c": None,
        "d": None,
        "e": None,
        "f": "none",
    }
    assert data("- \n- ~\n") == [None, None]


def test_quoted_and_block_scalars_stay_strings() -> None:
    """Quoted and block scalars are strings even when they look like numbers, booleans or null."""
    assert data("a: '1'\nb: \"true\"\nc: 'null'\nd: \"0x1F\"\ne: ''\nf: |\n  42\n") == {
        "a": "1",
        "b": "true",
        "c": "null",
        "d": "0x1F",
        "e": "",
        "f": "42\n",
    }


def test_timestamps_stay_strings() -> None:
    """Dates are not turned into datetime objects."""
    assert data("a: 2024-01-01\nb: 2024-01-01T10:00:00Z\n") == {
        "a": "2024-01-01",
        "b": "2024-01-01T10:00:00Z",
    }


def test_oversized_integer_is_a_config_error() -> None:
    """An integer longer than Python's int-conversion limit is reported, not a ValueError."""
    issue = only_issue("a: " + "9" * 5000 + "\n")
    assert (issue.line, issue.path) == (1, "a")
    assert "number too large" in issue.reason


@pytest.mark.parametrize("text", ["0x" + "f" * 5000, "0x" + "f" * 84, "-" + "9" * 101, "9" * 101])
def test_huge_integers_decimal_or_hex_are_too_large(text: str) -> None:
    """Integers over MAX_INTEGER_DIGITS digits, hex included (which int() converts without limit), are refused."""
    issue = only_issue(f"x: 1\nb: {text}\n")
    assert (issue.line, issue.path, issue.reason.split(" (")[0]) == (2, "b", "number too large")


def test_integers_up_to_the_digit_limit_and_zero_padded_hex_load() -> None:
    """100-digit integers and long zero-padded hex are ordinary numbers."""
    assert data(f"a: {'9' * MAX_INTEGER_DIGITS}\nb: 0x{'0' * 5000}1f\n") == {"a": int("9" * 100), "b": 31}


# --- interpolation ---------------------------------------------------------------------------------


def test_env_interpolation_with_defaults_and_several_placeholders() -> None:
    """${VAR} takes the environment, ${VAR:-d} falls back when unset or empty, several per scalar."""
    loaded = load(
        "url: wss://${HOST}:${PORT:-443}/ws\nname: ${NAME:-anon}\nempty: ${EMPTY:-fallback}\n",
        {"HOST": "example.com", "EMPTY": ""},
    )
    assert loaded.data == {"url": "wss://example.com:443/ws", "name": "anon", "empty": "fallback"}
    assert data("url: wss://${HOST}:${PORT:-443}/ws\n", {"HOST": "h", "PORT": "9443"}) == {
        "url": "wss://h:9443/ws"
    }


def test_missing_variables_reported_with_line_and_path() -> None:
    """Each unset variable without a default is its own issue at the scalar's line and path."""
    found = issues(
        "sources:\n  btc:\n    url: ${URL}\n    headers:\n      auth: Bearer ${TOKEN} ${OTHER}\n",
        {},
    )
    assert found == [
        ConfigIssue("cfg.yaml", 3, "sources.btc.url", "environment variable URL is not set"),
        ConfigIssue("cfg.yaml", 5, "sources.btc.headers.auth", "environment variable TOKEN is not set"),
        ConfigIssue("cfg.yaml", 5, "sources.btc.headers.auth", "environment variable OTHER is not set"),
    ]


def test_missing_variable_in_list_item_path() -> None:
    """A missing variable inside a list item names the item index in its path."""
    issue = only_issue("rules:\n  r:\n    then:\n      - tool: a\n      - tool: ${T}\n")
    assert (issue.line, issue.path) == (5, "rules.r.then[1].tool")


def test_plain_single_placeholder_keeps_exact_text_marked() -> None:
    """A plain scalar that is exactly one placeholder keeps the substituted text, marked EnvText,
    and resolve_scalar gives the type the schema may fall back to; an empty result is None."""
    loaded = data(
        "max_events: ${MAX:-100}\nenabled: ${ON:-true}\nratio: ${R}\nnothing: ${N:-~}\nword: ${W:-yes}\n"
        "empty: ${E:-}\n",
        {"R": "0.5"},
    )
    assert loaded == {
        "max_events": "100",
        "enabled": "true",
        "ratio": "0.5",
        "nothing": "~",
        "word": "yes",
        "empty": None,
    }
    assert all(isinstance(v, EnvText) for k, v in loaded.items() if k != "empty")
    typed = {k: resolve_scalar(v) for k, v in loaded.items() if k != "empty"}
    assert typed == {"max_events": 100, "enabled": True, "ratio": 0.5, "nothing": None, "word": "yes"}


@pytest.mark.parametrize("value", ["1e5", "0x10", "1.50", "null", "true", "-0", "1_000", "0" + "7" * 200])
def test_secret_text_is_never_rewritten(value: str) -> None:
    """An unquoted ${PW} holds exactly the variable's text (1e5 is not 100000.0, null is not None)."""
    assert data("password: ${PW}\n", {"PW": value}) == {"password": value}


def test_env_values_recorded_per_path() -> None:
    """secret_values lists, per interpolated path, the texts that came from the environment (not defaults)."""
    loaded = load("a: https://${HOST}:${PORT:-443}/x\nb: ${D:-dflt}\nc: plain\n", {"HOST": "h0st"})
    assert loaded.secret_values == {("a",): ("h0st",)}


def test_quoted_or_mixed_placeholder_is_not_retyped() -> None:
    """Quoted placeholders and placeholders with surrounding text stay strings."""
    loaded = data("a: '${MAX:-100}'\nb: \"${ON:-true}\"\nc: ${MAX:-100}${MAX:-0}\nd: x${MAX:-1}\n")
    assert loaded == {"a": "100", "b": "true", "c": "1000", "d": "x1"}


def test_dollar_dollar_brace_is_a_literal() -> None:
    """$${ produces a literal ${ and is neither interpolated nor marked secret."""
    loaded = load("a: $${HOME}\nb: 'cost $$5 $${X:-y}'\nc: ${V}$${V}\n", {"HOME": "/root", "V": "v"})
    assert loaded.data == {"a": "${HOME}", "b": "cost $$5 ${X:-y}", "c": "v${V}"}
    assert loaded.secret_paths == frozenset({("c",)})


def test_interpolated_value_cannot_change_structure() -> None:
    """A variable holding YAML syntax stays a plain string value."""
    loaded = data("a: ${EVIL}\n", {"EVIL": "x\nb: {c: [1, 2]}"})
    assert loaded == {"a": "x\nb: {c: [1, 2]}"}
    assert data("a: ${EVIL}\n", {"EVIL": "[1, 2]"}) == {"a": "[1, 2]"}


def test_secret_paths_lists_every_interpolated_scalar() -> None:
    """secret_paths holds the paths of all interpolated scalars, defaults included, and nothing else."""
    loaded = load(
        "tools:\n  hook:\n    url: https://${HOST}/x\n    headers: {auth: '${TOKEN}'}\n"
        "    retries: ${RETRIES:-3}\n    plain: hello\n    list: [a, '${L}']\n",
        {"HOST": "h", "TOKEN": "s3cret", "L": "l"},
    )
    assert loaded.secret_paths == frozenset(
        {
            ("tools", "hook", "url"),
            ("tools", "hook", "headers", "auth"),
            ("tools", "hook", "retries"),
            ("tools", "hook", "list", 1),
        }
    )


def test_invalid_placeholder_and_placeholder_in_key_rejected() -> None:
    """A malformed ${ is an error, and keys never interpolate."""
    assert "invalid ${...} placeholder" in only_issue("a: ${not closed\n").reason
    assert "invalid ${...} placeholder" in only_issue("a: ${1BAD}\n").reason
    assert "not allowed in mapping keys" in only_issue("${K}: v\n", {"K": "k"}).reason


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an env argument, os.environ is used."""
    monkeypatch.setenv("REFLEXD_TEST_YAMLIO", "from-env")
    assert load_yaml_text("a: ${REFLEXD_TEST_YAMLIO}\n").data == {"a": "from-env"}


# --- syntax errors and bad input -------------------------------------------------------------------


def test_syntax_error_line_number() -> None:
    """A parser error is a ConfigError at the problem's 1-based line."""
    issue = only_issue("a: 1\nb: 2\nc: [1, 2\nd: 4\ne: 5: 6\n")
    assert issue.line is not None and issue.line >= 3
    issue = only_issue("a: 1\nb: 2\nc: d: e\n")
    assert (issue.line, issue.reason) == (3, "mapping values are not allowed here")


def test_tab_indentation_is_a_config_error() -> None:
    """Tabs used for indentation give a readable ConfigError at their line."""
    issue = only_issue("a:\n  b: 1\n\tc: 2\n")
    assert issue.line == 3
    assert "tab" in issue.reason


def test_control_characters_are_a_config_error() -> None:
    """Non-printable characters are reported with their line."""
    issue = only_issue("a: 1\nb: x\x00y\n")
    assert issue.line == 2
    assert "#x0000" in issue.reason


def test_yaml_directive_with_huge_number_is_a_config_error() -> None:
    """PyYAML's unguarded int() on a %YAML version number becomes a ConfigError."""
    issue = only_issue("%YAML 1." + "1" * 5000 + "\n---\na: 1\n")
    assert issue.line == 1


def test_text_too_large_rejected() -> None:
    """Text over MAX_CONFIG_BYTES (counted in UTF-8 bytes) is refused before parsing."""
    issue = only_issue("#" + "é" * (MAX_CONFIG_BYTES // 2))
    assert issue.line == 1
    assert "too large" in issue.reason


# --- files -----------------------------------------------------------------------------------------


def test_load_file(tmp_path: Path) -> None:
    """A file loads with its path as the error file name."""
    path = tmp_path / "config.yaml"
    path.write_text("a: ${X:-1}\nb: 2\n", encoding="utf-8")
    loaded = load_yaml_file(path, env={})
    assert loaded.data == {"a": "1", "b": 2}
    assert loaded.file == str(path)


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError without a line."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_yaml_file(path, env={})
    assert info.value.issues == [ConfigIssue(str(path), None, "", "file not found")]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    """A directory path is a ConfigError, not an OSError."""
    with pytest.raises(ConfigError) as info:
        load_yaml_file(tmp_path, env={})
    assert info.value.issues[0].line is None


def test_file_too_large(tmp_path: Path) -> None:
    """A file over MAX_CONFIG_BYTES is refused without being parsed."""
    path = tmp_path / "big.yaml"
    path.write_bytes(b"a: 1\n" + b"#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError) as info:
        load_yaml_file(path, env={})
    assert "too large" in info.value.issues[0].reason
    assert str(info.value.issues[0]).startswith(f"{path}:1: file is too large")


def test_non_utf8_file(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are a ConfigError at the line where they occur."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_yaml_file(path, env={})
    issue = info.value.issues[0]
    assert issue.line == 2
    assert "UTF-8" in issue.reason


# --- robustness ------------------------------------------------------------------------------------

YAML_PIECES = [*"ab01 \t\n\r:-[]{},#&*!|>'\"?%@`$~.e+x\\", "${", "$${", "---", "<<", "  ", ": ", "- "]
YAMLISH = st.lists(st.sampled_from(YAML_PIECES), max_size=60).map("".join)


def _returns_or_config_error(text: str) -> None:
    try:
        result = load_yaml_text(text, env={"a": "1"})
    except ConfigError as exc:
        assert exc.issues
    else:
        assert isinstance(result, LoadedYaml)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), YAMLISH))
def test_random_text_only_raises_config_error(text: str) -> None:
    """Arbitrary (and YAML-flavoured) text either loads or raises ConfigError, never anything else."""
    _returns_or_config_error(text)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary())
def test_random_bytes_only_raise_config_error(raw: bytes) -> None:
    """Random bytes decoded as UTF-8 with replacement either load or raise ConfigError."""
    _returns_or_config_error(raw.decode("utf-8", errors="replace"))


def test_format_path_escapes_line_breaks_and_invisible_characters() -> None:
    """A key holding a line break or control character renders on one line, escaped."""
    assert format_path(("sources", "a\nb", "c\r\x00\u2028")) == 'sources["a\\nb"]["c\\r\\x00\\u2028"]'
