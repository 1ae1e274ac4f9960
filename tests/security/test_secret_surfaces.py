"""Secrets from ``${VAR}`` never leave reflexd: every surface is searched for canary values.

One configuration puts a distinct canary secret in each place a user writes one: a websocket URL,
a websocket header, a subscribe message, a header that a cross-origin redirect would carry away,
a webhook URL and header, a Kafka SASL password and rule arguments (one secret-named, one not).
The daemon runs as a real process at ``log_level: debug`` against real local servers (websockets
feeds, an aiohttp webhook target that refuses every call so it is dead-lettered, a closed Kafka
port), and then every surface is read: the daemon's log and stderr, ``/status``, ``/metrics``,
``/readyz``, ``check``, ``tools``, ``replay``, ``dlq list`` (plain and ``--json``) after the rule
was renamed, a startup failure, a configuration failure, and a forced stop. Each canary is looked
for raw, base64- and URL-encoded. The intended recipients are checked to have received their
secrets, so the search cannot pass because a secret was never used.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import signal
import socket
import sys
import textwrap
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession, web
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

ROOT = Path(__file__).resolve().parents[2]

NAMES = (
    "WS_URL",
    "WS_HEADER",
    "WS_SUB",
    "MOVED_HEADER",
    "HOOK_URL",
    "HOOK_HEADER",
    "SASL_PW",
    "ARG_TOKEN",
    "ARG_PLAIN",
)


def canaries() -> dict[str, str]:
    """One random secret per place; alphanumeric so it is valid in URLs and headers as it is."""
    return {name: f"cnry{name.lower().replace('_', '')}{secrets.token_hex(10)}" for name in NAMES}


def forms(value: str) -> set[str]:
    """The ways a secret could show up: raw, base64 (with and without padding), URL-encoded."""
    b64 = base64.b64encode(value.encode()).decode()
    return {value, b64, b64.rstrip("="), urllib.parse.quote(value), value[4:]}


def leaks(text: str, secret_values: dict[str, str]) -> list[str]:
    """Names of the secrets whose any form occurs in ``text``."""
    return sorted(name for name, value in secret_values.items() if any(f in text for f in forms(value)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Feed:
    """A websockets server: ``/moved`` redirects to another origin (``localhost`` and this feed's
    second port); every handshake's path and headers and every client message are recorded."""

    def __init__(self) -> None:
        self.handshakes: list[tuple[str, Headers]] = []
        self.messages: list[tuple[str, str]] = []
        self.port = 0
        self.other_port = 0

    def _process(self, connection: ServerConnection, request: Request) -> Response | None:
        self.handshakes.append((request.path, request.headers))
        if request.path.startswith("/moved"):
            response = connection.respond(302, "")
            response.headers["Location"] = f"ws://localhost:{self.other_port}/landed"
            return response
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else ""
        trade = {"e": "trade", "s": "BTCUSDT", "p": "65000.5", "q": "2", "T": int(time.time() * 1000)}
        await ws.send(orjson.dumps(trade).decode())
        with contextlib.suppress(Exception):
            async for message in ws:
                self.messages.append((path, str(message)))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Feed]:
        async with (
            serve(self._handler, "127.0.0.1", 0, process_request=self._process) as first,
            serve(self._handler, "127.0.0.1", 0, process_request=self._process) as second,
        ):
            self.port = first.sockets[0].getsockname()[1]
            self.other_port = second.sockets[0].getsockname()[1]
            yield self


class Hook:
    """An aiohttp webhook target that refuses every call with 400 (so it is dead-lettered at once)
    and echoes nothing; it records what it received."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.port = 0

    async def _hook(self, request: web.Request) -> web.Response:
        self.requests.append((str(request.rel_url), dict(request.headers), await request.read()))
        return web.Response(status=400, text="refused by the test target")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Hook]:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        try:
            yield self
        finally:
            await runner.cleanup()


def write_config(
    path: Path, feed: Feed, hook: Hook, http_port: int, kafka_port: int, rule: str, *, moved_auth: bool = False
) -> None:
    """The configuration; ``moved_auth`` adds a source whose secret subscribe messages meet a cross-origin
    redirect (refused for good at its first connect, so the daemon does not start)."""
    extra = (
        f"""  moved_auth:
    type: websocket
    url: "ws://127.0.0.1:{feed.port}/moved-auth"
    subscribe:
      - {{method: AUTH, key: "${{WS_SUB}}"}}
    key_field: s
    time_field: T
