"""``reflexd mcp``, the stdio bridge, end to end: the SDK's own stdio client launches ``reflexd mcp -c
CONFIG`` as a child process, which relays to ``reflexd run`` (another child process) over streamable
HTTP with the token; in both protocol generations (``legacy``: sessions, ``resources/subscribe``;
``auto``: 2026-07-28 through the bridge, ``subscriptions/listen``). Raw subprocesses check what the
bridge writes (only frames on stdout, one-line reasons on stderr) and its exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import mcp_types as types
import orjson
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from tests.mcp.harness import MODES, ROOT, TOKEN, McpDaemon, config_text, lines, running
from tests.servers import FeedServer, wait_for

pytestmark = pytest.mark.timeout(90)

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"},
    },
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bridged_config(folder: Path, feed: FeedServer, port: int | None = None) -> str:
    """The harness's configuration on a fixed port (the bridge reads the port from the file)."""
    port = free_port() if port is None else port
    mcp = (
        f'{{listen: "127.0.0.1:{port}", token: "${{REFLEXD_MCP_TOKEN}}", tools: [alert, buy], '
        "require_approval: [buy]}"
    )
    return config_text(folder, feed.url, mcp=mcp)


def bridge_env(token: str | None = TOKEN) -> dict[str, str]:
    """What a desktop app gives the bridge: the token only (not the daemon's other variables, such as
    the ops token the configuration also names)."""
    env = {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "")}
    if token is not None:
        env["REFLEXD_MCP_TOKEN"] = token
    return env


def bridge_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "daemon.cli", "mcp", "-c", str(config)]


@asynccontextmanager
async def through_bridge(
    daemon: McpDaemon, mode: str, on_message: Callable[[Any], Awaitable[None]] | None = None
) -> AsyncIterator[Client]:
    """The SDK's client over its stdio transport, to ``reflexd mcp`` started by that transport."""
    argv = bridge_argv(daemon.config)
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=bridge_env(), cwd=daemon.folder)
    with (daemon.folder / "bridge.err").open("w") as errlog:
        async with Client(
            stdio_client(params, errlog=errlog), mode=mode, message_handler=on_message
        ) as client:
            yield client


