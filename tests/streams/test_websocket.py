"""The websocket source against a real local websockets server, run by the real Daemon.

Every test starts a :class:`tests.servers.FeedServer` on 127.0.0.1:0 with a scripted behaviour,
builds a configuration from YAML text with ``load_config_text`` and runs the real daemon (no
ops HTTP), so the whole path is exercised: socket → source → bounded queue → rules → tool runner.
Tools that record their calls are registered as a test tool type (``recorder``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import orjson
import pytest
import yaml
from pydantic import Field
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode

from daemon.config import AppConfig, load_config_text
from daemon.registry import ComponentSpec, Registry, builtin_registry
from handlers.base import CallContext, Tool, ToolConfig
from streams.event import Event
from streams.reconnect import Reconnector
from streams.websocket import WebSocketSource, WebSocketSourceConfig, _frame_buffer
from tests.conftest import StartDaemon, StartServer
from tests.servers import ACCEPT_AND_CLOSE, Plan, holds_for, wait_for

# Fast reconnects for tests that are not about the backoff itself.
FAST_RECONNECT = {"initial_seconds": 0.01, "max_seconds": 0.05, "healthy_after_seconds": 0}


# -- a tool type that records its calls ------------------------------------------------------


class RecorderConfig(ToolConfig):
    """Records every call; optionally takes ``delay_seconds`` per call (a slow sink)."""

    delay_seconds: float = Field(0.0, ge=0)


@dataclass(frozen=True)
class Call:
    tool: str
    args: dict[str, Any]
    event: Event | None
    at: float


class Recorder(Tool):
    type_name: ClassVar[str] = "recorder"
    config: RecorderConfig

    def __init__(self, name: str, config: RecorderConfig, calls: list[Call]) -> None:
        super().__init__(name, config)
        self.calls = calls

    async def call(self, args: dict[str, Any], ctx: CallContext) -> None:
        self.calls.append(Call(self.name, args, ctx.event, time.monotonic()))
        if self.config.delay_seconds:
            await asyncio.sleep(self.config.delay_seconds)


class Calls(list[Call]):
    def of(self, tool: str) -> list[Call]:
        return [c for c in self if c.tool == tool]

    def args(self, tool: str, name: str) -> list[Any]:
        return [c.args[name] for c in self.of(tool)]


def registry_with_recorder(calls: Calls) -> Registry:
    return builtin_registry().with_specs(
        ComponentSpec(
            "tool",
            "recorder",
            RecorderConfig,
            lambda name, cfg, ctx: Recorder(name, cfg, calls),
            lambda c: [("delay_seconds", c.delay_seconds)],
            "Records calls (tests).",
        )
    )


def config(registry: Registry, *, sources: dict[str, Any], tools: Any = None, rules: Any = None) -> AppConfig:
    """A configuration built as YAML text, validated like a user's file."""
    doc: dict[str, Any] = {"daemon": {"http": None, "shutdown_timeout_seconds": 5}, "sources": sources}
    if tools:
        doc["tools"] = tools
    if rules:
        doc["rules"] = rules
    return load_config_text(yaml.safe_dump(doc, sort_keys=False), registry, env={})


def ws_source(url: str, **fields: Any) -> dict[str, Any]:
    return {"type": "websocket", "url": url, **fields}


def frames(*payloads: Any) -> list[str | bytes]:
    return [p if isinstance(p, str | bytes) else json.dumps(p) for p in payloads]


def data_rule(tool: str = "rec", **fields: Any) -> dict[str, Any]:
    return {"from": ["feed"], "then": [{"tool": tool, "args": {"n": "{data.n}"}}], **fields}


# -- 1. messages → events → rule → tool -------------------------------------------------------


