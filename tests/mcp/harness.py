"""Real ``reflexd run`` processes with ``agent.mcp`` for the MCP tests, and the SDK's own client.

:class:`McpDaemon` starts ``python -m daemon.cli run -c CONFIG`` as a child process (its log in a file
of the test's folder), waits for its ``ready`` line and reads the MCP port from it; the configuration
(:func:`config_text`) reads a WebSocket feed served by the test (``tests.servers.FeedServer``): a frame
``{"p": N}`` with N > 100 fires rule ``big`` (tool ``alert``), so a test makes a fire happen when it
wants. :func:`connect` is ``mcp.Client`` over streamable HTTP with the bearer token in the headers, in
either protocol generation (``mode="legacy"``: sessions; ``"auto"``: 2026-07-28 against this server).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import orjson
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "mcp-test-token-5e0c8a17d2"
OPS_TOKEN = "ops-test-token-9b3f61c4ae"

MODES = ("legacy", "auto")


def config_text(
    folder: Path,
    feed_url: str,
    *,
    mcp: str = '{listen: "127.0.0.1:0", token: "${REFLEXD_MCP_TOKEN}", tools: [alert, buy], '
    "require_approval: [buy]}",
    extra_tools: str = "",
) -> str:
    return f"""\
daemon:
  http: {{listen: "127.0.0.1:0", token: "${{REFLEXD_OPS_TOKEN}}"}}
  state_path: {folder / "state.db"}
  shutdown_timeout_seconds: 5
agent:
  approvals_poll_seconds: 0.2
  mcp: {mcp}
sources:
  ticks: {{type: websocket, url: "{feed_url}"}}
tools:
  alert:
    type: file
    path: {folder / "alerts.jsonl"}
    description: Tell the desk.
    parameters: {{type: object, properties: {{text: {{type: string}}}}, required: [text]}}
  buy:
    type: file
    path: {folder / "buys.jsonl"}
    parameters: {{type: object, properties: {{qty: {{type: number, exclusiveMinimum: 0}}}}, required: [qty]}}
{extra_tools}rules:
  big:
    from: ticks
    where: "float(data.p) > 100"
    then: [{{tool: alert, args: {{text: "BTC at {{data.p}}"}}}}]
"""


def lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines a file tool wrote (none yet: empty)."""
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


class McpDaemon:
    """``reflexd run`` as a child process, stopped with SIGTERM."""

    def __init__(self, folder: Path, text: str) -> None:
        self.folder = folder
        self.config = folder / "config.yaml"
        self.config.write_text(text)
        self.log = folder / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.ops_port = 0

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "REFLEXD_MCP_TOKEN": TOKEN,
            "REFLEXD_OPS_TOKEN": OPS_TOKEN,
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def spawn(self) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon.cli", "run", "-c", str(self.config)],
                cwd=self.folder,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=self.env,
            )

    async def start(self, within: float = 30.0) -> McpDaemon:
        self.spawn()
        ready = await self.wait_log(lambda r: r.get("msg") == "ready", within)
        self.port = int(str(ready["mcp"]).rpartition(":")[2])
        self.ops_port = int(str(ready["http"]).rpartition(":")[2])
        return self

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_bytes().splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                out.append({"msg": line.decode(errors="replace")})
        return out

    async def wait_log(self, match: Callable[[dict[str, Any]], bool], within: float) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for record in self.records():
                if match(record):
                    return record
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"reflexd exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            await asyncio.sleep(0.05)
        raise AssertionError(f"not logged within {within}s: {self.log.read_text()[-3000:]}")

    async def stop(self) -> int:
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        return proc.wait()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``reflexd ARGS -c CONFIG`` (the verb's own arguments after it)."""
        verb, *rest = args
        return subprocess.run(
            [sys.executable, "-m", "daemon.cli", verb, "-c", str(self.config), *rest],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def journal(self, key_prefix: str) -> list[tuple[str, str, str, str]]:
        """(key, rule, tool, outcome) of the journal's rows whose key starts with ``key_prefix``."""
        with sqlite3.connect(self.folder / "state.db") as db:
            rows = db.execute(
                "SELECT key, rule, tool, outcome FROM invocations WHERE key LIKE ? ORDER BY started",
                (key_prefix + "%",),
            ).fetchall()
        return [tuple(r) for r in rows]


@asynccontextmanager
async def running(folder: Path, text: str) -> AsyncIterator[McpDaemon]:
    daemon = McpDaemon(folder, text)
    try:
        yield await daemon.start()
    finally:
        await daemon.stop()


def http_client(token: str | None = TOKEN, **headers: str) -> httpx2.AsyncClient:
    if token is not None:
        headers = {"Authorization": f"Bearer {token}", **headers}
    return httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300))


@asynccontextmanager
async def connect(
    url: str,
    mode: str,
    *,
    token: str | None = TOKEN,
    on_message: Callable[[Any], Awaitable[None]] | None = None,
) -> AsyncIterator[Client]:
    """The SDK's client over real HTTP, ``Authorization: Bearer <token>`` on every request."""
    async with http_client(token) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode, message_handler=on_message) as client:
            yield client
