"""The ccxt source: the real ccxt library against the exchange emulators, run by the real Daemon.

Every test starts an emulator (:mod:`tests.exchange`) on 127.0.0.1:0 and a daemon whose
``type: ccxt`` source has its ccxt URLs pointed at it. Nothing in ccxt is patched: ccxt's
binance class speaks real HTTP and WebSocket to the emulator, which scripts prices, drops,
stalls and error answers and records every request. Rules fire a ``recorder`` tool that keeps
each event (and a deep copy of its data at call time).
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from prometheus_client import generate_latest

from daemon.config import load_config_text
from daemon.errors import ConfigError, StartupError
from daemon.registry import builtin_registry
from daemon.supervisor import Daemon
from daemon.telemetry import metrics_registry
from streams.ccxt import CcxtSource
from tests.conftest import StartDaemon
from tests.exchange import BinanceEmulator, BtcMarketsEmulator, ExchangeEmulator, MarketSpec
from tests.exchange.harness import (
    Recorded,
    ccxt_source,
    daemon_config,
    duplicates,
    recorder_registry,
)
from tests.servers import wait_for

ROOT = Path(__file__).resolve().parents[2]
E = TypeVar("E", bound=ExchangeEmulator)
StartEmulator = Callable[[E], Any]


@pytest.fixture
async def emulators() -> AsyncIterator[Callable[[ExchangeEmulator], Any]]:
    """``await emulators(BinanceEmulator(...))`` → started; all are stopped after the test (after the daemon)."""
    started: list[ExchangeEmulator] = []

    async def start(emu: E) -> E:
        started.append(emu)
        await emu.start()
        return emu

    try:
        yield start
    finally:
        for emu in reversed(started):
            await emu.stop()


def rec_rule(source: str = "feed", tool: str = "rec", **fields: Any) -> dict[str, Any]:
    return {"from": [source], "then": [{"tool": tool}], **fields}


def gap_rule(source: str = "feed") -> dict[str, Any]:
    return {"from": [source], "kinds": ["gap"], "then": [{"tool": "gaps", "args": {"why": "{data.reason}"}}]}


TOOLS = {"rec": {"type": "recorder"}, "gaps": {"type": "recorder"}}


def of(calls: list[Recorded], tool: str = "rec") -> list[Recorded]:
    return [c for c in calls if c.tool == tool]


def subscribed(emu: BinanceEmulator, *streams: str) -> Callable[[], bool]:
    """True once open sockets carry every one of ``streams``."""

    def check() -> bool:
        have = {s for c in emu.open_connections for s in c.subscriptions}
        return set(streams) <= have

    return check


# -- 1. channels: trades, ticker, order book, candles ----------------------------------------


async def test_trades_become_normalised_events_and_fire_rules(
    emulators: StartEmulator[BinanceEmulator], run_daemon: StartDaemon
) -> None:
    """Binance trades of two symbols reach a rule as {symbol, id, price, amount, side, ts} events keyed by symbol."""
    emu = await emulators(
        BinanceEmulator(
            [MarketSpec("BTC/USDT", prices=("100.00", "200.00")), MarketSpec("ETH/USDT", prices=("10.00",))]
        )
    )
    calls: list[Recorded] = []
    cfg = daemon_config(
        recorder_registry(calls),
        sources={"feed": ccxt_source(emu, ["BTC/USDT", "ETH/USDT"])},
        tools=TOOLS,
        rules={
            "all": rec_rule(),
            "big": {
                "from": ["feed"],
                "where": "data.price * data.amount >= 100",
                "then": [
                    {"tool": "gaps", "args": {"notional": "{data.price * data.amount}", "id": "{data.id}"}}
                ],
            },
        },
    )
    daemon = await run_daemon(cfg)
    await wait_for(subscribed(emu, "btcusdt@aggTrade", "ethusdt@aggTrade"), what="both subscriptions")
    btc = await emu.trade("BTC/USDT", 4)
    eth = await emu.trade("ETH/USDT", 3)
    await wait_for(lambda: len(of(calls)) == 7, what=lambda: f"7 trade events, got {len(of(calls))}")

    events = [c.event for c in of(calls)]
    assert all(e is not None and e.kind == "data" and e.source == "feed" for e in events)
    by_symbol: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        assert e is not None and e.key == e.data["symbol"]
        assert e.ts == e.data["ts"] / 1000
        by_symbol.setdefault(e.key, []).append(e.data)
    expected = {
        "BTC/USDT": [
            {
                "symbol": "BTC/USDT",
                "id": str(t.id),
                "price": float(t.price),
                "amount": float(t.amount),
                "side": "sell" if t.buyer_maker else "buy",
                "ts": t.ts,
            }
            for t in btc
        ],
        "ETH/USDT": [
            {
                "symbol": "ETH/USDT",
                "id": str(t.id),
                "price": float(t.price),
                "amount": float(t.amount),
                "side": "sell" if t.buyer_maker else "buy",
                "ts": t.ts,
            }
            for t in eth
        ],
    }
    assert by_symbol == expected
    big = {c.args["id"] for c in of(calls, "gaps")}  # notional = price * amount >= 100
    assert big == {str(t.id) for t in btc if Decimal(t.price) * Decimal(t.amount) >= 100}
    assert daemon.sources["feed"].stats.state == "connected"
    assert daemon.readiness()[0] is True


async def test_trades_timed_an_hour_ahead_of_the_wall_clock_are_counted_and_dropped(
    emulators: StartEmulator[BinanceEmulator], run_daemon: StartDaemon
) -> None:
    """An exchange whose trade times are an hour ahead (beyond max_future_seconds: 300): counted as future,
    never handed to a rule whose watermark they would move."""
    emu = await emulators(BinanceEmulator([MarketSpec("BTC/USDT")], start_ms=int(time.time() * 1000) + 3_600_000))
    calls: list[Recorded] = []
    cfg = daemon_config(
        recorder_registry(calls),
        sources={"feed": ccxt_source(emu, ["BTC/USDT"])},
        tools=TOOLS,
        rules={"all": rec_rule()},
    )
    daemon = await run_daemon(cfg)
    await wait_for(subscribed(emu, "btcusdt@aggTrade"), what="the subscription")
    await emu.trade("BTC/USDT", 5)
    source = daemon.sources["feed"]
    await wait_for(lambda: source.stats.future == 5, what=lambda: f"5 future trades, got {source.stats.future}")
    assert of(calls) == [] and daemon.rules["all"].stats.seen == 0


async def test_ticker_events_carry_bid_ask_last(
    emulators: StartEmulator[BinanceEmulator], run_daemon: StartDaemon
) -> None:
    """The ticker channel (Binance's full 24hr ticker stream) gives bid, ask and last as the emulator's book shows them."""
    emu = await emulators(BinanceEmulator([MarketSpec("BTC/USDT", prices=("100.00", "105.00"))]))
    calls: list[Recorded] = []
    cfg = daemon_config(
        recorder_registry(calls),
        sources={"feed": ccxt_source(emu, ["BTC/USDT"], channel="ticker")},
        tools=TOOLS,
        rules={"all": rec_rule()},
    )
    await run_daemon(cfg)
    await wait_for(subscribed(emu, "btcusdt@ticker"), what="the ticker subscription")
    await emu.trade("BTC/USDT", 2)
    await wait_for(lambda: len(of(calls)) == 2, what="2 ticker events")
    data = [c.data_at_call for c in of(calls)]
    assert [(d["last"], d["bid"], d["ask"]) for d in data] == [
        (100.0, 99.99, 100.01),
        (105.0, 104.99, 105.01),
    ]
    assert all(d["symbol"] == "BTC/USDT" and isinstance(d["ts"], int) for d in data)
    assert [d["bid_volume"] for d in data] == [0.5, 0.5]


async def test_order_book_events_are_copies_of_the_top_levels(
    emulators: StartEmulator[BinanceEmulator], run_daemon: StartDaemon
) -> None:
    """order_book events hold the top `depth` levels, and later updates never change an event already handed out."""
    emu = await emulators(BinanceEmulator([MarketSpec("BTC/USDT", prices=("100.00", "101.00", "102.00"))]))
    calls: list[Recorded] = []
    cfg = daemon_config(
        recorder_registry(calls),
        sources={"feed": ccxt_source(emu, ["BTC/USDT"], channel="order_book", depth=3)},
        tools=TOOLS,
        rules={"all": rec_rule()},
    )
    await run_daemon(cfg)
    await wait_for(subscribed(emu, "btcusdt@depth@100ms"), what="the depth subscription")
    await wait_for(lambda: bool(emu.requests_to("/api/v3/depth")), what="the REST snapshot")
    for _ in range(6):
        await emu.trade("BTC/USDT")
        await asyncio.sleep(0.02)
    await wait_for(lambda: len(of(calls)) >= 6, what=lambda: f"6 book events, got {len(of(calls))}")

    books = of(calls)
    for c in books:
        assert c.event is not None
        assert c.event.data == c.data_at_call, "an event's book changed after it was handed out"
        assert len(c.data_at_call["bids"]) == 3 and len(c.data_at_call["asks"]) == 3
    tops = [(c.data_at_call["bids"][0][0], c.data_at_call["asks"][0][0]) for c in books[-3:]]
    # each trade re-centres the emulator's book one tick around the price: 100, 101, 102, 100, ...
    assert tops == [(99.99, 100.01), (100.99, 101.01), (101.99, 102.01)]
    assert [c.data_at_call["bids"][i][0] for c in books[-1:] for i in range(3)] == [101.99, 101.98, 101.97]
    nonces = [c.data_at_call["nonce"] for c in books]
    assert nonces == sorted(nonces) and len(set(nonces)) == len(nonces)


async def test_ohlcv_emits_each_closed_candle_once_with_its_final_values(
    emulators: StartEmulator[BinanceEmulator], run_daemon: StartDaemon
) -> None:
    """ohlcv: every candle that closed is emitted once, with the OHLCV the exchange's trades give it; the
    forming candle appears only in the source with include_forming (closed: false)."""
    emu = await emulators(
        BinanceEmulator([MarketSpec("BTC/USDT", prices=("100", "103", "98", "101"))], speed=240)
    )
    calls: list[Recorded] = []
    cfg = daemon_config(
        recorder_registry(calls),
        sources={
            "feed": ccxt_source(emu, ["BTC/USDT"], channel="ohlcv", timeframe="1m"),
            "forming": ccxt_source(emu, ["BTC/USDT"], channel="ohlcv", timeframe="1m", include_forming=True),
        },
        tools=TOOLS,
        rules={"closed": rec_rule(), "forming": rec_rule("forming", "gaps")},
    )
    await run_daemon(cfg)
    await wait_for(
        lambda: len([c for c in emu.open_connections if c.subscriptions]) == 2, what="2 kline sockets"
    )
    emu.produce(40)  # 240x clock: a one-minute candle closes every 0.25 s, ~10 trades each
    await wait_for(
        lambda: len(of(calls)) >= 5, within=10, what=lambda: f"5 closed candles, got {len(of(calls))}"
    )
    await emu.producing_stopped()

    truth = {c.start: c for c in emu.markets["BTC/USDT"].candles_from_trades("1m", None, None, 1000)}
    closed = [c.data_at_call for c in of(calls)]
    starts = [d["ts"] for d in closed]
    assert starts == sorted(set(starts)), f"candles repeated or out of order: {starts}"
    for d in closed:
        t = truth[d["ts"]]
        assert d["closed"] is True and d["timeframe"] == "1m" and d["symbol"] == "BTC/USDT"
        assert (d["open"], d["high"], d["low"], d["close"]) == (
            float(t.open),
            float(t.high),
            float(t.low),
            float(t.close),
        )
        assert d["volume"] == pytest.approx(float(t.volume))
    assert all(b - a == 60_000 for a, b in itertools.pairwise(starts)), starts
    forming = [c.data_at_call for c in of(calls, "gaps")]
    assert any(d["closed"] is False for d in forming) and any(d["closed"] is True for d in forming)
    assert [d["ts"] for d in forming if d["closed"]][: len(starts)] == starts[
        : len([d for d in forming if d["closed"]])
    ]


# -- 2. reconnects, backfill, stalls, errors -------------------------------------------------


async def _drop_and_collect(
    emu: BinanceEmulator, daemon: Daemon, calls: list[Recorded], drops: int, symbols: list[str]
) -> None:
    """Produce at 150 trades/s per symbol; drop every socket ``drops`` times, each after the resubscribed
    feed delivered again; then stop producing."""
    source = daemon.sources["feed"]
    streams = [f"{s.replace('/', '').lower()}@aggTrade" for s in symbols]
    await wait_for(subscribed(emu, *streams), what="the subscriptions")
    emu.produce(150, symbols)

    def live() -> int:  # events from the live feed (not from a backfill)
        return sum(1 for c in of(calls) if c.event is not None and not c.event.meta.get("backfill"))

    for i in range(drops):
        before = live()
        await wait_for(lambda b=before: live() > b + 20, within=5, what=f"live data before drop {i + 1}")
        connects = source.stats.connects
        assert await emu.drop(1001 if i % 2 else 1011) == len(symbols)
        await wait_for(
            lambda c=connects: source.stats.connects > c and subscribed(emu, *streams)(),
            within=5,
            what=f"the resubscription after drop {i + 1}",
        )
    await asyncio.sleep(0.2)
    await emu.producing_stopped()


async def test_ten_drops_give_ten_gaps_and_a_backfill_with_no_duplicate_and_no_missing_trade(
    emulators: StartEmulator[BinanceEmulator], run_daemon: StartDaemon
) -> None:
    """10 WebSocket drops → 10 reconnects and resubscriptions, 10 gap events, trades backfilled with
    fetch_trades: every trade id the exchange made arrives exactly once, per symbol."""
    symbols = ["BTC/USDT", "ETH/USDT"]
    emu = await emulators(BinanceEmulator([MarketSpec(s) for s in symbols]))
    calls: list[Recorded] = []
    cfg = daemon_config(
        recorder_registry(calls),
        sources={"feed": ccxt_source(emu, symbols)},
        tools=TOOLS,
        rules={"all": rec_rule(), "gaps": gap_rule()},
    )
    daemon = await run_daemon(cfg)
    source = daemon.sources["feed"]
    assert isinstance(source, CcxtSource)
    await _drop_and_collect(emu, daemon, calls, 10, symbols)

    made = {s: [str(i) for i in emu.markets[s].ids] for s in symbols}
    await wait_for(
        lambda: len(of(calls)) >= sum(len(v) for v in made.values()),
        within=5,
        what=lambda: f"{sum(len(v) for v in made.values())} trades, got {len(of(calls))}",
    )
    await asyncio.sleep(0.2)  # anything extra (a duplicate) would arrive now
    for s in symbols:
        got = [c.data_at_call["id"] for c in of(calls) if c.data_at_call["symbol"] == s]
        assert duplicates(got) == {}, f"{s}: duplicate ids {list(duplicates(got))[:20]}"
        missing = sorted(set(made[s]) - set(got), key=int)
        assert missing == [], f"{s}: {len(missing)} missing ids, first {missing[:20]}"
        assert sorted(got, key=int) == made[s]
    stats = source.stats
    assert (stats.connects, stats.disconnects, stats.gaps) == (11, 10, 10)
    assert len(of(calls, "gaps")) == 10
    assert all("WebSocket closed by the exchange" in c.args["why"] for c in of(calls, "gaps"))
    assert stats.backfills == 20  # one per symbol per reconnect
    assert stats.backfilled > 0, (
        "the drops lost nothing that a backfill had to fetch: the test proves nothing"
    )
    assert stats.duplicates > 0, "backfill and live feed never overlapped: de-duplication was not exercised"
    assert len(emu.requests_to("/api/v3/aggTrades")) >= 20
    assert len(emu.requests_to("/api/v3/exchangeInfo")) == 1  # markets are reused across reconnects
    assert len([c for c in emu.connections if c.subscriptions]) == 22
    backfilled = [c for c in of(calls) if c.event is not None and c.event.meta.get("backfill")]
    assert len(backfilled) == stats.backfilled
    exposition = generate_latest(metrics_registry(daemon)).decode()
    assert 'reflexd_ccxt_backfills_total{source="feed"} 20.0' in exposition
    assert f'reflexd_ccxt_duplicates_total{{source="feed"}} {float(stats.duplicates)}' in exposition


async def test_control_without_backfill_the_checker_sees_the_lost_trades(
    emulators: StartEmulator[BinanceEmulator], run_daemon: StartDaemon
) -> None:
    """Control: the same drops with `backfill: false` lose trades, and the id reconciliation reports them."""
    emu = await emulators(BinanceEmulator([MarketSpec("BTC/USDT")]))
    calls: list[Recorded] = []
    cfg = daemon_config(
        recorder_registry(calls),
        sources={"feed": ccxt_source(emu, ["BTC/USDT"], backfill=False)},
        tools=TOOLS,
        rules={"all": rec_rule()},
    )
    daemon = await run_daemon(cfg)
    await _drop_and_collect(emu, daemon, calls, 3, ["BTC/USDT"])
    await asyncio.sleep(0.3)
    got = {c.data_at_call["id"] for c in of(calls)}
    missing = {str(i) for i in emu.markets["BTC/USDT"].ids} - got
    assert len(missing) > 0
    assert daemon.sources["feed"].stats.gaps == 3


async def test_a_stall_with_the_socket_open_recovers_within_the_watchdog_timeout(
    emulators: StartEmulator[BinanceEmulator], run_daemon: StartDaemon
) -> None:
    """The exchange keeps the socket open but sends nothing (pings still answered): the watchdog closes the
    client after stall_timeout_seconds, the source subscribes again and trades flow, with a backfill."""
    emu = await emulators(BinanceEmulator([MarketSpec("BTC/USDT")]))
    calls: list[Recorded] = []
    stall = 0.6
    cfg = daemon_config(
        recorder_registry(calls),
        sources={"feed": ccxt_source(emu, ["BTC/USDT"], stall_timeout_seconds=stall)},
        tools=TOOLS,
        rules={"all": rec_rule(), "gaps": gap_rule()},
    )
    daemon = await run_daemon(cfg)
    source = daemon.sources["feed"]
    assert isinstance(source, CcxtSource)
    await wait_for(subscribed(emu, "btcusdt@aggTrade"), what="the subscription")
    emu.produce(100)
    await wait_for(lambda: len(of(calls)) > 10, what="data before the stall")
    assert emu.stall() == 1
    stalled_at = time.monotonic()
    last_before = len(of(calls))
    await wait_for(
        lambda: len(emu.connections) == 2 and bool(emu.connections[1].subscriptions), within=stall + 3
    )
    await wait_for(lambda: len(of(calls)) > last_before + 5, within=3, what="data after the stall")
    recovered = time.monotonic() - stalled_at
    await emu.producing_stopped()

    first = emu.connections[0]
    assert first.closed_at is not None and first.closed_at - stalled_at >= stall * 0.9
    # detection takes the watchdog timeout; closing the old client + reconnecting must add little
    assert recovered <= stall + 1.0, f"recovered after {recovered:.2f}s with a {stall}s watchdog"
    assert source.stats.stalls == 1 and source.stats.errors.get("stall") == 1
    assert len(of(calls, "gaps")) == 1 and f"no data for {stall:g}s" in of(calls, "gaps")[0].args["why"]
    await wait_for(lambda: len(of(calls)) == len(emu.markets["BTC/USDT"].ids), what="every trade, backfilled")
    assert duplicates([c.data_at_call["id"] for c in of(calls)]) == {}


async def test_a_frozen_peer_that_never_answers_the_close_does_not_delay_recovery(
    emulators: StartEmulator[BinanceEmulator], run_daemon: StartDaemon
) -> None:
    """A half-open peer (silent, reads nothing, never answers the closing handshake): the watchdog fires, the
    old client is closed in the background, and the new session delivers within the watchdog timeout."""
    emu = await emulators(BinanceEmulator([MarketSpec("BTC/USDT")]))
    calls: list[Recorded] = []
    stall = 0.6
    cfg = daemon_config(
        recorder_registry(calls),
        sources={"feed": ccxt_source(emu, ["BTC/USDT"], stall_timeout_seconds=stall)},
        tools=TOOLS,
        rules={"all": rec_rule()},
    )
    daemon = await run_daemon(cfg)
    await wait_for(subscribed(emu, "btcusdt@aggTrade"), what="the subscription")
    emu.produce(100)
    await wait_for(lambda: len(of(calls)) > 10, what="data before the freeze")
    assert emu.freeze() == 1
    frozen_at = time.monotonic()
    before = len(of(calls))
    await wait_for(lambda: len(of(calls)) > before + 5, within=stall + 3, what="data from a new session")
    recovered = time.monotonic() - frozen_at
    assert recovered <= stall + 1.0, f"recovered after {recovered:.2f}s with a {stall}s watchdog"
    assert emu.connections[0].closed_at is None  # the old socket is still waiting for its close
    await emu.producing_stopped()
    await emu.stop()  # the emulator goes away: the background close ends, the daemon stops promptly
    stopped_at = time.monotonic()
    await daemon.stop()
    assert time.monotonic() - stopped_at < 3


async def test_429_and_5xx_answers_back_off_and_never_crash(
    emulators: StartEmulator[BinanceEmulator], run_daemon: StartDaemon
) -> None:
    """429 / 503 / 500 on the markets request, 429 on the WebSocket handshake and on the backfill request:
    the source backs off (exponential waits between attempts), counts the reasons, recovers, loses nothing."""
    emu = await emulators(BinanceEmulator([MarketSpec("BTC/USDT")]))
    emu.fail("/api/v3/exchangeInfo", 429, 503, 500, retry_after=1)
    emu.reject_ws(429)
    calls: list[Recorded] = []
    reconnect = {
        "initial_seconds": 0.05,
        "multiplier": 2,
        "max_seconds": 1,
        "jitter_ratio": 0,
        "healthy_after_seconds": 0.5,
    }
    cfg = daemon_config(
        recorder_registry(calls),
        sources={"feed": ccxt_source(emu, ["BTC/USDT"], reconnect=reconnect)},
        tools=TOOLS,
        rules={"all": rec_rule(), "gaps": gap_rule()},
    )
    daemon = await run_daemon(cfg)
    source = daemon.sources["feed"]
    await wait_for(subscribed(emu, "btcusdt@aggTrade"), within=5, what="a subscription after the errors")
    info = [r for r in emu.requests_to("/api/v3/exchangeInfo")]
    assert [r.status for r in info] == [429, 503, 500, 200]
    waits = [b.at - a.at for a, b in itertools.pairwise(info)]
    assert waits[0] >= 0.05 and waits[1] >= 0.1 and waits[2] >= 0.2, waits  # 0.05, 0.1, 0.2 s backoff
    handshakes = [r for r in emu.requests if r.path.startswith("/ws")]
    assert [r.status for r in handshakes][:2] == [429, 101]
    errors = source.stats.errors
    assert errors.get("rate_limited") == 1 and errors.get("exchange_not_available") == 2
    assert source.stats.state == "connected" and daemon.state == "running"

    # 429 on the backfill after a drop: the session backs off and the next one backfills
    emu.produce(100)
    await wait_for(lambda: len(of(calls)) > 10, what="data")
    emu.fail("/api/v3/aggTrades", 429)
    await emu.drop()
    await wait_for(
        lambda: len(emu.requests_to("/api/v3/aggTrades")) >= 2, within=5, what="a retried backfill"
    )
    await asyncio.sleep(0.3)
    await emu.producing_stopped()
    await wait_for(lambda: len(of(calls)) >= len(emu.markets["BTC/USDT"].ids), what="every trade")
    got = [c.data_at_call["id"] for c in of(calls)]
    assert duplicates(got) == {} and set(got) == {str(i) for i in emu.markets["BTC/USDT"].ids}
    assert source.stats.errors.get("rate_limited") == 2
    assert source.stats.state == "connected"


async def test_a_bad_symbol_stops_alone_with_a_clear_reason_in_readyz(
    emulators: StartEmulator[BinanceEmulator], run_daemon: StartDaemon
) -> None:
    """An unknown symbol stops with 'BadSymbol' in /readyz (503) and /status while the other symbol's trades flow."""
    emu = await emulators(BinanceEmulator([MarketSpec("BTC/USDT")]))
    calls: list[Recorded] = []
    cfg = daemon_config(
        recorder_registry(calls),
        sources={"feed": ccxt_source(emu, ["NOPE/USDT", "BTC/USDT"])},
        tools=TOOLS,
        rules={"all": rec_rule()},
        http="127.0.0.1:0",
    )
    daemon = await run_daemon(cfg)
    assert daemon.http is not None
    await wait_for(subscribed(emu, "btcusdt@aggTrade"), what="the good symbol's subscription")
    await emu.trade("BTC/USDT", 3)
    await wait_for(lambda: len(of(calls)) == 3, what="the good symbol's trades")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{daemon.http.port}/readyz") as r:
            ready_status, ready = r.status, orjson.loads(await r.read())
        async with http.get(f"http://127.0.0.1:{daemon.http.port}/status") as r:
            status = orjson.loads(await r.read())
    assert ready_status == 503 and ready["ready"] is False
    reason = ready["sources"]["feed"]
    assert reason.startswith("connected; 1 of 2 symbols stopped: NOPE/USDT: BadSymbol"), reason
    feed = status["sources"]["feed"]
    assert feed["symbols"]["NOPE/USDT"]["state"] == "stopped"
    assert "BadSymbol" in feed["symbols"]["NOPE/USDT"]["error"]
    assert feed["symbols"]["BTC/USDT"] == {"state": "active", "error": None}
    assert {c.data_at_call["symbol"] for c in of(calls)} == {"BTC/USDT"}
    assert not any("nope" in s for c in emu.connections for s in c.subscriptions)


async def test_only_bad_symbols_fail_the_source() -> None:
    """When every symbol is bad, the source stops for good (state failed) instead of retrying forever; as
    that happens at its first connect, the daemon does not start (a source that can never work is a
    startup failure, exit 3)."""
    emu = BinanceEmulator([MarketSpec("BTC/USDT")])
    async with emu:
        cfg = daemon_config(
            recorder_registry([]), sources={"feed": ccxt_source(emu, ["NOPE/USDT", "NADA/USDT"])}
        )
        daemon = Daemon(cfg)
        try:
            with pytest.raises(StartupError) as caught:
                await daemon.start()
            assert "every symbol has stopped" in str(caught.value) and "NADA/USDT" in str(caught.value)
            source = daemon.sources["feed"]
            assert source.stats.state == "failed"
            ok, reason = source.readiness()
            assert not ok and "every symbol has stopped" in reason
            attempts = source.stats.attempts
            await asyncio.sleep(0.2)
            assert source.stats.attempts == attempts == 1
        finally:
            await daemon.stop()


# -- 3. polling, recycling, credentials, configuration ---------------------------------------


async def test_polling_an_exchange_without_websocket(
    emulators: StartEmulator[BtcMarketsEmulator], run_daemon: StartDaemon
) -> None:
    """btcmarkets has no ccxt.pro class: `mode: watch` falls back to polling; trades (exactly once, across
    polls that overlap), tickers, books and closed candles all arrive over REST."""
    emu = await emulators(
        BtcMarketsEmulator([MarketSpec("BTC/AUD", prices=("50000.00", "50010.00"))], speed=240)
    )
    calls: list[Recorded] = []
    poll = {"poll_interval_seconds": 0.1, "rate_limit_ms": 20}  # btcmarkets' default: 1 request/s
    cfg = daemon_config(
        recorder_registry(calls),
        sources={
            "trades": ccxt_source(emu, ["BTC/AUD"], **poll),
            "ticker": ccxt_source(emu, ["BTC/AUD"], channel="ticker", mode="poll", **poll),
            "book": ccxt_source(emu, ["BTC/AUD"], channel="order_book", depth=2, **poll),
            "candles": ccxt_source(emu, ["BTC/AUD"], channel="ohlcv", **poll),
        },
        tools={"rec": {"type": "recorder"}},
        rules={name: rec_rule(name) for name in ("trades", "ticker", "book", "candles")},
    )
    daemon = await run_daemon(cfg)
    await emu.trade("BTC/AUD", 3)  # history before the start is not replayed
    await wait_for(
        lambda: all(s.stats.state == "connected" for s in daemon.sources.values()), what="connects"
    )
    await wait_for(lambda: len(emu.requests_to("/v3/markets/BTC-AUD/trades")) >= 2, what="a baseline poll")
    made: list[str] = []
    for _ in range(8):
        made += [str(t.id) for t in await emu.trade("BTC/AUD", 4)]
        await asyncio.sleep(0.13)

    def by(source: str) -> list[Any]:
        return [c.data_at_call for c in of(calls) if c.event is not None and c.event.source == source]

    await wait_for(
        lambda: len(by("trades")) >= len(made), what=lambda: f"{len(made)} trades, got {len(by('trades'))}"
    )
    await wait_for(lambda: len(by("candles")) >= 2, within=5, what="2 closed candles")
    assert [d["id"] for d in by("trades")] == made
    assert all(s.stats.mode == "poll" for s in daemon.sources.values())  # type: ignore[attr-defined]
    tickers = by("ticker")
    assert tickers and {d["last"] for d in tickers} <= {50000.0, 50010.0}
    books = by("book")
    assert books and all(len(d["bids"]) == 2 and d["bids"][0][0] < d["asks"][0][0] for d in books)
    candles = by("candles")
    assert all(d["closed"] for d in candles)
    starts = [d["ts"] for d in candles]
    assert starts == sorted(set(starts))
    assert not emu.requests_to("/ws")  # no WebSocket attempt at all


async def test_recycling_rebuilds_the_client_without_a_gap_or_a_lost_trade(
    emulators: StartEmulator[BinanceEmulator], run_daemon: StartDaemon
) -> None:
    """recycle_after_seconds: the client is rebuilt repeatedly while trades flow; no gap event, no lost and no
    duplicate trade, and every old socket is closed by us (1000), not by the exchange."""
    symbols = ["BTC/USDT", "ETH/USDT"]
    emu = await emulators(BinanceEmulator([MarketSpec(s) for s in symbols]))
    calls: list[Recorded] = []
    cfg = daemon_config(
        recorder_registry(calls),
        sources={"feed": ccxt_source(emu, symbols, recycle_after_seconds=0.4)},
        tools=TOOLS,
        rules={"all": rec_rule(), "gaps": gap_rule()},
    )
    daemon = await run_daemon(cfg)
    source = daemon.sources["feed"]
    assert isinstance(source, CcxtSource)
    await wait_for(subscribed(emu, "btcusdt@aggTrade", "ethusdt@aggTrade"), what="subscriptions")
    emu.produce(150, symbols)
    await wait_for(lambda: source.stats.recycles >= 4, within=10, what="4 recycles")
    await emu.producing_stopped()
    total = sum(len(emu.markets[s].ids) for s in symbols)
    await wait_for(lambda: len(of(calls)) >= total, what=lambda: f"{total} trades, got {len(of(calls))}")
    await asyncio.sleep(0.2)
    for s in symbols:
        got = [c.data_at_call["id"] for c in of(calls) if c.data_at_call["symbol"] == s]
        assert duplicates(got) == {}
        assert sorted(got, key=int) == [str(i) for i in emu.markets[s].ids]
    assert of(calls, "gaps") == [] and source.stats.gaps == 0 and source.stats.connects == 1
    assert source.stats.backfilled == 0  # nothing was lost, so nothing had to be fetched
    closed = [c for c in emu.connections if c.closed_at is not None]
    assert len(closed) >= 8 and all(c.ws.close_code == 1000 for c in closed)


async def test_credentials_come_from_the_environment_and_never_show(
    emulators: StartEmulator[BinanceEmulator], run_daemon: StartDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Credentials are named environment variables: unset → a startup error naming the variable (not a value);
    set → the values appear neither in `reflexd check` output nor in /status."""
    emu = await emulators(BinanceEmulator([MarketSpec("BTC/USDT")]))
    body = ccxt_source(
        emu, ["BTC/USDT"], credentials={"api_key_env": "RX_TEST_KEY", "secret_env": "RX_TEST_SECRET"}
    )
    monkeypatch.delenv("RX_TEST_KEY", raising=False)
    monkeypatch.delenv("RX_TEST_SECRET", raising=False)
    with pytest.raises(StartupError, match="RX_TEST_KEY, RX_TEST_SECRET"):
        Daemon(daemon_config(recorder_registry([]), sources={"feed": body}))

    key, secret = "key-canary-3b1f9e", "secret-canary-8d2c7a"
    monkeypatch.setenv("RX_TEST_KEY", key)
    monkeypatch.setenv("RX_TEST_SECRET", secret)
    cfg = daemon_config(recorder_registry([]), sources={"feed": body}, http="127.0.0.1:0")
    from daemon.cli import render_plan

    plan = render_plan(cfg)
    assert "credentials=from environment" in plan and key not in plan and secret not in plan
    daemon = await run_daemon(cfg)
    assert daemon.http is not None
    await wait_for(subscribed(emu, "btcusdt@aggTrade"), what="the subscription")
    async with aiohttp.ClientSession() as http:
        for path in ("/status", "/readyz", "/metrics"):
            async with http.get(f"http://127.0.0.1:{daemon.http.port}{path}") as r:
                text = await r.text()
                assert key not in text and secret not in text, path


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"exchange": "binanse"}, "sources.feed.exchange: ccxt has no exchange 'binanse'"),
        ({"channel": "candles"}, "sources.feed.channel: must be one of: trades, ticker, order_book, ohlcv"),
        ({"queue": {"when_full": "block"}}, "sources.feed.queue: when_full: block is not allowed for ccxt"),
        ({"symbols": []}, "sources.feed.symbols: "),
        ({"credentials": {"api_key": "x"}}, "sources.feed.credentials.api_key: unknown key"),
    ],
)
def test_configuration_errors_name_the_field(fields: dict[str, Any], reason: str) -> None:
    """Bad ccxt source settings are configuration errors at their path (no ccxt import needed to tell)."""
    body = {"type": "ccxt", "exchange": "binance", "symbols": ["BTC/USDT"], **fields}
    with pytest.raises(ConfigError) as info:
        load_config_text(orjson.dumps({"sources": {"feed": body}}).decode(), builtin_registry())
    assert any(reason in str(issue) for issue in info.value.issues), [str(i) for i in info.value.issues]


def test_ccxt_is_imported_only_when_a_ccxt_component_is_configured(tmp_path: Path) -> None:
    """A daemon built (and `reflexd check`ed) from a config without ccxt components never imports ccxt;
    the same with a ccxt source does (control: the probe can see the import)."""
    probe = """
import sys
from daemon.cli import main
from daemon.config import load_config
from daemon.registry import builtin_registry
from daemon.telemetry import metrics_registry
from daemon.supervisor import Daemon
path = sys.argv[1]
assert main(["check", "-c", path]) == 0
Daemon(load_config(path, builtin_registry()))
print("ccxt" in sys.modules, any(m.startswith("ccxt.") for m in sys.modules))
"""
    without = tmp_path / "plain.yaml"
    without.write_text(
        "daemon: {http: null}\n"
        f"sources: {{recorded: {{type: replay, path: {ROOT / 'data' / 'sample-trades.jsonl'}}}}}\n"
        "tools: {alert: {type: log}}\n"
        "rules: {r: {from: recorded, then: [{tool: alert, args: {text: x}}]}}\n"
    )
    with_ccxt = tmp_path / "ccxt.yaml"
    with_ccxt.write_text(
        "daemon: {http: null}\nsources: {ex: {type: ccxt, exchange: binance, symbols: [BTC/USDT]}}\n"
    )

    def run(config: Path) -> str:
        done = subprocess.run(
            [sys.executable, "-c", probe, str(config)], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    assert run(without) == "False False"
    assert run(with_ccxt) == "True True"
