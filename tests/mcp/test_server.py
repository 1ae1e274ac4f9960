"""The MCP server's edges with a daemon in the test process (real HTTP, the SDK's client): argument
checks, resources, notifications in the feed, an llm tool called over MCP, sessions and listen streams
that end, the stop, metrics."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any

import mcp_types as types
import orjson
import pytest
from mcp.shared.exceptions import MCPError
from prometheus_client import generate_latest

from daemon.config import load_config_text
from daemon.mcp_server import STOP_SECONDS
from daemon.registry import builtin_registry
from daemon.supervisor import Daemon
from daemon.telemetry import metrics_registry
from tests.agent.scripted import Reply, ScriptedOpenAI
from tests.conftest import StartDaemon
from tests.mcp.harness import MODES, TOKEN, connect
from tests.servers import FeedServer, wait_for

pytestmark = pytest.mark.timeout(60)


def config(tmp_path: Path, feed: FeedServer, *, mcp: str = "", tools: str = "", rules: str = "") -> str:
    return f"""\
daemon: {{http: null, state_path: {tmp_path / "state.db"}}}
agent:
  mcp: {{listen: "127.0.0.1:0", token: "${{TOK}}", tools: [alert, note{", " if mcp else ""}{mcp}]}}
sources:
  ticks: {{type: websocket, url: "{feed.url}"}}
