"""daemon.tracing: the spans of a fire reach a real OTLP/HTTP receiver with the right links.

The receiver is an aiohttp server decoding the protobuf ``ExportTraceServiceRequest`` the SDK's
exporter posts (opentelemetry-proto); the daemons are real, fed by a real WebSocket server, a
real Kafka broker, the scripted model server through the real openai SDK, and a real webhook
receiver that records the headers it was sent.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from daemon.config import load_config_text
from daemon.registry import builtin_registry
from daemon.supervisor import Daemon
from tests.agent.scripted import Reply, ScriptedOpenAI
from tests.conftest import KafkaTopicFactory
from tests.servers import FeedServer, wait_for

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = builtin_registry()

#: a caller's span, as an upstream service would send it
UPSTREAM_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UPSTREAM_SPAN = "00f067aa0ba902b7"
UPSTREAM = f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent: str
    attributes: dict[str, Any]
    error: bool
    service: str


class OtlpReceiver:
    """``POST /v1/traces`` (OTLP/HTTP, protobuf): every span received, and the request headers."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.headers: list[dict[str, str]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.headers.append(dict(request.headers))
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        for resource_spans in message.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"),
                "",
            )
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    attributes = {a.key: _value(a.value) for a in s.attributes}
                    self.spans.append(
                        Span(
                            s.name,
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            attributes,
                            s.status.code == 2,  # STATUS_CODE_ERROR
                            service,
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    def named(self, prefix: str) -> list[Span]:
        return [s for s in self.spans if s.name.startswith(prefix)]

    def children(self, parent: Span, prefix: str = "") -> list[Span]:
        return [s for s in self.spans if s.parent == parent.span_id and s.name.startswith(prefix)]


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


class HookServer:
    """A webhook receiver: answers the statuses given in turn (then 200), records each request's headers."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[dict[str, str]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests.append(dict(request.headers))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.json_response({"ok": status == 200}, status=status)


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    server = OtlpReceiver()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def hook() -> AsyncIterator[HookServer]:
    server = HookServer([503])  # the first attempt fails retryably, the second succeeds
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def tracing(receiver: OtlpReceiver) -> dict[str, Any]:
    return {"endpoint": receiver.url, "service_name": "reflexd-test", "headers": {"x-api-key": "${OTLP_KEY}"}}


async def test_a_fire_is_one_trace_from_the_payloads_traceparent_to_the_webhook_it_calls(
    run_daemon: Callable[[Any], Awaitable[Daemon]],
    feed_server: Callable[..., Awaitable[FeedServer]],
    receiver: OtlpReceiver,
    hook: HookServer,
    tmp_path: Path,
) -> None:
    """rule → call → attempt 1 (failed) and attempt 2, the rule's span the child of the payload's
    ``trace_field``; each webhook request carries the traceparent of its own attempt; the event that
    fired nothing made no span; the export request carries the configured header."""
    feed = await feed_server()
    config = {
        "daemon": {"http": None, "state_path": str(tmp_path / "s.db"), "tracing": tracing(receiver)},
        "sources": {"feed": {"type": "websocket", "url": feed.url, "key_field": "s", "trace_field": "tp"}},
        "tools": {
            "hook": {
                "type": "webhook",
                "url": hook.url,
                "allow_private_networks": True,
                "retry": {"initial_seconds": 0.05, "max_attempts": 3},
            }
        },
        "rules": {
            "big": {
                "from": "feed",
                "where": "data.p > 10",
                "then": [{"tool": "hook", "args": {"p": "{data.p}"}}],
            }
        },
    }
    daemon = await run_daemon(load_config_text(json.dumps(config), REGISTRY, env={"OTLP_KEY": "k-123"}))
    await wait_for(lambda: len(feed.connections) == 1)
    await feed.broadcast(json.dumps({"s": "A", "p": 1, "tp": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}))
    await feed.broadcast(json.dumps({"s": "B", "p": 20, "tp": UPSTREAM}))
    await wait_for(lambda: daemon.runner.stats("hook").succeeded == 1, within=10)
    await daemon.stop()  # flushes the spans
    await wait_for(lambda: len(receiver.named("attempt")) == 2, within=10, what=lambda: str(receiver.spans))

    (rule,) = receiver.named("rule")  # the event that fired nothing made no span
    assert (rule.name, rule.trace_id, rule.parent) == ("rule big", UPSTREAM_TRACE, UPSTREAM_SPAN)
    assert rule.attributes["reflexd.key"] == "B" and rule.service == "reflexd-test"
    (call,) = receiver.children(rule)
    assert call.name == "call hook" and call.attributes["reflexd.outcome"] == "succeeded" and not call.error
    first, second = sorted(receiver.children(call), key=lambda s: s.attributes["reflexd.attempt"])
    assert (first.name, first.error, second.name, second.error) == ("attempt 1", True, "attempt 2", False)
    assert {s.trace_id for s in receiver.spans} == {UPSTREAM_TRACE}
    sent = [r.get("traceparent") for r in hook.requests]
    assert sent == [f"00-{UPSTREAM_TRACE}-{first.span_id}-01", f"00-{UPSTREAM_TRACE}-{second.span_id}-01"]
    assert receiver.headers and all(h.get("x-api-key") == "k-123" for h in receiver.headers)


async def test_each_model_call_of_an_llm_run_is_a_span_with_its_tokens(
    run_daemon: Callable[[Any], Awaitable[Daemon]],
    feed_server: Callable[..., Awaitable[FeedServer]],
    receiver: OtlpReceiver,
    tmp_path: Path,
) -> None:
    """An escalation: rule → call analyst → attempt → model call 1 (asks for a tool) → the tool's call
    (a child of the run's attempt) and model call 2 (answers), tokens as attributes."""
    async with ScriptedOpenAI() as model:
        feed = await feed_server()
        model.script(
            Reply.tool_calls(("note", {"text": "hi"}), tokens_in=31, tokens_out=7),
            Reply.text("done", tokens_in=40, tokens_out=3),
        )
        config = {
            "daemon": {"http": None, "state_path": str(tmp_path / "s.db"), "tracing": tracing(receiver)},
            "sources": {"feed": {"type": "websocket", "url": feed.url, "key_field": "s"}},
            "tools": {
                "note": {"type": "file", "path": str(tmp_path / "notes.jsonl")},
                "analyst": {
                    "type": "llm",
                    "provider": "openai",
                    "base_url": model.base_url,
                    "model": "scripted-model",
                    "system": "You watch a feed.",
                    "tools": ["note"],
                },
            },
            "rules": {
                "escalate": {"from": "feed", "then": [{"tool": "analyst", "args": {"prompt": "p={data.p}"}}]}
            },
        }
        env = {"OTLP_KEY": "k"}
        daemon = await run_daemon(load_config_text(json.dumps(config), REGISTRY, base_dir=tmp_path, env=env))
        await wait_for(lambda: len(feed.connections) == 1)
        await feed.broadcast(json.dumps({"s": "BTC", "p": 5}))
        await wait_for(lambda: daemon.runner.stats("analyst").succeeded == 1, within=10)
        await daemon.stop()
    await wait_for(lambda: len(receiver.named("model")) == 2, within=10, what=lambda: str(receiver.spans))
    (rule,) = receiver.named("rule escalate")
    (call,) = receiver.children(rule, "call analyst")
    (attempt,) = receiver.children(call, "attempt")
    models = sorted(receiver.children(attempt, "model"), key=lambda s: s.attributes["reflexd.round"])
    assert [
        (m.attributes["gen_ai.usage.input_tokens"], m.attributes["gen_ai.usage.output_tokens"])
        for m in models
    ] == [
        (31, 7),
        (40, 3),
    ]
    assert [m.attributes["reflexd.tool_calls"] for m in models] == [1, 0]
    (note,) = receiver.children(attempt, "call note")  # the model's tool call, made through the runner
    assert [s.name for s in receiver.children(note)] == ["attempt 1"]


async def test_a_kafka_records_traceparent_is_the_parent_of_the_rule_and_goes_on_in_the_tools_record(
    run_daemon: Callable[[Any], Awaitable[Daemon]],
    receiver: OtlpReceiver,
    kafka_broker: Any,
    kafka_topic: KafkaTopicFactory,
    tmp_path: Path,
) -> None:
    bootstrap = kafka_broker.bootstrap
    src, out = await kafka_topic(1), await kafka_topic(1, prefix="out")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(src, b'{"id": 1}', headers=[("traceparent", UPSTREAM.encode())])
    finally:
        await producer.stop()
    text = textwrap.dedent(
        f"""\
        daemon: {{http: null, state_path: "{tmp_path / "s.db"}", tracing: {{endpoint: "{receiver.url}"}}}}
        sources:
          in: {{type: kafka, bootstrap_servers: "{bootstrap}", topics: [{src}], group_id: g-{src}}}
        tools:
          out: {{type: kafka, bootstrap_servers: "{bootstrap}", topic: {out}}}
        rules:
          every: {{from: in, then: [{{tool: out, args: {{id: "{{data.id}}"}}}}]}}
        """
    )
    daemon = await run_daemon(load_config_text(text, REGISTRY))
    await wait_for(lambda: daemon.runner.stats("out").succeeded == 1, within=30)
    consumer = AIOKafkaConsumer(out, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    await daemon.stop()
    await wait_for(lambda: len(receiver.named("attempt")) == 1, within=10, what=lambda: str(receiver.spans))
    (rule,) = receiver.named("rule every")
    assert (rule.trace_id, rule.parent) == (UPSTREAM_TRACE, UPSTREAM_SPAN)
    assert rule.attributes["messaging.kafka.topic"] == src
    (call,) = receiver.children(rule, "call out")
    (attempt,) = receiver.children(call, "attempt")
    headers = dict(record.headers)
    assert headers["traceparent"].decode() == f"00-{UPSTREAM_TRACE}-{attempt.span_id}-01"


@pytest.mark.parametrize("traced", [False, True])
def test_the_sdk_is_imported_only_with_daemon_tracing(tmp_path: Path, traced: bool) -> None:
    """A daemon built with tracing off imports no OpenTelemetry SDK module; with it on, it does."""
    tracing = {"endpoint": "http://127.0.0.1:9"} if traced else None
    script = textwrap.dedent(
        f"""\
        import json, sys
        from daemon.config import load_config_text
        from daemon.registry import builtin_registry
        from daemon.supervisor import Daemon
        config = {{
            "daemon": {{"http": None, "state_path": {str(tmp_path / "s.db")!r}, "tracing": {tracing!r}}},
            "sources": {{"feed": {{"type": "websocket", "url": "ws://127.0.0.1:9/", "trace_field": "tp"}}}},
            "tools": {{"out": {{"type": "file", "path": {str(tmp_path / "o.jsonl")!r}}}}},
            "rules": {{"all": {{"from": "feed", "then": [{{"tool": "out", "args": {{}}}}]}}}},
        }}
        Daemon(load_config_text(json.dumps(config), builtin_registry()))
        print(sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    imported = done.stdout.strip()
    assert (imported != "[]") if traced else (imported == "[]"), imported
