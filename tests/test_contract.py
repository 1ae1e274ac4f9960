"""The contract every source type and every tool type keeps, each against a real peer.

The types are enumerated from the registry (the built-in types plus every spec in the test
plugins ``tests.plugins`` and ``tests.plugins_source``), never listed by hand: a type added to
the registry without a peer in :data:`SOURCE_PEERS` / :data:`TOOL_PEERS` fails this module.

A source type:

- its ``SPEC.example`` passes ``reflexd check``;
- delivers events from its peer; closing before it ever connected, and closing or finishing
  twice, are no-ops; a stop (the engine cancelled, then ``finish()``) ends within budget, also
  while its reader waits on a full queue;
- stays bounded under a consumer that does not read (its queue never exceeds ``max_events``,
  it does not read ahead of it, every drop is counted) and, once the consumer catches up, every
  event is accounted for: delivered, or counted as dropped by the queue's policy;
- in a daemon: its metrics and its ``/status`` entry are emitted; the daemon stops within its
  budget, and a second stop is a no-op;
- a peer that is not there is a ``SourceError`` (``daemon.errors``) naming the source, chained
  to the library's exception.

A tool type:

- its ``SPEC.example`` passes ``reflexd check``;
- ``stop()`` before ``start()`` and a second ``stop()`` are no-ops; each lifecycle call ends
  within budget; one call reaches the peer;
- in a daemon fed by a replay: every call reaches the peer, its metrics are emitted, the daemon
  stops within its budget;
- its failure (where the type has one) is a ``StartupError`` or a ``ToolError`` with the right
  ``retryable``.

Peers: a local websockets server (tests/servers.py), a JSONL file, the session Kafka broker, the
Binance emulator (tests/exchange), an aiohttp target, a temp folder, a local TCP server, the scripted
OpenAI-compatible server (tests/agent/scripted.py), the notification queue.

Tools get a host before they start (``Tool.attach``): :func:`build` gives each one a
:class:`RunnerHost` of its own, as the daemon does with its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import tests.plugins
import tests.plugins_source
from daemon.cli import main as reflexd
from daemon.errors import ReflexdError, SourceError, StartupError, ToolError
from daemon.registry import BuildContext, ComponentSpec, builtin_registry
from daemon.supervisor import Daemon
from daemon.telemetry import metrics_registry
from handlers.base import CallContext, Tool
from handlers.host import RunnerHost
from handlers.notifications import NotificationQueue
from handlers.notify import NotifyTool
from handlers.runner import ToolRunner
from streams.base import Source
from streams.event import Event
from streams.reconnect import Reconnector
from tests.agent.scripted import ScriptedOpenAI
from tests.conftest import StartDaemon
from tests.exchange import BinanceEmulator, MarketSpec
from tests.exchange.harness import ccxt_source, daemon_config
from tests.kafka_broker import free_port
from tests.servers import FeedServer, Plan, wait_for

#: Every spec the test plugins define: they run through the contract like the built-in types.
PLUGIN_SPECS = [
    value
    for module in (tests.plugins, tests.plugins_source)
    for value in vars(module).values()
    if isinstance(value, ComponentSpec)
]
REGISTRY = builtin_registry().with_specs(*PLUGIN_SPECS)

BUDGET = 5.0  # seconds: every stop, start and close of a component; the daemons' shutdown budget
N = 100  # events a source's peer delivers
MAX_EVENTS = 8  # the queue of a source under test
CALLS = 3  # calls a tool's daemon makes


# -- peers of the source types ---------------------------------------------------------------------


@dataclass
class SourcePeer:
    """A running peer for one source type, holding :data:`N` events for every session."""

    config: dict[str, Any]  # the source's section, pointed at the peer
    dead: dict[str, Any]  # the same type pointed at a peer that is not there
    #: what the peer needs once the source connected before it sends (e.g. a subscription)
    after_connect: Callable[[Source], Awaitable[None]] | None = None


@dataclass
class Env:
    """What a peer may use: the test's folder and (lazily, so only Kafka types start a broker) fixtures."""

    tmp_path: Path
    request: pytest.FixtureRequest
    monkeypatch: pytest.MonkeyPatch
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


