"""The mcp SDK (over a second to import) is imported by ``reflexd run`` only when agent.mcp is configured."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.mcp.harness import McpDaemon
from tests.servers import wait_for

pytestmark = pytest.mark.timeout(90)

CONFIG = """\
daemon: {{http: null, state_path: {folder}/state.db}}
{agent}sources:
  once: {{type: replay, path: {folder}/one.jsonl, speed: 0}}
tools:
  probe: {{type: python, function: "tests.mcp.probe:modules"}}
rules:
  look: {{from: once, then: [{{tool: probe, args: {{path: "{folder}/modules.txt"}}}}]}}
"""


@pytest.mark.parametrize(
    ("agent", "loaded"),
    [("", False), ('agent: {mcp: {listen: "127.0.0.1:0", auth: none}}\n', True)],
    ids=["without-agent-mcp", "with-agent-mcp"],
)
async def test_the_sdk_is_imported_only_when_agent_mcp_is_configured(
    tmp_path: Path, agent: str, loaded: bool
) -> None:
    """A running daemon's own process (a python tool looks at sys.modules once a rule fires): without
    agent.mcp, neither mcp, uvicorn, starlette nor daemon.mcp_server is loaded; with it, all are (the
    probe can tell)."""
    (tmp_path / "one.jsonl").write_text('{"p": 1}\n')
    daemon = McpDaemon(tmp_path, CONFIG.format(folder=tmp_path, agent=agent))
    daemon.spawn()
    try:
        out = tmp_path / "modules.txt"
        await wait_for(out.exists, 30, interval=0.05, what="the probe's file")
        await wait_for(lambda: bool(out.read_text()), 5, what="the probe's answer")
        assert ast.literal_eval(out.read_text()) == {
            "mcp": loaded,
            "uvicorn": loaded,
            "starlette": loaded,
            "daemon.mcp_server": loaded,
        }
    finally:
        await daemon.stop()