async def test_messages_become_events_and_fire_the_tool(
    feed_server: StartServer, run_daemon: StartDaemon, tmp_path: Path
) -> None:
    """Frames from a real server become events (key, event time) and fire the file tool where the rule matches."""
    trades = [
        {"s": "BTC", "p": "100.5", "q": "20", "T": 1_700_000_000_000},  # 2010 > 1000: fires
        {"s": "ETH", "p": "10", "q": "1", "T": 1_700_000_000_500},  # 10: does not
        {"s": "BTC", "p": "50", "q": "30", "T": 1_700_000_001_000},  # 1500: fires
    ]
    server = await feed_server(Plan(frames=frames(*trades)))
    out = tmp_path / "fired.jsonl"
    text = f"""
daemon:
  http: null
  shutdown_timeout_seconds: 5
sources:
  trades:
    type: websocket
    url: "{server.url}"
    key_field: s
    time_field: T
    time_unit: ms
    queue: {{max_events: 100, when_full: drop_oldest}}
tools:
  out:
    type: file
    path: "{out}"
rules:
  big_trade:
    from: [trades]
    where: "float(data.p) * float(data.q) > 1000"
    then:
      - tool: out
        args: {{symbol: "{{data.s}}", notional: "{{float(data.p) * float(data.q)}}", text: "{{data.q}} @ {{data.p}}"}}
"""
    daemon = await run_daemon(load_config_text(text, builtin_registry(), env={}))
    source = daemon.sources["trades"]
    await wait_for(lambda: source.stats.received == 3, what="3 messages received")
    await daemon.stop()  # drains the queue and the tool's backlog

    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [(r["rule"], r["source"], r["key"]) for r in lines] == [
        ("big_trade", "trades", "BTC"),
        ("big_trade", "trades", "BTC"),
    ]
    assert [r["args"] for r in lines] == [
        {"symbol": "BTC", "notional": 2010.0, "text": "20 @ 100.5"},
        {"symbol": "BTC", "notional": 1500.0, "text": "30 @ 50"},
    ]
    assert [r["event_ts"] for r in lines] == [1_700_000_000.0, 1_700_000_001.0]
    rule = daemon.rules["big_trade"].stats
    assert (rule.seen, rule.matched, rule.fired, rule.errors, rule.submitted) == (3, 2, 2, 0, 2)
    assert source.stats.decode_errors == 0 and source.stats.connects == 1


# -- 2. reconnects, resubscription, gap events --------------------------------------------------


