"""``reflexd check`` of ``agent.mcp``: each mistake is reported at its file:line, the token is never shown,
and the plan names the endpoint and the tools clients may call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import load_config_text
from daemon.errors import ConfigError
from daemon.registry import builtin_registry

BASE = """\
sources: {feed: {type: replay, path: trades.jsonl}}
tools:
  alert: {type: log}
  buy: {type: log}
  analyst: {type: llm, model: m, base_url: "http://127.0.0.1:9/v1"}
  status: {type: log}
rules: {r: {from: feed, then: [{tool: alert, args: {}}]}}
agent:
  mcp:
"""
SECRET = "s3cret-mcp-token-never-shown"


def issues(mcp_body: str, **env: str) -> list[str]:
    text = BASE + "".join(f"    {line}\n" for line in mcp_body.splitlines())
    try:
        load_config_text(text, builtin_registry(), env={"REFLEXD_MCP_TOKEN": SECRET, **env})
    except ConfigError as exc:
        return [str(issue) for issue in exc.issues]
    return []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            'token: "${REFLEXD_MCP_TOKEN}"\ntools: [alert, nope]',
            ["config.yaml:11 agent.mcp.tools[1]: no tool named 'nope' (tools: alert, analyst, buy, status)"],
        ),
        (
            'token: "${REFLEXD_MCP_TOKEN}"\ntools: [alert]\nrequire_approval: [buy]',
            ["config.yaml:12 agent.mcp.require_approval[0]: 'buy' is not in agent.mcp.tools"],
        ),
        (
            'token: "${REFLEXD_MCP_TOKEN}"\ntools: [status]',
            [
                "config.yaml:11 agent.mcp.tools[0]: 'status' is also the name of one of the MCP server's own "
                "tools (wait_for_events, recent_events, status): rename the configured tool"
            ],
        ),
        (
            'listen: "0.0.0.0:9109"\nauth: none',
            [
                "config.yaml:10 agent.mcp.listen: auth: none is allowed only on a loopback address "
                "(127.0.0.1, ::1, localhost), not on 0.0.0.0: set a token"
            ],
        ),
        (
            'listen: "0.0.0.0:9109"',
            [
                "config.yaml:9 agent.mcp: needs a bearer token: token: ${REFLEXD_MCP_TOKEN} (or, on a loopback "
                "listen address only, auth: none)"
            ],
        ),
        (
            'token: "${UNSET_MCP_TOKEN:-}"',
            [
                "config.yaml:10 agent.mcp.token: needs a bearer token: token: ${REFLEXD_MCP_TOKEN} (or, on a "
                "loopback listen address only, auth: none)"
            ],
        ),
        (
            f'token: "{SECRET}"',
            [
                "config.yaml:10 agent.mcp.token: must come from the environment (e.g. ${REFLEXD_MCP_TOKEN}), "
                "never written in the file; the value is not shown"
            ],
        ),
        ('token: "${SHORT}"', ["config.yaml:10 agent.mcp.token: is shorter than 16 characters"]),
        (
            'auth: none\ntoken: "${REFLEXD_MCP_TOKEN}"',
            ["config.yaml:11 agent.mcp.token: a token is set but auth is none: remove one of them"],
        ),
        ("auth: none\ntools: [alert, alert]", ["config.yaml:11 agent.mcp.tools: names alert more than once"]),
    ],
    ids=[
        "unknown-tool",
        "approval-not-in-tools",
        "builtin-name",
        "auth-none-off-loopback",
        "no-token-off-loopback",
        "empty-token",
        "literal-token",
        "short-token",
        "token-and-auth-none",
        "repeated",
    ],
)
def test_mistakes_are_reported_at_their_line(body: str, expected: list[str]) -> None:
    """Each agent.mcp mistake is one error at its file:line; the token's value never appears."""
    got = issues(body, SHORT="abc123")
    assert got == expected
    assert not any(SECRET in line for line in got)


