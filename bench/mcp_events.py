#!/usr/bin/env python3
"""MCP bench: how soon an MCP client hears a rule fire (push and long-poll), and what serving MCP costs
the WebSocket pipeline when no client listens.

(a) Rule fire → client notified. ``reflexd run`` as a **child process** (the real CLI), with
``agent.mcp`` on a free loopback port and a bearer token, reading a WebSocket feed that this process
serves; rule ``big`` (``float(data.p) > 100``, no cooldown) calls a ``file`` tool. This process holds
the feed and one MCP client (the ``mcp`` SDK's ``Client``). One fire at a time: a frame is sent, the
client's notification is awaited, ``--gap`` ms pass, the next frame goes. Latency = ``perf_counter()``
when the client hears the fire - ``perf_counter()`` just before the frame is written, both in this
process: it includes the WebSocket hop, the daemon's source and rule (about 0.1 to 0.3 ms in
``ws_pipeline.py``'s latency run) besides the fire → MCP path. Modes (``--modes``):

- ``session``: push, session era (``mode="legacy"``): ``resources/subscribe`` of
  ``reflexd://rules/big/fires``, heard as ``notifications/resources/updated`` on the session's event
  stream (the message handler);
- ``listen``: push, 2026-07-28 (``mode="auto"``): ``subscriptions/listen`` on the same URI, heard on
  the listen stream;
- ``poll``: the long-poll every client can use: ``wait_for_events(since=cursor, timeout_seconds=25)``
  in a loop (2026-07-28), heard when the call returns with the fire;
- ``bridge-poll`` / ``bridge-session``: ``poll`` / ``session`` through ``reflexd mcp`` (the stdio
  bridge, a child process started by the SDK's stdio client): what a Claude Desktop user gets.

Each mode: ``--runs`` runs of ``--fires`` fires (after 20 uncounted), a fresh client per run; p50 and
p99 per run, and their medians. Goal: p99 ≤ 50 ms.

(b) MCP served, nobody listening. ``ws_pipeline.py``'s throughput run (``--n`` messages, 1 % firing, its
frame server in a separate process) with the daemon in this process, alternating: the raw loop,
reflexd without ``agent.mcp``, reflexd with ``agent.mcp`` (no client: the fires are recorded in the
feed, nothing is pushed). Rates are messages evaluated per second; printed: each run, the medians,
and the median of with/without per round; and this process's CPU time per message evaluated, over
the same window as the rate (``time.process_time()`` at the first and the last tool call; the frame
server is another process), steadier than wall-clock rates on a busy machine. Expected: ≈ 1 (the
feed records one item per fire and keeps the last event of each batch; no work per event).

Not named ``bench/mcp.py``: a script's folder comes first on ``sys.path``, so that file would be
what ``import mcp`` finds, for itself and for every other script here (``ws_pipeline.py --mcp``).

Usage::

    .venv/bin/python bench/mcp_events.py [--fires 1000] [--runs 3] [--gap 5] [--modes session,listen,...]
                                         [--n 200000] [--ws-runs 3] [--skip-latency] [--skip-ws]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import ws_pipeline as ws
from benchlib import run_loop
from websockets.asyncio.server import ServerConnection, serve

ROOT = Path(__file__).resolve().parents[1]
URI = "reflexd://rules/big/fires"
WARM_FIRES = 20
HEAR_TIMEOUT = 10.0
MODES = ("session", "listen", "poll", "bridge-poll", "bridge-session")
GOAL_P99_MS = 50.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, min(len(sorted_values), round(p / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


# -- (a) the daemon, the feed, the clients ---------------------------------------------------------


class Feed:
    """A WebSocket server the daemon's source connects to; :meth:`send` writes one frame to it."""

    def __init__(self) -> None:
        self.connected: asyncio.Future[ServerConnection] | None = None
        self.port = 0

    async def handler(self, conn: ServerConnection) -> None:
        assert self.connected is not None
        if not self.connected.done():
            self.connected.set_result(conn)
        await conn.wait_closed()

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[Feed]:
        self.connected = asyncio.get_running_loop().create_future()
        async with serve(self.handler, "127.0.0.1", 0, compression=None) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            yield self

    async def send(self, text: str) -> None:
        assert self.connected is not None
        conn = await self.connected
        await conn.send(text)


