"""The ccxt_order tool: the real ccxt library against the Binance emulator's signed order endpoint.

The emulator checks the API key header and the HMAC signature of every order request,
refuses a duplicate clientOrderId like Binance does, and logs every request — so "0 requests"
and "exactly one order" are read from what reached the exchange, not from the tool's opinion.
End-to-end tests run the real Daemon: the emulator's trade feed (a ``ccxt`` source) fires a
rule whose ``then`` is the order tool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest

from daemon.errors import ConfigError, StartupError, ToolError
from daemon.registry import BuildContext, builtin_registry
from handlers.base import CallContext
from handlers.ccxt_order import CcxtOrderTool, CcxtOrderToolConfig, client_order_id
from tests.conftest import StartDaemon
from tests.exchange import BinanceEmulator, MarketSpec
from tests.exchange.harness import ccxt_source, daemon_config, recorder_registry
from tests.servers import wait_for

KEY, SECRET = "emulator-key", "emulator-secret"
ENV = {"RX_ORDER_KEY": KEY, "RX_ORDER_SECRET": SECRET}
CREDENTIALS = {"api_key_env": "RX_ORDER_KEY", "secret_env": "RX_ORDER_SECRET"}
ORDER_PATH = "/api/v3/order"
OPS_TOKEN = "ops-token-for-the-kill-switch-tests"
OPS_AUTH = {"Authorization": f"Bearer {OPS_TOKEN}"}


@pytest.fixture
async def emu() -> AsyncIterator[BinanceEmulator]:
    """A Binance emulator with BTC/USDT at 100 and ETH/USDT at 10."""
    emulator = BinanceEmulator(
        [MarketSpec("BTC/USDT", prices=("100.00",)), MarketSpec("ETH/USDT", prices=("10.00",))],
        api_key=KEY,
        secret=SECRET,
    )
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    yield ENV


class Lines(logging.Handler):
    """Collects the tool's log records (works whatever the reflexd logger's propagation is)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def fields(self, msg: str) -> list[dict[str, Any]]:
        return [getattr(r, "fields", {}) for r in self.records if r.getMessage() == msg]


@pytest.fixture
def tool_log() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("reflexd.tool.ccxt_order")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def order_tool(emu: BinanceEmulator, **fields: Any) -> dict[str, Any]:
    """A ``ccxt_order`` tool section pointed at ``emu`` (live unless fields say dry_run)."""
    cfg = emu.ccxt_config()
    body: dict[str, Any] = {
        "type": "ccxt_order",
        "exchange": "binance",
        "dry_run": False,
        "credentials": CREDENTIALS,
        "allowed_symbols": ["BTC/USDT"],
        "max_notional": 1000,
        "urls": cfg["urls"],
        "options": cfg["options"],
        "timeout_seconds": 3,
        "request_timeout_seconds": 0.4,
        "retry": {"max_attempts": 3, "initial_seconds": 0.05, "jitter_ratio": 0},
    }
    body.update(fields)
    return body


def build(body: dict[str, Any], env: dict[str, str] | None = None, base: Path | None = None) -> CcxtOrderTool:
    spec = builtin_registry().get("tool", "ccxt_order")
    cfg = CcxtOrderToolConfig.model_validate(body)
    tool = spec.factory("order", cfg, BuildContext(base or Path.cwd()))
    assert isinstance(tool, CcxtOrderTool)
    if env is not None:
        tool._env = env
    return tool


def ctx(call_id: str = "rule:feed:seq=1:lap=0:ts=1.0:0", attempt: int = 1) -> CallContext:
    return CallContext("order", "rule", None, call_id, attempt)


GOOD = {"symbol": "BTC/USDT", "side": "buy", "type": "limit", "amount": "0.5", "price": "100"}


# -- dry run -----------------------------------------------------------------------------------