PeerFactory = Callable[[Env], contextlib.AbstractAsyncContextManager[Any]]


def _json_lines(n: int) -> list[bytes]:
    return [orjson.dumps({"s": f"k{i % 3}", "i": i, "T": int(time.time() * 1000)}) for i in range(n)]


@contextlib.asynccontextmanager
async def websocket_peer(env: Env) -> AsyncIterator[SourcePeer]:
    server = FeedServer(Plan(frames=[line.decode() for line in _json_lines(N)], after="hold"))
    await server.start()
    try:
        yield SourcePeer(
            {"type": "websocket", "url": f"ws://127.0.0.1:{server.port}/ws", "key_field": "s"},
            {"type": "websocket", "url": f"ws://127.0.0.1:{free_port()}/ws", "open_timeout_seconds": 2},
        )
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def replay_peer(env: Env) -> AsyncIterator[SourcePeer]:
    path = env.tmp_path / "recording.jsonl"
    path.write_bytes(b"\n".join(_json_lines(N)) + b"\n")
    yield SourcePeer(
        {"type": "replay", "path": str(path), "key_field": "s", "time_field": "T", "speed": 0},
        {"type": "replay", "path": str(env.tmp_path / "missing.jsonl")},
    )


@contextlib.asynccontextmanager
async def kafka_peer(env: Env) -> AsyncIterator[SourcePeer]:
    broker = env.request.getfixturevalue("kafka_broker")
    topic = await broker.create_topic(partitions=1, prefix="contract")
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        for i, line in enumerate(_json_lines(N)):
            await producer.send(topic, line, key=f"k{i % 3}".encode())
        await producer.flush()
    finally:
        await producer.stop()
    yield SourcePeer(
        {
            "type": "kafka",
            "bootstrap_servers": broker.bootstrap,
            "topics": [topic],
            "group_id": f"contract-{topic}",
            "commit_interval_seconds": 0.2,
            "session_timeout_seconds": 6,
            "heartbeat_interval_seconds": 1,
        },
        {
            "type": "kafka",
            "bootstrap_servers": f"127.0.0.1:{free_port()}",
            "topics": [topic],
            "group_id": "contract-dead",
            "connect_timeout_seconds": 2,
        },
    )


@contextlib.asynccontextmanager
async def ccxt_peer(env: Env) -> AsyncIterator[SourcePeer]:
    emu = BinanceEmulator([MarketSpec("BTC/USDT")])
    await emu.start()

    async def trade(source: Source) -> None:
        await wait_for(
            lambda: any("btcusdt@aggTrade" in c.subscriptions for c in emu.open_connections),
            10,
            what="the trade subscription",
        )
        await emu.trade("BTC/USDT", N)

    try:
        config = ccxt_source(emu, ["BTC/USDT"])
        dead = orjson.loads(orjson.dumps(config).replace(f":{emu.port}".encode(), f":{free_port()}".encode()))
        yield SourcePeer(config, dead, trade)
    finally:
        await emu.stop()


@contextlib.asynccontextmanager
async def lines_peer(env: Env) -> AsyncIterator[SourcePeer]:
    payload = b"".join(line + b"\n" for line in _json_lines(N))
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        writer.write(payload)
        with contextlib.suppress(OSError):
            await writer.drain()
            await reader.read()  # hold the connection until the source closes it

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield SourcePeer(
            {"type": "lines", "port": port, "key_field": "s"},
            {"type": "lines", "port": free_port(), "connect_timeout_seconds": 2},
        )
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


#: One peer per source type. A registered type without one fails the suite.
SOURCE_PEERS: dict[str, PeerFactory] = {
    "websocket": websocket_peer,
    "replay": replay_peer,
    "kafka": kafka_peer,
    "ccxt": ccxt_peer,
    "lines": lines_peer,
}


# -- peers of the tool types -----------------------------------------------------------------------


@dataclass
class Failure:
    """How to make a tool type fail, and how the failure must be reported."""

    config: dict[str, Any] = field(default_factory=dict)  # merged into the peer's config
    args: dict[str, Any] | None = None  # instead of the peer's arguments
    at_start: bool = False  # StartupError from start(); else ToolError from a call
    retryable: bool = False