@pytest.mark.parametrize(
    "body",
    [
        'token: "${REFLEXD_MCP_TOKEN}"\ntools: [alert, buy, analyst]\nrequire_approval: [buy]',
        "auth: none\ntools: [alert]",
        'auth: none\nlisten: "[::1]:0"',
        'auth: none\nlisten: "localhost:9109"',
        'listen: "0.0.0.0:9109"\ntoken: "${REFLEXD_MCP_TOKEN}"\nallowed_hosts: [reflexd.internal]',
    ],
    ids=["llm-tool-allowed", "loopback-without-token", "ipv6-loopback", "localhost", "wildcard-with-token"],
)
def test_valid_configurations_pass(body: str) -> None:
    """An llm tool may be exposed (a call starts an agent run); auth: none is fine on loopback."""
    assert issues(body) == []


def test_approvals_need_the_journal() -> None:
    """require_approval with the journal off is an error: approvals live in the journal."""
    text = (
        "daemon: {journal: {enabled: false}}\n"
        + BASE
        + ('    token: "${REFLEXD_MCP_TOKEN}"\n    tools: [buy]\n    require_approval: [buy]\n')
    )
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, builtin_registry(), env={"REFLEXD_MCP_TOKEN": SECRET})
    assert [str(i) for i in caught.value.issues] == [
        "config.yaml:13 agent.mcp.require_approval: approvals live in the journal, which is off "
        "(daemon.journal.enabled: false)"
    ]


def test_check_prints_the_endpoint_and_exits_2_on_a_mistake(tmp_path: Path) -> None:
    """`reflexd check` as a process: the plan's mcp line (and the tools called over MCP only); a listen
    off loopback without a token exits 2 with file:line; the token is printed nowhere."""
    (tmp_path / "trades.jsonl").write_text('{"p": 1}\n')
    good = tmp_path / "good.yaml"
    good.write_text(
        BASE + '    token: "${REFLEXD_MCP_TOKEN}"\n    tools: [alert, buy]\n    require_approval: [buy]\n'
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE + '    listen: "0.0.0.0:9109"\n    auth: none\n')
    env = {"REFLEXD_MCP_TOKEN": SECRET, "PATH": "/usr/bin:/bin"}

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "daemon.cli", "check", "-c", str(path)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )

    ok, refused = check(good), check(bad)
    assert ok.returncode == 0, ok.stderr
    assert "  buy [log] level=info concurrency=4 timeout_seconds=10  (called over MCP)" in ok.stdout
    assert (
        "mcp http://127.0.0.1:9109/mcp auth=token tools=[alert, buy] require_approval=[buy] "
        "+ wait_for_events, recent_events, status"
    ) in ok.stdout
    assert refused.returncode == 2
    assert f"{bad}:10 agent.mcp.listen: auth: none is allowed only on a loopback address" in refused.stderr
    assert SECRET not in ok.stdout + ok.stderr + refused.stdout + refused.stderr


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("127.0.0.1:9109", "http://127.0.0.1:9109/mcp"),
        ("0.0.0.0:9109", "http://127.0.0.1:9109/mcp"),
        ("[::]:9109", "http://[::1]:9109/mcp"),
        ("[::1]:9109", "http://[::1]:9109/mcp"),
        ("localhost:0", "http://localhost:4242/mcp"),
    ],
)
def test_the_client_side_of_the_configuration(listen: str, url: str) -> None:
    """What a client on this machine connects to (a wildcard is reached on loopback; a port the daemon
    picked replaces 0) and the header it sends: the bearer token, or nothing with auth: none."""
    from daemon.mcp import McpConfig

    config = McpConfig(listen=listen, token="t" * 20)
    assert config.client_url(4242 if listen.endswith(":0") else None) == url
    assert config.client_headers() == {"Authorization": "Bearer " + "t" * 20}
    assert McpConfig(listen=listen, auth="none").client_headers() == {}
