"""The ops endpoints over real HTTP, with a websocket source whose real server goes away and comes back."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from daemon.config import load_config_text
from daemon.registry import builtin_registry
from tests.conftest import StartDaemon, StartServer
from tests.servers import Plan, wait_for

CANARY = "sk-canary-7f3a9c1e5b2d4e6f8a0b1c2d3e4f5a6b"


async def test_readyz_follows_the_websocket_source_and_status_hides_secrets(
    feed_server: StartServer, run_daemon: StartDaemon
) -> None:
    """/readyz is 503 while the feed is unreachable, 200 once it reconnected and delivered data, 503 after it drops;
    /healthz stays 200; /metrics has the source counters; no endpoint shows the secret header value."""
    server = await feed_server(Plan())  # accepts, then sends only what the test broadcasts
    await server.stop()  # the port is known but nothing listens: the source cannot connect
    text = f"""
daemon:
  http: {{listen: "127.0.0.1:0"}}
  shutdown_timeout_seconds: 5
sources:
  feed:
    type: websocket
    url: "{server.url}"
    headers: {{X-Api-Key: "${{FEED_KEY}}"}}
    idle_timeout_seconds: 30
    reconnect: {{initial_seconds: 0.02, max_seconds: 0.1}}
"""
    daemon = await run_daemon(load_config_text(text, builtin_registry(), env={"FEED_KEY": CANARY}))
    assert daemon.http is not None and daemon.http.port != 0
    base = f"http://127.0.0.1:{daemon.http.port}"
    source = daemon.sources["feed"]
    bodies: list[bytes] = []

    async with aiohttp.ClientSession() as http:

        async def get(path: str) -> tuple[int, bytes]:
            async with http.get(base + path) as response:
                body = await response.read()
                bodies.append(body)
                return response.status, body

        async def status_is(path: str, code: int) -> bool:
            return (await get(path))[0] == code

        def as_json(body: bytes) -> Any:
            return orjson.loads(body)

        # 1. the feed is down: alive, not ready, retrying
        await wait_for(lambda: source.stats.attempts >= 2, what="a retried connect")
        status, body = await get("/readyz")
        assert status == 503
        assert as_json(body)["ready"] is False
        assert as_json(body)["sources"]["feed"].startswith(("connecting", "backoff"))
        assert (await get("/healthz"))[0] == 200

        # 2. the feed comes back on the same port: connected is not enough, ready once data arrived
        await server.start()
        await wait_for(lambda: source.stats.state == "connected", what="the source connected")
        status, body = await get("/readyz")
        assert (status, as_json(body)["sources"]["feed"]) == (503, "connected, waiting for the first message")
        assert await server.broadcast('{"n": 1}') == 1
        assert await server.broadcast('{"n": 2}') == 1
        await wait_for(lambda: status_is("/readyz", 200), what="/readyz 200 after data arrived")
        assert source.stats.received >= 1 and source.stats.connects == 1
        assert server.connections[0].headers["X-Api-Key"] == CANARY  # the secret was used, not lost

        status, body = await get("/status")
        assert status == 200
        feed = as_json(body)["sources"]["feed"]
        assert feed["state"] == "connected" and feed["errors"].get("connect", 0) >= 1

        status, body = await get("/metrics")
        metrics = body.decode()
        assert status == 200
        assert 'reflexd_events_received_total{source="feed"} 2.0' in metrics
        assert 'reflexd_source_reconnects_total{source="feed"}' in metrics
        assert 'reflexd_source_connected{source="feed"} 1.0' in metrics

        # 3. the feed drops: not ready again, still alive
        await server.stop()
        await wait_for(lambda: status_is("/readyz", 503), what="/readyz 503 after the feed dropped")
        assert (await get("/healthz"))[0] == 200
        metrics = (await get("/metrics"))[1].decode()
        assert 'reflexd_source_gaps_total{source="feed"} 0.0' in metrics  # no reconnect yet: no gap
        assert 'reflexd_source_connected{source="feed"} 0.0' in metrics
        await get("/status")

    assert bodies, "no response bodies were checked"
    for body in bodies:
        assert CANARY.encode() not in body
        assert CANARY[:12].encode() not in body
