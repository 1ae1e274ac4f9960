"""`reflexd check` on the agent's configuration: every mistake named at its file:line, all in one
round, and the plan says what the llm tools do (issue 12, point 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import load_config_text
from daemon.registry import builtin_registry
from tests.daemon.test_config import ROOT, issues_of, run_cli

BASE = """\
sources:
  feed:
    type: replay
    path: data/sample-trades.jsonl
    time_field: T
tools:
  alert: {type: log}
  buy: {type: log}
  analyst:
    type: llm
    model: m
    base_url: http://127.0.0.1:9/v1
    tools: [alert, buy]
    require_approval: [buy]
rules:
  big:
    from: [feed]
    then: [{tool: analyst, args: {prompt: "BTC at {data.p}"}}]
  answers:
    from: [analyst]
    then: [{tool: alert, args: {text: "{data.text}"}}]
"""


def test_the_base_configuration_is_valid() -> None:
    """The configuration the cases below break is itself valid (so each case shows one mistake)."""
    cfg = load_config_text(BASE, builtin_registry(), base_dir=ROOT)
    assert set(cfg.tools) == {"alert", "buy", "analyst"} and set(cfg.rules) == {"big", "answers"}


def _two_llm_tools_in_a_loop(text: str) -> str:
    """analyst's answers go to critic, critic's back to analyst."""
    text = text.replace("tools:\n  alert:", "tools:\n  critic: {type: llm, model: m}\n  alert:")
    return text + (
        "  second:\n    from: [critic]\n    then: [{tool: analyst, args: {prompt: \"{data.text}\"}}]\n"
        "  third:\n    from: [analyst]\n    then: [{tool: critic, args: {prompt: \"{data.text}\"}}]\n"
    )


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("tools: [alert, buy]", "tools: [alert, buy, sell]"),
         ["config.yaml:13 tools.analyst.tools[2]: no tool named 'sell' (tools: alert, buy)"]),
        (lambda t: t.replace("tools: [alert, buy]", "tools: [alert, buy, analyst]"),
         ["config.yaml:13 tools.analyst.tools[2]: 'analyst' cannot call itself"]),
        (lambda t: t.replace("tools:\n  alert:", "tools:\n  scout: {type: llm, model: m, tools: [analyst]}\n  alert:"),
         ["config.yaml:7 tools.scout.tools[0]: 'analyst' calls tools itself (llm tool): a tool that calls tools "
          "may not call another (no loops)"]),
        (lambda t: t.replace("require_approval: [buy]", "require_approval: [sell]"),
         ["config.yaml:14 tools.analyst.require_approval: 'sell' is not in tools (alert, buy); list it there first"]),
        (lambda t: t.replace("tools: [alert, buy]", "tools: [alert]").replace(
            "require_approval: [buy]", "require_approval: [buy]\n    background_tools: [alert, backtest]"),
         ["config.yaml:14 tools.analyst.require_approval: 'buy' is not in tools (alert); list it there first",
          "config.yaml:15 tools.analyst.background_tools: 'backtest' is not in tools (alert); list it there first"]),
        (lambda t: t.replace("require_approval: [buy]", "require_approval: [buy]\n    background_tools: [buy]"),
         ["config.yaml:15 tools.analyst.background_tools: buy: in both require_approval and background_tools"]),
        (lambda t: t.replace("sources:\n", "sources:\n  analyst: {type: replay, path: data/sample-trades.jsonl}\n"),
         ["config.yaml:10 tools.analyst: a source is named 'analyst' too, and this llm tool's answers are events "
          "of source 'analyst': rename one of them"]),
        (lambda t: t.replace("from: [analyst]", "from: [analyst, buy]"),
         ["config.yaml:20 rules.answers.from[1]: tool 'buy' has no events; tools with events: analyst "
          "(sources: feed)"]),
        (lambda t: t.replace("from: [analyst]", "from: [analist]"),
         ["config.yaml:20 rules.answers.from[0]: no source named 'analist' (sources: feed; tools with events: "
          "analyst)"]),
        (lambda t: t.replace("then: [{tool: alert, args: {text: \"{data.text}\"}}]",
                             "then: [{tool: analyst, args: {prompt: \"{data.text}\"}}]"),
         ["config.yaml:21 rules.answers.then[0].tool: a loop: this rule reads the answers of 'analyst' and calls "
          "itself; every answer would start another run"]),
        (_two_llm_tools_in_a_loop,
         ["config.yaml:25 rules.second.then[0].tool: a loop: this rule reads the answers of 'critic' and calls "
          "'analyst', whose answers lead back to 'critic'; every answer would start another run",
          "config.yaml:28 rules.third.then[0].tool: a loop: this rule reads the answers of 'analyst' and calls "
          "'critic', whose answers lead back to 'analyst'; every answer would start another run"]),
        (lambda t: t.replace("model: m\n    base_url", "model: m\n    api_key: sk-literal-123\n    base_url"),
         ["config.yaml:12 tools.analyst.api_key: must come from the environment (e.g. ${ANALYST_API_KEY}), never "
          "written in the file; the value is not shown"]),
    ],
    ids=["unknown-tool", "itself", "another-llm", "approval-not-in-tools", "both-lists-at-their-lines",
         "approval-and-background", "source-of-the-same-name", "tool-without-events", "unknown-source",
         "answers-back-into-itself", "answers-loop-through-two-llm-tools", "literal-api-key"],
)  # fmt: skip
def test_agent_configuration_errors_name_file_line_and_path(edit: object, expected: list[str]) -> None:
    """Each mistake in an llm tool's lists or in what a rule reads is one `file:LINE path: reason`."""
    assert callable(edit)
    assert issues_of(edit(BASE)) == expected