def config_text(folder: Path, feed_port: int, mcp_port: int) -> str:
    return f"""\
daemon:
  log_level: info
  http: null
  state_path: {folder / "state.db"}
agent:
  mcp: {{listen: "127.0.0.1:{mcp_port}", token: "${{REFLEXD_MCP_TOKEN}}", tools: [alert], max_events: 10000}}
sources:
  ticks: {{type: websocket, url: "ws://127.0.0.1:{feed_port}/"}}
tools:
  alert: {{type: file, path: {folder / "alerts.jsonl"}}}
rules:
  big:
    from: ticks
    where: "float(data.p) > 100"
    then: [{{tool: alert, args: {{text: "BTC at {{data.p}}"}}}}]
"""


class DaemonProcess:
    """``reflexd run -c CONFIG`` as a child process; ready when its log says so."""

    def __init__(self, folder: Path, text: str, token: str) -> None:
        self.config = folder / "config.yaml"
        self.config.write_text(text)
        self.log = folder / "daemon.log"
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "REFLEXD_MCP_TOKEN": token}
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "daemon.cli", "run", "-c", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=self.env,
            )

    async def start(self, within: float = 60.0) -> None:
        self.proc = self.spawn()
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if b'"msg":"ready"' in self.log.read_bytes():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"reflexd exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            await asyncio.sleep(0.05)
        raise RuntimeError("reflexd did not report ready")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@asynccontextmanager
async def mcp_client(
    mode: str, url: str, token: str, config: Path, on_message: Callable[[Any], Awaitable[None]] | None
) -> AsyncIterator[Any]:
    """The SDK's client: over HTTP with the token, or through ``reflexd mcp`` for the bridge modes."""
    import httpx2
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client
    from mcp.client.streamable_http import streamable_http_client

    era = "legacy" if mode.endswith("session") else "auto"
    if mode.startswith("bridge"):
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "daemon.cli", "mcp", "-c", str(config)],
            env={"PYTHONPATH": str(ROOT), "REFLEXD_MCP_TOKEN": token},
        )
        async with Client(stdio_client(params), mode=era, message_handler=on_message) as client:
            yield client
        return
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=era, message_handler=on_message) as client:
            yield client


async def latency_run(
    mode: str, feed: Feed, url: str, token: str, config: Path, fires: int, gap: float
) -> list[float]:
    """One run of ``fires`` fires in ``mode``: the latencies in ms (a fire not heard is an error)."""
    import mcp_types as types

    heard: asyncio.Queue[float] = asyncio.Queue()

    async def on_message(message: Any) -> None:
        # session era only: a 2026-07-28 listen stream's updates reach the message handler too
        if isinstance(message, types.ResourceUpdatedNotification) and message.params.uri == URI:
            heard.put_nowait(time.perf_counter())

    pushed = mode.endswith("session")

    background: list[asyncio.Task[None]] = []  # the listen stream or the long-poll loop
    async with (
        mcp_client(mode, url, token, config, on_message if pushed else None) as client,
        asyncio.TaskGroup() as tasks,
    ):
        ready = asyncio.Event()
        if pushed:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # resources/subscribe: deprecated in 2026-07-28, served
                await client.subscribe_resource(URI)
            await asyncio.sleep(0.3)  # the session's event stream (a GET) opens after initialize
            ready.set()
        elif mode == "listen":

            async def listen() -> None:
                async with client.listen(resource_subscriptions=[URI]) as subscription:
                    ready.set()
                    async for update in subscription:
                        if update.uri == URI:
                            heard.put_nowait(time.perf_counter())

            background.append(tasks.create_task(listen()))
        else:
            cursor = payload(await client.call_tool("recent_events", {"max": 1}))["next"]

            async def poll() -> None:
                nonlocal cursor
                ready.set()
                while True:
                    got = payload(
                        await client.call_tool("wait_for_events", {"since": cursor, "timeout_seconds": 25})
                    )
                    now = time.perf_counter()
                    for _ in got["events"]:
                        heard.put_nowait(now)
                    cursor = got["next"]

            background.append(tasks.create_task(poll()))
        await ready.wait()
        latencies: list[float] = []
        try:
            for i in range(WARM_FIRES + fires):
                if not heard.empty():
                    raise RuntimeError(f"{mode}: fire {i - 1} was heard more than once")
                sent = time.perf_counter()
                await feed.send('{"p": "150"}')
                try:
                    got = await asyncio.wait_for(heard.get(), HEAR_TIMEOUT)
                except TimeoutError:
                    raise RuntimeError(f"{mode}: fire {i} not heard within {HEAR_TIMEOUT:g} s") from None
                if i >= WARM_FIRES:
                    latencies.append((got - sent) * 1000)
                await asyncio.sleep(gap)
        finally:
            for task in background:
                task.cancel()
    return latencies


