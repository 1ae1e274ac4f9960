"""The emulator's engine: a market simulation, an aiohttp server, a request log and faults.

An exchange emulator is an aiohttp application on 127.0.0.1 (port 0) that the real ccxt
library talks to over real HTTP (and WebSocket, for exchanges that have it). This module holds
what every emulated exchange shares; the wire formats live in one module per exchange.

- :class:`Market` simulates one symbol: trades at scripted prices (cycling through
  ``MarketSpec.prices``), an order book that follows the last price (with update ids), and
  candles built from the trades. Times come from the emulator's clock, which can run faster
  than the wall clock (``speed``) so that one-minute candles close within a test.
- :class:`ExchangeEmulator` serves the routes, records every request in :attr:`requests`,
  and applies the faults a test scripts: HTTP errors answered to the next requests of a path
  (``fail``), slow answers (``slow``), and, for WebSocket exchanges, drops and stalls.
- Trades are produced either explicitly (``await emu.trade("BTC/USDT", 5)``) or by a
  background producer (``emu.produce(rate=200)``).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web

__all__ = [
    "INTERVALS_MS",
    "PARAMS",
    "RAW_BODY",
    "RECORD",
    "EmTrade",
    "ExchangeEmulator",
    "Fault",
    "Market",
    "MarketSpec",
    "RecordedRequest",
]

#: What the middleware parsed from a request: query and form/JSON fields, and the raw body.
PARAMS = web.RequestKey("params", dict)
RAW_BODY = web.RequestKey("raw_body", str)
RECORD: web.RequestKey[RecordedRequest] = web.RequestKey("record", object)  # type: ignore[arg-type]

INTERVALS_MS = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000, "1d": 86_400_000}
BOOK_LEVELS = 10


@dataclass(frozen=True)
class MarketSpec:
    """One listed symbol and the prices its trades cycle through."""

    symbol: str  # unified, e.g. "BTC/USDT"
    prices: Sequence[str] = ("100.00", "100.50", "101.00", "100.25", "99.75")
    amounts: Sequence[str] = ("0.5", "1.25", "0.1")
    tick: str = "0.01"

    @property
    def base(self) -> str:
        return self.symbol.split("/")[0]

    @property
    def quote(self) -> str:
        return self.symbol.split("/")[1]


@dataclass(frozen=True)
class EmTrade:
    """One trade as the emulator keeps it (strings, like the exchanges send them)."""

    id: int
    price: str
    amount: str
    ts: int  # ms, emulator clock
    buyer_maker: bool


@dataclass
class Candle:
    start: int
    open: str
    high: str
    low: str
    close: str
    volume: Decimal
    count: int
    first_id: int
    last_id: int

    def add(self, trade: EmTrade) -> None:
        p = Decimal(trade.price)
        if p > Decimal(self.high):
            self.high = trade.price
        if p < Decimal(self.low):
            self.low = trade.price
        self.close = trade.price
        self.volume += Decimal(trade.amount)
        self.count += 1
        self.last_id = trade.id


class Market:
    """The simulated state of one symbol."""

    def __init__(
        self, spec: MarketSpec, clock: Callable[[], int], *, first_id: int = 1000, history: int = 200_000
    ) -> None:
        self.spec = spec
        self.symbol = spec.symbol
        self._clock = clock
        self._history = history
        self._prices = itertools.cycle(spec.prices)
        self._amounts = itertools.cycle(spec.amounts)
        self.trades: list[EmTrade] = []
        self._ts: list[int] = []  # parallel to trades, for bisect
        self.next_id = first_id
        self.last_price = spec.prices[0]
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}
        self.book_update_id = 5000
        self.candles: dict[str, Candle] = {}  # forming candle per interval (WS kline pushes)
        self._set_book(self.last_price)  # initial book, no update emitted

    # -- trades -------------------------------------------------------------------------------

    def new_trade(self) -> EmTrade:
        price = next(self._prices)
        ts = self._clock()
        if self._ts and ts < self._ts[-1]:
            ts = self._ts[-1]
        trade = EmTrade(self.next_id, price, next(self._amounts), ts, self.next_id % 2 == 0)
        self.next_id += 1
        self.trades.append(trade)
        self._ts.append(ts)
        if len(self.trades) > 2 * self._history:
            del self.trades[: self._history]
            del self._ts[: self._history]
        self.last_price = price
        return trade

    def trades_between(
        self, start: int | None, end: int | None, from_id: int | None, limit: int
    ) -> list[EmTrade]:
        """Oldest first, like Binance's aggTrades: from ``from_id``, or within [start, end]; else the newest."""
        if from_id is not None:
            i = bisect.bisect_left(self.trades, from_id, key=lambda t: t.id)
            return self.trades[i : i + limit]
        if start is None and end is None:
            return self.trades[-limit:]
        lo = bisect.bisect_left(self._ts, start) if start is not None else 0
        hi = bisect.bisect_right(self._ts, end) if end is not None else len(self._ts)
        return self.trades[lo:hi][:limit]

    @property
    def ids(self) -> list[int]:
        return [t.id for t in self.trades]

    # -- order book ---------------------------------------------------------------------------

    def _levels(self, price: str) -> tuple[dict[str, str], dict[str, str]]:
        tick = Decimal(self.spec.tick)
        p = Decimal(price)
        q = Decimal(self.spec.tick).as_tuple().exponent
        exp = Decimal(1).scaleb(q)  # quantise prices to the tick's decimals
        bids = {str((p - tick * i).quantize(exp)): str(Decimal(i) / 2) for i in range(1, BOOK_LEVELS + 1)}
        asks = {str((p + tick * i).quantize(exp)): str(Decimal(i) / 4) for i in range(1, BOOK_LEVELS + 1)}
        return bids, asks

    def _set_book(self, price: str) -> tuple[list[list[str]], list[list[str]]]:
        bids, asks = self._levels(price)
        bid_delta = [[p, q] for p, q in bids.items() if self.bids.get(p) != q]
        bid_delta += [[p, "0"] for p in self.bids if p not in bids]
        ask_delta = [[p, q] for p, q in asks.items() if self.asks.get(p) != q]
        ask_delta += [[p, "0"] for p in self.asks if p not in asks]
        self.bids, self.asks = bids, asks
        return bid_delta, ask_delta

    def move_book(self) -> tuple[int, int, list[list[str]], list[list[str]]]:
        """Re-centre the book on the last price: (first update id, last update id, bid delta, ask delta)."""
        bid_delta, ask_delta = self._set_book(self.last_price)
        first = self.book_update_id + 1
        self.book_update_id += 1
        return first, self.book_update_id, bid_delta, ask_delta

    def book(self, limit: int) -> tuple[list[list[str]], list[list[str]]]:
        bids = sorted(self.bids.items(), key=lambda kv: Decimal(kv[0]), reverse=True)[:limit]
        asks = sorted(self.asks.items(), key=lambda kv: Decimal(kv[0]))[:limit]
        return [[p, q] for p, q in bids], [[p, q] for p, q in asks]

    def best(self) -> tuple[str, str, str, str]:
        (bid, bid_q), (ask, ask_q) = self.book(1)[0][0], self.book(1)[1][0]
        return bid, bid_q, ask, ask_q

    # -- candles ------------------------------------------------------------------------------

    def candles_from_trades(
        self, interval: str, start: int | None, end: int | None, limit: int
    ) -> list[Candle]:
        """Candles built from the trade history, oldest first (the last one may be forming)."""
        ms = INTERVALS_MS[interval]
        out: dict[int, Candle] = {}
        for t in self.trades:
            bucket = t.ts - t.ts % ms
            if start is not None and bucket + ms <= start:
                continue
            if end is not None and bucket > end:
                break
            c = out.get(bucket)
            if c is None:
                out[bucket] = Candle(
                    bucket, t.price, t.price, t.price, t.price, Decimal(t.amount), 1, t.id, t.id
                )
            else:
                c.add(t)
        return list(out.values())[:limit] if start is not None else list(out.values())[-limit:]

    def kline_updates(self, trade: EmTrade, intervals: Iterable[str]) -> list[tuple[str, Candle, bool]]:
        """Advance the forming candle of each interval: [(interval, candle, closed)] to publish."""
        out: list[tuple[str, Candle, bool]] = []
        for interval in intervals:
            ms = INTERVALS_MS[interval]
            bucket = trade.ts - trade.ts % ms
            c = self.candles.get(interval)
            if c is not None and c.start == bucket:
                c.add(trade)
                out.append((interval, c, False))
                continue
            if c is not None:
                out.append((interval, c, True))  # the previous candle closes
            c = Candle(
                bucket,
                trade.price,
                trade.price,
                trade.price,
                trade.price,
                Decimal(trade.amount),
                1,
                trade.id,
                trade.id,
            )
            self.candles[interval] = c
            out.append((interval, c, False))
        return out


