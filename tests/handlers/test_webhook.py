"""The webhook tool against real local aiohttp servers (127.0.0.1, port 0; no mocks of aiohttp).

Delivery through the real ToolRunner (R7 / issue acceptance), status semantics (H2), idempotency
and signatures (H3), capped reads (H4), per-target concurrency (H5), hangs (H1), and the SSRF
guard end to end (C6). Only loopback is ever connected to: refused targets are refused before a
request starts, and a trace hook aborts any request that would leave the machine.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import io
import logging
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict
from pydantic import ValidationError

from daemon.config import load_config_text
from daemon.errors import ToolError
from daemon.registry import BuildContext, builtin_registry
from handlers.base import CallContext
from handlers.netguard import parse_ip_literal
from handlers.runner import ToolRunner
from handlers.webhook import SPEC, WebhookTool, WebhookToolConfig, parse_retry_after
from streams.event import Event
from tests.conftest import StartDaemon
from tests.handlers.test_netguard import NAMES, SSRF_TABLE, StaticResolver
from tests.servers import wait_for

# -- a recording target server -----------------------------------------------------------------------


@dataclass
class Hit:
    at: float  # time.monotonic() when the server received the request
    wall: float  # time.time() at the same moment
    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes
    query: dict[str, str] = field(default_factory=dict)  # the decoded query string


Respond = Callable[[web.Request, "Hit", int], Awaitable[web.StreamResponse]]


async def answer_200(request: web.Request, hit: Hit, index: int) -> web.StreamResponse:
    return web.Response(status=200, text="ok")


class Target:
    """An aiohttp server that records every request and answers with ``respond(request, hit, index)``."""

    def __init__(self, respond: Respond, host: str) -> None:
        self.respond = respond
        self.host = host
        self.hits: list[Hit] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = asyncio.Event()  # hanging handlers wait on it; set at teardown
        self.port = 0

    async def start(self) -> Target:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    def url(self, path: str = "/hook", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [h.path for h in self.hits]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        at, wall = time.monotonic(), time.time()
        hit = Hit(at, wall, request.method, request.path, CIMultiDict(request.headers), await request.read())
        hit.query = dict(request.query)
        self.hits.append(hit)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self.respond(request, hit, len(self.hits) - 1)
        finally:
            self.in_flight -= 1

    async def stop(self) -> None:
        self.release.set()
        await self._runner.cleanup()


StartTarget = Callable[..., Awaitable[Target]]
MakeTool = Callable[..., Awaitable[WebhookTool]]


@pytest.fixture
async def target() -> AsyncIterator[StartTarget]:
    """``await target(respond, host="127.0.0.1")`` → a started :class:`Target`; all stopped after the test."""
    started: list[Target] = []

    async def start(respond: Respond = answer_200, host: str = "127.0.0.1") -> Target:
        t = Target(respond, host)
        started.append(t)
        return await t.start()

    yield start
    for t in reversed(started):
        await t.stop()


def config(url: str, **kw: Any) -> WebhookToolConfig:
    """A webhook config for a loopback target (allow_private_networks on unless overridden)."""
    return WebhookToolConfig.model_validate(
        {"type": "webhook", "url": url, "allow_private_networks": True, **kw}
    )


@pytest.fixture
async def make_tool() -> AsyncIterator[MakeTool]:
    """``await make_tool(config, **tool_kwargs)`` → a started :class:`WebhookTool`; all stopped after the test."""
    tools: list[WebhookTool] = []

    async def make(cfg: WebhookToolConfig, **kwargs: Any) -> WebhookTool:
        tool = WebhookTool("hook", cfg, **kwargs)
        tools.append(tool)
        await tool.start()
        return tool

    yield make
    for tool in tools:
        await tool.stop()


def ctx(i: int = 0, key: str | None = None) -> CallContext:
    """The context of call 0 of rule ``rule`` for event ``i``: call_id ``rule:ev{i}:0``."""
    event = Event("src", float(i), float(i), key if key is not None else f"k{i}", {"i": i}, {})
    return CallContext("hook", "rule", event, f"rule:ev{i}:0")


def fast_retry(max_attempts: int = 4) -> dict[str, Any]:
    return {
        "max_attempts": max_attempts,
        "initial_seconds": 0.01,
        "multiplier": 1,
        "max_seconds": 0.05,
        "jitter_ratio": 0.5,
    }


def status(code: int, headers: Mapping[str, str] | None = None, text: str = "") -> Respond:
    async def respond(request: web.Request, hit: Hit, index: int) -> web.StreamResponse:
        return web.Response(status=code, headers=headers, text=text)

    return respond


# -- acceptance: 1,000 events through the runner ------------------------------------------------------


async def test_acceptance_1000_events_exactly_once_with_500s_and_429_retry_after(target: StartTarget) -> None:
    """1,000 events through the real runner against a target failing every 10th first attempt (500) and every 37th
    (429, Retry-After: 1): all delivered once, attempts exactly as implied, one key per event, Retry-After honoured."""

    def first_attempt_failure(i: int) -> int | None:
        if i % 37 == 36:
            return 429
        if i % 10 == 9:
            return 500
        return None

    attempts_by_key: Counter[str] = Counter()
    applied: set[str] = set()  # the receiver's dedupe: an idempotency key takes effect once
    effects: Counter[int] = Counter()
    answered_2xx: Counter[str] = Counter()

    async def respond(request: web.Request, hit: Hit, index: int) -> web.StreamResponse:
        key = hit.headers["Idempotency-Key"]
        i = orjson.loads(hit.body)["i"]
        attempts_by_key[key] += 1
        failure = first_attempt_failure(i) if attempts_by_key[key] == 1 else None
        if failure == 429:
            return web.Response(status=429, headers={"Retry-After": "1"})
        if failure == 500:
            return web.Response(status=500)
        if key not in applied:
            applied.add(key)
            effects[i] += 1
        answered_2xx[key] += 1
        return web.Response(status=204)

    server = await target(respond)
    tool = WebhookTool(
        "hook", config(server.url(), concurrency=32, max_pending=2000, timeout_seconds=5, retry=fast_retry())
    )
    runner = ToolRunner({"hook": tool})
    started = time.monotonic()
    await runner.start()
    try:
        for i in range(1000):
            assert runner.submit("hook", {"i": i, "text": f"event {i}"}, ctx(i))
        stats = runner.stats("hook")
        await wait_for(lambda: stats.succeeded + stats.failures == 1000, within=30)
    finally:
        await runner.stop(5)
    elapsed = time.monotonic() - started

    failing = [i for i in range(1000) if first_attempt_failure(i) is not None]
    throttled = [i for i in range(1000) if first_attempt_failure(i) == 429]
    assert (len(failing), len(throttled)) == (125, 27)  # 100 tenths + 27 thirty-sevenths - 2 overlaps
    assert stats.succeeded == 1000 and stats.failures == 0
    assert len(server.hits) == stats.attempts == 1000 + len(failing) == 1125
    assert stats.retries == len(failing)
    assert effects == Counter(range(1000))  # every event took effect exactly once at the receiver
    assert set(answered_2xx.values()) == {1}  # and was even answered 2xx only once

    by_event: defaultdict[int, list[Hit]] = defaultdict(list)
    for hit in server.hits:
        by_event[orjson.loads(hit.body)["i"]].append(hit)
    for i in range(1000):
        hits = by_event[i]
        assert len(hits) == (2 if i in failing else 1), i
        call_id = f"rule:ev{i}:0"
        assert {h.headers["webhook-id"] for h in hits} == {call_id}
        assert {h.headers["Idempotency-Key"] for h in hits} == {call_id}
    waits = [by_event[i][1].at - by_event[i][0].at for i in throttled]
    assert min(waits) >= 1.0 - 0.005, min(waits)  # Retry-After: 1, per the server's own receive times
    print(
        f"\n1,000 events, 1,125 attempts in {elapsed:.2f}s; Retry-After waits {min(waits):.3f}-{max(waits):.3f}s"
    )


# -- H2 status semantics -----------------------------------------------------------------------------

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("code", "headers", "retryable", "retry_after"),
    [
        (200, {}, None, None),
        (201, {}, None, None),
        (204, {}, None, None),
        (400, {}, False, None),
        (401, {}, False, None),
        (404, {}, False, None),
        (422, {}, False, None),
        (408, {}, True, None),
        (425, {}, True, None),
        (429, {"Retry-After": "3"}, True, 3.0),
        (429, {"Retry-After": "999999"}, True, 3600.0),
        (500, {}, True, None),
        (502, {}, True, None),
        (503, {"Retry-After": formatdate(NOW + 7, usegmt=True)}, True, 7.0),
        (503, {"Retry-After": "soon"}, True, None),
        (504, {}, True, None),
    ],
)
async def test_status_semantics(
    target: StartTarget,
    make_tool: MakeTool,
    code: int,
    headers: dict[str, str],
    retryable: bool | None,
    retry_after: float | None,
) -> None:
    """2xx succeeds; 408/425/429/5xx are retryable with Retry-After parsed (seconds or HTTP-date, capped); other 4xx
    fail for good."""
    server = await target(status(code, headers))
    tool = await make_tool(config(server.url()), clock=lambda: NOW)
    if retryable is None:
        result = await tool.call({"x": 1}, ctx())
        assert result == {"status": code, "bytes": 0, "truncated": False}
    else:
        with pytest.raises(ToolError) as info:
            await tool.call({"x": 1}, ctx())
        assert info.value.retryable is retryable
        assert info.value.retry_after == retry_after
        assert f"HTTP {code}" in str(info.value)
    assert len(server.hits) == 1


async def test_302_is_not_followed_by_default(target: StartTarget, make_tool: MakeTool) -> None:
    """A 302 fails for good when follow_redirects is off; the Location is never requested."""
    server = await target(status(302, {"Location": "/elsewhere"}))
    tool = await make_tool(config(server.url()))
    with pytest.raises(ToolError, match=r"302 redirect .* not followed") as info:
        await tool.call({}, ctx())
    assert not info.value.retryable
    assert server.paths() == ["/hook"]


async def test_410_disables_the_tool_until_reload(
    target: StartTarget, make_tool: MakeTool, caplog: pytest.LogCaptureFixture
) -> None:
    """410 Gone disables the tool: later calls fail fast without a request, non-retryable; logged once at error."""
    server = await target(status(410))
    cfg = config(server.url())
    tool = await make_tool(cfg)
    with caplog.at_level(logging.INFO, logger="reflexd"):
        with pytest.raises(ToolError, match="410 Gone") as first:
            await tool.call({}, ctx(1))
        for i in range(2, 5):
            with pytest.raises(ToolError, match="disabled after HTTP 410") as later:
                await tool.call({}, ctx(i))
            assert not later.value.retryable
    assert not first.value.retryable
    assert len(server.hits) == 1
    assert tool.disabled is not None
    assert [r.levelno for r in caplog.records if "410" in r.getMessage()] == [logging.ERROR]
    reloaded = await make_tool(cfg)  # a reload builds a new tool: enabled again
    with pytest.raises(ToolError, match="410 Gone"):
        await reloaded.call({}, ctx(9))
    assert len(server.hits) == 2


async def test_runner_retries_503_on_schedule_and_never_400(target: StartTarget) -> None:
    """Through the runner a 503 is retried up to max_attempts; a 400 gets exactly one attempt (R10)."""
    s400 = await target(status(400))
    s503 = await target(status(503))
    tools = {
        "bad": WebhookTool("bad", config(s400.url(), retry=fast_retry(3))),
        "down": WebhookTool("down", config(s503.url(), retry=fast_retry(3))),
    }
    runner = ToolRunner(tools)
    await runner.start()
    try:
        runner.submit("bad", {}, ctx(1)._replace(tool="bad"))
        runner.submit("down", {}, ctx(2)._replace(tool="down"))
        await wait_for(lambda: runner.stats("bad").failures == 1 and runner.stats("down").failures == 1)
    finally:
        await runner.stop(5)
    assert (len(s400.hits), len(s503.hits)) == (1, 3)
    assert runner.stats("down").retries == 2 and runner.stats("bad").retries == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("86400", 3600.0),
        ("99999999999999999999", None),
        ("-5", None),
        ("soon", None),
        (formatdate(NOW + 30, usegmt=True), 30.0),
        (formatdate(NOW - 30, usegmt=True), 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Retry-After: delay-seconds or HTTP-date, never negative, capped at one hour; garbage is ignored."""
    assert parse_retry_after(value, NOW) == expected