def payload(result: Any) -> dict[str, Any]:
    content = result.structured_content
    if not isinstance(content, dict):
        raise RuntimeError(f"unexpected tool result: {result}")
    return content


async def measure_latency(args: argparse.Namespace) -> bool:
    token = secrets.token_urlsafe(24)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes: {', '.join(sorted(unknown))} (modes: {', '.join(MODES)})")
    ok = True
    with tempfile.TemporaryDirectory(prefix="reflexd-bench-mcp-") as tmp:
        folder = Path(tmp)
        async with Feed().serving() as feed:
            port = free_port()
            daemon = DaemonProcess(folder, config_text(folder, feed.port, port), token)
            await daemon.start()
            try:
                url = f"http://127.0.0.1:{port}/mcp"
                print(
                    f"(a) rule fire -> MCP client notified: {args.fires} fires per run (+{WARM_FIRES} "
                    f"warm-up), {args.runs} runs per mode, {args.gap:g} ms between fires; the daemon is "
                    "`reflexd run`, a child process"
                )
                for mode in modes:
                    p50s, p99s = [], []
                    for run in range(args.runs):
                        lat = sorted(
                            await latency_run(
                                mode, feed, url, token, daemon.config, args.fires, args.gap / 1000
                            )
                        )
                        p50s.append(percentile(lat, 50))
                        p99s.append(percentile(lat, 99))
                        print(
                            f"  {mode:<15} run {run + 1}: p50 {p50s[-1]:6.2f} ms  p99 {p99s[-1]:6.2f} ms  "
                            f"max {lat[-1]:6.2f} ms"
                        )
                    p99 = statistics.median(p99s)
                    verdict = "ok" if p99 <= GOAL_P99_MS else "MISSED"
                    ok = ok and p99 <= GOAL_P99_MS
                    print(
                        f"  {mode:<15} median p50 {statistics.median(p50s):6.2f} ms  median p99 "
                        f"{p99:6.2f} ms  [goal p99 <= {GOAL_P99_MS:g} ms: {verdict}]"
                    )
            finally:
                daemon.stop()
    return ok


# -- (b) the ws pipeline with and without MCP --------------------------------------------------------