def test_the_agent_errors_come_in_one_round_through_the_command(tmp_path: Path) -> None:
    """`reflexd check` prints every agent mistake at once, one per line on stderr, and exits 2."""
    text = (
        BASE.replace("tools: [alert, buy]", "tools: [alert, buy, analyst]")
        .replace("require_approval: [buy]", "require_approval: [sell]")
        .replace("from: [analyst]", "from: [analyst, alert]")
    )
    (tmp_path / "c.yaml").write_text(
        text.replace("data/sample-trades.jsonl", str(ROOT / "data/sample-trades.jsonl"))
    )
    result = run_cli("check", "-c", str(tmp_path / "c.yaml"))
    assert result.returncode == 2
    lines = [line.removeprefix(str(tmp_path / "c.yaml")) for line in result.stderr.splitlines()]
    assert lines == [
        ":14 tools.analyst.require_approval: 'sell' is not in tools (alert, buy, analyst); list it there first",
        ":20 rules.answers.from[1]: tool 'alert' has no events; tools with events: analyst (sources: feed)",
        "reflexd: 2 configuration error(s)",
    ]
    # with the approval list fixed, the loop shows up (the tool is valid now, so its references are checked)
    fixed = text.replace("require_approval: [sell]", "require_approval: [buy]").replace(
        "[analyst, alert]", "[analyst]"
    )
    (tmp_path / "c.yaml").write_text(
        fixed.replace("data/sample-trades.jsonl", str(ROOT / "data/sample-trades.jsonl"))
    )
    result = run_cli("check", "-c", str(tmp_path / "c.yaml"))
    assert result.returncode == 2
    assert (
        result.stderr.splitlines()[0]
        == f"{tmp_path / 'c.yaml'}:13 tools.analyst.tools[2]: 'analyst' cannot call itself"
    )


def test_the_plan_shows_the_llm_tool_its_tools_and_the_rules_reading_its_answers(tmp_path: Path) -> None:
    """`check` shows the llm line (tools, approvals), that `answers` reads answers, that the model calls
    `buy` (no rule does), and masks the key from the environment."""
    text = BASE.replace(
        "base_url: http://127.0.0.1:9/v1", "base_url: http://127.0.0.1:9/v1\n    api_key: ${KEY}"
    )
    (tmp_path / "c.yaml").write_text(
        text.replace("data/sample-trades.jsonl", str(ROOT / "data/sample-trades.jsonl"))
    )
    secret = "sk-test-6f1d2c9a8b7e"
    result = run_cli("check", "-c", str(tmp_path / "c.yaml"), env={"KEY": secret, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "  big: from feed → analyst" in lines
    assert "  answers: from analyst (answers of llm tool) → alert" in lines
    assert (
        "  buy [log] level=info concurrency=4 timeout_seconds=10  (called by the model of analyst)" in lines
    )
    assert (
        "  analyst [llm] provider=openai model=m tools=alert,buy require_approval=buy max_rounds=4 concurrency=2 "
        "timeout_seconds=300"
    ) in lines
    assert secret not in result.stdout + result.stderr
