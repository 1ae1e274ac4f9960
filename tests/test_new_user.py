"""A new user's first hour, from the README alone: the configuration walk-through's YAML, taken from
README.md's text with only the addresses changed, passes ``reflexd check`` without ``BINANCE_KEY`` and
runs (a real ``python -m daemon.cli run`` subprocess) against a local Binance-like WebSocket server
(tests/exchange/binance.py: it answers the subscription with ``{"result": null, "id": 1}``, as Binance
does) that drops the connection twice: no rule error, the big trades alerted, both gaps reported.

Run once as written (the alerts are the ``log`` tool's lines) and once with the ``alert`` tool turned
into a webhook to a local aiohttp server (the alerts arrive there).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.exchange.binance import BinanceEmulator
from tests.exchange.core import MarketSpec
from tests.servers import wait_for

ROOT = Path(__file__).resolve().parents[1]

# Every other BTC trade is 65,000 x 5 = 325,000 USDT: above the walk-through's 250,000.
MARKET = MarketSpec("BTC/USDT", prices=("65000.00", "65001.00"), amounts=("5", "0.01"))


def walkthrough() -> str:
    """The YAML block of README.md's configuration walk-through, as a reader copies it."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("```yaml\n", readme.index("## Configuration walk-through")) + len("```yaml\n")
    return readme[start : readme.index("```", start)]


def substitute(text: str, changes: dict[str, str]) -> str:
    """``text`` with each of ``changes`` made once (each must be there: the README is the input)."""
    for old, new in changes.items():
        assert text.count(old) == 1, f"the README walk-through no longer holds {old!r}"
        text = text.replace(old, new)
    return text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def webhook_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A local aiohttp app that records the JSON body of every POST to /alerts."""
    received: list[dict[str, Any]] = []

    async def alerts(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/alerts", alerts)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/alerts", received
    finally:
        await runner.cleanup()


async def cli(*args: str, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon.cli", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


@pytest.mark.parametrize("alerts_to", ["log", "webhook"])
async def test_the_readme_binance_example_runs_through_subscription_replies_and_two_drops(
    tmp_path: Path, alerts_to: str
) -> None:
    """The README walk-through, against a Binance-like server that answers the subscription and drops the
    connection twice: `check` passes without BINANCE_KEY, 0 rule errors (the replies are filtered, not
    errors), big trades alerted (log lines, or webhook deliveries), feed_gap fires once per drop."""
    env = {k: v for k, v in os.environ.items() if k not in ("BINANCE_KEY", "REFLEXD_OPS_TOKEN")}
    env["PYTHONPATH"] = str(ROOT)
    ops_port = free_port()
    emulator = BinanceEmulator([MARKET])
    async with emulator, webhook_server() as (hook_url, delivered):
        changes = {
            "url: wss://stream.binance.com:9443/ws": f"url: ws://127.0.0.1:{emulator.port}/ws",
            'listen: "127.0.0.1:9108"': f'listen: "127.0.0.1:{ops_port}"',
            "path: data/sample-trades.jsonl": f"path: {ROOT / 'data' / 'sample-trades.jsonl'}",
        }
        if alerts_to == "webhook":
            changes["alert: {type: log, level: warning}"] = (
                f"alert: {{type: webhook, url: {hook_url!r}, allow_private_networks: true}}"
            )
        config = tmp_path / "config.yaml"
        config.write_text(substitute(walkthrough(), changes))

        code, out = await cli("check", "-c", str(config), cwd=tmp_path, env=env)
        assert code == 0, out

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon.cli", "run", "-c", str(config), cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        logs: list[dict[str, Any]] = []

        async def read_logs() -> None:
            assert proc.stderr is not None
            async for line in proc.stderr:
                with contextlib.suppress(orjson.JSONDecodeError):
                    logs.append(orjson.loads(line))

        reader = asyncio.create_task(read_logs())

        def alerts(prefix: str) -> list[str]:
            if alerts_to == "webhook":
                texts = [str(body.get("text")) for body in delivered]
            else:
                texts = [str(r.get("msg")) for r in logs if r.get("level") == "warning"]
            return [t for t in texts if t.startswith(prefix)]

        def subscribed(n: int) -> Callable[[], bool]:
            """One session open and subscribed, the n-th since the start."""

            def check() -> bool:
                open_now = [c for c in emulator.open_connections if c.subscriptions]
                return len(open_now) == 1 and len([c for c in emulator.connections if c.subscriptions]) >= n

            return check

        try:
            await wait_for(subscribed(1), 20, what=lambda: f"a subscription; logs {logs[-5:]}")
            emulator.produce(50)
            await wait_for(lambda: bool(alerts("big trade")), 10, what="a big trade alert")
            for n in (2, 3):
                await emulator.drop()
                await wait_for(subscribed(n), 10, what=f"connection {n} subscribed")
            await wait_for(lambda: len(alerts("feed gap of")) == 2, 10, what=lambda: str(alerts("feed")))
            await asyncio.sleep(0.3)  # the frames after the last reconnect reach the rules too
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{ops_port}/status") as got:
                    status = await got.json()
                async with http.get(f"http://127.0.0.1:{ops_port}/metrics") as got:
                    metrics = await got.text()
        finally:
            emulator.stop_producing()
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.wait_for(proc.wait(), 25)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                await reader

    assert code == 0
    rules = status["rules"]
    assert (rules["big_trade"]["errors"], rules["feed_gap"]["errors"]) == (0, 0), rules
    assert rules["big_trade"]["fired"] >= 1 and rules["feed_gap"]["fired"] == 2
    source = status["sources"]["binance"]
    assert source["gaps"] == 2 and source["connects"] == 3
    assert source["filtered"] == 3 and source["decode_errors"] == 0  # one subscription reply per session
    assert 'reflexd_events_filtered_total{source="binance"} 3.0' in metrics
    assert not [r for r in logs if r.get("level") == "error"], [r for r in logs if r.get("level") == "error"]
    assert not [r for r in logs if "expression" in str(r.get("msg"))]
    assert len(alerts("feed gap of")) == 2