# -- H1 a hanging target ------------------------------------------------------------------------------


async def test_hanging_target_is_cut_at_the_timeout_and_retried(target: StartTarget) -> None:
    """A target that never answers is aborted at timeout_seconds per attempt and retried (H1)."""

    async def hang(request: web.Request, hit: Hit, index: int) -> web.StreamResponse:
        await server.release.wait()
        return web.Response()

    server = await target(hang)
    runner = ToolRunner(
        {"hook": WebhookTool("hook", config(server.url(), timeout_seconds=0.3, retry=fast_retry(2)))}
    )
    await runner.start()
    started = time.monotonic()
    try:
        runner.submit("hook", {}, ctx())
        await wait_for(lambda: runner.stats("hook").failures == 1)
    finally:
        await runner.stop(1)
    elapsed = time.monotonic() - started
    assert runner.stats("hook").timeouts == 2 and len(server.hits) == 2
    assert elapsed >= 0.6, elapsed  # two attempts, each held until its 0.3 s timeout (no upper bound: load)


# -- H3 idempotency and signatures ------------------------------------------------------------------


def verify_signature(key: bytes, headers: Mapping[str, str], body: bytes) -> bool:
    """Standard Webhooks verification, receiver side, with a constant-time compare."""
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    for candidate in headers["webhook-signature"].split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return True
    return False


