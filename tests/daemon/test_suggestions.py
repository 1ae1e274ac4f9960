"""Configuration errors come all in one round and say how to fix them (issue 15, points 3 and 4)."""

from __future__ import annotations

import pytest

from daemon.config import load_config_text
from daemon.registry import builtin_registry
from tests.daemon.test_config import GOOD, issues_of


def with_rule_lines(*lines: str) -> str:
    """GOOD with ``lines`` added to rule ``big`` (after ``from``)."""
    return GOOD.replace("    from: [feed]\n", "    from: [feed]\n" + "".join(f"    {line}\n" for line in lines))


def test_schema_and_expression_errors_of_one_rule_come_together() -> None:
    """A rule with an unknown key still gets its where, source, tool and template checked."""
    text = with_rule_lines("cooldown_second: 5").replace('"float(data.p) > 1"', '"float(data.p) >"')
    text = text.replace("from: [feed]", "from: [feed, nofeed]").replace("tool: alert", "tool: alrt")
    text = text.replace('"{data.p}"', '"{data.p"')
    found = issues_of(text)
    assert any("rules.big.cooldown_second: unknown key" in i for i in found)
    assert any("rules.big.where: column 16: syntax error" in i for i in found)
    assert any("rules.big.from[1]: no source named 'nofeed'" in i for i in found)
    assert any("rules.big.then[0].tool: no tool named 'alrt'" in i for i in found)
    assert any("rules.big.then[0].args.text:" in i and "never closed" in i for i in found)
    assert len(found) == 5


def test_step_errors_come_with_the_rules_schema_errors() -> None:
    """Steps and templates are compiled even when another key of the rule is wrong."""
    text = with_rule_lines("max_key: 5", "steps:", "  - set: {px: float(data.p)}", "  - where: 'px > zz'")
    found = issues_of(text.replace('"{data.p}"', '"{px} {qq}"'))
    assert any("rules.big.max_key: unknown key (did you mean 'max_keys'?)" in i for i in found)
    assert any("rules.big.steps[1].where: column 6: unknown name 'zz'" in i for i in found)
    assert any("rules.big.then[0].args.text: column 7: in placeholder {qq}" in i for i in found)


def test_a_broken_step_does_not_hide_the_rules_other_errors() -> None:
    """With a step that fails the schema, the tool and where are still checked (templates are not:
    the step's fields are unknown, so its placeholders cannot be judged)."""
    text = with_rule_lines("steps:", "  - window: {seconds: 5}").replace("tool: alert", "tool: alrt")
    found = issues_of(text.replace('"float(data.p) > 1"', '"data.p = 1"'))
    assert any("rules.big.steps[0].window.aggregates: required" in i for i in found)
    assert any("rules.big.then[0].tool: no tool named 'alrt'" in i for i in found)
    assert any("rules.big.where: column 8: syntax error: use == to compare" in i for i in found)
    assert len(found) == 3


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: with_rule_lines("cooldown_second: 5"),
         "config.yaml:12 rules.big.cooldown_second: unknown key (did you mean 'cooldown_seconds'?)"),
        (lambda t: t.replace("time_field: T", "time_field: T\n    keyfield: s"),
         "config.yaml:6 sources.feed.keyfield: unknown key (did you mean 'key_field'?)"),
        (lambda t: "daemon: {log_levle: debug}\n" + t,
         "config.yaml:1 daemon.log_levle: unknown key (did you mean 'log_level'?)"),
        (lambda t: "daemon: {http: {listn: '127.0.0.1:0'}}\n" + t,
         "config.yaml:1 daemon.http.listn: unknown key (did you mean 'listen'?)"),
        (lambda t: t.replace("queue: {max_events: 100,", "queue: {max_event: 100,"),
         "config.yaml:6 sources.feed.queue.max_event: unknown key (did you mean 'max_events'?)"),
        (lambda t: t.replace("args: {text:", "arg: {text:"),
         "config.yaml:15 rules.big.then[0].arg: unknown key (did you mean 'args'?)"),
        (lambda t: with_rule_lines("steps:", "  - cooldown: {second: 5}"),
         "config.yaml:13 rules.big.steps[0].cooldown.second: unknown key (did you mean 'seconds'?)"),
        # the journal's keys: the daemon section's list grows with every daemon setting
        (lambda t: "daemon: {journal: {zzzz: 1}}\n" + t,
         "config.yaml:1 daemon.journal.zzzz: unknown key (expected one of: enabled, retention_seconds, "
         "max_rows)"),
    ],
)  # fmt: skip
def test_unknown_nested_keys_suggest_the_right_one(edit: object, expected: str) -> None:
    """An unknown key at any depth names the close valid key, or lists the valid keys."""
    assert callable(edit)
    assert expected in issues_of(edit(GOOD))