async def test_dry_run_is_the_default_and_no_request_reaches_the_exchange(
    emu: BinanceEmulator, tool_log: Lines
) -> None:
    """Without `dry_run: false` the order is logged and returned with its clientOrderId; the emulator's
    request log stays empty (not one request of any kind), and no credentials are needed."""
    body = order_tool(emu)
    del body["dry_run"], body["credentials"]
    tool = build(body, env={})
    await tool.start()
    try:
        result = await tool.call(dict(GOOD), ctx())
        market = await tool.call({**GOOD, "type": "market", "side": "sell", "amount": 2}, ctx("other:0"))
    finally:
        await tool.stop()
    cid = client_order_id("order", ctx().call_id, "rx")
    assert result == {
        "dry_run": True,
        "symbol": "BTC/USDT",
        "side": "buy",
        "type": "limit",
        "amount": "0.5",
        "price": "100",
        "notional": "50.0",
        "client_order_id": cid,
    }
    assert market["type"] == "market" and market["notional"] == "200"
    assert emu.requests == [] and emu.orders == []
    logged = tool_log.fields("dry run: order not placed")
    assert [f["client_order_id"] for f in logged] == [cid, market["client_order_id"]]


async def test_dry_run_through_the_daemon_sends_no_order_request(
    emu: BinanceEmulator, run_daemon: StartDaemon, tool_log: Lines
) -> None:
    """A rule on the emulator's trade feed fires the default (dry-run) order tool per trade: every call is
    logged, the emulator sees market-data requests only and not a single order request."""
    body = order_tool(emu)
    del body["dry_run"], body["credentials"]
    cfg = daemon_config(
        builtin_registry(),
        sources={"feed": ccxt_source(emu, ["BTC/USDT"])},
        tools={"order": body},
        rules={"buy_dips": {"from": "feed", "then": [{"tool": "order", "args": buy_args()}]}},
    )
    daemon = await run_daemon(cfg)
    await wait_for(lambda: any(c.subscriptions for c in emu.open_connections), what="the trade subscription")
    await emu.trade("BTC/USDT", 3)
    await wait_for(lambda: daemon.runner.stats("order").succeeded == 3, what="3 dry-run calls")
    assert emu.order_requests() == []
    ids = [f["client_order_id"] for f in tool_log.fields("dry run: order not placed")]
    assert len(set(ids)) == 3  # one per event


def buy_args(**extra: Any) -> dict[str, Any]:
    return {
        "symbol": "{data.symbol}",
        "side": "buy",
        "type": "limit",
        "amount": "0.5",
        "price": "{data.price}",
        **extra,
    }


# -- guards ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ({**GOOD, "amount": "20"}, "notional 2000 is above max_notional 1000"),
        ({**GOOD, "amount": "NaN"}, "amount must be finite, not NaN"),
        ({**GOOD, "amount": float("nan")}, "amount must be finite, not NaN"),
        ({**GOOD, "price": float("inf")}, "price must be finite, not Infinity"),
        ({**GOOD, "amount": "-1"}, "amount must be above 0, not -1"),
        ({**GOOD, "amount": 0}, "amount must be above 0, not 0"),
        ({**GOOD, "amount": "1e400"}, "notional 1.00E+402 is above max_notional 1000"),  # beyond float range
        ({**GOOD, "amount": "lots"}, "amount is not a number: 'lots'"),
        ({**GOOD, "amount": True}, "amount must be a number, not bool"),
        ({**GOOD, "symbol": "ETH/USDT"}, "symbol 'ETH/USDT' is not in allowed_symbols"),
        ({**GOOD, "symbol": "DOGE/USDT"}, "symbol 'DOGE/USDT' is not in allowed_symbols"),
        ({**GOOD, "side": "hold"}, "side must be buy or sell"),
        ({**GOOD, "type": "stop"}, "type must be market or limit"),
        ({k: v for k, v in GOOD.items() if k != "price"}, "price is required"),
        ({**GOOD, "leverage": 100}, "unknown argument(s): leverage"),
    ],
)
async def test_guards_refuse_before_any_network_call(
    emu: BinanceEmulator, env: dict[str, str], args: dict[str, Any], reason: str
) -> None:
    """Over-notional, NaN / infinite / zero / negative / non-numeric values, a disallowed symbol, bad side or
    type: refused (not retryable) by a live tool, with 0 requests reaching the exchange."""
    tool = build(order_tool(emu), env)
    await tool.start()
    try:
        with pytest.raises(ToolError) as info:
            await tool.call(args, ctx())
    finally:
        await tool.stop()
    assert reason in str(info.value) and info.value.retryable is False
    assert emu.requests == [], [r.path for r in emu.requests]
    assert tool.refused == 1