async def test_signature_and_idempotency_across_retries(target: StartTarget) -> None:
    """3 failures then success: 4 attempts, one webhook-id, a fresh timestamp each, every signature verifies,
    and the receiver's dedupe sees one effect (H3)."""
    key = b"0123456789abcdef0123456789abcdef"
    secret = "whsec_" + base64.b64encode(key).decode()
    effects: set[str] = set()
    verified: list[bool] = []

    async def respond(request: web.Request, hit: Hit, index: int) -> web.StreamResponse:
        verified.append(verify_signature(key, hit.headers, hit.body))
        if index < 3:
            return web.Response(status=503)
        effects.add(hit.headers["webhook-id"])
        return web.Response(status=200)

    ticks = iter(range(10**6))
    server = await target(respond)
    tool = WebhookTool(
        "hook",
        config(server.url(), signing_secret=secret, retry=fast_retry(5)),
        clock=lambda: NOW + 10 * next(ticks),  # each reading of the clock is 10 s later
    )
    runner = ToolRunner({"hook": tool})
    await runner.start()
    try:
        runner.submit("hook", {"alert": "x"}, ctx(7))
        await wait_for(lambda: runner.stats("hook").succeeded == 1)
    finally:
        await runner.stop(5)
    assert len(server.hits) == 4 and verified == [True] * 4
    assert {h.headers["webhook-id"] for h in server.hits} == {"rule:ev7:0"}
    stamps = [int(h.headers["webhook-timestamp"]) for h in server.hits]
    assert stamps == sorted(set(stamps)) and len(stamps) == 4  # recomputed for every attempt
    assert effects == {"rule:ev7:0"}
    tampered = server.hits[0]
    assert not verify_signature(key, tampered.headers, tampered.body + b" ")  # the verifier can fail