@dataclass
class ToolPeer:
    """A running peer for one tool type."""

    config: dict[str, Any]  # the tool's section, pointed at the peer
    args: dict[str, Any]  # arguments of one call
    seen: Callable[[Tool], Awaitable[int]]  # calls the peer received (the tool is the one built)
    failure: Failure | None = None
    no_failure: str = ""  # why the type has no failure to provoke (when failure is None)


def _count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _lines_in(path: Path) -> Callable[[Tool], Awaitable[int]]:
    async def seen(tool: Tool) -> int:
        return _count_lines(path)

    return seen


@contextlib.asynccontextmanager
async def log_peer(env: Env) -> AsyncIterator[ToolPeer]:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect()
    logger = logging.getLogger("reflexd.tool.t")
    logger.addHandler(handler)

    async def seen(tool: Tool) -> int:
        return sum(r.getMessage() == "contract call" for r in records)

    try:
        yield ToolPeer(
            {"type": "log", "level": "warning"},
            {"text": "contract call"},
            seen,
            no_failure="writes to the logging system, which swallows its own errors",
        )
    finally:
        logger.removeHandler(handler)


@contextlib.asynccontextmanager
async def file_peer(env: Env) -> AsyncIterator[ToolPeer]:
    out = env.tmp_path / "out" / "calls.jsonl"
    blocker = env.tmp_path / "a-file"
    blocker.write_text("not a folder")
    yield ToolPeer(
        {"type": "file", "path": str(out)},
        {"n": 1},
        _lines_in(out),
        Failure({"path": str(blocker / "calls.jsonl")}, at_start=True),
    )


@contextlib.asynccontextmanager
async def webhook_peer(env: Env) -> AsyncIterator[ToolPeer]:
    received: list[Any] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"ok": True})

    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/unavailable", unavailable)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    async def seen(tool: Tool) -> int:
        return len(received)

    try:
        yield ToolPeer(
            {
                "type": "webhook",
                "url": f"http://127.0.0.1:{port}/hook",
                "allow_private_networks": True,
                "timeout_seconds": 5,
            },
            {"n": 1},
            seen,
            Failure({"url": f"http://127.0.0.1:{port}/unavailable"}, retryable=True),
        )
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def kafka_tool_peer(env: Env) -> AsyncIterator[ToolPeer]:
    broker = env.request.getfixturevalue("kafka_broker")
    topic = await broker.create_topic(partitions=1, prefix="contract")

    async def seen(tool: Tool) -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            return int((await consumer.end_offsets([tp]))[tp])
        finally:
            await consumer.stop()

    yield ToolPeer(
        {"type": "kafka", "bootstrap_servers": broker.bootstrap, "topic": topic, "timeout_seconds": 5},
        {"n": 1},
        seen,
        Failure(args={"blob": "x" * (1 << 20)}),  # above the broker's record limit: refused, not retried
    )


@contextlib.asynccontextmanager
async def exec_peer(env: Env) -> AsyncIterator[ToolPeer]:
    out = env.tmp_path / "exec-calls.txt"
    append = "import sys; open(sys.argv[1], 'a').write('call' + chr(10))"
    yield ToolPeer(
        {"type": "exec", "argv": [sys.executable, "-c", append, str(out)], "timeout_seconds": 5},
        {"n": 1},
        _lines_in(out),
        Failure({"argv": [sys.executable, "-c", "raise SystemExit(3)"], "retry_exit_codes": [3]}, retryable=True),
    )


def contract_call(args: dict[str, Any], event: Event | None) -> str:
    """The python tool's peer: appends one line to the file ``args["out"]``."""
    with open(args["out"], "a") as f:
        f.write("call\n")
    return "ok"


@contextlib.asynccontextmanager
async def python_peer(env: Env) -> AsyncIterator[ToolPeer]:
    out = env.tmp_path / "python-calls.txt"
    yield ToolPeer(
        {"type": "python", "function": f"{__name__}:contract_call"},
        {"out": str(out)},
        _lines_in(out),
        Failure({"function": "tests.no_such_module_for_the_contract:f"}, at_start=True),
    )