async def test_max_orders_per_window_counts_calls_not_retries(
    emu: BinanceEmulator, env: dict[str, str]
) -> None:
    """max_orders: 2 per window: a third distinct call is refused before any request; a retry of an accepted
    call (same call id, attempt 2) is not counted again; the window slides."""
    tool = build(order_tool(emu, max_orders=2, window_seconds=0.5), env)
    await tool.start()
    try:
        await tool.call(dict(GOOD), ctx("a"))
        await tool.call(dict(GOOD), ctx("b"))
        before = len(emu.requests)
        with pytest.raises(ToolError, match=r"max_orders: 2 orders in the last 0.5s"):
            await tool.call(dict(GOOD), ctx("c"))
        assert len(emu.requests) == before
        again = await tool.call(dict(GOOD), ctx("a", attempt=2))  # the runner retrying call "a"
        assert again["found"] is True
        await asyncio.sleep(0.55)
        await tool.call(dict(GOOD), ctx("c"))
    finally:
        await tool.stop()
    assert [o.client_order_id for o in emu.orders] == [
        client_order_id("order", c, "rx") for c in ("a", "b", "c")
    ]


# -- live orders, idempotency ------------------------------------------------------------------


async def test_live_limit_and_market_orders_are_signed_and_carry_the_client_order_id(
    emu: BinanceEmulator, env: dict[str, str], tool_log: Lines
) -> None:
    """Live: a limit and a market order reach the emulator signed with the configured key (the emulator
    verifies the HMAC), each with its deterministic clientOrderId; the secret is never logged."""
    tool = build(order_tool(emu), env)
    await tool.start()
    try:
        limit = await tool.call(dict(GOOD), ctx("x"))
        market = await tool.call({**GOOD, "type": "market", "side": "sell"}, ctx("y"))
    finally:
        await tool.stop()
    assert [(o.type, o.side, o.quantity, o.price) for o in emu.orders] == [
        ("LIMIT", "BUY", "0.5", "100"),
        ("MARKET", "SELL", "0.5", None),
    ]
    assert [o.client_order_id for o in emu.orders] == [limit["client_order_id"], market["client_order_id"]]
    assert limit["status"] == "open" and market["status"] == "closed" and market["filled"] == 0.5
    assert limit["order_id"] == "1" and limit["found"] is False
    posts = emu.requests_to(ORDER_PATH, "POST")
    assert len(posts) == 2 and all(r.status == 200 and r.headers.get("X-MBX-APIKEY") == KEY for r in posts)
    assert all(SECRET not in str(r.params) for r in emu.requests)
    assert all(SECRET not in str(getattr(r, "fields", "")) + r.getMessage() for r in tool_log.records)