async def test_raw_secret_signature_and_real_timestamp(target: StartTarget, make_tool: MakeTool) -> None:
    """A secret without whsec_ is used as UTF-8; webhook-timestamp is the current Unix time in seconds."""
    server = await target()
    tool = await make_tool(config(server.url(), signing_secret="plain-secret-value"))
    await tool.call({"a": [1, 2, 3]}, ctx())
    (hit,) = server.hits
    assert verify_signature(b"plain-secret-value", hit.headers, hit.body)
    assert abs(int(hit.headers["webhook-timestamp"]) - hit.wall) <= 1.5
    assert orjson.loads(hit.body) == {"a": [1, 2, 3]}
    assert hit.headers["Content-Type"] == "application/json"


async def test_idempotency_headers_without_signing(target: StartTarget, make_tool: MakeTool) -> None:
    """Without a secret the call id is still sent as webhook-id and Idempotency-Key; no signature header."""
    server = await target()
    tool = await make_tool(config(server.url()))
    await tool.call({}, ctx(3))
    (hit,) = server.hits
    assert hit.headers["webhook-id"] == hit.headers["Idempotency-Key"] == "rule:ev3:0"
    assert "webhook-signature" not in hit.headers


# -- H4 capped reads --------------------------------------------------------------------------------


async def test_huge_body_read_is_capped(target: StartTarget, make_tool: MakeTool) -> None:
    """A 50 MB streamed answer is read only up to max_response_bytes; the call ends promptly (H4)."""
    sent = 0

    async def flood(request: web.Request, hit: Hit, index: int) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse(status=200)
        await resp.prepare(request)
        chunk = b"x" * 65536
        try:
            for _ in range(800):  # 50 MiB
                await resp.write(chunk)
                sent += len(chunk)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass
        return resp

    server = await target(flood)
    tool = await make_tool(config(server.url()))
    started = time.monotonic()
    result = await tool.call({}, ctx())
    elapsed = time.monotonic() - started
    assert result == {"status": 200, "bytes": 64 * 1024, "truncated": True}
    assert elapsed < 30, elapsed  # the read stopped at the cap: reading 50 MiB would take far longer
    await wait_for(lambda: server.in_flight == 0)
    assert sent < 50 * 1024 * 1024  # the client hung up instead of draining
    small = await make_tool(config(server.url(), max_response_bytes=1000))
    assert await small.call({}, ctx()) == {"status": 200, "bytes": 1000, "truncated": True}