@dataclass
class RecordedRequest:
    """One HTTP request the emulator received (WebSocket upgrades included), logged on arrival."""

    at: float  # time.monotonic() on arrival
    method: str
    path: str
    params: dict[str, str]  # query and form fields
    headers: dict[str, str]
    status: int = 0  # set when answered (101 once a WebSocket upgrade is accepted)


@dataclass
class Fault:
    """Answers scripted for the next requests of one path."""

    statuses: list[int] = field(default_factory=list)
    retry_after: float | None = None


Handler = Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]]


class ExchangeEmulator:
    """Base of the emulated exchanges. ``async with Emulator(...) as emu`` starts and stops it."""

    name = "base"

    def __init__(
        self,
        markets: Sequence[MarketSpec] = (MarketSpec("BTC/USDT"),),
        *,
        speed: float = 1.0,
        start_ms: int | None = None,
    ) -> None:
        self._t0 = time.monotonic()
        self._start_ms = int(time.time() * 1000) if start_ms is None else start_ms
        self.speed = speed
        # ids are distinct across markets (1000…, 10001000…), so a mix-up between symbols shows
        self.markets: dict[str, Market] = {
            m.symbol: Market(m, self.clock_ms, first_id=1000 + i * 10_000_000) for i, m in enumerate(markets)
        }
        self.by_id: dict[str, Market] = {self.market_id(m.symbol): m for m in self.markets.values()}
        self.requests: list[RecordedRequest] = []
        self._faults: dict[tuple[str, str | None], Fault] = {}
        self._slow: dict[str, list[float]] = {}
        self._runner: web.AppRunner | None = None
        self._producer: asyncio.Task[None] | None = None
        self.port = 0

    # -- clock and ids ------------------------------------------------------------------------

    def clock_ms(self) -> int:
        return int(self._start_ms + (time.monotonic() - self._t0) * 1000 * self.speed)

    def market_id(self, symbol: str) -> str:
        return symbol.replace("/", "")

    # -- lifecycle ----------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:  # pragma: no cover - every exchange overrides it
        raise NotImplementedError

    async def start(self) -> ExchangeEmulator:
        app = web.Application(middlewares=[self._middleware])
        self.routes(app)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self._runner = runner
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.stop_producing()
        if self._producer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._producer
            self._producer = None
        await self.before_stop()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def before_stop(self) -> None:
        """Close WebSocket connections (exchanges that have them)."""

    async def __aenter__(self) -> ExchangeEmulator:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- what it saw --------------------------------------------------------------------------

    def requests_to(self, path: str | None = None, method: str | None = None) -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if (path is None or r.path == path) and (method is None or r.method == method)
        ]

    # -- faults -------------------------------------------------------------------------------

    def fail(
        self, path: str, *statuses: int, method: str | None = None, retry_after: float | None = None
    ) -> None:
        """Answer the next ``len(statuses)`` requests to ``path`` (of ``method``, or any) with these statuses."""
        fault = self._faults.setdefault((path, method), Fault())
        fault.statuses.extend(statuses)
        if retry_after is not None:
            fault.retry_after = retry_after

    def slow(self, path: str, *seconds: float) -> None:
        """Delay the answers of the next requests to ``path`` (one delay per request)."""
        self._slow.setdefault(path, []).extend(seconds)

    def take_delay(self, path: str) -> float:
        delays = self._slow.get(path)
        return delays.pop(0) if delays else 0.0

    def error_body(self, status: int) -> tuple[dict[str, Any] | str, str]:
        """(body, content type) of a scripted error answer; exchanges override the format."""
        return f"{status} scripted failure", "text/plain"

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:  # type: ignore[override]
        params: dict[str, str] = dict(request.query)
        if request.method in ("POST", "PUT") and request.can_read_body:
            body = await request.text()
            request[RAW_BODY] = body
            if request.content_type == "application/x-www-form-urlencoded":
                from urllib.parse import parse_qsl

                params.update(parse_qsl(body, keep_blank_values=True))
            elif request.content_type == "application/json" and body:
                import json

                loaded = json.loads(body)
                if isinstance(loaded, dict):
                    params.update({k: str(v) for k, v in loaded.items()})
        request[PARAMS] = params
        headers = {k: v for k, v in request.headers.items() if k.lower().startswith(("x-", "bm-", "upgrade"))}
        record = RecordedRequest(time.monotonic(), request.method, request.path, params, headers)
        request[RECORD] = record
        self.requests.append(record)
        status = 0
        fault = self._faults.get((request.path, request.method))
        if fault is None or not fault.statuses:
            fault = self._faults.get((request.path, None))
        try:
            if fault is not None and fault.statuses:
                status = fault.statuses.pop(0)
                body, ctype = self.error_body(status)
                extra = {}
                if fault.retry_after is not None:
                    extra["Retry-After"] = f"{fault.retry_after:g}"
                if isinstance(body, str):
                    return web.Response(text=body, status=status, content_type=ctype, headers=extra)
                return web.json_response(body, status=status, headers=extra)
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            if not record.status:
                record.status = status

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.json_response({"code": -1, "msg": f"emulator: no route {request.path}"}, status=404)

    # -- producing trades ---------------------------------------------------------------------

    async def trade(self, symbol: str, n: int = 1) -> list[EmTrade]:
        """Produce ``n`` trades of ``symbol`` now and publish them."""
        market = self.markets[symbol]
        out = []
        for _ in range(n):
            t = market.new_trade()
            out.append(t)
            await self.publish(market, t)
        return out

    async def publish(self, market: Market, trade: EmTrade) -> None:
        """Push a new trade (and what it changes) to subscribers; REST-only exchanges do nothing."""

    def produce(self, rate: float, symbols: Sequence[str] | None = None, *, batch: int = 1) -> None:
        """Produce ``rate`` trades per second per symbol in the background until ``stop_producing``."""
        self.stop_producing()
        chosen = list(symbols or self.markets)
        self._producer = asyncio.create_task(self._produce(rate, chosen, batch), name="emulator:producer")

    def stop_producing(self) -> None:
        if self._producer is not None and not self._producer.done():
            self._producer.cancel()

    async def _produce(self, rate: float, symbols: list[str], batch: int) -> None:
        interval = batch / rate
        next_at = time.monotonic()
        while True:
            for symbol in symbols:
                await self.trade(symbol, batch)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = time.monotonic()
                await asyncio.sleep(0)

    async def producing_stopped(self) -> None:
        """Stop the producer and wait until it has finished its last publish."""
        task, self._producer = self._producer, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