@pytest.mark.parametrize("who_times_out", ["ccxt request timeout", "runner timeout"])
async def test_a_retry_after_a_timeout_never_places_a_second_order(
    emu: BinanceEmulator, env: dict[str, str], run_daemon: StartDaemon, who_times_out: str
) -> None:
    """The exchange accepts the order but answers too late; the tool's attempt times out (ccxt's request
    timeout, or the runner's own), the runner retries, the retry finds the order by its clientOrderId:
    exactly one order exists, one clientOrderId, one create request."""
    emu.slow(ORDER_PATH, 1.5)  # the first create: recorded at once, answered after 1.5 s
    if who_times_out == "ccxt request timeout":
        tool = order_tool(emu, timeout_seconds=3, request_timeout_seconds=0.4)
    else:
        # markets (first call only) take 0.2 s, so the runner's 0.5 s ends the attempt while ccxt's own
        # 0.45 s timer on the create request still runs
        emu.slow("/api/v3/exchangeInfo", 0.0, 0.2)  # the source's markets request, then the tool's
        tool = order_tool(emu, timeout_seconds=0.5, request_timeout_seconds=0.45)
    cfg = daemon_config(
        builtin_registry(),
        sources={"feed": ccxt_source(emu, ["BTC/USDT"])},
        tools={"order": tool},
        rules={"buy": {"from": "feed", "then": [{"tool": "order", "args": buy_args()}]}},
        env=env,
    )
    daemon = await run_daemon(cfg)
    await wait_for(lambda: any(c.subscriptions for c in emu.open_connections), what="the trade subscription")
    await emu.trade("BTC/USDT")
    stats = daemon.runner.stats("order")
    await wait_for(
        lambda: stats.succeeded == 1, within=6, what=lambda: f"the order call to succeed: {vars_of(stats)}"
    )

    assert len(emu.orders) == 1
    (order,) = emu.orders
    posts = emu.requests_to(ORDER_PATH, "POST")
    lookups = emu.requests_to(ORDER_PATH, "GET")
    assert len(posts) == 1 and posts[0].params["newClientOrderId"] == order.client_order_id
    assert [r.params.get("origClientOrderId") for r in lookups] == [order.client_order_id]
    assert lookups[0].status == 200
    assert (stats.calls, stats.attempts, stats.retries, stats.failures) == (1, 2, 1, 0)
    assert stats.timeouts == (1 if who_times_out == "runner timeout" else 0)
    tool_obj = daemon.tools["order"]
    assert isinstance(tool_obj, CcxtOrderTool) and (tool_obj.placed, tool_obj.found) == (0, 1)


def vars_of(stats: Any) -> dict[str, Any]:
    return {name: getattr(stats, name) for name in ("calls", "attempts", "retries", "succeeded", "failures")}