@contextlib.asynccontextmanager
async def ccxt_order_peer(env: Env) -> AsyncIterator[ToolPeer]:
    emu = BinanceEmulator([MarketSpec("BTC/USDT", prices=("100.00",))], api_key="contract-key", secret="s3cret")
    await emu.start()
    env.monkeypatch.setenv("RX_CONTRACT_KEY", "contract-key")
    env.monkeypatch.setenv("RX_CONTRACT_SECRET", "s3cret")
    cfg = emu.ccxt_config()

    async def seen(tool: Tool) -> int:
        return len(emu.orders)

    try:
        yield ToolPeer(
            {
                "type": "ccxt_order",
                "exchange": "binance",
                "dry_run": False,
                "credentials": {"api_key_env": "RX_CONTRACT_KEY", "secret_env": "RX_CONTRACT_SECRET"},
                "allowed_symbols": ["BTC/USDT"],
                "max_notional": 1000,
                "urls": cfg["urls"],
                "options": cfg["options"],
                "timeout_seconds": 5,
                "request_timeout_seconds": 2,
            },
            {"symbol": "BTC/USDT", "side": "buy", "type": "limit", "amount": "0.5", "price": "100"},
            seen,
            Failure(args={"symbol": "ETH/USDT", "side": "buy", "amount": "1", "price": "10"}),
        )
    finally:
        await emu.stop()


@contextlib.asynccontextmanager
async def counter_peer(env: Env) -> AsyncIterator[ToolPeer]:
    async def seen(tool: Tool) -> int:
        assert isinstance(tool, tests.plugins.CounterTool)
        return tool.count

    yield ToolPeer({"type": "counter"}, {}, seen, no_failure="counts in memory")


@contextlib.asynccontextmanager
async def sleeper_peer(env: Env) -> AsyncIterator[ToolPeer]:
    async def seen(tool: Tool) -> int:
        assert isinstance(tool, tests.plugins.SleeperTool)
        return tool.done

    yield ToolPeer({"type": "sleeper", "seconds": 0.01}, {}, seen, no_failure="sleeps")


@contextlib.asynccontextmanager
async def gate_peer(env: Env) -> AsyncIterator[ToolPeer]:
    gate, out = env.tmp_path / "gate", env.tmp_path / "gate-out.txt"
    gate.touch()
    yield ToolPeer(
        {"type": "gate", "gate": str(gate), "out": str(out)},
        {"id": 1},
        _lines_in(out),
        Failure({"gate": str(env.tmp_path / "closed-gate")}, retryable=True),
    )


@contextlib.asynccontextmanager
async def haltable_peer(env: Env) -> AsyncIterator[ToolPeer]:
    async def seen(tool: Tool) -> int:
        assert isinstance(tool, tests.plugins.HaltableTool)
        return tool.count

    yield ToolPeer({"type": "haltable"}, {}, seen, Failure({"start_engaged": True}))


@contextlib.asynccontextmanager
async def llm_peer(env: Env) -> AsyncIterator[ToolPeer]:
    model = ScriptedOpenAI()  # answers every request with the text "done": one model call per run
    await model.start()

    async def seen(tool: Tool) -> int:
        return len(model.requests)

    try:
        yield ToolPeer(
            {
                "type": "llm",
                "base_url": model.base_url,
                "model": "scripted",
                "timeout_seconds": 5,
                "request_timeout_seconds": 2,
            },
            {"prompt": "contract call"},
            seen,
            Failure({"base_url": f"http://127.0.0.1:{free_port()}/v1"}, retryable=True),  # nobody listens
        )
    finally:
        await model.stop()


@contextlib.asynccontextmanager
async def notify_peer(env: Env) -> AsyncIterator[ToolPeer]:
    async def seen(tool: Tool) -> int:
        assert isinstance(tool, NotifyTool) and tool._queue is not None
        return len(tool._queue)  # the daemon's queue (or build()'s): items put, none drained

    yield ToolPeer({"type": "notify"}, {"text": "contract call"}, seen, no_failure="puts in memory")


