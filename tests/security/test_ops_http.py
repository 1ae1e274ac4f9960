"""The ops HTTP server under hostile clients, over real TCP against a running Daemon.

State-changing requests need the bearer token; foreign ``Host`` / ``Origin`` values are refused
(DNS rebinding, cross-site POSTs); unreadable bodies and malformed HTTP are 4xx answers, counted,
never tracebacks; idle and slowloris connections are closed and capped while ``/healthz`` answers;
console log lines cannot be forged through a value.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from daemon.config import load_config_text
from daemon.errors import ConfigError
from daemon.http import MAX_AUTH_FAILURES, HostPolicy, split_host
from daemon.logs import THIRD_PARTY_LOGGERS, LogFormat, configure_logging, get_logger
from daemon.registry import builtin_registry
from daemon.supervisor import Daemon
from handlers.ccxt_order import KillSwitch
from tests.conftest import StartDaemon
from tests.servers import wait_for

TOKEN = "ops-token-5c1e0b7a9d3f4e2a8b6c"
ENV = {"REFLEXD_OPS_TOKEN": TOKEN}
GOOD = {"Authorization": f"Bearer {TOKEN}"}


def config_text(tmp_path: Path, **http: Any) -> str:
    data = tmp_path / "events.jsonl"
    data.write_text("{}\n")
    doc = {
        "daemon": {"http": {"listen": "127.0.0.1:0", **http}, "shutdown_timeout_seconds": 5},
        "sources": {"s": {"type": "replay", "path": str(data)}},
        "tools": {  # a dry-run order tool: it has a kill switch and needs no exchange
            "order": {
                "type": "ccxt_order",
                "exchange": "binance",
                "allowed_symbols": ["BTC/USDT"],
                "max_notional": 10,
            }
        },
    }
    return yaml.safe_dump(doc)


async def start(run_daemon: StartDaemon, tmp_path: Path, **http: Any) -> Daemon:
    cfg = load_config_text(config_text(tmp_path, **http), builtin_registry(), env=ENV)
    daemon = await run_daemon(cfg)
    assert daemon.http is not None
    return daemon


def switch(daemon: Daemon) -> KillSwitch:
    found = daemon.tools["order"].kill_switch  # type: ignore[attr-defined]
    assert isinstance(found, KillSwitch)
    return found


def base(daemon: Daemon) -> str:
    assert daemon.http is not None
    return f"http://127.0.0.1:{daemon.http.port}"


async def metric(http: aiohttp.ClientSession, daemon: Daemon, name: str, **labels: str) -> float:
    async with http.get(base(daemon) + "/metrics") as r:
        text = await r.text()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    series = f"{name}{{{wanted}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in /metrics")


async def exchange(port: int, data: bytes, later: bytes = b"", *, within: float = 10.0) -> bytes:
    """Send raw bytes (and ``later`` a moment after, as a second segment); read until the server
    closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if later:
            await asyncio.sleep(0.2)
            writer.write(later)
        return await asyncio.wait_for(reader.read(), within)
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@contextlib.contextmanager
def captured_log(fmt: LogFormat) -> Iterator[io.StringIO]:
    """The daemon's logging as the CLI sets it up (at debug), into a buffer; restored afterwards."""
    names = ("reflexd", *THIRD_PARTY_LOGGERS)
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).level) for n in names}
    propagate = {n: logging.getLogger(n).propagate for n in names}
    out = io.StringIO()
    configure_logging("debug", fmt, stream=out)
    try:
        yield out
    finally:
        for name, (handlers, level) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate[name]


@pytest.fixture
def console_log() -> Iterator[io.StringIO]:
    with captured_log("console") as out:
        yield out


# -- the token -----------------------------------------------------------------------------------


