"""Configuration errors name the file, the line and the path, and never crash with a traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from daemon.config import config_json_schema, load_config, load_config_text
from daemon.errors import ConfigError
from daemon.registry import builtin_registry

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
sources:
  feed:
    type: replay
    path: data/sample-trades.jsonl
    time_field: T
    queue: {max_events: 100, when_full: block}
tools:
  alert: {type: log}
rules:
  big:
    from: [feed]
    where: "float(data.p) > 1"
    then:
      - tool: alert
        args: {text: "{data.p}"}
"""


def issues_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, builtin_registry(), env=env or {})
    return [str(i) for i in info.value.issues]


def run_cli(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_good_config_validates() -> None:
    """A correct configuration loads into typed sections."""
    cfg = load_config_text(GOOD, builtin_registry())
    assert list(cfg.sources) == ["feed"] and list(cfg.tools) == ["alert"] and list(cfg.rules) == ["big"]
    assert cfg.sources["feed"].config.queue.max_events == 100


def test_unknown_key() -> None:
    """An unknown key is reported at its own line, with a suggestion."""
    text = GOOD.replace("    time_field: T\n", "    time_field: T\n    speeed: 2\n")
    assert issues_of(text) == ["config.yaml:6 sources.feed.speeed: unknown key (did you mean 'speed'?)"]


def test_unknown_top_level_key_suggests() -> None:
    """A misspelt top-level section gets a did-you-mean hint."""
    assert issues_of(GOOD + "tool: {}\n") == ["config.yaml:16 tool: unknown key (did you mean 'tools'?)"]


def test_quoted_number_is_accepted_where_a_number_is_expected() -> None:
    """A quoted number still fills a numeric field (e.g. an interpolated value in a flow mapping)."""
    text = GOOD.replace("max_events: 100", 'max_events: "120"')
    assert load_config_text(text, builtin_registry()).sources["feed"].config.queue.max_events == 120


def test_yes_is_not_a_boolean_in_a_string_field() -> None:
    """YAML 1.1 `no` stays the string 'no' in a string field instead of turning into false."""
    text = GOOD.replace("time_field: T", "time_field: no")
    assert load_config_text(text, builtin_registry()).sources["feed"].config.time_field == "no"


def test_wrong_type() -> None:
    """A value of the wrong type names what was expected and what was found."""
    text = GOOD.replace("max_events: 100", "max_events: lots")
    assert issues_of(text) == [
        "config.yaml:6 sources.feed.queue.max_events: must be an integer, not string 'lots'"
    ]


def test_bad_enum_value() -> None:
    """A value outside an enumeration lists the allowed values."""
    text = GOOD.replace("when_full: block", "when_full: sometimes")
    assert issues_of(text) == [
        "config.yaml:6 sources.feed.queue.when_full: must be one of: block, drop_oldest, drop_newest"
    ]


def test_missing_environment_variable() -> None:
    """${VAR} without a default and without the variable is an error at its line."""
    text = GOOD.replace("path: data/sample-trades.jsonl", "path: ${REPLAY_FILE}")
    assert issues_of(text) == ["config.yaml:4 sources.feed.path: environment variable REPLAY_FILE is not set"]


def test_environment_variable_with_default_and_set() -> None:
    """${VAR:-default} falls back; a set variable wins and is typed like a plain scalar."""
    text = GOOD.replace("max_events: 100", 'max_events: "${QMAX:-250}"')
    assert load_config_text(text, builtin_registry(), env={}).sources["feed"].config.queue.max_events == 250
    cfg = load_config_text(text, builtin_registry(), env={"QMAX": "300"})
    assert cfg.sources["feed"].config.queue.max_events == 300
    assert cfg.is_secret(("sources", "feed", "queue"))


def test_unknown_component_type() -> None:
    """An unknown `type` lists the known ones."""
    text = GOOD.replace("type: replay", "type: carrier_pigeon")
    (issue,) = issues_of(text)
    assert issue.startswith("config.yaml:3 sources.feed.type: unknown source type 'carrier_pigeon' (known: ")
    assert "replay" in issue and "websocket" in issue


def test_rule_names_missing_source() -> None:
    """A rule reading a source that does not exist points at the `from` entry."""
    text = GOOD.replace("from: [feed]", "from: [feed, nowhere]")
    assert issues_of(text) == ["config.yaml:11 rules.big.from[1]: no source named 'nowhere' (sources: feed)"]


def test_rule_names_missing_tool() -> None:
    """A rule calling a tool that does not exist points at the call's `tool`."""
    text = GOOD.replace("- tool: alert", "- tool: pager")
    assert issues_of(text) == ["config.yaml:14 rules.big.then[0].tool: no tool named 'pager' (tools: alert)"]


def test_yaml_syntax_error() -> None:
    """A YAML syntax error is reported at the line where the parser stopped."""
    text = GOOD.replace("  alert: {type: log}", "  alert: {type: log")
    (issue,) = issues_of(text)
    assert issue.startswith("config.yaml:9")


def test_alias_bomb_is_refused() -> None:
    """A billion-laughs document is refused before anything expands."""
    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(ord("b"), ord("j")):
        prev = chr(i - 1)
        bomb += (
            f"{chr(i)}: &{chr(i)} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        )
    (issue,) = issues_of(bomb)
    assert issue.startswith("config.yaml:1") and "aliases are not allowed" in issue


def test_bad_where_expression_has_column() -> None:
    """An invalid `where` names the rule path and the column."""
    text = GOOD.replace('where: "float(data.p) > 1"', 'where: "float(data.p) > __import__(1)"')
    (issue,) = issues_of(text)
    assert issue.startswith("config.yaml:12 rules.big.where: column ")


def test_several_errors_reported_together() -> None:
    """All problems are reported at once, in file order."""
    text = GOOD.replace("when_full: block", "when_full: x").replace("- tool: alert", "- tool: pager")
    found = issues_of(text)
    assert len(found) == 2 and found[0].startswith("config.yaml:6") and found[1].startswith("config.yaml:14")


def test_websocket_source_refuses_block_policy() -> None:
    """A websocket source cannot use `block`: blocking the reader would starve keepalive pings."""
    text = GOOD.replace(
        "type: replay\n    path: data/sample-trades.jsonl\n    time_field: T",
        "type: websocket\n    url: ws://x",
    )
    (issue,) = issues_of(text)
    assert issue.startswith("config.yaml:5 sources.feed.queue: when_full: block is not allowed")


def test_default_config_file_is_valid() -> None:
    """The shipped config.yaml validates."""
    cfg = load_config(ROOT / "config.yaml", builtin_registry())
    assert cfg.sources and cfg.rules and cfg.tools


def test_schema_covers_every_registered_type() -> None:
    """`reflexd schema` describes every component type and rejects unknown top-level keys."""
    schema = config_json_schema(builtin_registry())
    sources = schema["properties"]["sources"]["additionalProperties"]["oneOf"]
    tools = schema["properties"]["tools"]["additionalProperties"]["oneOf"]
    registry = builtin_registry()
    assert {s["properties"]["type"]["const"] for s in sources} == set(registry.types("source")) >= {"replay", "websocket"}
    assert {t["properties"]["type"]["const"] for t in tools} == set(registry.types("tool")) >= {"file", "log"}
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize(
    ("label", "edit"),
    [
        ("unknown key", lambda t: t.replace("    time_field: T\n", "    time_field: T\n    speeed: 2\n")),
        ("wrong type", lambda t: t.replace("max_events: 100", "max_events: lots")),
        ("bad enum", lambda t: t.replace("when_full: block", "when_full: sometimes")),
        ("missing env", lambda t: t.replace("path: data/sample-trades.jsonl", "path: ${NOPE_NOT_SET}")),
        ("unknown type", lambda t: t.replace("type: replay", "type: carrier_pigeon")),
        ("missing source", lambda t: t.replace("from: [feed]", "from: [nowhere]")),
        ("missing tool", lambda t: t.replace("- tool: alert", "- tool: pager")),
        ("yaml syntax", lambda t: t.replace("  alert: {type: log}", "  alert: {type: log")),
    ],
)
def test_check_cli_exits_2_without_traceback(tmp_path: Path, label: str, edit: object) -> None:
    """`reflexd check` exits 2 and prints `file:line path: reason`, never a traceback."""
    path = tmp_path / "bad.yaml"
    path.write_text(edit(GOOD))  # type: ignore[operator]
    result = run_cli("check", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2, (label, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"{path}:"), first
    line = first[len(str(path)) + 1 :].split(" ", 1)[0].rstrip(":")
    assert line.isdigit(), first


def test_check_cli_alias_bomb(tmp_path: Path) -> None:
    """`reflexd check` on an alias bomb exits 2 quickly with the line."""
    path = tmp_path / "bomb.yaml"
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(ord("b"), ord("j")):
        p = chr(i - 1)
        lines.append(f"{chr(i)}: &{chr(i)} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]")
    path.write_text("\n".join(lines) + "\n")
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{path}:1: anchors and aliases are not allowed")


def test_check_cli_prints_plan() -> None:
    """`reflexd check` on the shipped config exits 0 and prints sources → rules → tools."""
    result = run_cli("check", "-c", "config.yaml")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.index("sources") < out.index("rules") < out.index("tools")
    assert "btc_trades [replay]" in out and "big_trade: from btc_trades" in out


def test_check_cli_masks_values_from_environment(tmp_path: Path) -> None:
    """Values read from the environment are never printed by `reflexd check`."""
    path = tmp_path / "c.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            sources:
              feed: {type: websocket, url: "wss://example.test/ws?token=${FEED_TOKEN}", headers: {X-Key: "${KEY}"}}
            tools: {t: {type: log}}
            rules: {r: {from: feed, then: [{tool: t}]}}
            """
        )
    )
    env = {"PATH": "/usr/bin:/bin", "FEED_TOKEN": "s3cr3t-token", "KEY": "hunter2"}
    result = run_cli("check", "-c", str(path), env=env)
    assert result.returncode == 0, result.stderr
    assert "s3cr3t-token" not in result.stdout and "hunter2" not in result.stdout
    assert "url=***" in result.stdout and "headers=***" in result.stdout


def test_schema_cli_prints_json() -> None:
    """`reflexd schema` prints a JSON Schema document."""
    import json

    result = run_cli("schema")
    assert result.returncode == 0
    assert json.loads(result.stdout)["title"] == "reflexd configuration"


def test_tools_cli_lists_argument_schemas() -> None:
    """`reflexd tools` lists each configured tool with its argument schema."""
    import json

    result = run_cli("tools", "-c", "config.yaml")
    assert result.returncode == 0, result.stderr
    tools = {t["name"]: t for t in json.loads(result.stdout)}
    assert set(tools) == {"alert", "record"}
    assert tools["alert"]["parameters"]["type"] == "object"


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    """A missing configuration file is a configuration error, not a crash."""
    result = run_cli("check", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_readme_configuration_example_is_valid() -> None:
    """The configuration walk-through in README.md is a valid configuration."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("```yaml\n", readme.index("## Configuration walk-through")) + len("```yaml\n")
    example = readme[start : readme.index("```", start)]
    cfg = load_config_text(example, builtin_registry(), base_dir=ROOT, env={"BINANCE_KEY": "k"})
    assert set(cfg.sources) == {"binance", "recorded"} and set(cfg.rules) == {"big_trade", "feed_gap"}


def test_arguments_from_the_environment_are_known_as_secret() -> None:
    """Rule arguments filled from ${VAR} are listed per (rule, tool), so the journal can redact them."""
    text = GOOD.replace('args: {text: "{data.p}"}', 'args: {text: "{data.p}", pin: "${PIN}"}')
    cfg = load_config_text(text, builtin_registry(), env={"PIN": "1234"})
    assert cfg.secret_arguments() == {("big", "alert"): frozenset({"pin"})}


# --- values from ${VAR}: exact text in string fields, typed in others, never printed in errors ---

SECRET_TEXTS = ["1e5", "0x10", "1.50", "null", "true", "-0", "~", "1_000", "00123"]

HOOK_AND_KAFKA = """\
sources:
  feed:
    type: kafka
    bootstrap_servers: localhost:9092
    topics: [t]
    group_id: g
    security:
      protocol: SASL_PLAINTEXT
      username: u
      password: ${PW}
tools:
  hook:
    type: webhook
    url: https://example.test/hook
    headers:
      X-Api-Key: ${PW}
rules:
  r:
    from: feed
    then: [{tool: hook}]
"""


@pytest.mark.parametrize("value", SECRET_TEXTS)
def test_env_value_keeps_its_exact_text_in_string_fields(value: str) -> None:
    """An unquoted ${PW} fills a webhook header and a SASL password with exactly the variable's text."""
    cfg = load_config_text(HOOK_AND_KAFKA, builtin_registry(), env={"PW": value})
    assert cfg.tools["hook"].config.headers == {"X-Api-Key": value}
    assert cfg.sources["feed"].config.security.password == value
    assert type(cfg.sources["feed"].config.security.password) is str


@pytest.mark.parametrize(
    ("value", "max_events", "speed", "loop"),
    [("100", 100, 100.0, None), ("0x10", 16, 16.0, None), ("1e3", 1000, 1000.0, None), ("1.50", None, 1.5, None)],
)
def test_env_value_is_typed_by_the_schema_in_number_fields(
    value: str, max_events: int | None, speed: float, loop: None
) -> None:
    """The same ${VAR}, plain or quoted, fills int and float fields with its number (hex and exponents too)."""
    text = GOOD.replace("max_events: 100", 'max_events: "${N}"').replace(
        "    time_field: T\n", "    time_field: T\n    speed: ${N}\n"
    )
    if max_events is None:
        assert issues_of(text, {"N": value}) == [
            "config.yaml:7 sources.feed.queue.max_events: must be an integer, not a value from the environment"
        ]
        return
    cfg = load_config_text(text, builtin_registry(), env={"N": value}).sources["feed"].config
    assert (cfg.queue.max_events, cfg.speed) == (max_events, speed)


def test_env_value_null_and_booleans_in_typed_fields() -> None:
    """`null` from the environment empties a nullable number; `true`/`false` fill a boolean."""
    text = GOOD.replace("    time_field: T\n", "    time_field: T\n    loop: ${L}\n")
    assert load_config_text(text, builtin_registry(), env={"L": "false"}).sources["feed"].config.loop is False
    assert load_config_text(text, builtin_registry(), env={"L": "TRUE"}).sources["feed"].config.loop is True
    ws = "sources:\n  feed:\n    type: websocket\n    url: wss://example.test/ws\n    idle_timeout_seconds: ${I}\n"
    assert load_config_text(ws, builtin_registry(), env={"I": "null"}).sources["feed"].config.idle_timeout_seconds is None
    assert load_config_text(ws, builtin_registry(), env={"I": "7"}).sources["feed"].config.idle_timeout_seconds == 7


@pytest.mark.parametrize(
    ("edit", "env"),
    [
        (lambda t: t.replace("max_events: 100", "max_events: '${S}'"), {"S": "s3cr3t-" + "x" * 60}),
        (lambda t: t.replace("max_events: 100", "max_events: 'x${S}'"), {"S": "s3cr3t-Value-42"}),
        (lambda t: t.replace("max_events: 100", "max_events: '${S}'"), {"S": "s3cr3t-Value-42"}),
        (lambda t: t.replace("when_full: block", "when_full: '${S}'"), {"S": "s3cr3t-Value-42"}),
        (lambda t: t.replace("type: replay", "type: ${S}"), {"S": "s3cr3t-Value-42"}),
        (lambda t: t.replace("type: replay", "type: ${S}"), {"S": "s3cr3t.Value:x42"}),
        (lambda t: t.replace("from: [feed]", "from: [feed, '${S}']"), {"S": "s3cr3t-Value-42"}),
        (lambda t: t.replace("tool: alert", "tool: ${S}"), {"S": "s3cr3t-Value-42"}),
        (lambda t: t.replace('where: "float(data.p) > 1"', 'where: "float(data.p) > ${S}"'), {"S": "s3cr3tValue + 1"}),
        (lambda t: t.replace("from: [feed]", "from: [feed]\n    steps: [{set: {p: '${S}'}}]"), {"S": "s3cr3tV(1)"}),
        (lambda t: t.replace('where: "float(data.p) > 1"', "where: ${S}"), {"S": "s3cr3t-Value-42 +"}),
        (lambda t: t.replace("queue: {max_events: 100, when_full: block}", "queue: ${S}"), {"S": "s3cr3t-V"}),
        (lambda t: t.replace("time_field: T", "time_field: ${S}\n    speed: ${S}"), {"S": "s3cr3t-V"}),
        (lambda t: t.replace("sources:\n", "daemon: {log_level: '${S}'}\nsources:\n"), {"S": "s3cr3t-V"}),
        (lambda t: t.replace("sources:\n", "daemon: {http: {listen: '${S}'}}\nsources:\n"), {"S": "s3cr3t-V"}),
        (lambda t: t.replace("sources:\n", "daemon: ${S}\nsources:\n"), {"S": "s3cr3t-V"}),
    ],
)
def test_config_errors_never_print_values_from_the_environment(edit: Any, env: dict[str, str]) -> None:
    """Whatever is wrong with a value that came from ${VAR}, the error names the place, never the value."""
    found = issues_of(edit(GOOD), env)
    assert found
    secret = env["S"]
    for issue in found:
        assert secret not in issue and secret[:6] not in issue, issue
        assert issue.startswith("config.yaml:")
