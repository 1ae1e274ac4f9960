"""The MCP server end to end: the SDK's own client over real HTTP to ``reflexd run`` as a child process,
in both protocol generations (``legacy``: sessions and ``resources/subscribe``; ``auto``: 2026-07-28,
``subscriptions/listen``). Fires come from a WebSocket feed the test serves."""

from __future__ import annotations

import asyncio
import time
import warnings
from pathlib import Path
from typing import Any

import mcp_types as types
import orjson
import pytest

from tests.mcp.harness import MODES, TOKEN, config_text, connect, http_client, lines, running
from tests.servers import FeedServer, wait_for

pytestmark = pytest.mark.timeout(90)

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def fire(feed: FeedServer, price: float) -> None:
    assert await feed.broadcast(orjson.dumps({"p": str(price)}).decode()) == 1


def payload(result: types.CallToolResult) -> dict[str, Any]:
    assert isinstance(result.structured_content, dict), result
    return result.structured_content


@pytest.mark.parametrize("mode", MODES)
async def test_tools_are_the_configured_schemas_and_the_servers_own(tmp_path: Path, mode: str) -> None:
    """tools/list: each tool of agent.mcp.tools with the parameters `reflexd tools` prints (plus the
    optional idempotency_key), and wait_for_events, recent_events, status."""
    async with FeedServer() as feed, running(tmp_path, config_text(tmp_path, feed.url)) as daemon:
        printed = {t["name"]: t for t in orjson.loads(daemon.cli("tools").stdout)}
        async with connect(daemon.url, mode) as client:
            listed = {t.name: t for t in (await client.list_tools()).tools}
    assert set(listed) == {"alert", "buy", "wait_for_events", "recent_events", "status"}
    for name in ("alert", "buy"):
        schema = dict(listed[name].input_schema)
        properties = dict(schema.pop("properties"))
        assert properties.pop("idempotency_key")["type"] == "string"
        expected = dict(printed[name]["parameters"])
        assert {**schema, "properties": properties} == expected
    assert listed["alert"].description == "Tell the desk."
    assert "approval" in (listed["buy"].description or "")
    assert listed["wait_for_events"].input_schema["properties"]["timeout_seconds"]["maximum"] == 25


@pytest.mark.parametrize("mode", MODES)
async def test_a_call_goes_through_the_runner_and_one_idempotency_key_makes_it_once(
    tmp_path: Path, mode: str
) -> None:
    """A configured tool called over MCP is made by the runner and journaled (rule `mcp`, key
    `mcp:<tool>:<idempotency_key>`); the same key again is not made again; a call without a key is."""
    async with FeedServer() as feed, running(tmp_path, config_text(tmp_path, feed.url)) as daemon:
        async with connect(daemon.url, mode) as client:
            first = payload(await client.call_tool("alert", {"text": "hi", "idempotency_key": "k1"}))
            again = await client.call_tool("alert", {"text": "hi", "idempotency_key": "k1"})
            other = payload(await client.call_tool("alert", {"text": "other"}))
            invalid = await client.call_tool("alert", {"txt": "no"})
        assert first["outcome"] == "succeeded" and first["key"] == "mcp:alert:k1"
        assert payload(again)["outcome"] == "duplicate" and not again.is_error
        assert other["outcome"] == "succeeded" and other["key"].startswith("mcp:alert:")
        assert invalid.is_error and "text" in payload(invalid)["error"]
        written = lines(tmp_path / "alerts.jsonl")
        assert [(w["args"], w["rule"], w["key"]) for w in written] == [
            ({"text": "hi"}, "mcp", "mcp:alert:k1"),
            ({"text": "other"}, "mcp", other["key"]),
        ]
        await wait_for(lambda: len(daemon.journal("mcp:alert:")) == 3, 5, what="journal rows")
        assert daemon.journal("mcp:alert:k1") == [
            ("mcp:alert:k1", "mcp", "alert", "succeeded"),
            ("mcp:alert:k1", "mcp", "alert", "duplicate"),
        ]


@pytest.mark.parametrize("mode", MODES)
async def test_wait_for_events_returns_a_later_fire_as_soon_as_it_happens(tmp_path: Path, mode: str) -> None:
    """wait_for_events(since) returns at once what is after the cursor; waiting, it returns when the next
    fire happens (not at its 20 s timeout) with that fire only, and the cursor after it."""
    async with FeedServer() as feed, running(tmp_path, config_text(tmp_path, feed.url)) as daemon:
        async with connect(daemon.url, mode) as client:
            await fire(feed, 150)
            await wait_for(lambda: len(lines(tmp_path / "alerts.jsonl")) == 1, 5, what="the first fire")
            first = payload(await client.call_tool("wait_for_events", {"since": 0, "timeout_seconds": 0}))
            [old] = first["events"]
            assert old["type"] == "fire" and old["rule"] == "big"
            assert old["calls"] == [{"tool": "alert", "args": {"text": "BTC at 150"}, "accepted": True}]
            assert old["event"]["source"] == "ticks" and old["event"]["data"] == {"p": "150"}
            cursor = first["next"]
            assert cursor == old["seq"]

            started = time.monotonic()
            waiting = asyncio.create_task(
                client.call_tool("wait_for_events", {"since": cursor, "timeout_seconds": 20})
            )
            await asyncio.sleep(0.5)
            assert not waiting.done()  # nothing after the cursor yet: it waits
            await fire(feed, 200)
            later = payload(await waiting)
            elapsed = time.monotonic() - started
        assert elapsed < 10, f"returned after {elapsed:.1f} s: at its timeout, not at the fire"
        [new] = later["events"]
        assert new["seq"] == cursor + 1 and new["event"]["data"] == {"p": "200"}
        assert later["next"] == new["seq"] and "timed_out" not in later