@asynccontextmanager
async def bridge_process(config: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """``reflexd mcp`` with pipes, for a test that writes the frames itself; killed if still running."""
    proc = await asyncio.create_subprocess_exec(
        *bridge_argv(config),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=bridge_env(),
        cwd=config.parent,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            await proc.wait()


def payload(result: types.CallToolResult) -> dict[str, Any]:
    assert isinstance(result.structured_content, dict), result
    return result.structured_content


async def fire(feed: FeedServer, price: float) -> None:
    assert await feed.broadcast(orjson.dumps({"p": str(price)}).decode()) == 1


def run_bridge(config: Path, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        bridge_argv(config),
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=config.parent,
    )


@pytest.mark.parametrize("mode", MODES)
async def test_tools_and_an_idempotent_call_through_the_bridge(tmp_path: Path, mode: str) -> None:
    """Through the bridge, in either generation (auto really speaks 2026-07-28 to the daemon: the
    bridge sets the headers it needs): tools/list gives the schemas `reflexd tools` prints (plus
    idempotency_key); a call is made by the runner and journaled; the same idempotency_key again is a
    duplicate, not made again."""
    async with FeedServer() as feed, running(tmp_path, bridged_config(tmp_path, feed)) as daemon:
        printed = {t["name"]: t for t in orjson.loads(daemon.cli("tools").stdout)}
        async with through_bridge(daemon, mode) as client:
            version = client.protocol_version
            listed = {t.name: t for t in (await client.list_tools()).tools}
            first = payload(await client.call_tool("alert", {"text": "hi", "idempotency_key": "b1"}))
            again = payload(await client.call_tool("alert", {"text": "hi", "idempotency_key": "b1"}))
        await wait_for(lambda: len(daemon.journal("mcp:alert:b1")) == 2, 5, what="journal rows")
        journal = daemon.journal("mcp:alert:b1")
    assert (version >= "2026") == (mode == "auto"), version
    assert set(listed) == {"alert", "buy", "wait_for_events", "recent_events", "status"}
    for name in ("alert", "buy"):
        schema = dict(listed[name].input_schema)
        properties = dict(schema.pop("properties"))
        assert properties.pop("idempotency_key")["type"] == "string"
        assert {**schema, "properties": properties} == printed[name]["parameters"]
    assert first == {"outcome": "succeeded", "key": "mcp:alert:b1"}
    assert again["outcome"] == "duplicate"
    assert [w["args"] for w in lines(tmp_path / "alerts.jsonl")] == [{"text": "hi"}]
    assert journal == [
        ("mcp:alert:b1", "mcp", "alert", "succeeded"),
        ("mcp:alert:b1", "mcp", "alert", "duplicate"),
    ]


@pytest.mark.parametrize("mode", MODES)
async def test_wait_for_events_through_the_bridge_returns_when_a_rule_fires(
    tmp_path: Path, mode: str
) -> None:
    """A wait_for_events held through the bridge returns as soon as the rule fires (not at its 20 s
    timeout), with that fire and the cursor after it."""
    async with (
        FeedServer() as feed,
        running(tmp_path, bridged_config(tmp_path, feed)) as daemon,
        through_bridge(daemon, mode) as client,
    ):
        cursor = payload(await client.call_tool("recent_events", {}))["next"]
        started = time.monotonic()
        waiting = asyncio.create_task(
            client.call_tool("wait_for_events", {"since": cursor, "timeout_seconds": 20})
        )
        await asyncio.sleep(0.5)
        assert not waiting.done()
        await fire(feed, 150)
        got = payload(await waiting)
        elapsed = time.monotonic() - started
    assert elapsed < 10, f"returned after {elapsed:.1f} s: at its timeout, not at the fire"
    [event] = got["events"]
    assert event["type"] == "fire" and event["rule"] == "big" and event["event"]["data"] == {"p": "150"}
    assert got["next"] == event["seq"] == cursor + 1


@pytest.mark.parametrize("mode", MODES)
async def test_a_subscribed_resource_gets_updated_through_the_bridge(tmp_path: Path, mode: str) -> None:
    """Server→client pushes pass the bridge: a client subscribed to reflexd://rules/big/fires
    (resources/subscribe on a session; subscriptions/listen on 2026-07-28) hears
    notifications/resources/updated when the rule fires."""
    uri = "reflexd://rules/big/fires"
    async with FeedServer() as feed, running(tmp_path, bridged_config(tmp_path, feed)) as daemon:
        updated: list[str] = []

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ResourceUpdatedNotification):
                updated.append(message.params.uri)

        async with through_bridge(daemon, mode, on_message) as client:
            if mode == "legacy":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # deprecated in the 2026 generation
                    await client.subscribe_resource(uri)
                await asyncio.sleep(0.3)  # the session's event stream (a GET) opens after initialize
                await fire(feed, 150)
                await wait_for(lambda: updated == [uri], 10, what=f"resources/updated (got {updated})")
            else:
                async with client.listen(resource_subscriptions=[uri]) as subscription:
                    await fire(feed, 150)
                    async with asyncio.timeout(10):
                        event = await anext(aiter(subscription))
                assert event.uri == uri
            content = (await client.read_resource(uri)).contents[0]
    assert isinstance(content, types.TextResourceContents)
    body = orjson.loads(content.text)
    assert [f["event"]["data"] for f in body["fires"]] == [{"p": "150"}]


async def test_stdout_carries_only_frames_and_closing_stdin_ends_the_bridge(tmp_path: Path) -> None:
    """Written to by hand, every line at once (without waiting for initialize's answer, as some clients
    do: the bridge holds the rest until the session has its id): each line on stdout is a JSON-RPC
    answer to a line sent, none an error (nothing else, even with the ops token's variable unset: the
    bridge reads only agent.mcp); the client closing stdin ends the bridge with 0 and nothing on
    stderr."""
    sent = [
        INITIALIZE,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "status", "arguments": {}}},
    ]
    async with (
        FeedServer() as feed,
        running(tmp_path, bridged_config(tmp_path, feed)) as daemon,
        bridge_process(daemon.config) as proc,
    ):
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        for message in sent:
            proc.stdin.write(orjson.dumps(message) + b"\n")
        async with asyncio.timeout(20):
            answers = [orjson.loads(await proc.stdout.readline()) for _ in range(3)]
        proc.stdin.close()
        async with asyncio.timeout(10):
            code = await proc.wait()
        rest, err = await proc.stdout.read(), await proc.stderr.read()
    assert (code, rest, err) == (0, b"", b"")
    assert sorted(a["id"] for a in answers) == [1, 2, 3] and all("result" in a for a in answers), answers
    by_id = {a["id"]: a["result"] for a in answers}
    assert by_id[1]["serverInfo"]["name"] == "reflexd"
    assert "wait_for_events" in {t["name"] for t in by_id[2]["tools"]}
    assert by_id[3]["structuredContent"]["state"] == "running"