class NaiveOrderTool(CcxtOrderTool):
    """Control: a new clientOrderId per attempt and no lookup — what the real tool must not do."""

    type_name: ClassVar[str] = "ccxt_order"

    async def _lookup(self, symbol: str, cid: str) -> dict[str, Any] | None:
        return None

    async def call(self, args: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        return await super().call(args, ctx._replace(call_id=f"{ctx.call_id}:attempt={ctx.attempt}"))


async def test_control_a_naive_retry_places_two_orders(emu: BinanceEmulator, env: dict[str, str]) -> None:
    """Control: with a fresh clientOrderId per attempt and no lookup, the same timeout gives two orders, and
    the emulator's order book shows it — so the idempotency test above can fail."""
    emu.slow(ORDER_PATH, 1.0)
    cfg = CcxtOrderToolConfig.model_validate(order_tool(emu))
    tool = NaiveOrderTool("order", cfg, None, env)
    await tool.start()
    try:
        with pytest.raises(ToolError) as info:
            await tool.call(dict(GOOD), ctx(attempt=1))
        assert info.value.retryable is True and "RequestTimeout" in str(info.value)
        await tool.call(dict(GOOD), ctx(attempt=2))
    finally:
        await tool.stop()
    assert len(emu.orders) == 2 and len({o.client_order_id for o in emu.orders}) == 2


async def test_5xx_and_429_are_retried_and_still_give_one_order(
    emu: BinanceEmulator, env: dict[str, str]
) -> None:
    """503 (ExchangeNotAvailable) and 429 (DDoSProtection, with Retry-After) are retryable ToolErrors; the
    retry looks the order up first (not found: the failed requests placed nothing) and places it once."""
    emu.fail(ORDER_PATH, 503, 429, method="POST", retry_after=0.2)
    tool = build(order_tool(emu), env)
    await tool.start()
    errors: list[ToolError] = []
    try:
        for attempt in (1, 2, 3):
            try:
                result = await tool.call(dict(GOOD), ctx(attempt=attempt))
                break
            except ToolError as exc:
                errors.append(exc)
    finally:
        await tool.stop()
    assert [e.retryable for e in errors] == [True, True]
    assert "ExchangeNotAvailable" in str(errors[0]) and "DDoSProtection" in str(errors[1])
    assert errors[1].retry_after == 0.2
    assert result["found"] is False and len(emu.orders) == 1
    assert [(r.method, r.status) for r in emu.order_requests()] == [
        ("POST", 503),
        ("GET", 400),  # lookup before retrying: -2013 Order does not exist
        ("POST", 429),
        ("GET", 400),
        ("POST", 200),
    ]


async def test_a_duplicate_client_order_id_refused_by_the_exchange_returns_the_existing_order(
    emu: BinanceEmulator, env: dict[str, str]
) -> None:
    """If the exchange already has the clientOrderId (a first attempt whose answer was lost), its duplicate
    refusal (-2010) leads to a lookup and the existing order is returned: still one order."""
    tool = build(order_tool(emu), env)
    await tool.start()
    try:
        first = await tool.call(dict(GOOD), ctx("dup"))
        second = await tool.call(dict(GOOD), ctx("dup"))  # attempt 1 again: no lookup first
    finally:
        await tool.stop()
    assert len(emu.orders) == 1 and second["found"] is True and second["order_id"] == first["order_id"]
    assert [(r.method, r.status) for r in emu.order_requests()] == [
        ("POST", 200),
        ("POST", 400),
        ("GET", 200),
    ]


async def test_authentication_errors_are_not_retried(emu: BinanceEmulator) -> None:
    """A wrong secret (signature refused) is a non-retryable ToolError: one request, no order."""
    tool = build(order_tool(emu), {"RX_ORDER_KEY": KEY, "RX_ORDER_SECRET": "wrong"})
    await tool.start()
    try:
        with pytest.raises(ToolError) as info:
            await tool.call(dict(GOOD), ctx())
    finally:
        await tool.stop()
    assert info.value.retryable is False and "AuthenticationError" in str(info.value)
    assert "wrong" not in str(info.value)
    assert emu.orders == [] and [r.status for r in emu.order_requests()] == [400]


# -- kill switch -------------------------------------------------------------------------------


async def test_kill_switch_file_and_ops_endpoint_block_live_orders(
    emu: BinanceEmulator, env: dict[str, str], run_daemon: StartDaemon, tmp_path: Path
) -> None:
    """While the kill-switch file exists, or after POST /kill-switch until DELETE /kill-switch, live orders
    are refused with 0 order requests; GET /kill-switch shows why; orders flow again once released."""
    switch = tmp_path / "stop-trading"
    cfg = daemon_config(
        builtin_registry(),
        sources={"feed": ccxt_source(emu, ["BTC/USDT"])},
        tools={"order": order_tool(emu, kill_switch_path=str(switch), retry={"max_attempts": 1})},
        rules={"buy": {"from": "feed", "then": [{"tool": "order", "args": buy_args()}]}},
        http="127.0.0.1:0",
        http_token=OPS_TOKEN,
        env=env,
    )
    daemon = await run_daemon(cfg)
    assert daemon.http is not None
    base = f"http://127.0.0.1:{daemon.http.port}/kill-switch"
    stats = daemon.runner.stats("order")
    await wait_for(lambda: any(c.subscriptions for c in emu.open_connections), what="the trade subscription")

    async def one_trade(expect_orders: int, expect_failures: int) -> None:
        await emu.trade("BTC/USDT")
        await wait_for(
            lambda: (
                stats.succeeded + stats.failures == stats.calls and stats.calls > 0 and not stats.in_flight
            ),
            what="the call to finish",
        )
        await wait_for(
            lambda: stats.failures == expect_failures and len(emu.orders) == expect_orders,
            what=lambda: f"{expect_orders} orders / {expect_failures} refusals: {vars_of(stats)}",
        )

    async with aiohttp.ClientSession(headers=OPS_AUTH) as http:
        # 1. the file
        switch.touch()
        await one_trade(0, 1)
        assert emu.order_requests() == []
        async with http.get(base) as r:
            state = await r.json()
        assert state == {
            "engaged": True,
            "tools": {
                "order": {
                    "engaged": True,
                    "http": False,
                    "http_reason": None,
                    "http_since": None,
                    "file": True,
                }
            },
        }
        switch.unlink()
        await one_trade(1, 1)

        # 2. the endpoint
        async with http.post(base, json={"reason": "incident 42"}) as r:
            assert r.status == 200 and (await r.json())["tools"]["order"]["http_reason"] == "incident 42"
        calls = stats.calls
        await emu.trade("BTC/USDT")
        await wait_for(lambda: stats.calls == calls + 1 and stats.failures == 2, what="a refused call")
        assert len(emu.requests_to(ORDER_PATH, "POST")) == 1
        async with http.post(base, data="reason=x", headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 415
        async with http.delete(base) as r:
            assert r.status == 200 and (await r.json())["engaged"] is False
        await one_trade(2, 2)
    assert len(emu.requests_to(ORDER_PATH, "POST")) == 2


async def test_kill_switch_endpoint_without_an_order_tool_is_404(
    run_daemon: StartDaemon, tmp_path: Path
) -> None:
    """/kill-switch answers 404 (and engages nothing) when no tool has a kill switch."""
    data = tmp_path / "x.jsonl"
    data.write_text("{}\n")
    cfg = daemon_config(
        recorder_registry([]),
        sources={"s": {"type": "replay", "path": str(data)}},
        http="127.0.0.1:0",
        http_token=OPS_TOKEN,
    )
    daemon = await run_daemon(cfg)
    assert daemon.http is not None
    async with aiohttp.ClientSession(headers=OPS_AUTH) as http:
        for method in ("GET", "POST", "DELETE"):
            async with http.request(method, f"http://127.0.0.1:{daemon.http.port}/kill-switch") as r:
                assert r.status == 404, method


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"dry_run": False}, "credentials: required when dry_run is false"),
        ({"allowed_symbols": []}, "tools.order.allowed_symbols: "),
        ({"max_notional": 0}, "tools.order.max_notional: "),
        ({"max_notional": "nan"}, "tools.order.max_notional: "),
        ({"request_timeout_seconds": 20}, "request_timeout_seconds must be below timeout_seconds"),
        ({"client_order_id_prefix": "rx-!"}, "tools.order.client_order_id_prefix: "),
        ({"exchange": "nope"}, "tools.order.exchange: ccxt has no exchange 'nope'"),
    ],
)
def test_configuration_errors(fields: dict[str, Any], reason: str) -> None:
    """Unsafe or inconsistent order-tool settings are configuration errors at their path."""
    from daemon.config import load_config_text

    body = {"type": "ccxt_order", "exchange": "binance", "allowed_symbols": ["BTC/USDT"], "max_notional": 100}
    body.update(fields)
    text = f"sources: {{s: {{type: replay, path: x.jsonl}}}}\ntools: {{order: {_flow(body)}}}\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, builtin_registry())
    assert any(reason in str(i) for i in info.value.issues), [str(i) for i in info.value.issues]


def _flow(body: dict[str, Any]) -> str:
    import json

    return json.dumps(body)


async def test_live_without_the_credential_variables_is_a_startup_error(emu: BinanceEmulator) -> None:
    """Live mode with the credential variables unset fails at start, naming the variables (not values)."""
    tool = build(order_tool(emu), env={})
    with pytest.raises(StartupError, match="RX_ORDER_KEY, RX_ORDER_SECRET"):
        await tool.start()
    assert emu.requests == []


def test_client_order_ids_are_stable_short_and_plain() -> None:
    """clientOrderId: the same for the same (tool, call), different otherwise, 32 letters/digits."""
    a = client_order_id("order", "rule:src:seq=1:0", "rx")
    assert a == client_order_id("order", "rule:src:seq=1:0", "rx")
    assert (
        a
        != client_order_id("order", "rule:src:seq=2:0", "rx")
        != client_order_id("other", "rule:src:seq=1:0", "rx")
    )
    assert len(a) == 32 and a.isalnum() and a.startswith("rx")
    started = time.perf_counter()
    for i in range(1000):
        client_order_id("order", f"call{i}", "rx")
    assert time.perf_counter() - started < 0.5
