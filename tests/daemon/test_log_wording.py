"""What the log says, checked against real peers: a session that ended is not a failed connect, a
long graceful stop reports its progress, a permanent configuration error is one line."""

from __future__ import annotations

import asyncio
import io
import re
from typing import Any

import orjson
import pytest
from aiohttp import web

from daemon.config import load_config_text
from daemon.registry import builtin_registry
from daemon.supervisor import Daemon
from handlers.base import CallContext
from handlers.runner import ToolRunner
from handlers.webhook import WebhookTool, WebhookToolConfig
from streams.event import Event
from streams.reconnect import Reconnector
from streams.websocket import WebSocketSource, WebSocketSourceConfig
from tests.conftest import StartServer
from tests.plugins import SLEEPER
from tests.servers import Plan, wait_for


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]


async def _run_source(server_url: str, healthy_after: float, until: Any) -> None:
    reconnect = {"initial_seconds": 0.01, "max_seconds": 0.05, "healthy_after_seconds": healthy_after}
    cfg = WebSocketSourceConfig.model_validate(
        {"type": "websocket", "url": server_url, "reconnect": reconnect}
    )
    task = asyncio.create_task(Reconnector(WebSocketSource("feed", cfg), cfg.reconnect).run())
    try:
        await wait_for(until, what="the second session")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_session_that_ended_is_logged_with_its_duration_not_as_a_failed_connect(
    feed_server: StartServer, debug_log: io.StringIO
) -> None:
    """A refused handshake logs "connect attempt failed"; a session that was up ~0.4 s and then closed by the
    server logs "session ended after 0.4 s" with its reason, and is not called a failed connect attempt."""
    session = Plan(frames=['{"a": 1}', '{"a": 2}'], interval=0.4, after="close", close_code=1001)
    server = await feed_server([session, Plan()], reject=[503])
    await _run_source(server.url, 10.0, lambda: len(server.connections) == 2)

    lines = [line for line in _lines(debug_log) if line["logger"] == "reflexd.reconnect"]
    failed = [line for line in lines if line["msg"] == "connect attempt failed"]
    ended = [line for line in lines if line["msg"].startswith("session ended")]
    assert len(failed) == 1 and "503" in failed[0]["error"], lines
    assert len(ended) == 1, lines
    assert re.fullmatch(r"session ended after 0\.[4-9] s", ended[0]["msg"]), ended
    assert ended[0]["level"] == "warning" and 0.4 <= ended[0]["session_seconds"] < 5
    assert "1001" in ended[0]["error"] and ended[0]["retry_in_seconds"] >= 0


async def test_a_healthy_session_that_ended_says_how_long_it_lasted(
    feed_server: StartServer, debug_log: io.StringIO
) -> None:
    """A session past healthy_after_seconds that the server closes logs "session ended after N s;
    reconnecting" at info with the duration and the reason (the backoff resets, no failed attempt)."""
    session = Plan(frames=['{"a": 1}', '{"a": 2}'], interval=0.4, after="close", close_code=1001)
    server = await feed_server([session, Plan()])
    await _run_source(server.url, 0.2, lambda: len(server.connections) == 2)

    lines = [line for line in _lines(debug_log) if line["logger"] == "reflexd.reconnect"]
    ended = [line for line in lines if line["msg"].startswith("session ended")]
    assert not [line for line in lines if line["msg"] == "connect attempt failed"], lines
    assert len(ended) == 1 and ended[0]["level"] == "info", lines
    assert re.fullmatch(r"session ended after 0\.[4-9] s; reconnecting", ended[0]["msg"]), ended
    assert "1001" in ended[0]["error"]