async def test_small_body_is_not_truncated(target: StartTarget, make_tool: MakeTool) -> None:
    """A body under the cap is read whole and reported as not truncated."""
    server = await target(status(200, text="y" * 5000))
    tool = await make_tool(config(server.url()))
    assert await tool.call({}, ctx()) == {"status": 200, "bytes": 5000, "truncated": False}


async def test_gzip_bomb_is_never_inflated(target: StartTarget, make_tool: MakeTool) -> None:
    """A gzip-encoded 20 MB of zeros is counted as its compressed bytes: nothing is decompressed."""
    bomb = gzip.compress(b"\0" * 20_000_000)

    async def respond(request: web.Request, hit: Hit, index: int) -> web.StreamResponse:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip"})

    server = await target(respond)
    tool = await make_tool(config(server.url()))
    assert await tool.call({}, ctx()) == {"status": 200, "bytes": len(bomb), "truncated": False}
    assert server.hits[0].headers["Accept-Encoding"] == "identity"


# -- H5 per-target concurrency ------------------------------------------------------------------------


async def test_per_target_concurrency_is_bounded(target: StartTarget) -> None:
    """200 calls to a slow target: the server never sees more than `concurrency` requests at once (H5)."""

    async def slow(request: web.Request, hit: Hit, index: int) -> web.StreamResponse:
        await asyncio.sleep(0.01)
        return web.Response()

    server = await target(slow)
    runner = ToolRunner({"hook": WebhookTool("hook", config(server.url(), concurrency=4))})
    await runner.start()
    try:
        for i in range(200):
            runner.submit("hook", {"i": i}, ctx(i))
        await wait_for(lambda: runner.stats("hook").succeeded == 200, within=10)
    finally:
        await runner.stop(5)
    assert len(server.hits) == 200
    assert server.max_in_flight == 4


# -- templates, methods, headers ----------------------------------------------------------------------


async def test_url_and_headers_are_rendered_from_the_event(target: StartTarget, make_tool: MakeTool) -> None:
    """The URL path and header values are templates over the event; configured headers are sent."""
    server = await target()
    url = server.url("/hook/{key}/{data.i}")
    tool = await make_tool(config(url, headers={"X-Symbol": "{key}", "X-Static": "v"}))
    await tool.call({}, ctx(5, key="BTC"))
    (hit,) = server.hits
    assert hit.path == "/hook/BTC/5"
    assert (hit.headers["X-Symbol"], hit.headers["X-Static"]) == ("BTC", "v")


async def test_header_injection_from_event_data_is_refused(target: StartTarget, make_tool: MakeTool) -> None:
    """A rendered header value with a line break is refused before any request."""
    server = await target()
    tool = await make_tool(config(server.url(), headers={"X-Symbol": "{key}"}))
    with pytest.raises(ToolError, match="line break") as info:
        await tool.call({}, ctx(1, key="BTC\r\nX-Evil: 1"))
    assert not info.value.retryable and server.hits == []