#: One peer per tool type. A registered type without one fails the suite.
TOOL_PEERS: dict[str, PeerFactory] = {
    "log": log_peer,
    "file": file_peer,
    "webhook": webhook_peer,
    "kafka": kafka_tool_peer,
    "exec": exec_peer,
    "python": python_peer,
    "ccxt_order": ccxt_order_peer,
    "counter": counter_peer,
    "sleeper": sleeper_peer,
    "gate": gate_peer,
    "haltable": haltable_peer,
    "llm": llm_peer,
    "notify": notify_peer,
}


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Env:
    return Env(tmp_path, request, monkeypatch)


@pytest.fixture(params=REGISTRY.types("source"))
async def source_case(request: pytest.FixtureRequest, env: Env) -> AsyncIterator[tuple[ComponentSpec, SourcePeer]]:
    """(spec, running peer) of one registered source type."""
    spec = REGISTRY.get("source", request.param)
    factory = SOURCE_PEERS.get(spec.type)
    if factory is None:
        pytest.fail(f"source type {spec.type!r} has no contract entry: add a peer to SOURCE_PEERS")
    async with factory(env) as peer:
        yield spec, peer


@pytest.fixture(params=REGISTRY.types("tool"))
async def tool_case(request: pytest.FixtureRequest, env: Env) -> AsyncIterator[tuple[ComponentSpec, ToolPeer]]:
    """(spec, running peer) of one registered tool type."""
    spec = REGISTRY.get("tool", request.param)
    factory = TOOL_PEERS.get(spec.type)
    if factory is None:
        pytest.fail(f"tool type {spec.type!r} has no contract entry: add a peer to TOOL_PEERS")
    async with factory(env) as peer:
        yield spec, peer


def build(spec: ComponentSpec, section: dict[str, Any], name: str) -> Any:
    """The component of ``section``, validated and built as the daemon does; a tool is attached to a
    host of its own (a runner holding only it, an empty notification queue, no store), as the daemon
    attaches its tools to its :class:`RunnerHost` before they start."""
    config = spec.config_model.model_validate(section)
    component = spec.factory(name, config, BuildContext(Path.cwd()))
    if isinstance(component, Tool):
        component.attach(RunnerHost(ToolRunner({name: component}), NotificationQueue()))
    return component


async def within(what: str, awaitable: Awaitable[Any], budget: float = BUDGET) -> Any:
    """Await ``awaitable``; fail the test if it takes more than ``budget`` seconds."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(budget):
            return await awaitable
    except TimeoutError:
        pytest.fail(f"{what} took more than {budget:g}s (gave up after {time.monotonic() - started:.1f}s)")


async def settled(probe: Callable[[], object], quiet: float = 0.3, budget: float = 15.0) -> None:
    """Wait until ``probe()`` gives the same value ``quiet`` seconds apart."""
    deadline = time.monotonic() + budget
    last = probe()
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet)
        now = probe()
        if now == last:
            return
        last = now
    pytest.fail(f"still moving after {budget:g}s: {last}")


async def stop_source(source: Source, task: asyncio.Task[None]) -> None:
    """The daemon's stop of one source: stop reading (the engine's task cancelled), then finish."""
    source.begin_stop()
    task.cancel()
    await within(f"stopping source {source.name}", asyncio.wait([task]))
    await within(f"finishing source {source.name}", source.finish())


def metrics(daemon: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample the daemon's /metrics holds, by (name, sorted labels)."""
    text = generate_latest(metrics_registry(daemon)).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def stop_daemon(daemon: Daemon) -> None:
    """The daemon stops within its budget with nothing cut off, and a second stop is a no-op."""
    started = time.monotonic()
    cancelled = await daemon.stop()
    elapsed = time.monotonic() - started
    assert cancelled == [] and elapsed < daemon.config.daemon.shutdown_timeout_seconds, (cancelled, elapsed)
    assert await daemon.stop() == []