async def test_a_graceful_stop_that_waits_for_calls_logs_its_progress(
    feed_server: StartServer, debug_log: io.StringIO
) -> None:
    """A stop that drains slow calls logs, while it waits, how many calls are still running and for which
    tool, then "stopped" once they finished (before: nothing between "stopping" and "stopped")."""
    server = await feed_server(Plan(frames=['{"n": 1}', '{"n": 2}', '{"n": 3}']))
    text = f"""
daemon: {{http: null, state_path: ":memory:", shutdown_timeout_seconds: 10}}
sources:
  feed: {{type: websocket, url: "{server.url}"}}
tools:
  slow: {{type: sleeper, seconds: 1.0, concurrency: 4}}
rules:
  r: {{from: [feed], then: [{{tool: slow, args: {{n: "{{data.n}}"}}}}]}}
"""
    cfg = load_config_text(text, builtin_registry().with_specs(SLEEPER), env={})
    daemon = Daemon(cfg)
    daemon.stop_progress_seconds = 0.3
    await daemon.start()
    try:
        await wait_for(lambda: daemon.runner.stats("slow").in_flight == 3, what="three calls running")
    finally:
        assert await daemon.stop() == []

    lines = [line for line in _lines(debug_log) if line["logger"] == "reflexd.daemon"]
    msgs = [line["msg"] for line in lines]
    progress = [line for line in lines if line["msg"].startswith("stopping: ")]
    assert progress, msgs
    assert progress[0]["msg"] == "stopping: 3 calls still running (tools: slow 3)", progress
    assert progress[0]["tools"] == {"slow": 3} and 0 < progress[0]["budget_left_seconds"] < 10
    assert msgs.index("stopping") < msgs.index(progress[0]["msg"]) < msgs.index("stopped")


async def _gone_server() -> tuple[web.AppRunner, str, list[int]]:
    hits: list[int] = []

    async def gone(_request: web.Request) -> web.Response:
        hits.append(410)
        return web.Response(status=410)

    app = web.Application()
    app.router.add_post("/hook", gone)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/hook", hits


@pytest.mark.parametrize("case", ["ssrf", "gone"])
async def test_a_permanent_configuration_error_is_one_line_without_a_traceback(
    case: str, debug_log: io.StringIO
) -> None:
    """A webhook to 127.0.0.1 without allow_private_networks (refused by the SSRF guard), and a target
    answering 410 Gone, each log exactly one line for the failed calls (error level, the reason, no
    traceback) — plus, for the 410, the tool's own line saying it disabled itself — not a warning plus a
    "tool call traceback"; the calls still fail and are counted."""
    server, url, hits = await _gone_server()
    allow = case == "gone"
    config = WebhookToolConfig.model_validate(
        {
            "type": "webhook",
            "url": url,
            "allow_private_networks": allow,
            "concurrency": 1,
            "retry": {"max_attempts": 1},
        }
    )
    runner = ToolRunner({"hook": WebhookTool("hook", config)})
    await runner.start()
    try:
        for i in range(3):
            event = Event("src", float(i), float(i), "k", {"i": i}, {})
            assert runner.submit("hook", {"i": i}, CallContext("hook", "rule", event, f"rule:ev{i}:0"))
        await wait_for(lambda: runner.stats("hook").failures == 3, what="three failed calls")
    finally:
        await runner.stop(5)
        await server.cleanup()

    lines = [line for line in _lines(debug_log) if line["level"] in ("warning", "error")]
    assert "Traceback" not in debug_log.getvalue() and all("exc_info" not in line for line in lines)
    calls = [line for line in lines if line["logger"] == "reflexd.runner"]
    assert len(calls) == 1, lines
    assert calls[0]["msg"] == "tool call failed: configuration problem" and calls[0]["level"] == "error"
    if case == "ssrf":
        assert lines == calls
        assert "allow_private_networks is off" in calls[0]["error"] and hits == []
    else:  # besides the calls' line, the tool's own line when it disables itself (once)
        assert [line["msg"] for line in lines if line not in calls] == [
            "webhook target is gone (410); tool disabled until reload"
        ]
        assert "410 Gone" in calls[0]["error"] and "disabled until reload" in calls[0]["error"]
        assert hits == [410]  # the tool disabled itself: the next calls were not sent