async def test_the_bridge_says_why_it_cannot_start(tmp_path: Path) -> None:
    """One line on stderr, nothing on stdout, and the token never: agent.mcp not configured (2), its
    token's variable unset (2, naming it), port 0 (2), no daemon listening (3), a wrong token (3, 401)."""
    async with FeedServer() as feed:
        port = free_port()
        text = bridged_config(tmp_path, feed, port)
        config = tmp_path / "config.yaml"
        config.write_text(text)
        plain = tmp_path / "plain.yaml"
        plain.write_text("\n".join(line for line in text.splitlines() if "mcp:" not in line) + "\n")
        zero = tmp_path / "zero.yaml"
        zero.write_text(text.replace(f"127.0.0.1:{port}", "127.0.0.1:0"))
        results = {
            "unconfigured": run_bridge(plain, bridge_env()),
            "no token": run_bridge(config, bridge_env(token=None)),
            "port 0": run_bridge(zero, bridge_env()),
            "no daemon": run_bridge(config, bridge_env()),
        }
        async with running(tmp_path, text):
            results["wrong token"] = await asyncio.to_thread(
                run_bridge, config, bridge_env("a-wrong-token-0123456789")
            )
    expected = {
        "unconfigured": (2, "agent.mcp: not configured"),
        "no token": (2, "REFLEXD_MCP_TOKEN"),
        "port 0": (2, "agent.mcp.listen: port 0"),
        "no daemon": (3, f"cannot reach the daemon at http://127.0.0.1:{port}/mcp (connection refused)"),
        "wrong token": (3, "refused the token (401)"),
    }
    for case, (code, words) in expected.items():
        done = results[case]
        assert (done.returncode, done.stdout) == (code, ""), (case, done)
        assert len(done.stderr.splitlines()) == 1 and words in done.stderr, (case, done.stderr)
        assert TOKEN not in done.stderr and "a-wrong-token" not in done.stderr


@pytest.mark.parametrize("restart", [False, True], ids=["stopped", "restarted"])
async def test_a_daemon_that_goes_away_ends_a_session_era_bridge_with_a_reason(
    tmp_path: Path, restart: bool
) -> None:
    """A session-era client's session dies with the daemon: the bridge's next request finds no daemon
    (connection refused) or, after a restart, a daemon that no longer knows the session (404); either
    way the bridge ends with 1 and a one-line reason, though its client keeps stdin open, instead of
    answering every later request with an error."""
    async with (
        FeedServer() as feed,
        running(tmp_path, bridged_config(tmp_path, feed)) as daemon,
        bridge_process(daemon.config) as proc,
    ):
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(orjson.dumps(INITIALIZE) + b"\n")
        async with asyncio.timeout(20):
            assert orjson.loads(await proc.stdout.readline())["id"] == 1
        await daemon.stop()
        if restart:
            await daemon.start()
        proc.stdin.write(b'{"jsonrpc": "2.0", "id": 2, "method": "tools/list"}\n')
        async with asyncio.timeout(20):
            code = await proc.wait()
        err = (await proc.stderr.read()).decode()
    reason = (
        f"{daemon.url} no longer knows this session (the daemon restarted?): reconnect the client"
        if restart
        else f"lost the daemon at {daemon.url} (connection refused)"
    )
    assert (code, err.splitlines()) == (1, [f"reflexd mcp: {reason}"])