"""
        if moved_auth
        else ""
    )
    path.write_text(
        textwrap.dedent(
            f"""\
            daemon:
              log_level: debug
              log_format: json
              http: {{listen: "127.0.0.1:{http_port}"}}
              state_path: state.db
              shutdown_timeout_seconds: 3
            sources:
              direct:
                type: websocket
                url: "ws://127.0.0.1:{feed.port}/direct?key=${{WS_URL}}"
                headers: {{X-Api-Key: "${{WS_HEADER}}"}}
                subscribe:
                  - {{method: AUTH, key: "${{WS_SUB}}"}}
                key_field: s
                time_field: T
                reconnect: {{initial_seconds: 0.2, max_seconds: 1}}
              moved:
                type: websocket
                url: "ws://127.0.0.1:{feed.port}/moved"
                headers: {{X-Api-Key: "${{MOVED_HEADER}}"}}
                key_field: s
                time_field: T
                reconnect: {{initial_seconds: 0.2, max_seconds: 1}}
              orders:
                type: kafka
                bootstrap_servers: "127.0.0.1:{kafka_port}"
                topics: [orders]
                group_id: g
                security:
                  protocol: SASL_PLAINTEXT
                  sasl_mechanism: PLAIN
                  username: reflexd
                  password: ${{SASL_PW}}
            tools:
              hook:
                type: webhook
                url: "http://127.0.0.1:{hook.port}/hook?sig=${{HOOK_URL}}"
                headers: {{Authorization: "Bearer ${{HOOK_HEADER}}"}}
                allow_private_networks: true
                retry: {{max_attempts: 1}}
            rules:
              {rule}:
                from: [direct, moved, orders{", moved_auth" if moved_auth else ""}]
                then:
                  - tool: hook
                    args: {{token: "${{ARG_TOKEN}}", note: "${{ARG_PLAIN}}", text: "trade {{data.p}}"}}
            """
        ).replace("  orders:\n", extra + "  orders:\n", 1)
    )


async def reflexd(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> tuple[int, str]:
    """Run one CLI verb; return its exit code and stdout + stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon.cli", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace") + err.decode(errors="replace")


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.timeout(180)
async def test_no_secret_on_any_surface(tmp_path: Path) -> None:
    """No canary from ${VAR} appears in logs, stderr, /status, /metrics, check, tools, replay, dlq
    list after a rule rename, startup and config failures, or a forced stop; and a cross-origin
    websocket redirect does not carry configured headers to the other origin."""
    values = canaries()
    env = {**os.environ, "PYTHONPATH": str(ROOT), **values}
    surfaces: dict[str, str] = {}
    feed, hook = Feed(), Hook()
    async with feed.running(), hook.running():
        http_port, kafka_port = free_port(), free_port()
        config = tmp_path / "reflexd.yaml"
        write_config(config, feed, hook, http_port, kafka_port, rule="notify")

        code, surfaces["check"] = await reflexd("check", "-c", str(config), env=env, cwd=tmp_path)
        assert code == 0, surfaces["check"]
        code, surfaces["tools"] = await reflexd("tools", "-c", str(config), env=env, cwd=tmp_path)
        assert code == 0, surfaces["tools"]

        log_path = tmp_path / "daemon.log"
        with log_path.open("wb") as log_file:
            daemon = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "daemon.cli", "run", "-c", str(config),
                cwd=tmp_path, env=env, stdout=log_file, stderr=log_file,
            )
            try:
                await until(lambda: len(hook.requests) >= 1, 30, "the webhook target to be called")
                await until(
                    lambda: any(path.startswith("/direct") for path, _ in feed.messages), 10,
                    "the subscribe message",
                )
                await asyncio.sleep(1.5)  # let the redirected source try (and its calls be dead-lettered)
                async with ClientSession() as http:
                    for endpoint in ("/status", "/metrics", "/readyz", "/healthz", "/kill-switch"):
                        async with http.get(f"http://127.0.0.1:{http_port}{endpoint}") as response:
                            surfaces[endpoint] = await response.text()
                # a forced stop: two SIGINTs in a row
                daemon.send_signal(signal.SIGINT)
                await asyncio.sleep(0.05)
                with contextlib.suppress(ProcessLookupError):
                    daemon.send_signal(signal.SIGINT)
                await asyncio.wait_for(daemon.wait(), 30)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    daemon.kill()
                await daemon.wait()
        surfaces["daemon log (debug) and stderr, forced stop"] = log_path.read_text(errors="replace")

        # the secrets were really used: the canaries reached their intended recipients
        direct = [headers for path, headers in feed.handshakes if path.startswith("/direct")]
        assert direct and direct[0]["X-Api-Key"] == values["WS_HEADER"]
        assert values["WS_URL"] in next(p for p, _ in feed.handshakes if p.startswith("/direct"))
        assert any(values["WS_SUB"] in m for p, m in feed.messages if p.startswith("/direct"))
        url, headers, body = hook.requests[0]
        assert values["HOOK_URL"] in url and headers["Authorization"] == f"Bearer {values['HOOK_HEADER']}"
        assert values["ARG_TOKEN"].encode() in body and values["ARG_PLAIN"].encode() in body

        # a cross-origin redirect never carries the configured headers to the other origin
        assert any(p.startswith("/moved") for p, _ in feed.handshakes), "the redirecting source never connected"
        landed = [list(headers.raw_items()) for path, headers in feed.handshakes if path.startswith("/landed")]
        surfaces["handshake at the redirect's other origin"] = f"{len(landed)} handshakes: {landed}"

        # dead letters, read after the rule was renamed in the configuration
        write_config(config, feed, hook, http_port, kafka_port, rule="renamed")
        code, surfaces["dlq list"] = await reflexd("dlq", "list", "-c", str(config), env=env, cwd=tmp_path)
        assert code == 0 and "hook" in surfaces["dlq list"], surfaces["dlq list"]
        code, surfaces["dlq list --json"] = await reflexd(
            "dlq", "list", "--json", "-c", str(config), env=env, cwd=tmp_path
        )
        assert code == 0 and '"args"' in surfaces["dlq list --json"], surfaces["dlq list --json"]

        # replay of a recording through the same rules
        recording = tmp_path / "trades.jsonl"
        recording.write_bytes(
            orjson.dumps(
                {"source": "direct", "ts": 1.0, "received_at": 1.0, "key": "BTCUSDT", "kind": "data", "meta": {},
                 "data": {"s": "BTCUSDT", "p": "1", "q": "1", "T": 1000}}
            )
            + b"\n"
        )
        code, surfaces["replay"] = await reflexd("replay", "-c", str(config), str(recording), env=env, cwd=tmp_path)
        assert code == 0 and "hook" in surfaces["replay"], surfaces["replay"]

        # a startup failure: the ops port is taken
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", http_port))
            taken.listen()
            code, surfaces["startup failure"] = await reflexd("run", "-c", str(config), env=env, cwd=tmp_path)
        assert code == 3, surfaces["startup failure"]

        # a startup failure: a source whose secret subscribe messages meet a cross-origin redirect
        write_config(config, feed, hook, http_port, kafka_port, rule="renamed", moved_auth=True)
        code, surfaces["startup failure (redirect refused)"] = await reflexd(
            "run", "-c", str(config), env=env, cwd=tmp_path
        )
        assert code == 3 and "moved_auth" in surfaces["startup failure (redirect refused)"]
        assert any(p.startswith("/moved-auth") for p, _ in feed.handshakes)
        landed = [list(headers.raw_items()) for path, headers in feed.handshakes if path.startswith("/landed")]
        surfaces["handshakes at the redirect's other origin"] = f"{len(landed)} handshakes: {landed}"
        sent_there = [m for path, m in feed.messages if path.startswith("/landed")]
        surfaces["messages sent to the redirect's other origin"] = f"{len(sent_there)} messages: {sent_there}"

        # configuration failures whose values come from the secrets
        broken = config.read_text().replace(
            "reconnect: {initial_seconds: 0.2, max_seconds: 1}",
            'reconnect: {initial_seconds: "${WS_SUB}", max_seconds: "${ARG_PLAIN}"}',
        )
        broken = broken.replace("group_id: g", 'group_id: g\n    max_poll_records: "${SASL_PW}"')
        config.write_text(broken)
        code, surfaces["config failure (check)"] = await reflexd("check", "-c", str(config), env=env, cwd=tmp_path)
        assert code == 2, surfaces["config failure (check)"]
        code, surfaces["config failure (run)"] = await reflexd("run", "-c", str(config), env=env, cwd=tmp_path)
        assert code == 2, surfaces["config failure (run)"]

    found = {surface: leaks(text, values) for surface, text in surfaces.items()}
    assert {s: names for s, names in found.items() if names} == {}
    assert all(surfaces.values())