async def test_get_sends_no_body_and_signs_the_empty_body(target: StartTarget, make_tool: MakeTool) -> None:
    """GET carries no body (its data goes in the URL template); the signature covers the empty body."""
    server = await target()
    tool = await make_tool(config(server.url("/q/{key}"), method="GET", signing_secret="s3cret"))
    await tool.call({"ignored": True}, ctx(2))
    (hit,) = server.hits
    assert (hit.method, hit.path, hit.body) == ("GET", "/q/k2", b"")
    assert "Content-Type" not in hit.headers
    assert verify_signature(b"s3cret", hit.headers, b"")


async def test_secrets_never_reach_logs_or_errors(
    target: StartTarget, caplog: pytest.LogCaptureFixture
) -> None:
    """Header values and the signing secret appear in no log record, error, repr or summary."""
    server = await target(status(400))
    token, secret = "tok-SENSITIVE-123", "whsec_" + base64.b64encode(b"key-SENSITIVE-456").decode()
    cfg = config(
        server.url(), headers={"Authorization": f"Bearer {token}"}, signing_secret=secret, retry=fast_retry(1)
    )
    runner = ToolRunner({"hook": WebhookTool("hook", cfg)})
    with caplog.at_level(logging.DEBUG):
        await runner.start()
        try:
            runner.submit("hook", {}, ctx())
            await wait_for(lambda: runner.stats("hook").failures == 1)
        finally:
            await runner.stop(5)
    assert server.hits[0].headers["Authorization"] == f"Bearer {token}"  # it was sent
    shown = caplog.text + repr(cfg) + str(SPEC.summary(cfg))
    for record in caplog.records:
        shown += str(getattr(record, "fields", ""))
    assert token not in shown and "SENSITIVE" not in shown and secret not in shown


# -- configuration --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"url": "ftp://example.com/x"}, "http:// or https://"),
        ({"url": "https://example.com/{nope(}"}, "invalid template"),
        ({"headers": {"Idempotency-Key": "x"}}, "set by the tool"),
        ({"headers": {"webhook-signature": "x"}}, "set by the tool"),
        ({"headers": {"Bad Name": "x"}}, "not a valid HTTP token"),
        ({"headers": {"X-A": "secret-A\r\nX-B: 1"}}, "line break"),
        ({"headers": {"X-A": "secret-B{"}}, "invalid template"),
        ({"signing_secret": "whsec_!!secret-C!!"}, "base64"),
        ({"method": "GET", "body": "json"}, "GET request carries no body"),
        ({"allowed_networks": ["10.0.0.0/33"]}, "10.0.0.0/33"),
        ({"max_response_bytes": -1}, "greater than or equal"),
    ],
)
def test_config_errors_are_clear_and_never_echo_secrets(overrides: dict[str, Any], message: str) -> None:
    """Bad configurations are refused with a clear message that never contains a header value or secret."""
    raw = {"type": "webhook", "url": "https://example.com/hook", **overrides}
    with pytest.raises(ValidationError) as info:
        WebhookToolConfig.model_validate(raw)
    text = "; ".join(str(e.get("ctx", {}).get("error", e["msg"])) for e in info.value.errors())
    assert message in text
    assert "secret-" not in text


def test_spec_example_builds_and_summary_hides_values() -> None:
    """The registry SPEC: its example validates and builds a WebhookTool; the summary shows header names only."""
    cfg = SPEC.config_model.model_validate(dict(SPEC.example))
    tool = SPEC.factory("x", cfg, BuildContext(Path(".")))
    assert isinstance(tool, WebhookTool) and (SPEC.kind, SPEC.type) == ("tool", "webhook")
    with_headers = WebhookToolConfig.model_validate(
        {**SPEC.example, "headers": {"Authorization": "Bearer abc"}, "signing_secret": "whsec_c2VjcmV0"}
    )
    summary = dict(SPEC.summary(with_headers))
    assert summary["headers"] == ["Authorization"] and summary["signed"] is True
    assert "Bearer abc" not in str(summary) and "c2VjcmV0" not in str(summary)


# -- redirects -------------------------------------------------------------------------------------------