async def test_twenty_server_closes_give_twenty_reconnects_resubscriptions_and_gaps(
    feed_server: StartServer, run_daemon: StartDaemon
) -> None:
    """20 server-side closes → 20 reconnects, subscriptions re-sent on all 21 connections, 20 gap events."""
    subscribe = [{"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}, "hello"]
    closes = 20
    server = await feed_server(
        lambda i: Plan(
            await_messages=len(subscribe),
            frames=frames({"n": i}),
            after="close" if i < closes else "hold",
            close_code=1000 if i % 2 else 1012,
        )
    )
    calls = Calls()
    cfg = config(
        registry_with_recorder(calls),
        sources={"feed": ws_source(server.url, subscribe=subscribe, reconnect=FAST_RECONNECT)},
        tools={"rec": {"type": "recorder"}, "on_gap": {"type": "recorder"}},
        rules={
            "data": data_rule(),
            "gaps": {
                "from": ["feed"],
                "kinds": ["gap"],
                "then": [
                    {"tool": "on_gap", "args": {"outage": "{data.outage_seconds}", "why": "{data.reason}"}}
                ],
            },
        },
    )
    daemon = await run_daemon(cfg)
    source = daemon.sources["feed"]
    await wait_for(
        lambda: len(calls.of("rec")) == closes + 1 and len(calls.of("on_gap")) == closes,
        within=8,
        what=lambda: f"21 data and 20 gap calls, got {len(calls.of('rec'))} and {len(calls.of('on_gap'))}",
    )

    assert len(server.connections) == closes + 1
    expected = [json.dumps(subscribe[0], separators=(",", ":")), "hello"]
    for conn in server.connections:
        assert conn.messages == expected, f"connection {conn.index} got {conn.messages}"
    stats = source.stats
    assert (stats.attempts, stats.connects, stats.disconnects) == (21, 21, 20)
    assert stats.reconnect_attempts == 20 and stats.gaps == 20
    assert stats.state == "connected" and daemon.state == "running"
    assert calls.args("rec", "n") == list(range(closes + 1))  # one event per connection, in order
    gaps = calls.of("on_gap")
    assert all(c.event is not None and c.event.kind == "gap" for c in gaps)
    assert all(isinstance(c.args["outage"], float) and c.args["outage"] >= 0 for c in gaps)
    assert all("closed by peer: code 10" in c.args["why"] for c in gaps)
    assert source.queue.put_total == 21 + 20  # data and gap events both went through the queue


# -- 3. accept-and-close storm: the healthy-session gate -------------------------------------


async def test_accept_then_close_server_gets_backoff_not_a_hot_loop(
    feed_server: StartServer, run_daemon: StartDaemon
) -> None:
    """Default reconnect settings: a server that accepts and closes at once sees ≤ 7 connects in 7 s, ≥ 1 s apart after the 5th."""
    server = await feed_server(ACCEPT_AND_CLOSE)
    daemon = await run_daemon(config(builtin_registry(), sources={"feed": ws_source(server.url)}))
    await wait_for(lambda: len(server.connections) >= 1, what="a first connection")
    window = 7.0
    remaining = window - (time.monotonic() - server.connections[0].opened_at)
    within_bound = await holds_for(lambda: len(server.connections) <= 7, remaining)

    opened = server.opened_at()
    intervals = [b - a for a, b in itertools.pairwise(opened)]
    assert within_bound, f"{len(opened)} connections within {window}s: intervals {intervals}"
    assert len(opened) >= 6, f"the slow phase was not reached: intervals {intervals}"
    assert all(d >= 1.0 for d in intervals[4:]), f"intervals after the 5th attempt: {intervals}"
    # exponential: the k-th wait is at least initial_seconds * 2**k (jitter only stretches it)
    assert all(d >= 0.1 * 2**k for k, d in enumerate(intervals)), intervals
    stats = daemon.sources["feed"].stats
    assert stats.disconnects >= len(opened) - 1 and stats.state in ("backoff", "connecting", "connected")


async def test_storm_control_without_healthy_gate_is_detected(
    feed_server: StartServer, run_daemon: StartDaemon
) -> None:
    """Control: with healthy_after_seconds 0 (gate off) the same server sees > 10x the bound within the same 7 s."""
    server = await feed_server(ACCEPT_AND_CLOSE)
    cfg = config(
        builtin_registry(),
        sources={"feed": ws_source(server.url, reconnect={"healthy_after_seconds": 0})},
    )
    await run_daemon(cfg)
    await wait_for(
        lambda: len(server.connections) > 70,
        within=7.0,
        what=lambda: f"a reconnect storm, got {len(server.connections)} connections",
    )


# -- 4. idle timeout ---------------------------------------------------------------------------


async def test_silent_server_triggers_idle_timeout_reconnect(
    feed_server: StartServer, run_daemon: StartDaemon
) -> None:
    """A server that goes silent but keeps the socket open (answering pings) is dropped after idle_timeout_seconds."""
    server = await feed_server(Plan(frames=frames({"n": 1}), after="hold"))
    cfg = config(
        builtin_registry(),
        sources={
            "feed": ws_source(
                server.url,
                idle_timeout_seconds=0.5,
                ping_interval_seconds=0.1,
                ping_timeout_seconds=1.0,
                reconnect=FAST_RECONNECT,
            )
        },
    )
    daemon = await run_daemon(cfg)
    source = daemon.sources["feed"]
    await wait_for(lambda: len(server.connections) >= 2, within=5, what="a second connection")
    await wait_for(lambda: server.connections[0].close_code is not None, what="first connection closed")

    first, second = server.connections[0], server.connections[1]
    assert source.stats.errors.get("idle_timeout", 0) >= 1
    # the client closed it for idleness (4000), not for a keepalive failure (1011): pings were answered
    assert (first.close_code, first.close_reason) == (4000, "idle timeout")
    assert second.opened_at - first.opened_at >= 0.5
    # the server sees the handshake before the client's connect() returns and queues the gap
    await wait_for(lambda: source.stats.gaps >= 1, what="a gap event after the reconnect")


async def test_quiet_server_that_answers_pings_is_kept_without_idle_timeout(
    feed_server: StartServer, run_daemon: StartDaemon
) -> None:
    """Without idle_timeout_seconds, a quiet peer answering frequent keepalive pings stays connected (W9)."""
    server = await feed_server(Plan(frames=frames({"n": 1}), after="hold"))
    cfg = config(
        builtin_registry(),
        sources={
            "feed": ws_source(
                server.url, ping_interval_seconds=0.05, ping_timeout_seconds=0.5, reconnect=FAST_RECONNECT
            )
        },
    )
    daemon = await run_daemon(cfg)
    source = daemon.sources["feed"]
    await wait_for(lambda: source.stats.received == 1, what="the first message")
    stayed = await holds_for(lambda: source.stats.disconnects == 0, 1.0)
    assert stayed, f"disconnected: {source.stats.last_error}"
    assert len(server.connections) == 1 and source.stats.errors == {}


async def test_tcp_drop_without_close_frame_is_a_reconnect(
    feed_server: StartServer, run_daemon: StartDaemon
) -> None:
    """A connection dropped without a close frame (TCP abort) is reported as such and reconnected, with a gap."""
    server = await feed_server([Plan(frames=frames({"n": 1}), after="abort"), Plan(frames=frames({"n": 2}))])
    calls = Calls()
    cfg = config(
        registry_with_recorder(calls),
        sources={"feed": ws_source(server.url, reconnect=FAST_RECONNECT)},
        tools={"rec": {"type": "recorder"}},
        rules={"data": data_rule()},
    )
    daemon = await run_daemon(cfg)
    source = daemon.sources["feed"]
    await wait_for(lambda: calls.args("rec", "n") == [1, 2], what=lambda: f"events 1 and 2, got {calls}")

    assert server.connections[0].close_code == 1006  # no close frame from either side
    assert (source.stats.connects, source.stats.disconnects, source.stats.gaps) == (2, 1, 1)
    assert "no close frame" in (source.stats.last_error or "")


# -- 5. oversized frame --------------------------------------------------------------------------


async def test_frame_above_max_message_bytes_closes_1009_and_reconnects(
    feed_server: StartServer, run_daemon: StartDaemon
) -> None:
    """A frame above max_message_bytes makes the client close with 1009, count message_too_big and reconnect."""
    big = json.dumps({"n": 99, "blob": "x" * 4096})
    server = await feed_server([Plan(frames=frames({"n": 1}, big, {"n": 2})), Plan(frames=frames({"n": 3}))])
    calls = Calls()
    cfg = config(
        registry_with_recorder(calls),
        sources={"feed": ws_source(server.url, max_message_bytes=1024, reconnect=FAST_RECONNECT)},
        tools={"rec": {"type": "recorder"}},
        rules={"data": data_rule()},
    )
    daemon = await run_daemon(cfg)
    source = daemon.sources["feed"]
    await wait_for(lambda: calls.args("rec", "n") == [1, 3], what=lambda: f"events 1 and 3, got {calls}")
    await wait_for(lambda: server.connections[0].close_code is not None, what="first connection closed")

    assert server.connections[0].close_code == 1009
    assert len(server.connections) == 2
    assert source.stats.errors == {"message_too_big": 1}
    assert source.stats.connects == 2 and source.stats.gaps == 1
    assert "max_message_bytes" in (source.stats.last_error or "")


# -- 6. malformed JSON ---------------------------------------------------------------------------


async def test_malformed_json_is_counted_and_the_stream_continues(
    feed_server: StartServer, run_daemon: StartDaemon
) -> None:
    """Undecodable frames are counted as decode_errors and dropped; the good ones around them still become events."""
    mixed = frames({"n": 1}, "{not json", {"n": 2}, "", "NaN", {"n": 3}, b"\xff\xfe", "[1, 2", {"n": 4})
    server = await feed_server(Plan(frames=mixed))
    calls = Calls()
    cfg = config(
        registry_with_recorder(calls),
        sources={"feed": ws_source(server.url)},
        tools={"rec": {"type": "recorder"}},
        rules={"data": data_rule()},
    )
    daemon = await run_daemon(cfg)
    source = daemon.sources["feed"]
    await wait_for(lambda: source.stats.received == len(mixed), what="every frame received")
    await wait_for(lambda: len(calls) == 4, what=lambda: f"4 tool calls, got {calls}")

    assert calls.args("rec", "n") == [1, 2, 3, 4]
    assert source.stats.decode_errors == 5
    assert source.queue.put_total == 4
    assert (source.stats.connects, source.stats.disconnects, source.stats.state) == (1, 0, "connected")


# -- 7. slow tool, bounded queue, drop accounting -------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "counter", "other"),
    [
        ("drop_oldest", "queue_full_oldest", "queue_full_newest"),
        ("drop_newest", "queue_full_newest", "queue_full_oldest"),
    ],
)
async def test_slow_tool_keeps_queue_bounded_and_drops_are_counted_exactly(
    feed_server: StartServer, run_daemon: StartDaemon, policy: str, counter: str, other: str
) -> None:
    """Fed ~10x faster than the tool runs, the queue stays ≤ max_events and received = taken + dropped + depth."""
    n, max_events = 400, 20
    # ~1000 msg/s (10 every 10 ms) into a tool doing ≤ 100 calls/s (10 ms each, one at a time)
    server = await feed_server(Plan(frames=frames(*({"n": i} for i in range(n))), burst=10, interval=0.01))
    calls = Calls()
    cfg = config(
        registry_with_recorder(calls),
        sources={"feed": ws_source(server.url, queue={"max_events": max_events, "when_full": policy})},
        tools={"rec": {"type": "recorder", "delay_seconds": 0.01, "concurrency": 1, "max_pending": 2}},
        rules={"data": data_rule()},
    )
    daemon = await run_daemon(cfg)
    source = daemon.sources["feed"]
    queue = source.queue
    await wait_for(lambda: source.stats.received == n, within=8, what="every frame received")
    await wait_for(
        lambda: len(queue) == 0 and len(calls) == queue.taken,
        within=5,
        what=lambda: f"the backlog drained: {queue.stats()}, {len(calls)} calls",
    )

    q = queue.stats()
    dropped = q["dropped"][counter]
    assert q["high_water"] <= max_events
    assert source.stats.received == q["put"] == n  # no gaps, no decode errors: every message was offered
    assert (
        q["put"]
        == q["taken"] + q["dropped"]["queue_full_oldest"] + q["dropped"]["queue_full_newest"] + q["depth"]
    )
    assert dropped > 0 and q["dropped"][other] == 0
    assert (queue.evicted, queue.rejected) == ((dropped, 0) if policy == "drop_oldest" else (0, dropped))
    seen = calls.args("rec", "n")
    assert len(seen) == q["taken"] == n - dropped  # every event not dropped fired the tool exactly once
    assert seen == sorted(set(seen))  # FIFO, no duplicates
    assert daemon.runner.stats("rec").rejected == 0
    if policy == "drop_oldest":
        assert seen[-1] == n - 1  # the newest message is never the one evicted
    else:
        assert seen[0] == 0  # the first message found room; later ones were turned away


# -- 8. handshake answered with HTTP errors ---------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
async def test_handshake_rejected_twice_with_retryable_status_is_retried(
    feed_server: StartServer, run_daemon: StartDaemon, status: int
) -> None:
    """A handshake answered 429 (or 503) twice is retried with backoff and then connects; each rejection is counted."""
    server = await feed_server(Plan(frames=frames({"n": 1})), reject=[status, status])
    calls = Calls()
    cfg = config(
        registry_with_recorder(calls),
        sources={"feed": ws_source(server.url, reconnect=FAST_RECONNECT)},
        tools={"rec": {"type": "recorder"}},
        rules={"data": data_rule()},
    )
    daemon = await run_daemon(cfg)
    source = daemon.sources["feed"]
    await wait_for(lambda: calls.args("rec", "n") == [1], what="the first event")

    assert [h.status for h in server.handshakes] == [status, status, 101]
    assert len(server.connections) == 1
    assert source.stats.errors == {f"http_{status}": 2}
    assert (source.stats.attempts, source.stats.connects, source.stats.gaps) == (3, 1, 0)
    assert source.stats.state == "connected"


@pytest.mark.parametrize("status", [401, 403])
async def test_handshake_rejected_with_auth_error_is_fatal(feed_server: StartServer, status: int) -> None:
    """A handshake answered 401/403 stops the source for good: state failed, reason names the status, no retry."""
    server = await feed_server(Plan(), reject=[status] * 10)
    cfg = WebSocketSourceConfig.model_validate(
        {"type": "websocket", "url": server.url, "reconnect": FAST_RECONNECT}
    )
    source = WebSocketSource("feed", cfg)
    # run() returning at all proves the engine gave up: it only returns on a fatal error
    await asyncio.wait_for(Reconnector(source, cfg.reconnect).run(), timeout=5)

    assert source.stats.state == "failed"
    assert f"HTTP {status}" in (source.stats.last_error or "")
    assert source.stats.errors == {f"http_{status}": 1}
    assert source.stats.attempts == 1 and len(server.handshakes) == 1 and not server.connections
    ready, reason = source.readiness()
    assert not ready and reason.startswith("failed") and str(status) in reason


def test_invalid_url_is_a_config_error_that_does_not_echo_the_url() -> None:
    """A malformed URL fails at config time, and the reason does not repeat the URL (it may hold a secret)."""
    from daemon.config import load_config_text
    from daemon.errors import ConfigError

    text = 'sources: {feed: {type: websocket, url: "ws://host:${PORT}/?token=${TOKEN}"}}\n'
    with pytest.raises(ConfigError) as info:
        load_config_text(text, builtin_registry(), env={"PORT": "notaport", "TOKEN": "s3cr3t"})
    (issue,) = info.value.issues
    assert str(issue).startswith("config.yaml:1 sources.feed.url: not a valid WebSocket URL")
    assert "s3cr3t" not in str(issue)


# -- 10. many frames per socket read, fragmented messages among them ------------------------------


async def test_burst_larger_than_a_read_with_fragmented_messages_arrives_whole_and_in_order() -> None:
    """One write of 20,000 frames (megabytes: many socket reads, so websockets pauses and resumes
    reading as its buffer fills and empties), some messages split into three fragments: every
    message becomes one event, whole, in order, numbered from 1 (the read loop takes parsed
    messages from websockets' buffer; a fragmented one still comes through ``recv()``)."""
    n = 20_000
    wire = bytearray()
    for i in range(n):
        payload = orjson.dumps({"n": i, "pad": "x" * 40})
        if i % 997 == 5:  # text frame, continuation, final continuation
            a, b = len(payload) // 3, 2 * len(payload) // 3
            wire += WsFrame(Opcode.TEXT, payload[:a], fin=False).serialize(mask=False)
            wire += WsFrame(Opcode.CONT, payload[a:b], fin=False).serialize(mask=False)
            wire += WsFrame(Opcode.CONT, payload[b:], fin=True).serialize(mask=False)
        else:
            wire += WsFrame(Opcode.TEXT, payload).serialize(mask=False)

    async def handler(ws: ServerConnection) -> None:
        ws.transport.write(bytes(wire))
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        cfg = WebSocketSourceConfig.model_validate(
            {
                "type": "websocket",
                "url": f"ws://127.0.0.1:{port}",
                "compression": "none",
                "queue": {"max_events": n},
            }
        )
        source = WebSocketSource("feed", cfg)
        await source.connect()
        reader = asyncio.create_task(source.read())
        try:
            await wait_for(lambda: source.stats.received == n, within=20, what="every message received")
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await source.close()
    events = await source.queue.get_batch(n)
    assert source.stats.decode_errors == 0 and source.queue.evicted == 0
    assert [e.data["n"] for e in events] == list(range(n))
    assert [e.meta["seq"] for e in events] == list(range(1, n + 1))


async def test_the_read_loop_finds_the_frame_buffer_of_the_websockets_in_use(
    feed_server: StartServer,
) -> None:
    """With the websockets version installed, the read loop takes messages from the connection's own
    frame buffer: an upgrade that moves it fails here instead of silently reading through ``recv()``."""
    server = await feed_server(Plan())
    cfg = WebSocketSourceConfig.model_validate({"type": "websocket", "url": server.url})
    source = WebSocketSource("feed", cfg)
    await source.connect()
    try:
        ws = source._ws
        assert ws is not None
        frames, assembler = _frame_buffer(ws)
        assert assembler is ws.recv_messages and frames is ws.recv_messages.frames.queue
    finally:
        await source.close()


async def test_frame_buffer_falls_back_to_recv_when_websockets_keeps_frames_elsewhere() -> None:
    """A connection without websockets 17's frame buffer gives an empty one that stays empty: the read
    loop then takes every message through ``recv()``."""
    frames, assembler = _frame_buffer(cast(Any, object()))
    assert len(frames) == 0 and not assembler.paused