tools:
  alert: {{type: file, path: {tmp_path / "alerts.jsonl"}, parameters: {{type: object, properties: {{text: {{type: string}}}}, required: [text]}}}}
  note: {{type: notify}}
{tools}rules:
  big: {{from: ticks, where: "float(data.p) > 100", then: [{{tool: alert, args: {{text: "BTC {{data.p}}"}}}}, {{tool: note, args: {{text: "moved", fields: {{p: "{{data.p}}"}}}}}}]}}
{rules}"""


async def start(run_daemon: StartDaemon, text: str, tmp_path: Path) -> tuple[Daemon, str]:
    cfg = load_config_text(text, builtin_registry(), env={"TOK": TOKEN}, base_dir=tmp_path)
    daemon = await run_daemon(cfg)
    assert daemon.mcp is not None
    return daemon, f"http://127.0.0.1:{daemon.mcp.port}/mcp"


def payload(result: types.CallToolResult) -> dict[str, Any]:
    assert isinstance(result.structured_content, dict), result
    return result.structured_content


async def test_arguments_are_checked_before_anything_runs(run_daemon: StartDaemon, tmp_path: Path) -> None:
    """Arguments that do not match the tool's schema, a bad idempotency_key or out-of-range long-poll
    arguments are errors the client reads (is_error) and nothing runs; an unknown tool is a protocol error."""
    async with FeedServer() as feed:
        daemon, url = await start(run_daemon, config(tmp_path, feed), tmp_path)
        async with connect(url, "legacy") as client:
            results = [
                await client.call_tool("alert", {"text": 3}),
                await client.call_tool("alert", {"text": "x", "idempotency_key": 7}),
                await client.call_tool("alert", {"text": "x", "idempotency_key": "k" * 201}),
                await client.call_tool("wait_for_events", {"timeout_seconds": 26}),
                await client.call_tool("wait_for_events", {"since": -1}),
                await client.call_tool("recent_events", {"max": 0}),
            ]
            with pytest.raises(MCPError, match="no tool"):
                await client.call_tool("nope", {})
    assert all(r.is_error for r in results)
    assert [payload(r)["error"].split(":")[0] for r in results] == [
        "invalid arguments",
        "idempotency_key must be a non-empty string of at most 200 characters",
        "idempotency_key must be a non-empty string of at most 200 characters",
        "timeout_seconds must be a number from 0 to 25",
        "since must be from 0 to 4611686018427387904",
        "max must be from 1 to 1000",
    ]
    assert not (tmp_path / "alerts.jsonl").read_text()
    assert daemon.runner.lanes()["alert"][1].calls == 0


async def test_resources_list_read_and_notifications_join_the_feed(run_daemon: StartDaemon, tmp_path: Path) -> None:
    """resources/list names the status, the notifications, each rule's fires and each source's latest
    event (templates for the last two); a fire that also puts a notification is two events of the feed;
    the resources read back what happened; an unknown URI is an error."""
    async with FeedServer() as feed:
        daemon, url = await start(run_daemon, config(tmp_path, feed), tmp_path)
        async with connect(url, "auto") as client:
            listed = {str(r.uri) for r in (await client.list_resources()).resources}
            templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
            await feed.broadcast('{"p": "150"}')
            got = payload(await client.call_tool("wait_for_events", {"since": 0, "timeout_seconds": 10}))
            if len(got["events"]) < 2:
                got["events"] += payload(
                    await client.call_tool("wait_for_events", {"since": got["next"], "timeout_seconds": 10})
                )["events"]

            async def read(uri: str) -> Any:
                content = (await client.read_resource(uri)).contents[0]
                assert isinstance(content, types.TextResourceContents)
                return orjson.loads(content.text)

            status = await read("reflexd://status")
            notifications = await read("reflexd://notifications")
            latest = await read("reflexd://sources/ticks/latest")
            with pytest.raises(MCPError, match="no resource"):
                await read("reflexd://rules/nope/fires")
    assert listed == {
        "reflexd://status",
        "reflexd://notifications",
        "reflexd://rules/big/fires",
        "reflexd://sources/ticks/latest",
    }
    assert templates == {"reflexd://rules/{name}/fires", "reflexd://sources/{name}/latest"}
    fire, note = got["events"]
    assert fire["type"] == "fire" and [c["tool"] for c in fire["calls"]] == ["alert", "note"]
    assert note["type"] == "notification" and note["kind"] == "notify" and note["fields"] == {"p": "150"}
    assert set(status) >= {"state", "sources", "rules", "tools", "mcp"} and status["rules"]["big"]["fired"] == 1
    assert [n["text"] for n in notifications["notifications"]] == ["moved"]
    assert latest == {
        "source": "ticks",
        "event": {"source": "ticks", "kind": "data", "ts": latest["event"]["ts"], "key": None, "data": {"p": "150"}},
    }
    text = generate_latest(metrics_registry(daemon)).decode()
    assert 'reflexd_mcp_calls_total{outcome="events",tool="wait_for_events"}' in text
    assert 'reflexd_mcp_events_total{type="fire"} 1.0' in text


async def test_an_llm_tool_called_over_mcp_runs_the_agent_each_time(run_daemon: StartDaemon, tmp_path: Path) -> None:
    """An llm tool exposed over MCP: each call is one agent run and returns its answer. Two calls within
    the tool's dedup_seconds are not deduplicated: each carries its own key (the MCP call's), where the
    rule-and-event key of a rule's escalation would be the same for every MCP call."""
    async with FeedServer() as feed, ScriptedOpenAI() as model:
        model.script(Reply.text("first answer"), Reply.text("second answer"))
        tools = f"""\
  analyst: {{type: llm, provider: openai, base_url: "{model.base_url}", model: m, dedup_seconds: 300, max_rounds: 2}}
"""
        _d, url = await start(run_daemon, config(tmp_path, feed, mcp="analyst", tools=tools), tmp_path)
        async with connect(url, "auto") as client:
            one = payload(await client.call_tool("analyst", {"prompt": "How is BTC?"}))
            two = payload(await client.call_tool("analyst", {"prompt": "And now?"}))
    assert (one["outcome"], one["result"]["outcome"], one["result"]["text"]) == ("succeeded", "answered", "first answer")
    assert (two["outcome"], two["result"]["outcome"], two["result"]["text"]) == ("succeeded", "answered", "second answer")
    assert len(model.requests) == 2


@pytest.mark.parametrize("mode", MODES)
async def test_a_subscription_ends_with_its_session_or_stream(
    run_daemon: StartDaemon, tmp_path: Path, mode: str
) -> None:
    """A session's resources/subscribe is dropped when the client ends the session, a listen stream's
    when it closes: the count of open subscriptions goes back to 0 and the URIs are no longer watched."""
    async with FeedServer() as feed:
        daemon, url = await start(run_daemon, config(tmp_path, feed), tmp_path)
        assert daemon.mcp is not None and daemon.mcp_feed is not None
        stats = daemon.mcp.stats
        uri = "reflexd://rules/big/fires"
        async with connect(url, mode) as client:
            if mode == "legacy":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    await client.subscribe_resource(uri)
                    await client.subscribe_resource(uri)  # the same again: still one
                assert stats.subscriptions == 1
            else:
                async with client.listen(resource_subscriptions=[uri]):
                    assert stats.subscriptions == 1
        await wait_for(lambda: stats.subscriptions == 0, 5, what="the subscription to go")
        assert daemon.mcp_feed._watched == {}