async def test_followed_redirect_same_origin_and_303_becomes_get(
    target: StartTarget, make_tool: MakeTool
) -> None:
    """With follow_redirects a same-origin 307 keeps method and body; a 303 switches to GET without a body."""

    async def respond(request: web.Request, hit: Hit, index: int) -> web.StreamResponse:
        if hit.path == "/hook":
            return web.Response(status=307, headers={"Location": "/moved"})
        if hit.path == "/moved":
            return web.Response(status=303, headers={"Location": "/done"})
        return web.Response(status=200)

    server = await target(respond)
    tool = await make_tool(config(server.url(), follow_redirects=True))
    result = await tool.call({"a": 1}, ctx())
    assert result["redirects"] == 2
    assert [(h.method, h.path, h.body) for h in server.hits] == [
        ("POST", "/hook", b'{"a":1}'),
        ("POST", "/moved", b'{"a":1}'),
        ("GET", "/done", b""),
    ]
    assert {h.headers["webhook-id"] for h in server.hits} == {"rule:ev0:0"}


async def test_cross_origin_redirect_drops_configured_headers(
    target: StartTarget, make_tool: MakeTool
) -> None:
    """Configured headers (credentials) are not sent to another origin; the idempotency key still is."""
    other = await target()

    async def respond(request: web.Request, hit: Hit, index: int) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": other.url("/there")})

    first = await target(respond)
    tool = await make_tool(config(first.url(), follow_redirects=True, headers={"Authorization": "Bearer t"}))
    assert (await tool.call({}, ctx(4)))["redirects"] == 1
    assert first.hits[0].headers["Authorization"] == "Bearer t"
    (hit,) = other.hits
    assert "Authorization" not in hit.headers and hit.headers["webhook-id"] == "rule:ev4:0"


async def test_redirect_to_loopback_is_refused(target: StartTarget, make_tool: MakeTool) -> None:
    """A followed redirect to 127.0.0.1 (or to a name resolving there) is refused before connecting."""
    sentinel = await target()  # on 127.0.0.1: must never be reached

    async def respond(request: web.Request, hit: Hit, index: int) -> web.StreamResponse:
        location = sentinel.url() if hit.path == "/hook" else sentinel.url(host="internal.test")
        return web.Response(status=302, headers={"Location": location})

    redirector = await target(respond, host="127.0.0.2")  # the one address this tool may reach
    cfg = config(
        redirector.url(),
        follow_redirects=True,
        allow_private_networks=False,
        allowed_networks=["127.0.0.2/32"],
    )
    for path in ("/hook", "/by-name"):
        tool = await make_tool(
            cfg.model_copy(update={"url": redirector.url(path)}), resolver=StaticResolver(NAMES)
        )
        with pytest.raises(ToolError, match="refused by the SSRF guard") as info:
            await tool.call({}, ctx())
        assert not info.value.retryable
    assert redirector.paths() == ["/hook", "/by-name"]
    assert sentinel.hits == []


# -- SSRF end to end ------------------------------------------------------------------------------------


def guard_tracer(events: list[str]) -> aiohttp.TraceConfig:
    """Records requests and established connections; aborts any request towards a literal address.

    With the guard working, literal hosts never get as far as a request, and names never get a
    connection. If it were broken, the hook stops the request before a packet could leave the machine.
    """
    trace = aiohttp.TraceConfig()

    async def on_request_start(session: Any, context: SimpleNamespace, params: Any) -> None:
        host = params.url.raw_host or ""
        events.append(f"request {host}")
        if parse_ip_literal(host) is not None:
            raise RuntimeError(f"the guard let a request to literal {host} start")

    async def on_connection(session: Any, context: SimpleNamespace, params: Any) -> None:
        events.append("connected")

    trace.on_request_start.append(on_request_start)
    trace.on_connection_create_end.append(on_connection)
    return trace