async def test_state_changing_endpoints_are_off_without_a_token(
    run_daemon: StartDaemon, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Without daemon.http.token, POST and DELETE /kill-switch are 403 with the reason and change
    nothing; the read-only endpoints answer as before."""
    daemon = await start(run_daemon, tmp_path)
    for method in ("POST", "DELETE"):
        async with http.request(method, base(daemon) + "/kill-switch", json={"reason": "x"}) as r:
            assert r.status == 403, method
            assert (await r.json())["error"] == "state-changing endpoints are off: set daemon.http.token"
        assert switch(daemon).blocking() is None
    for path in ("/healthz", "/readyz", "/status", "/metrics", "/kill-switch"):
        async with http.get(base(daemon) + path) as r:
            assert r.status in (200, 503), path  # /readyz may be 503: the replay source has finished
    assert await metric(http, daemon, "reflexd_http_refused_total", reason="token_off") == 2


async def test_missing_or_wrong_token_is_401_and_engages_nothing(
    run_daemon: StartDaemon, tmp_path: Path, http: aiohttp.ClientSession, console_log: io.StringIO
) -> None:
    """No token, a wrong one, or the right one under another scheme: 401 with WWW-Authenticate:
    Bearer, counted, logged without the presented value; the kill switch stays released."""
    daemon = await start(run_daemon, tmp_path, token="${REFLEXD_OPS_TOKEN}")
    url = base(daemon) + "/kill-switch"
    wrong = TOKEN[:-1] + "X"
    for headers in ({}, {"Authorization": f"Bearer {wrong}"}, {"Authorization": f"Basic {TOKEN}"}):
        async with http.post(url, headers=headers) as r:
            assert r.status == 401, headers
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.delete(url, headers=headers) as r:
            assert r.status == 401, headers
    assert switch(daemon).blocking() is None
    assert await metric(http, daemon, "reflexd_http_refused_total", reason="token_missing") == 2
    assert await metric(http, daemon, "reflexd_http_refused_total", reason="token_wrong") == 4
    logged = console_log.getvalue()
    assert "ops HTTP request refused" in logged and "reason=token_missing" in logged
    assert TOKEN not in logged and wrong not in logged


async def test_good_token_engages_and_releases_the_kill_switch(
    run_daemon: StartDaemon, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """With the configured bearer token, POST engages the kill switch (the tool really blocks) and
    DELETE releases it; a same-origin Origin header is accepted."""
    daemon = await start(run_daemon, tmp_path, token="${REFLEXD_OPS_TOKEN}")
    url = base(daemon) + "/kill-switch"
    async with http.post(url, headers=GOOD, json={"reason": "incident 42"}) as r:
        assert r.status == 200
        assert (await r.json())["tools"]["order"]["http_reason"] == "incident 42"
    assert switch(daemon).blocking() == "kill switch engaged over HTTP: incident 42"
    async with http.delete(url, headers={**GOOD, "Origin": base(daemon)}) as r:
        assert r.status == 200 and (await r.json())["engaged"] is False
    assert switch(daemon).blocking() is None


async def test_repeated_auth_failures_are_throttled(
    run_daemon: StartDaemon, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """After MAX_AUTH_FAILURES wrong tokens a peer gets 429 with Retry-After — even with the right
    token — so the token cannot be guessed at network speed."""
    daemon = await start(run_daemon, tmp_path, token="${REFLEXD_OPS_TOKEN}")
    url = base(daemon) + "/kill-switch"
    for i in range(MAX_AUTH_FAILURES):
        async with http.post(url, headers={"Authorization": f"Bearer guess-{i:04d}-0000000000"}) as r:
            assert r.status == 401
    async with http.post(url, headers=GOOD) as r:
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
    assert switch(daemon).blocking() is None
    async with http.get(url) as r:  # read-only endpoints are not throttled
        assert r.status == 200
    assert await metric(http, daemon, "reflexd_http_refused_total", reason="throttled") == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        ("tiny-t0ken", "is shorter than 16 characters"),
        (12345678901234567890, "must be a string (quote it)"),
        ("has a space in the middle", "must be printable ASCII without spaces"),
    ],
)
def test_token_config_is_checked_without_showing_it(tmp_path: Path, value: Any, expected: str | None) -> None:
    """An empty token leaves the endpoints off; a short, non-string or spaced one is a config error
    that names the problem, never the value."""
    text = config_text(tmp_path, token=value)
    if expected is None:
        cfg = load_config_text(text, builtin_registry(), env={})
        assert cfg.daemon.http is not None and cfg.daemon.http.token is None
        return
    with pytest.raises(ConfigError) as info:
        load_config_text(text, builtin_registry(), env={})
    message = str(info.value)
    assert "daemon.http.token" in message and expected in message
    assert str(value) not in message


# -- Host and Origin -----------------------------------------------------------------------------


async def test_foreign_host_is_421_on_every_endpoint(
    run_daemon: StartDaemon, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A Host naming another site (DNS rebinding) is refused with 421 on read-only and state-changing
    endpoints; loopback names and listed names are accepted."""
    daemon = await start(run_daemon, tmp_path, token="${REFLEXD_OPS_TOKEN}", allowed_hosts=["ops.internal"])
    assert daemon.http is not None
    port = daemon.http.port
    for path in ("/healthz", "/status", "/metrics", "/kill-switch"):
        async with http.get(base(daemon) + path, headers={"Host": f"rebind.attacker.example:{port}"}) as r:
            assert r.status == 421, path
    async with http.post(base(daemon) + "/kill-switch", headers={**GOOD, "Host": "attacker.example"}) as r:
        assert r.status == 421
    assert switch(daemon).blocking() is None
    for host in (
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        f"[::1]:{port}",
        "LOCALHOST.",
        "ops.internal:8080",
    ):
        async with http.get(base(daemon) + "/status", headers={"Host": host}) as r:
            assert r.status == 200, host
    assert await metric(http, daemon, "reflexd_http_refused_total", reason="host") == 5


async def test_foreign_origin_on_a_state_changing_request_is_403(
    run_daemon: StartDaemon, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A POST carrying a foreign (or opaque "null") Origin is refused with 403 even with the right
    token: a page the operator visits cannot engage the kill switch."""
    daemon = await start(run_daemon, tmp_path, token="${REFLEXD_OPS_TOKEN}")
    assert daemon.http is not None
    url = base(daemon) + "/kill-switch"
    foreign = ("https://attacker.example", "null", f"http://localhost.attacker.example:{daemon.http.port}")
    for origin in foreign:
        async with http.post(url, headers={**GOOD, "Origin": origin}) as r:
            assert r.status == 403, origin
    assert switch(daemon).blocking() is None
    async with http.post(url, headers={**GOOD, "Origin": f"http://127.0.0.1:{daemon.http.port}"}) as r:
        assert r.status == 200
    assert await metric(http, daemon, "reflexd_http_refused_total", reason="origin") == 3


@pytest.mark.parametrize(
    ("listen", "allowed", "host", "ok"),
    [
        ("127.0.0.1", [], "127.0.0.1:9108", True),
        ("127.0.0.1", [], "localhost", True),
        ("127.0.0.1", [], "[::1]:9108", True),
        ("127.0.0.1", [], "10.0.0.5:9108", False),
        ("127.0.0.1", [], "rebind.attacker.example:9108", False),
        ("127.0.0.1", ["ops.internal"], "Ops.Internal.:9108", True),
        ("10.0.0.5", [], "10.0.0.5:9108", True),
        ("10.0.0.5", [], "localhost:9108", False),
        ("0.0.0.0", [], "172.17.0.2:9108", True),  # a probe or scraper addressing the container by IP
        ("0.0.0.0", [], "[fd00::1]:9108", True),
        ("0.0.0.0", [], "localhost:9108", True),
        ("0.0.0.0", [], "reflexd:9108", False),  # a name must be listed: rebinding needs a name
        ("0.0.0.0", ["reflexd"], "reflexd:9108", True),
        ("::", [], "rebind.attacker.example", False),
        ("0.0.0.0", ["*"], "anything.example", True),
        ("127.0.0.1", [], "127.0.0.1:99999x", False),
        ("127.0.0.1", [], "::1", False),  # an IPv6 literal must be bracketed
        ("127.0.0.1", [], "", False),
    ],
)
def test_host_policy(listen: str, allowed: list[str], host: str, ok: bool) -> None:
    """Which Host headers pass, by listen address and allowed_hosts (ports are not compared)."""
    assert HostPolicy.build(listen, allowed).allows_host(host) is ok


def test_origin_policy() -> None:
    """Origins pass when they are the request's own origin (scheme default ports) or a listed name."""
    policy = HostPolicy.build("127.0.0.1", ["ops.internal"])
    assert policy.allows_origin("http://127.0.0.1:9108", "127.0.0.1:9108")
    assert policy.allows_origin("https://ops.internal", "127.0.0.1:9108")
    assert policy.allows_origin("https://proxy.example", "proxy.example")  # TLS proxy in front, port 443
    assert not policy.allows_origin("http://127.0.0.1:9999", "127.0.0.1:9108")
    assert not policy.allows_origin("http://attacker.example:9108", "127.0.0.1:9108")
    assert not policy.allows_origin("null", "127.0.0.1:9108")
    assert not policy.allows_origin("file://", "127.0.0.1:9108")
    assert split_host("[::1]:80") == ("::1", 80) and split_host("a:b") is None


# -- bodies and malformed HTTP -------------------------------------------------------------------


def post(port: int, body: bytes, *headers: str) -> bytes:
    lines = [
        "POST /kill-switch HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Authorization: Bearer {TOKEN}",
        "Content-Type: application/json",
        "Connection: close",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_unreadable_bodies_are_4xx_never_500(
    run_daemon: StartDaemon, tmp_path: Path, http: aiohttp.ClientSession, console_log: io.StringIO
) -> None:
    """Garbage under Content-Encoding: gzip, broken chunking, invalid JSON are 400, a stalled
    (truncated) body is 408 after request_timeout_seconds, an oversized one 413 — each with a JSON
    reason, no traceback, nothing engaged."""
    daemon = await start(run_daemon, tmp_path, token="${REFLEXD_OPS_TOKEN}", request_timeout_seconds=1)
    assert daemon.http is not None
    port = daemon.http.port
    gzip, chunked = ("Content-Encoding: gzip", "Content-Length: 10"), ("Transfer-Encoding: chunked",)
    cases = [  # the body comes as a second segment: the handler is reading it
        (post(port, b"", *gzip), b"0123456789", 400, "cannot be read: Can not decode content-encoding"),
        (post(port, b"", "Content-Length: 14"), b'{"reason": "x"', 400, "not valid JSON"),
        (post(port, b"", "Content-Length: 100"), b'{"reason":', 408, "did not arrive within 1 s"),
        (post(port, b"", "Content-Length: 100000"), b"{}", 413, "over 65536 bytes"),
    ]
    for head, body, status, reason in cases:
        response = await exchange(port, head, body)
        assert status_of(response) == status, (head, body, response)
        assert reason in orjson.loads(response.split(b"\r\n\r\n", 1)[1])["error"]
    async with http.post(base(daemon) + "/kill-switch", headers=GOOD, data="reason=x") as r:
        assert r.status == 415 and (await r.json())["error"] == "the body must be JSON"
    # broken chunking in the same segment as the headers is refused by aiohttp's parser itself
    response = await exchange(port, post(port, b"zz\r\nxx\r\n0\r\n\r\n", *chunked))
    assert status_of(response) == 400 and b"Invalid character in chunk size" in response
    assert switch(daemon).blocking() is None
    assert await metric(http, daemon, "reflexd_http_refused_total", reason="malformed") == 1
    assert await metric(http, daemon, "reflexd_http_refused_total", reason="body_unreadable") == 3
    assert await metric(http, daemon, "reflexd_http_refused_total", reason="body_timeout") == 1
    assert await metric(http, daemon, "reflexd_http_refused_total", reason="body_too_large") == 1
    assert await metric(http, daemon, "reflexd_http_errors_total") == 0
    assert "Traceback" not in console_log.getvalue()


async def test_malformed_http_is_counted_and_logged_once_without_traceback(
    run_daemon: StartDaemon, tmp_path: Path, http: aiohttp.ClientSession, console_log: io.StringIO
) -> None:
    """Malformed request lines and headers get aiohttp's 400, are counted, and are logged as one
    rate-limited line without a traceback (not one error with a traceback per request)."""
    daemon = await start(run_daemon, tmp_path)
    assert daemon.http is not None
    port = daemon.http.port
    bad = [
        b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 10_000 + b"\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n",  # a TLS hello
    ] * 4
    for request in bad:
        assert status_of(await exchange(port, request)) == 400, request
    logged = console_log.getvalue()
    assert "Traceback" not in logged and "aiohttp.server" not in logged
    assert logged.count("malformed HTTP request refused") == 1
    assert await metric(http, daemon, "reflexd_http_refused_total", reason="malformed") == len(bad)
    async with http.get(base(daemon) + "/healthz") as r:
        assert r.status == 200


# -- slow clients --------------------------------------------------------------------------------


async def test_slowloris_and_idle_connections_are_closed_and_capped_while_healthz_answers(
    run_daemon: StartDaemon, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """200 connections trickling a header one byte at a time and 200 idle ones: at most
    max_connections stay open on the server, /healthz keeps answering, and every one of them is
    closed by the server once request_timeout_seconds has passed since it connected."""
    daemon = await start(run_daemon, tmp_path, request_timeout_seconds=2, max_connections=100)
    ops = daemon.http
    assert ops is not None
    closed: list[float] = []
    writers: list[asyncio.StreamWriter] = []

    async def client(slow: bool) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", ops.port)
        writers.append(writer)
        if slow:
            writer.write(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{ops.port}\r\nX-Slow: ".encode())

        async def trickle() -> None:
            while slow and not writer.is_closing():
                await asyncio.sleep(0.25)
                writer.write(b"a")

        dribble = asyncio.create_task(trickle())
        try:
            await reader.read()  # returns when the server closes
        except ConnectionError:
            pass
        finally:
            dribble.cancel()
            closed.append(time.monotonic())

    tasks = []
    for batch in range(8):  # batches of 50: a burst of 400 connects would overflow the accept queue
        tasks += [asyncio.create_task(client(slow=batch % 2 == 0)) for _ in range(50)]
        await asyncio.sleep(0.05)
    try:
        await wait_for(lambda: ops.open_connections() + len(closed) >= 400, what="400 connections accepted")
        assert ops.open_connections() <= 100
        async with http.get(base(daemon) + "/healthz") as r:
            assert r.status == 200
        await wait_for(lambda: len(closed) == 400, within=30, what=lambda: f"{len(closed)} of 400 closed")
        assert ops.open_connections() <= 1  # the client session's own keep-alive connection
        assert ops.stats.connections_evicted >= 300 - 1
    finally:
        for task in tasks:
            task.cancel()
        for writer in writers:
            writer.close()


async def test_connection_cap_refuses_when_every_connection_is_busy(
    run_daemon: StartDaemon, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """At max_connections with every connection inside a request (authenticated POSTs whose bodies
    stall), a new connection gets 503 and is closed; the stalled requests end with 408."""
    daemon = await start(
        run_daemon, tmp_path, token="${REFLEXD_OPS_TOKEN}", request_timeout_seconds=2, max_connections=2
    )
    assert daemon.http is not None
    port = daemon.http.port
    stalled = [asyncio.create_task(exchange(port, post(port, b"{", "Content-Length: 50"))) for _ in range(2)]
    await wait_for(lambda: daemon.http is not None and len(daemon.http._busy) == 2, what="2 busy requests")
    response = await exchange(port, f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    assert status_of(response) == 503
    assert [status_of(r) for r in await asyncio.gather(*stalled)] == [408, 408]
    assert daemon.http.stats.connections_refused == 1
    async with http.get(base(daemon) + "/healthz") as r:
        assert r.status == 200


# -- log lines cannot be forged ------------------------------------------------------------------


async def test_console_log_line_with_a_newline_in_the_reason_stays_one_line(
    run_daemon: StartDaemon, tmp_path: Path, http: aiohttp.ClientSession, console_log: io.StringIO
) -> None:
    """A kill-switch reason carrying a line break and a forged record is written escaped inside the
    one 'kill switch engaged' line: every line of the log still starts with a real timestamp."""
    daemon = await start(run_daemon, tmp_path, token="${REFLEXD_OPS_TOKEN}")
    forged = "12:00:00.000 WARNING reflexd.http: kill switch released over HTTP"
    reason = f"ok\n{forged}\r\x1b[2K\u2028end"
    async with http.post(base(daemon) + "/kill-switch", headers=GOOD, json={"reason": reason}) as r:
        assert r.status == 200
    lines = console_log.getvalue().split("\n")
    engaged = [line for line in lines if "kill switch engaged" in line]
    assert len(engaged) == 1 and "reason=ok\\n12:00:00.000 WARNING" in engaged[0]
    assert "\\r\\x1b[2K\\u2028" in engaged[0]
    assert not any(line.startswith(forged) for line in lines)
    assert all(re.match(r"\d\d:\d\d:\d\d\.\d{3} ", line) for line in lines if line)


def emit_hostile_records() -> None:
    log = get_logger("t.escape")
    log.warning("msg\nINJECTED", extra={"fields": {"k\n": "v\r\nINJECTED", "n": ["a\nb"]}})
    try:
        raise ValueError("boom\n00:00:00.000 ERROR   reflexd.x: INJECTED")
    except ValueError:
        log.exception("failed")


def test_console_lines_escape_control_characters_and_indent_tracebacks() -> None:
    """The console format keeps one record on one line whatever the message or a field holds, and
    indents traceback lines so an exception's text cannot pass for a record."""
    with captured_log("console") as out:
        emit_hostile_records()
    lines = out.getvalue().splitlines()
    records = [line for line in lines if not line.startswith("  ")]
    assert len(records) == 2
    assert "msg\\nINJECTED" in records[0] and "k\\n=v\\r\\nINJECTED" in records[0]
    assert "Traceback" in out.getvalue()
    assert not any(line.startswith(("INJECTED", "00:00")) for line in lines)


def test_json_lines_escape_control_characters() -> None:
    """The JSON format writes each record, traceback included, as one line that decodes back to
    the original text."""
    with captured_log("json") as out:
        emit_hostile_records()
    lines = out.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 3
    first, second = (orjson.loads(line) for line in lines[:2])
    assert first["msg"] == "msg\nINJECTED" and first["k\n"] == "v\r\nINJECTED"
    assert "INJECTED" in second["exc"]