async def test_a_stop_ends_long_polls_and_open_streams(run_daemon: StartDaemon, tmp_path: Path) -> None:
    """Stopping the daemon while a client waits in wait_for_events, holds a session's event stream and a
    listen stream: the long-poll returns (empty, not timed out), and the stop is not held by them (the
    session's stream is closed after a short grace, not left to uvicorn's graceful timeout)."""
    async with FeedServer() as feed:
        daemon, url = await start(run_daemon, config(tmp_path, feed), tmp_path)
        async with connect(url, "legacy") as legacy, connect(url, "auto") as modern:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                await legacy.subscribe_resource("reflexd://status")
            polling = asyncio.create_task(modern.call_tool("wait_for_events", {"timeout_seconds": 25}))
            listening = asyncio.create_task(_listen_once(modern, "reflexd://status"))
            await asyncio.sleep(0.5)
            # done before the server's fallback (close what is left after STOP_SECONDS) would start
            async with asyncio.timeout(STOP_SECONDS):
                assert await daemon.stop() == []
            polled = payload(await asyncio.wait_for(polling, 5))
            listening.cancel()
    assert polled["events"] == [] and polled["timed_out"] is False


async def _listen_once(client: Any, uri: str) -> None:
    async with client.listen(resource_subscriptions=[uri]) as subscription:
        async for _ in subscription:
            return


async def test_auth_none_on_loopback_needs_no_token(run_daemon: StartDaemon, tmp_path: Path) -> None:
    """auth: none on a loopback address: a client without a token is served."""
    async with FeedServer() as feed:
        text = config(tmp_path, feed).replace('token: "${TOK}"', "auth: none")
        _daemon, url = await start(run_daemon, text, tmp_path)
        async with connect(url, "auto", token=None) as client:
            assert "status" in {t.name for t in (await client.list_tools()).tools}


async def test_secrets_never_reach_a_client(run_daemon: StartDaemon, tmp_path: Path) -> None:
    """An argument a rule fills from ${VAR}, secret-looking fields of the event, the token: *** or absent
    in what wait_for_events, the resources and status serve (as /status and reflexd agent show them)."""
    secret = "hook-secret-7f3a9c1e55"
    async with FeedServer() as feed:
        rules = """\
  keyed: {from: ticks, then: [{tool: alert, args: {text: "${HOOK}"}}]}
"""
        text = config(tmp_path, feed, rules=rules)
        cfg = load_config_text(text, builtin_registry(), env={"TOK": TOKEN, "HOOK": secret}, base_dir=tmp_path)
        daemon = await run_daemon(cfg)
        assert daemon.mcp is not None
        url = f"http://127.0.0.1:{daemon.mcp.port}/mcp"
        async with connect(url, "auto") as client:
            await feed.broadcast(orjson.dumps({"p": "5", "api_key": "k-123", "note": secret}).decode())
            got = payload(await client.call_tool("wait_for_events", {"since": 0, "timeout_seconds": 10}))
            served = [orjson.dumps(got).decode()]
            for uri in ("reflexd://rules/keyed/fires", "reflexd://sources/ticks/latest", "reflexd://status"):
                content = (await client.read_resource(uri)).contents[0]
                assert isinstance(content, types.TextResourceContents)
                served.append(content.text)
            served.append(orjson.dumps(payload(await client.call_tool("status", {}))).decode())
    [fire] = got["events"]
    assert fire["calls"] == [{"tool": "alert", "args": {"text": "***"}, "accepted": True}]
    assert fire["event"]["data"] == {"p": "5", "api_key": "***", "note": "***"}
    for text_served in served:
        assert secret not in text_served and TOKEN not in text_served and "k-123" not in text_served
    assert secret in (tmp_path / "alerts.jsonl").read_text()  # the tool itself got the real value


async def test_a_port_in_use_is_a_startup_error(run_daemon: StartDaemon, tmp_path: Path) -> None:
    """agent.mcp.listen on a port another socket holds: the start fails with a StartupError naming mcp
    (reflexd run exits 3), and what had started is undone."""
    import socket

    from daemon.errors import StartupError

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        async with FeedServer() as feed:
            text = config(tmp_path, feed).replace('listen: "127.0.0.1:0"', f'listen: "127.0.0.1:{port}"')
            with pytest.raises(StartupError) as caught:
                await start(run_daemon, text, tmp_path)
    finally:
        holder.close()
    assert caught.value.component == "mcp" and f"127.0.0.1:{port}" in caught.value.reason