async def measure_ws(args: argparse.Namespace, port: int, thr: ws.StreamSpec, warm: ws.StreamSpec) -> None:
    base = f"ws://127.0.0.1:{port}"
    n = args.n
    matches = ws.expected_matches(n, ws.THROUGHPUT_MATCH_EVERY)

    cpu: dict[str, list[float]] = {"off": [], "on": []}  # µs of this process's CPU per message

    async def reflexd(mcp: bool, spec: ws.StreamSpec, count: int, expected: int) -> ws.RunResult:
        ws.MCP = mcp
        try:
            result = await ws.reflexd_run(base + spec.path(), count, expected)
        finally:
            ws.MCP = False
        assert result.cpu_seconds is not None
        cpu["on" if mcp else "off"].append(result.cpu_seconds / (result.n - result.drops) * 1e6)
        return result

    warm_matches = ws.expected_matches(warm.n, ws.THROUGHPUT_MATCH_EVERY)
    await ws.raw_run(base + warm.path(), warm.n, "asyncio")
    await reflexd(False, warm, warm.n, warm_matches)
    await reflexd(True, warm, warm.n, warm_matches)
    cpu["off"].clear()
    cpu["on"].clear()

    print(
        f"(b) ws_pipeline.py throughput, N={n:,} per run, {args.ws_runs} rounds, order rotating; "
        "rates = messages evaluated per s"
    )
    rates: dict[str, list[float]] = {"raw": [], "off": [], "on": []}
    ratios: list[float] = []
    orders = (("raw", "off", "on"), ("on", "raw", "off"), ("off", "on", "raw"))
    for i in range(args.ws_runs):
        got: dict[str, ws.RunResult] = {}
        for which in orders[i % 3]:
            if which == "raw":
                got[which] = await ws.raw_run(base + thr.path(), n, "asyncio")
            else:
                got[which] = await reflexd(which == "on", thr, n, matches)
        for which, res in got.items():
            rates[which].append(res.rate)
        ratio = got["on"].rate / got["off"].rate
        ratios.append(ratio)
        drops = {k: v.drops for k, v in got.items() if v.drops}
        print(
            f"  round {i + 1} ({'→'.join(orders[i % 3])}): raw {got['raw'].rate:>9,.0f}  "
            f"reflexd {got['off'].rate:>9,.0f}  reflexd+MCP {got['on'].rate:>9,.0f} msg/s  "
            f"MCP/no MCP {ratio:.3f}  CPU/msg {cpu['off'][-1]:.2f} / {cpu['on'][-1]:.2f} µs"
            + (f"  [DROPS {drops}]" if drops else "")
        )
    off, on, raw = (statistics.median(rates[k]) for k in ("off", "on", "raw"))
    print(
        f"  median: raw {raw:,.0f}, reflexd without agent.mcp {off:,.0f} (b/a {off / raw:.3f}), with "
        f"agent.mcp {on:,.0f} (b/a {on / raw:.3f}) msg/s; median MCP/no MCP per round "
        f"{statistics.median(ratios):.3f}"
    )
    cpu_off, cpu_on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    print(
        f"  median CPU time per message evaluated: without agent.mcp "
        f"{cpu_off:.2f} µs, with {cpu_on:.2f} µs ({cpu_on / cpu_off:.3f}x)"
    )


def run_ws(args: argparse.Namespace) -> None:
    thr = ws.StreamSpec(args.n, ws.THROUGHPUT_MATCH_EVERY, 0.0)
    warm = ws.StreamSpec(min(args.n, 20_000), ws.THROUGHPUT_MATCH_EVERY, 0.0)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=ws.server_main, args=(child, [thr, warm], False), daemon=True)
    proc.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the frame server did not start")
        port = int(parent.recv())
        run_loop(measure_ws(args, port, thr, warm), False)
    finally:
        try:
            parent.send("stop")
        except OSError:
            pass
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fires", type=int, default=1000, help="(a) fires per run")
    parser.add_argument("--runs", type=int, default=3, help="(a) runs per mode")
    parser.add_argument(
        "--gap", type=float, default=5.0, help="(a) ms between a fire heard and the next frame"
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"(a) comma-separated, of {', '.join(MODES)}"
    )
    parser.add_argument("--n", type=int, default=200_000, help="(b) messages per throughput run")
    parser.add_argument("--ws-runs", type=int, default=3, help="(b) rounds of raw / reflexd / reflexd+MCP")
    parser.add_argument("--skip-latency", action="store_true", help="skip (a)")
    parser.add_argument("--skip-ws", action="store_true", help="skip (b)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a median p99 misses the goal")
    args = parser.parse_args(argv)
    if args.fires < 1 or args.runs < 1 or args.gap < 0 or args.n < 2 or args.ws_runs < 1:
        parser.error("need --fires >= 1, --runs >= 1, --gap >= 0, --n >= 2, --ws-runs >= 1")
    print(
        f"python {platform.python_version()} ({platform.python_implementation()}), "
        f"mcp {metadata.version('mcp')}, {os.cpu_count()} CPUs"
    )
    started = time.monotonic()
    ok = True
    if not args.skip_latency:
        ok = asyncio.run(measure_latency(args))
    if not args.skip_ws:
        run_ws(args)
    print(f"total wall time {time.monotonic() - started:.1f} s")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