#: Files the SPEC examples refer to, by type (relative to the configuration's folder).
EXAMPLE_FILES: dict[str, dict[str, str]] = {
    "replay": {"data/sample-trades.jsonl": '{"s": "BTCUSDT", "p": "1", "q": "1", "T": 1}\n'},
    "python": {
        "myproject/__init__.py": "",
        "myproject/alerts.py": "def on_trade(args, event):\n    return None\n",
    },
}


#: Arguments a call needs where the tool's argument schema requires some (`check` judges literal ones).
EXAMPLE_ARGS: dict[str, dict[str, Any]] = {
    "ccxt_order": {"symbol": "BTC/USDT", "side": "buy", "type": "limit", "amount": 0.001, "price": 60000},
    "llm": {"prompt": "BTC at {data.p}"},
    "notify": {"text": "BTC at {data.p}"},
}

#: Environment variables an example reads (`${VAR}`), as a user would have them set.
EXAMPLE_ENV: dict[str, dict[str, str]] = {
    "llm": {"OPENAI_API_KEY": "sk-contract-example"},
}


def check_plan(spec: ComponentSpec, tmp_path: Path) -> str:
    """``reflexd check`` on a configuration using ``spec.example``: its output (exit code 0 asserted).
    What an example names outside the file (a recording, a Python module) is put beside it first, as a
    user would have it: `check` looks for those."""
    (tmp_path / "x.jsonl").write_text("{}\n")
    for relative, text in EXAMPLE_FILES.get(spec.type, {}).items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    if spec.kind == "source":
        doc = {"sources": {"s": dict(spec.example)}, "tools": {"t": {"type": "log"}}}
    else:
        doc = {"sources": {"s": {"type": "replay", "path": "x.jsonl"}}, "tools": {"t": dict(spec.example)}}
    call: dict[str, Any] = {"tool": "t"}
    if spec.type in EXAMPLE_ARGS:
        call["args"] = EXAMPLE_ARGS[spec.type]
    doc["rules"] = {"r": {"from": "s", "then": [call]}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = reflexd(["check", "-c", str(path)], REGISTRY)
    assert code == 0, err.getvalue()
    return out.getvalue()


# -- the suite ---------------------------------------------------------------------------------------


def test_every_registered_type_has_a_contract_entry() -> None:
    """The peers listed here are exactly the registered types (built-in and test plugins): a new type
    without an entry, or an entry for a type that is gone, fails."""
    assert sorted(SOURCE_PEERS) == REGISTRY.types("source")
    assert sorted(TOOL_PEERS) == REGISTRY.types("tool")
    assert {"lines"} <= set(REGISTRY.types("source")) and {"counter", "gate"} <= set(REGISTRY.types("tool"))


@pytest.mark.parametrize("spec", REGISTRY.specs("source") + REGISTRY.specs("tool"), ids=lambda s: f"{s.kind}-{s.type}")
def test_example_passes_check(spec: ComponentSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SPEC's example configuration passes `reflexd check`, and the plan shows the type."""
    assert spec.example.get("type") == spec.type
    for var, value in EXAMPLE_ENV.get(spec.type, {}).items():
        monkeypatch.setenv(var, value)
    assert f"[{spec.type}]" in check_plan(spec, tmp_path)


async def test_source_delivers_and_stops_within_budget(source_case: tuple[ComponentSpec, SourcePeer]) -> None:
    """Events from the peer arrive named after the source; close/finish before any connect and a second
    close/finish are no-ops; stopping ends within budget while the reader waits on a full queue."""
    spec, peer = source_case
    source = build(spec, {**peer.config, "queue": {"max_events": MAX_EVENTS}}, "s")
    assert isinstance(source, Source)
    await within("close before connect", source.close())
    await within("finish before connect", source.finish())
    task = asyncio.create_task(Reconnector(source, source.config.reconnect).run())
    try:
        if peer.after_connect is not None:
            await peer.after_connect(source)
        queue, stats = source.queue, source.stats
        await wait_for(lambda: len(queue) >= 1, 15, what="the first event")
        await settled(lambda: (stats.received, queue.put_total))  # the reader waits for room (or the peer)
        (event,) = await queue.get_batch(1)
        assert isinstance(event, Event) and event.source == "s" and event.kind == "data", event
        await settled(lambda: (stats.received, queue.put_total))  # and waits again
        assert source.stats.state in ("connected", "finished")
    finally:
        await stop_source(source, task)
    assert source.stats.state in ("stopped", "finished")
    await within("a second close", source.close())
    await within("a second finish", source.finish())


async def test_source_is_bounded_under_a_slow_consumer(source_case: tuple[ComponentSpec, SourcePeer]) -> None:
    """With nobody reading, the queue stays within max_events and the reader does not read ahead of
    it (drops, if its policy drops, are counted); once the consumer catches up every event the peer
    sent is accounted for: consumed, or counted as dropped by the queue."""
    spec, peer = source_case
    source = build(spec, {**peer.config, "queue": {"max_events": MAX_EVENTS}}, "s")
    assert isinstance(source, Source)
    queue, stats = source.queue, source.stats
    task = asyncio.create_task(Reconnector(source, source.config.reconnect).run())
    try:
        if peer.after_connect is not None:
            await peer.after_connect(source)

        def offered() -> int:  # messages the reader took from the peer and offered to its queue
            return queue.put_total + stats.decode_errors + stats.future

        await wait_for(lambda: len(queue) >= 1, 15, what="the first event")
        await settled(lambda: (stats.received, queue.put_total))
        assert queue.high_water <= MAX_EVENTS
        assert stats.received - offered() <= MAX_EVENTS, "read ahead of its queue"
        if queue.when_full == "block":  # the reader waits (or pauses its peer): nothing dropped
            assert stats.received < N and queue.evicted == queue.rejected == 0
        else:  # the reader goes on, the queue drops: every drop counted
            assert stats.received == offered(), "a message neither queued nor counted"
            assert len(queue) == MAX_EVENTS and queue.evicted + queue.rejected == offered() - MAX_EVENTS > 0

        consumed: list[Event] = []

        async def catch_up() -> None:
            while len(consumed) + queue.evicted + queue.rejected < N:
                consumed.extend(await queue.get_batch())

        await within("catching up", catch_up(), 20)
        assert len(consumed) + queue.evicted + queue.rejected == N
        assert all(e.kind == "data" and e.source == "s" for e in consumed)
        assert stats.decode_errors == stats.future == 0
    finally:
        await stop_source(source, task)


async def test_source_in_a_daemon_emits_metrics_and_stops_within_budget(
    source_case: tuple[ComponentSpec, SourcePeer], run_daemon: StartDaemon
) -> None:
    """Through a daemon every event fires a rule; /metrics has the source's counters, queue gauges and
    type-specific samples, /status its entry; the daemon stops within budget, a second stop is a no-op."""
    spec, peer = source_case
    config = daemon_config(
        REGISTRY,
        sources={"s": peer.config},
        tools={"c": {"type": "counter"}},
        rules={"r": {"from": "s", "then": [{"tool": "c"}]}},
    )
    daemon = await run_daemon(config)
    source, counter = daemon.sources["s"], daemon.tools["c"]
    assert isinstance(counter, tests.plugins.CounterTool)
    if peer.after_connect is not None:
        await peer.after_connect(source)
    await wait_for(lambda: counter.count == N, 20, what=lambda: f"{N} calls, not {counter.count}")

    samples = metrics(daemon)
    label = (("source", "s"),)
    assert samples[("reflexd_events_received_total", label)] >= N
    assert samples[("reflexd_source_connects_total", label)] >= 1
    assert samples[("reflexd_queue_capacity", label)] == source.config.queue.max_events
    assert samples[("reflexd_queue_high_water", label)] >= 1
    for sample in source.metric_samples():  # the type's own metrics, labelled by the source
        name = getattr(sample[0], "name", sample[0])  # a metric's spec, or (older form) its name
        assert (name, label) in samples, name
    status = orjson.loads(orjson.dumps(daemon.status()))
    assert status["sources"]["s"]["type"] == spec.type and status["sources"]["s"]["received"] >= N

    await stop_daemon(daemon)


async def test_unreachable_peer_is_a_source_error(source_case: tuple[ComponentSpec, SourcePeer]) -> None:
    """A peer that is not there: connect() raises a SourceError naming the source, chained to the cause;
    the engine gets a retry verdict for it; close() after the failed connect is a no-op."""
    spec, peer = source_case
    source = build(spec, peer.dead, "s")
    assert isinstance(source, Source)
    with pytest.raises(SourceError) as info:
        await within("a failed connect", source.connect(), 15)
    assert info.value.source == "s" and info.value.__cause__ is not None, repr(info.value)
    assert isinstance(source.classify_error(info.value), bool)
    await within("close after a failed connect", source.close())


async def call(tool: Tool, args: dict[str, Any], n: int = 1) -> Any:
    result = tool.call(dict(args), CallContext("t", None, None, f"contract:{n}"))
    return await result if inspect.isawaitable(result) else result


async def test_tool_lifecycle_is_idempotent_and_within_budget(tool_case: tuple[ComponentSpec, ToolPeer]) -> None:
    """stop() before start() and a second stop() are no-ops; start, one call (it reaches the peer) and
    stop each end within budget."""
    spec, peer = tool_case
    tool = build(spec, peer.config, "t")
    assert isinstance(tool, Tool)
    await within("stop before start", tool.stop())
    await within("start", tool.start())
    try:
        await within("one call", call(tool, peer.args))
        assert await peer.seen(tool) == 1
    finally:
        await within("stop", tool.stop())
    await within("a second stop", tool.stop())


async def test_tool_in_a_daemon_emits_metrics_and_stops_within_budget(
    tool_case: tuple[ComponentSpec, ToolPeer], run_daemon: StartDaemon, tmp_path: Path
) -> None:
    """A replay fires the tool once per event through a daemon: every call reaches the peer and succeeds,
    /metrics counts them (calls, failures, duration), and the daemon stops within budget."""
    _spec, peer = tool_case
    recording = tmp_path / "calls.jsonl"
    recording.write_text("".join(f'{{"i": {i}}}\n' for i in range(CALLS)))
    config = daemon_config(
        REGISTRY,
        sources={"s": {"type": "replay", "path": str(recording)}},
        tools={"t": peer.config},
        rules={"r": {"from": "s", "then": [{"tool": "t", "args": peer.args}]}},
    )
    daemon = await run_daemon(config)
    stats = daemon.runner.stats("t")
    await wait_for(lambda: stats.succeeded + stats.failures == CALLS, 20, what=lambda: f"{CALLS} calls: {stats}")
    assert stats.succeeded == CALLS and await peer.seen(daemon.tools["t"]) == CALLS

    samples = metrics(daemon)
    label = (("tool", "t"),)
    assert samples[("reflexd_tool_calls_total", label)] == CALLS
    assert samples[("reflexd_tool_failures_total", label)] == 0
    assert samples[("reflexd_tool_duration_seconds_count", label)] == CALLS
    await stop_daemon(daemon)


async def test_tool_failure_maps_to_the_error_tree(tool_case: tuple[ComponentSpec, ToolPeer]) -> None:
    """The type's failure is a StartupError naming the tool (at start) or a ToolError naming it, with
    the retryable verdict the failure deserves (at a call)."""
    spec, peer = tool_case
    failure = peer.failure
    if failure is None:
        assert peer.no_failure, f"tool type {spec.type!r}: give a Failure or say why it has none"
        pytest.skip(f"{spec.type}: no failure to provoke ({peer.no_failure})")
    tool = build(spec, {**peer.config, **failure.config}, "t")
    assert isinstance(tool, Tool)
    try:
        if failure.at_start:
            with pytest.raises(StartupError) as started:
                await within("a failing start", tool.start())
            assert started.value.component == "tool t", started.value
            return
        await within("start", tool.start())
        with pytest.raises(ReflexdError) as info:
            await within("a failing call", call(tool, failure.args or peer.args))
        error = info.value
        assert isinstance(error, ToolError) and error.tool == "t", repr(error)
        assert error.retryable is failure.retryable, repr(error)
    finally:
        await within("stop", tool.stop())