@pytest.mark.parametrize("mode", MODES)
async def test_a_subscribed_resource_is_updated_when_a_rule_fires(tmp_path: Path, mode: str) -> None:
    """A client subscribed to reflexd://rules/big/fires (resources/subscribe on a session; a
    subscriptions/listen stream on 2026-07-28) gets notifications/resources/updated after the rule
    fires, and reading the resource then shows the fire."""
    uri = "reflexd://rules/big/fires"
    async with FeedServer() as feed, running(tmp_path, config_text(tmp_path, feed.url)) as daemon:
        updated: list[str] = []

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ResourceUpdatedNotification):
                updated.append(message.params.uri)

        async with connect(daemon.url, mode, on_message=on_message) as client:
            if mode == "legacy":
                assert client.protocol_version < "2026"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # deprecated in the 2026 generation, served here
                    await client.subscribe_resource(uri)
                await asyncio.sleep(0.3)  # the session's event stream (a GET) opens after initialize
                await fire(feed, 150)
                await wait_for(lambda: updated == [uri], 10, what=f"resources/updated (got {updated})")
            else:
                assert client.protocol_version >= "2026"
                async with client.listen(resource_subscriptions=[uri]) as subscription:
                    await fire(feed, 150)
                    async with asyncio.timeout(10):
                        event = await anext(aiter(subscription))
                assert event.uri == uri
            read = await client.read_resource(uri)
        content = read.contents[0]
        assert isinstance(content, types.TextResourceContents)
        body = orjson.loads(content.text)
        assert body["rule"] == "big" and body["fired"] == 1
        assert [f["event"]["data"] for f in body["fires"]] == [{"p": "150"}]


async def test_requests_without_the_token_or_from_a_foreign_host_are_refused(tmp_path: Path) -> None:
    """No token → 401 (with WWW-Authenticate: Bearer), a wrong one → 401, a Host that is not the listen
    address → 421, a browser's foreign Origin → 403; the same request done right is served. The SDK's
    client without the token cannot connect."""
    async with FeedServer() as feed, running(tmp_path, config_text(tmp_path, feed.url)) as daemon:
        url = daemon.url
        async with http_client(None) as http:
            missing = await http.post(url, json=INITIALIZE, headers=MCP_HEADERS)
        async with http_client("wrong-token-but-long-enough") as http:
            wrong = await http.post(url, json=INITIALIZE, headers=MCP_HEADERS)
        async with http_client() as http:
            host = await http.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "Host": "evil.example:80"})
            origin = await http.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "Origin": "http://evil.example"})
            served = await http.post(url, json=INITIALIZE, headers=MCP_HEADERS)
        with pytest.raises(Exception):  # noqa: B017 - the SDK wraps the 401 in an exception group
            async with connect(url, "legacy", token=None) as client:
                await client.list_tools()
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert wrong.status_code == 401
    assert host.status_code == 421
    assert origin.status_code == 403
    assert served.status_code == 200 and TOKEN not in served.text


async def test_a_tool_that_needs_approval_does_nothing_until_a_person_approves_then_runs_once(
    tmp_path: Path,
) -> None:
    """A require_approval tool called over MCP is a proposal (awaiting_approval): nothing is made while it
    waits; `reflexd approvals approve` makes it once through the runner, its outcome reaches
    wait_for_events as a notification, and the same idempotency_key again reports it, made once."""
    async with FeedServer() as feed, running(tmp_path, config_text(tmp_path, feed.url)) as daemon:
        buys = tmp_path / "buys.jsonl"
        async with connect(daemon.url, "auto") as client:
            asked = payload(await client.call_tool("buy", {"qty": 2, "idempotency_key": "order-1"}))
            assert asked["status"] == "awaiting_approval"
            cursor = payload(await client.call_tool("recent_events", {"max": 1}))["next"]
            await asyncio.sleep(1.0)  # five polls of the approvals task
            assert lines(buys) == []
            listed = [orjson.loads(line) for line in daemon.cli("approvals", "list", "--json").stdout.splitlines()]
            assert [(a["id"], a["llm"], a["tool"], a["args"]) for a in listed] == [
                (asked["approval"], "mcp", "buy", {"qty": 2})
            ]
            approved = daemon.cli("approvals", "approve", str(asked["approval"]))
            assert approved.returncode == 0, approved.stderr
            heard = payload(await client.call_tool("wait_for_events", {"since": cursor, "timeout_seconds": 20}))
            await wait_for(lambda: len(lines(buys)) == 1, 5, what="the approved call")
            again = payload(await client.call_tool("buy", {"qty": 2, "idempotency_key": "order-1"}))
        [note] = heard["events"]
        assert note["type"] == "notification" and note["kind"] == "approval"
        assert note["fields"]["tool"] == "buy" and "succeeded" in note["text"]
        assert lines(buys)[0]["args"] == {"qty": 2} and lines(buys)[0]["key"] == "mcp:buy:order-1"
        assert again["approval"] == asked["approval"] and again["status"] == "executed"
        await asyncio.sleep(0.5)
        assert len(lines(buys)) == 1