@pytest.mark.parametrize(("host", "why"), SSRF_TABLE)
async def test_ssrf_forms_refused_end_to_end(
    target: StartTarget, make_tool: MakeTool, host: str, why: str
) -> None:
    """Each SSRF form, as a webhook URL with the default config: refused before any connection, non-retryable."""
    sentinel = await target()
    events: list[str] = []
    cfg = config(f"http://{host}:{sentinel.port}/hook", allow_private_networks=False)
    tool = await make_tool(cfg, resolver=StaticResolver(NAMES), trace_configs=[guard_tracer(events)])
    with pytest.raises(ToolError) as info:
        await tool.call({}, ctx())
    assert "refused by the SSRF guard" in str(info.value) and why.lower() in str(info.value).lower()
    assert not info.value.retryable
    assert "connected" not in events and sentinel.hits == []


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "0x7f.1", "0x7f000001", "internal.test", "[::ffff:127.0.0.1]", "0.0.0.0"],
)
async def test_loopback_forms_reach_the_target_when_allowed(
    target: StartTarget, make_tool: MakeTool, host: str
) -> None:
    """With allow_private_networks the loopback spellings connect to the checked address and are delivered."""
    sentinel = await target()
    tool = await make_tool(config(f"http://{host}:{sentinel.port}/hook"), resolver=StaticResolver(NAMES))
    assert (await tool.call({}, ctx()))["status"] == 200
    assert sentinel.paths() == ["/hook"]


@pytest.mark.parametrize("host", ["2130706433", "0177.0.0.1", "127.1"])
async def test_all_digit_legacy_forms_are_rejected_by_aiohttp_when_allowed(
    target: StartTarget, make_tool: MakeTool, host: str
) -> None:
    """Allowed by the guard, but aiohttp itself refuses non-canonical all-digit IPv4 hosts: invalid, not retried."""
    sentinel = await target()
    tool = await make_tool(config(f"http://{host}:{sentinel.port}/hook"))
    with pytest.raises(ToolError, match="invalid target") as info:
        await tool.call({}, ctx())
    assert not info.value.retryable and "SSRF" not in str(info.value)
    assert sentinel.hits == []


async def test_connection_refused_is_retryable(make_tool: MakeTool, target: StartTarget) -> None:
    """A target that is down (connection refused) is a retryable failure."""
    server = await target()
    url = server.url()
    await server.stop()
    tool = await make_tool(config(url))
    with pytest.raises(ToolError, match="talking to") as info:
        await tool.call({}, ctx())
    assert info.value.retryable


# -- values from ${VAR} are literal text, never templates -------------------------------------------------


async def test_env_values_in_url_headers_and_arguments_are_literal_text(
    target: StartTarget, run_daemon: StartDaemon, tmp_path: Path, debug_log: io.StringIO
) -> None:
    """Through the real loader and daemon: text from ${VAR} in the URL, in headers (alone or next to a template) and in
    rule arguments is sent exactly as it is (braces, escapes and placeholders included), while the file's own
    templates around it still render; the debug log holds none of it."""
    server = await target()
    feed = tmp_path / "trades.jsonl"
    feed.write_text('{"s": "BTC", "p": "65000.5", "T": 1768485600000}\n')
    env = {"SIG": "s{data.p}", "HDR": "ab{{cd}}p{key}", "ARG": "{data.p}", "LONE": "p}q{"}
    text = f"""
daemon: {{http: null, shutdown_timeout_seconds: 5}}
sources:
  trades: {{type: replay, path: "{feed}", speed: 0, key_field: s, time_field: T}}
tools:
  hook:
    type: webhook
    url: "http://127.0.0.1:{server.port}/hook/{{key}}?sig=${{SIG}}"
    headers: {{X-Secret: "${{HDR}}", X-Mixed: "{{key}}:${{HDR}}", X-Plain: "{{{{lit}}}}"}}
    allow_private_networks: true
rules:
  each:
    from: trades
    then:
      - tool: hook
        args: {{token: "${{ARG}}", nested: {{lone: "x${{LONE}}"}}, price: "{{data.p}}"}}
"""
    cfg = load_config_text(text, builtin_registry(), env=env)
    daemon = await run_daemon(cfg)
    await wait_for(lambda: len(server.hits) == 1, what="one webhook request")
    await daemon.stop()
    (hit,) = server.hits
    assert hit.path == "/hook/BTC"
    assert hit.headers["X-Secret"] == "ab{{cd}}p{key}"
    assert hit.headers["X-Mixed"] == "BTC:ab{{cd}}p{key}"
    assert hit.headers["X-Plain"] == "{lit}"  # the file's own escapes still work
    assert orjson.loads(hit.body) == {"token": "{data.p}", "nested": {"lone": "xp}q{"}, "price": "65000.5"}
    assert hit.query == {"sig": "s{data.p}"}
    logged = debug_log.getvalue()
    assert not any(value in logged for value in env.values())