def test_json_spellings_work_in_a_configured_rule() -> None:
    """`where: data.m == true and data.x != null` is a valid rule."""
    text = GOOD.replace('"float(data.p) > 1"', '"data.m == true and data.x != null or data.y == false"')
    assert list(load_config_text(text, builtin_registry()).rules) == ["big"]


@pytest.mark.parametrize(
    ("where", "hint"),
    [
        ("key = 'BTCUSDT'", "column 5: syntax error: use == to compare"),
        ("key == 'A' && data.q > 1", "column 12: syntax error: use 'and' instead of '&&'"),
        ("key == 'A' || data.q > 1", "column 12: syntax error: use 'or' instead of '||'"),
        ("!(key == 'A')", "column 1: syntax error: use 'not' instead of '!'"),
    ],
)
def test_operators_from_other_languages_say_what_to_write(where: str, hint: str) -> None:
    """`=`, `&&`, `||`, `!` in a where get the Python spelling, in `file:line path: reason` form."""
    found = issues_of(GOOD.replace('"float(data.p) > 1"', f'"{where}"'))
    assert len(found) == 1
    assert found[0].startswith(f"config.yaml:12 rules.big.where: {hint}") and found[0].endswith(f" in {where!r}")


@pytest.mark.parametrize(
    "step",
    ["- set: {price = float(data.p)}", "- set: price = float(data.p)", "- set: {px: float(data.p), price = px * 2}"],
)
def test_set_written_with_equals_shows_the_mapping_form(step: str) -> None:
    """`set: {price = float(data.p)}` (a key with a null value to YAML) says to write `price: float(data.p)`."""
    found = issues_of(with_rule_lines("steps:", f"  {step}"))
    assert len(found) == 1
    assert "rules.big.steps[0].set" in found[0]
    assert "write `price: " in found[0] and "(each entry of set is name: expression)" in found[0]


def test_unquoted_template_in_call_arguments_shows_the_quoted_form() -> None:
    """`args: {text: {data.s}}` is the mapping {"data.s": null} to YAML: an error showing `text: "{data.s}"`."""
    found = issues_of(GOOD.replace('args: {text: "{data.p}"}', "args: {text: {data.s}, n: [1, {float(data.p)}]}"))
    assert (
        'config.yaml:15 rules.big.then[0].args.text: unquoted template: YAML reads {data.s} as a mapping; '
        'quote it: text: "{data.s}"'
    ) in found
    assert any('args.n[1]: unquoted template' in i and '- "{float(data.p)}"' in i for i in found)


def test_unquoted_template_in_a_tools_template_field_shows_the_quoted_form() -> None:
    """A webhook header written `{data.s}` unquoted gets the quoted form instead of "must be a string"."""
    tool = "  alert: {type: webhook, url: 'http://127.0.0.1:1/', headers: {X-Sym: {data.s}}}"
    found = issues_of(GOOD.replace("  alert: {type: log}", tool))
    assert found == [
        'config.yaml:8 tools.alert.headers.X-Sym: unquoted template: YAML reads {data.s} as a mapping; '
        'quote it: X-Sym: "{data.s}"'
    ]


def test_a_mapping_argument_with_a_null_value_stays_valid() -> None:
    """A real mapping argument whose one key is a plain word and value null is not mistaken for a template."""
    text = GOOD.replace('args: {text: "{data.p}"}', "args: {body: {note: null}, text: hi}")
    assert list(load_config_text(text, builtin_registry()).rules) == ["big"]
