"""The kill switch is a capability any tool exposes (``Tool.kill_switch``); the ops server drives it
without knowing any tool type."""

from __future__ import annotations

import ast
from pathlib import Path

import aiohttp

import daemon.http
from daemon.registry import builtin_registry
from handlers.base import CallContext, Tool
from tests.conftest import StartDaemon
from tests.exchange.harness import daemon_config
from tests.plugins import HALTABLE, HaltableTool
from tests.servers import wait_for

TOKEN = "ops-token-for-the-capability-test"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_ops_server_imports_no_tool_type() -> None:
    """daemon/http.py imports the tool contract (handlers.base) and no tool module."""
    tree = ast.parse(Path(daemon.http.__file__).read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module is not None
    } | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert {m for m in imported if m.startswith("handlers")} == {"handlers.base"}


def test_a_tool_without_the_capability_has_none() -> None:
    """Tools have no kill switch unless their type gives them one."""
    assert Tool.kill_switch is None


async def test_the_endpoint_drives_a_plugin_tools_kill_switch(run_daemon: StartDaemon, tmp_path: Path) -> None:
    """POST /kill-switch engages the kill switch of a tool type the daemon ships without (a test plugin),
    GET shows that tool's own state, calls are refused while engaged, DELETE releases it."""
    data = tmp_path / "x.jsonl"
    data.write_text("")
    cfg = daemon_config(
        builtin_registry().with_specs(HALTABLE),
        sources={"s": {"type": "replay", "path": str(data)}},
        tools={"h": {"type": "haltable"}},
        http="127.0.0.1:0",
        http_token=TOKEN,
    )
    daemon = await run_daemon(cfg)
    assert daemon.http is not None
    tool = daemon.tools["h"]
    assert isinstance(tool, HaltableTool)
    url = f"http://127.0.0.1:{daemon.http.port}/kill-switch"
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.get(url) as r:
            assert r.status == 200
            assert await r.json() == {"engaged": False, "tools": {"h": {"engaged": False, "reason": None}}}
        async with http.post(url, json={"reason": "incident 7"}) as r:
            assert r.status == 200
            assert await r.json() == {"engaged": True, "tools": {"h": {"engaged": True, "reason": "incident 7"}}}
        assert tool.kill_switch.reason == "incident 7"
        stats = daemon.runner.stats("h")
        assert daemon.runner.submit("h", {}, _ctx("refused"))
        await wait_for(lambda: stats.failures == 1, what="the refused call")
        async with http.delete(url) as r:
            assert r.status == 200 and (await r.json())["engaged"] is False
        assert daemon.runner.submit("h", {}, _ctx("accepted"))
        await wait_for(lambda: tool.count == 1, what="the call after the release")


def _ctx(call_id: str) -> CallContext:
    return CallContext("h", None, None, call_id)
