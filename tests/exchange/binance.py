"""Binance spot, as the real ``ccxt.pro.binance`` class uses it (REST ``/api/v3`` and ``/ws``).

REST: ``exchangeInfo``, ``time``, ``aggTrades``, ``trades``, ``ticker/24hr``, ``depth``,
``klines``, and the signed ``order`` endpoint (POST create, GET fetch by ``orderId`` or
``origClientOrderId``, DELETE cancel). Signed requests must carry the configured API key in
``X-MBX-APIKEY`` and a valid HMAC-SHA256 signature, as on Binance; a duplicate
``newClientOrderId`` is refused with Binance's ``-2010 Duplicate order sent.``

WebSocket: any path under ``/ws``; ``SUBSCRIBE`` / ``UNSUBSCRIBE`` requests are answered
``{"result": null, "id": …}``. Streams: ``<s>@trade``, ``<s>@aggTrade``, ``<s>@ticker``,
``<s>@depth`` / ``<s>@depth@100ms`` (diff updates with ``U``/``u`` ids, consistent with the REST
snapshot's ``lastUpdateId``) and ``<s>@kline_<interval>``.

Faults: :meth:`drop` closes every open socket (a close frame with ``code``, or a TCP abort),
:meth:`stall` keeps the current sockets open and silent (pings are still answered),
:meth:`freeze` also stops reading them (no pong, no answer to a close: a half-open peer),
:meth:`reject_ws` answers the next handshakes with HTTP errors, and the base class's
``fail`` / ``slow`` act on REST paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import WSMsgType, web

from tests.exchange.core import (
    INTERVALS_MS,
    PARAMS,
    RAW_BODY,
    RECORD,
    Candle,
    EmTrade,
    ExchangeEmulator,
    Market,
    MarketSpec,
)

__all__ = ["BinanceEmulator", "Order", "WsConnection"]

API = "/api/v3"
OUTBOX_FRAMES = 50_000  # a client that falls this far behind is disconnected (1008), like Binance does


@dataclass
class WsConnection:
    """One accepted WebSocket connection."""

    index: int
    path: str
    ws: web.WebSocketResponse
    opened_at: float
    subscriptions: set[str] = field(default_factory=set)
    requests: list[dict[str, Any]] = field(default_factory=list)
    transport: Any = None  # asyncio transport, for aborts without a close frame
    stalled: bool = False
    sent: int = 0
    closed_at: float | None = None
    #: Frames waiting for this socket's writer: publishing never waits for one slow or closing socket.
    outbox: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(OUTBOX_FRAMES))
    overflowed: bool = False


@dataclass
class Order:
    """One order the emulated exchange accepted."""

    order_id: int
    client_order_id: str
    symbol: str  # exchange id, e.g. BTCUSDT
    side: str
    type: str
    quantity: str
    price: str | None
    status: str
    time: int
    time_in_force: str | None


class BinanceEmulator(ExchangeEmulator):
    """Binance spot REST + WebSocket. Credentials: ``api_key`` / ``secret``."""

    name = "binance"

    def __init__(
        self,
        markets: Sequence[MarketSpec] = (MarketSpec("BTC/USDT"),),
        *,
        speed: float = 1.0,
        start_ms: int | None = None,
        api_key: str = "emulator-key",
        secret: str = "emulator-secret",
    ) -> None:
        super().__init__(markets, speed=speed, start_ms=start_ms)
        self.api_key = api_key
        self.secret = secret
        self.connections: list[WsConnection] = []
        self.orders: list[Order] = []
        self._reject_ws: list[int] = []
        self._next_order_id = 1

    # -- ccxt configuration -------------------------------------------------------------------

    def ccxt_config(self) -> dict[str, Any]:
        """The ``urls`` and ``options`` that point the real ccxt binance class at this emulator.

        Every other REST base URL of the class (sapi, fapi, ...) points at ``/unmapped/<key>`` here,
        so a request this emulator does not serve is answered 404 and logged, never sent out.
        """
        import ccxt.async_support as ccxt_async  # tests only: the daemon imports ccxt lazily

        probe = ccxt_async.binance()
        api: dict[str, Any] = {
            key: f"{self.base_url}/unmapped/{key}"
            for key, value in probe.urls["api"].items()
            if isinstance(value, str)
        }
        api.update(
            {
                "public": f"{self.base_url}{API}",
                "private": f"{self.base_url}{API}",
                "ws": {"spot": f"ws://127.0.0.1:{self.port}/ws"},
            }
        )
        return {
            "urls": {"api": api},
            "options": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False, "fetchMargins": False},
        }

    # -- routes -------------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get(f"{API}/exchangeInfo", self._exchange_info)
        r.add_get(f"{API}/time", self._time)
        r.add_get(f"{API}/ping", self._ping)
        r.add_get(f"{API}/aggTrades", self._agg_trades)
        r.add_get(f"{API}/trades", self._trades)
        r.add_get(f"{API}/ticker/24hr", self._ticker)
        r.add_get(f"{API}/depth", self._depth)
        r.add_get(f"{API}/klines", self._klines)
        r.add_post(f"{API}/order", self._create_order)
        r.add_get(f"{API}/order", self._fetch_order)
        r.add_delete(f"{API}/order", self._cancel_order)
        r.add_get("/ws", self._ws)
        r.add_get("/ws/{stream}", self._ws)

    def error_body(self, status: int) -> tuple[dict[str, Any] | str, str]:
        if status == 429:
            return {
                "code": -1003,
                "msg": "Too many requests; current limit is 6000 request weight per 1 MINUTE.",
            }, ""
        return f"<html><body>{status} scripted failure</body></html>", "text/html"

    @staticmethod
    def _error(status: int, code: int, msg: str) -> web.Response:
        return web.json_response({"code": code, "msg": msg}, status=status)

    def _market(self, request: web.Request) -> Market | web.Response:
        market = self.by_id.get(request[PARAMS].get("symbol", ""))
        if market is None:
            return self._error(400, -1121, "Invalid symbol.")
        return market

    # -- public REST --------------------------------------------------------------------------

    async def _exchange_info(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.take_delay(request.path))
        symbols = []
        for m in self.markets.values():
            spec = m.spec
            symbols.append(
                {
                    "symbol": self.market_id(m.symbol),
                    "status": "TRADING",
                    "baseAsset": spec.base,
                    "baseAssetPrecision": 8,
                    "quoteAsset": spec.quote,
                    "quotePrecision": 8,
                    "quoteAssetPrecision": 8,
                    "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
                    "icebergAllowed": True,
                    "ocoAllowed": True,
                    "isSpotTradingAllowed": True,
                    "isMarginTradingAllowed": False,
                    "filters": [
                        {
                            "filterType": "PRICE_FILTER",
                            "minPrice": spec.tick,
                            "maxPrice": "1000000.00",
                            "tickSize": spec.tick,
                        },
                        {
                            "filterType": "LOT_SIZE",
                            "minQty": "0.00001",
                            "maxQty": "9000.00",
                            "stepSize": "0.00001",
                        },
                        {"filterType": "NOTIONAL", "minNotional": "1.00", "maxNotional": "9000000.00"},
                    ],
                    "permissions": [],
                    "permissionSets": [["SPOT"]],
                }
            )
        return web.json_response(
            {
                "timezone": "UTC",
                "serverTime": self.clock_ms(),
                "rateLimits": [],
                "exchangeFilters": [],
                "symbols": symbols,
            }
        )

    async def _time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": self.clock_ms()})

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    @staticmethod
    def _int(params: dict[str, str], name: str) -> int | None:
        value = params.get(name)
        return int(value) if value not in (None, "") else None

    async def _agg_trades(self, request: web.Request) -> web.Response:
        market = self._market(request)
        if isinstance(market, web.Response):
            return market
        p = request[PARAMS]
        limit = min(self._int(p, "limit") or 500, 1000)
        trades = market.trades_between(
            self._int(p, "startTime"), self._int(p, "endTime"), self._int(p, "fromId"), limit
        )
        return web.json_response([self._agg(t) for t in trades])

    @staticmethod
    def _agg(t: EmTrade) -> dict[str, Any]:
        return {
            "a": t.id,
            "p": t.price,
            "q": t.amount,
            "f": t.id,
            "l": t.id,
            "T": t.ts,
            "m": t.buyer_maker,
            "M": True,
        }

    async def _trades(self, request: web.Request) -> web.Response:
        market = self._market(request)
        if isinstance(market, web.Response):
            return market
        limit = min(self._int(request[PARAMS], "limit") or 500, 1000)
        return web.json_response(
            [
                {
                    "id": t.id,
                    "price": t.price,
                    "qty": t.amount,
                    "quoteQty": str(Decimal(t.price) * Decimal(t.amount)),
                    "time": t.ts,
                    "isBuyerMaker": t.buyer_maker,
                    "isBestMatch": True,
                }
                for t in market.trades[-limit:]
            ]
        )

    def _ticker_fields(self, m: Market) -> dict[str, Any]:
        bid, bid_q, ask, ask_q = m.best()
        first = m.spec.prices[0]
        last = m.trades[-1] if m.trades else None
        volume = sum((Decimal(t.amount) for t in m.trades[-1000:]), Decimal(0))
        return {
            "symbol": self.market_id(m.symbol),
            "priceChange": str(Decimal(m.last_price) - Decimal(first)),
            "priceChangePercent": "0.0",
            "weightedAvgPrice": m.last_price,
            "prevClosePrice": first,
            "lastPrice": m.last_price,
            "lastQty": last.amount if last else "0",
            "bidPrice": bid,
            "bidQty": bid_q,
            "askPrice": ask,
            "askQty": ask_q,
            "openPrice": first,
            "highPrice": max(m.spec.prices, key=Decimal),
            "lowPrice": min(m.spec.prices, key=Decimal),
            "volume": str(volume),
            "quoteVolume": str(volume * Decimal(m.last_price)),
            "openTime": self.clock_ms() - 86_400_000,
            "closeTime": last.ts if last else self.clock_ms(),
            "firstId": m.trades[0].id if m.trades else -1,
            "lastId": last.id if last else -1,
            "count": len(m.trades),
        }

    async def _ticker(self, request: web.Request) -> web.Response:
        market = self._market(request)
        if isinstance(market, web.Response):
            return market
        return web.json_response(self._ticker_fields(market))

    async def _depth(self, request: web.Request) -> web.Response:
        market = self._market(request)
        if isinstance(market, web.Response):
            return market
        await asyncio.sleep(self.take_delay(request.path))
        bids, asks = market.book(min(self._int(request[PARAMS], "limit") or 100, 5000))
        return web.json_response({"lastUpdateId": market.book_update_id, "bids": bids, "asks": asks})

    async def _klines(self, request: web.Request) -> web.Response:
        market = self._market(request)
        if isinstance(market, web.Response):
            return market
        p = request[PARAMS]
        interval = p.get("interval", "1m")
        if interval not in INTERVALS_MS:
            return self._error(400, -1120, "Invalid interval.")
        limit = min(self._int(p, "limit") or 500, 1000)
        candles = market.candles_from_trades(
            interval, self._int(p, "startTime"), self._int(p, "endTime"), limit
        )
        ms = INTERVALS_MS[interval]
        return web.json_response(
            [
                [
                    c.start,
                    c.open,
                    c.high,
                    c.low,
                    c.close,
                    str(c.volume),
                    c.start + ms - 1,
                    str(c.volume * Decimal(c.close)),
                    c.count,
                    "0",
                    "0",
                    "0",
                ]
                for c in candles
            ]
        )

    # -- signed REST --------------------------------------------------------------------------

    def _check_signature(self, request: web.Request) -> web.Response | None:
        if request.headers.get("X-MBX-APIKEY") != self.api_key:
            return self._error(401, -2015, "Invalid API-key, IP, or permissions for action.")
        raw = request.query_string if request.method in ("GET", "DELETE") else request.get(RAW_BODY, "")
        payload, sep, signature = raw.rpartition("&signature=")
        expected = hmac.new(self.secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not sep or not hmac.compare_digest(signature, expected):
            return self._error(400, -1022, "Signature for this request is not valid.")
        return None

    def _order_json(self, o: Order, *, created: bool) -> dict[str, Any]:
        market = self.by_id[o.symbol]
        filled = o.status == "FILLED"
        price = o.price if o.price is not None else market.last_price
        body: dict[str, Any] = {
            "symbol": o.symbol,
            "orderId": o.order_id,
            "orderListId": -1,
            "clientOrderId": o.client_order_id,
            "price": o.price or "0.00000000",
            "origQty": o.quantity,
            "executedQty": o.quantity if filled else "0.00000000",
            "cummulativeQuoteQty": str(Decimal(o.quantity) * Decimal(price)) if filled else "0.00000000",
            "status": o.status,
            "timeInForce": o.time_in_force or "GTC",
            "type": o.type,
            "side": o.side,
            "workingTime": o.time,
            "selfTradePreventionMode": "NONE",
        }
        if created:
            body["transactTime"] = o.time
            body["fills"] = (
                [
                    {
                        "price": price,
                        "qty": o.quantity,
                        "commission": "0",
                        "commissionAsset": "BNB",
                        "tradeId": 1,
                    }
                ]
                if filled
                else []
            )
        else:
            body.update(
                {
                    "stopPrice": "0.0",
                    "icebergQty": "0.0",
                    "time": o.time,
                    "updateTime": o.time,
                    "isWorking": True,
                    "origQuoteOrderQty": "0.000000",
                }
            )
        return body

    async def _create_order(self, request: web.Request) -> web.Response:
        bad = self._check_signature(request)
        if bad is not None:
            return bad
        market = self._market(request)
        if isinstance(market, web.Response):
            return market
        p = request[PARAMS]
        client_id = p.get("newClientOrderId") or f"emu{self._next_order_id}"
        if any(o.client_order_id == client_id for o in self.orders):
            return self._error(400, -2010, "Duplicate order sent.")
        side, kind, qty, price = p.get("side"), p.get("type"), p.get("quantity"), p.get("price")
        if side not in ("BUY", "SELL") or kind not in ("LIMIT", "MARKET") or not qty:
            return self._error(400, -1102, "Mandatory parameter was not sent, was empty/null, or malformed.")
        if kind == "LIMIT" and not price:
            return self._error(
                400, -1102, "Mandatory parameter 'price' was not sent, was empty/null, or malformed."
            )
        order = Order(
            self._next_order_id,
            client_id,
            self.market_id(market.symbol),
            side,
            kind,
            qty,
            price if kind == "LIMIT" else None,
            "NEW" if kind == "LIMIT" else "FILLED",
            self.clock_ms(),
            p.get("timeInForce"),
        )
        self._next_order_id += 1
        self.orders.append(order)  # accepted: a slow answer below is lost on a timed-out client
        delay = self.take_delay(request.path)
        if delay:
            await asyncio.sleep(delay)
        return web.json_response(self._order_json(order, created=True))

    def _find_order(self, p: dict[str, str]) -> Order | None:
        cid, oid = p.get("origClientOrderId"), p.get("orderId")
        for o in self.orders:
            if (cid is not None and o.client_order_id == cid) or (oid is not None and str(o.order_id) == oid):
                return o
        return None

    async def _fetch_order(self, request: web.Request) -> web.Response:
        bad = self._check_signature(request)
        if bad is not None:
            return bad
        order = self._find_order(request[PARAMS])
        if order is None:
            return self._error(400, -2013, "Order does not exist.")
        return web.json_response(self._order_json(order, created=False))

    async def _cancel_order(self, request: web.Request) -> web.Response:
        bad = self._check_signature(request)
        if bad is not None:
            return bad
        order = self._find_order(request[PARAMS])
        if order is None or order.status != "NEW":
            return self._error(400, -2011, "Unknown order sent.")
        order.status = "CANCELED"
        return web.json_response(self._order_json(order, created=False))

    def order_requests(self) -> list[Any]:
        """Every request that reached the order endpoint (create, fetch or cancel)."""
        return self.requests_to(f"{API}/order")

    # -- WebSocket ----------------------------------------------------------------------------

    def reject_ws(self, *statuses: int) -> None:
        """Answer the next WebSocket handshakes with these HTTP statuses."""
        self._reject_ws.extend(statuses)

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if self._reject_ws:
            status = self._reject_ws.pop(0)
            body, _ = self.error_body(status)
            if isinstance(body, dict):
                return web.json_response(body, status=status)
            return web.Response(text=body, status=status)
        ws = web.WebSocketResponse(autoping=True, heartbeat=None, max_msg_size=1 << 20)
        await ws.prepare(request)
        request[RECORD].status = 101  # type: ignore[attr-defined]
        conn = WsConnection(
            len(self.connections), request.path, ws, time.monotonic(), transport=request.transport
        )
        self.connections.append(conn)
        writer = asyncio.create_task(self._write(conn), name=f"emulator:ws-writer:{conn.index}")
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    req = json.loads(msg.data)
                except ValueError:
                    continue
                conn.requests.append(req)
                method, params = req.get("method"), req.get("params") or []
                if method == "SUBSCRIBE":
                    conn.subscriptions.update(params)
                elif method == "UNSUBSCRIBE":
                    conn.subscriptions.difference_update(params)
                if not conn.stalled:
                    self._send(conn, json.dumps({"result": None, "id": req.get("id")}))
        finally:
            conn.closed_at = time.monotonic()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return ws

    @staticmethod
    async def _write(conn: WsConnection) -> None:
        ws, outbox = conn.ws, conn.outbox
        while True:
            frame = await outbox.get()
            if conn.overflowed:
                await ws.close(code=1008, message=b"client too slow")
                return
            try:
                await ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                return
            conn.sent += 1

    @staticmethod
    def _send(conn: WsConnection, frame: str) -> None:
        try:
            conn.outbox.put_nowait(frame)
        except asyncio.QueueFull:
            conn.overflowed = True

    @property
    def open_connections(self) -> list[WsConnection]:
        return [c for c in self.connections if c.closed_at is None and not c.ws.closed]

    async def drop(self, code: int = 1001, *, abort: bool = False) -> int:
        """Close every open WebSocket (close frame ``code``, or a TCP abort); returns how many."""
        conns = self.open_connections
        for c in conns:
            if abort and c.transport is not None:
                c.transport.abort()
        if not abort:
            await asyncio.gather(
                *(c.ws.close(code=code, message=b"emulator drop") for c in conns), return_exceptions=True
            )
        return len(conns)

    def stall(self) -> int:
        """Keep every open socket open and silent from now on; returns how many."""
        conns = self.open_connections
        for c in conns:
            c.stalled = True
        return len(conns)

    def freeze(self) -> int:
        """Like :meth:`stall`, and stop reading the sockets too: no pong, no answer to a close (a half-open
        peer). Returns how many sockets."""
        conns = self.open_connections
        for c in conns:
            c.stalled = True
            if c.transport is not None:
                c.transport.pause_reading()
        return len(conns)

    async def before_stop(self) -> None:
        for c in self.open_connections:
            with contextlib.suppress(Exception):
                await c.ws.close(code=1001, message=b"emulator stopping")

    # -- publishing ---------------------------------------------------------------------------

    async def publish(self, market: Market, trade: EmTrade) -> None:
        lid = self.market_id(market.symbol).lower()
        first, last, bid_delta, ask_delta = market.move_book()
        now = self.clock_ms()
        intervals = [
            s.split("@kline_", 1)[1]
            for c in self.connections
            if c.closed_at is None
            for s in c.subscriptions
            if s.startswith(f"{lid}@kline_")
        ]
        klines = market.kline_updates(trade, sorted(set(intervals))) if intervals else []
        for c in self.open_connections:
            if c.stalled or not c.subscriptions:
                continue
            frames = self._frames(
                c.subscriptions, lid, market, trade, now, first, last, bid_delta, ask_delta, klines
            )
            for frame in frames:
                self._send(c, frame)

    def _frames(
        self,
        subs: set[str],
        lid: str,
        market: Market,
        t: EmTrade,
        now: int,
        first: int,
        last: int,
        bid_delta: list[list[str]],
        ask_delta: list[list[str]],
        klines: list[tuple[str, Candle, bool]],
    ) -> list[str]:
        sid = lid.upper()
        out: list[str] = []
        if f"{lid}@trade" in subs:
            out.append(
                json.dumps(
                    {
                        "e": "trade",
                        "E": now,
                        "s": sid,
                        "t": t.id,
                        "p": t.price,
                        "q": t.amount,
                        "T": t.ts,
                        "m": t.buyer_maker,
                        "M": True,
                    }
                )
            )
        if f"{lid}@aggTrade" in subs:
            out.append(
                json.dumps(
                    {
                        "e": "aggTrade",
                        "E": now,
                        "s": sid,
                        "a": t.id,
                        "p": t.price,
                        "q": t.amount,
                        "f": t.id,
                        "l": t.id,
                        "T": t.ts,
                        "m": t.buyer_maker,
                        "M": True,
                    }
                )
            )
        if f"{lid}@ticker" in subs:
            f = self._ticker_fields(market)
            out.append(
                json.dumps(
                    {
                        "e": "24hrTicker",
                        "E": now,
                        "s": sid,
                        "p": f["priceChange"],
                        "P": f["priceChangePercent"],
                        "w": f["weightedAvgPrice"],
                        "x": f["prevClosePrice"],
                        "c": f["lastPrice"],
                        "Q": f["lastQty"],
                        "b": f["bidPrice"],
                        "B": f["bidQty"],
                        "a": f["askPrice"],
                        "A": f["askQty"],
                        "o": f["openPrice"],
                        "h": f["highPrice"],
                        "l": f["lowPrice"],
                        "v": f["volume"],
                        "q": f["quoteVolume"],
                        "O": f["openTime"],
                        "C": t.ts,
                        "F": f["firstId"],
                        "L": f["lastId"],
                        "n": f["count"],
                    }
                )
            )
        if f"{lid}@miniTicker" in subs:
            f = self._ticker_fields(market)
            out.append(
                json.dumps(
                    {
                        "e": "24hrMiniTicker",
                        "E": now,
                        "s": sid,
                        "c": f["lastPrice"],
                        "o": f["openPrice"],
                        "h": f["highPrice"],
                        "l": f["lowPrice"],
                        "v": f["volume"],
                        "q": f["quoteVolume"],
                    }
                )
            )
        if f"{lid}@depth" in subs or f"{lid}@depth@100ms" in subs:
            out.append(
                json.dumps(
                    {
                        "e": "depthUpdate",
                        "E": now,
                        "s": sid,
                        "U": first,
                        "u": last,
                        "b": bid_delta,
                        "a": ask_delta,
                    }
                )
            )
        for interval, c, closed in klines:
            if f"{lid}@kline_{interval}" not in subs:
                continue
            ms = INTERVALS_MS[interval]
            out.append(
                json.dumps(
                    {
                        "e": "kline",
                        "E": now,
                        "s": sid,
                        "k": {
                            "t": c.start,
                            "T": c.start + ms - 1,
                            "s": sid,
                            "i": interval,
                            "f": c.first_id,
                            "L": c.last_id,
                            "o": c.open,
                            "c": c.close,
                            "h": c.high,
                            "l": c.low,
                            "v": str(c.volume),
                            "n": c.count,
                            "x": closed,
                            "q": str(c.volume * Decimal(c.close)),
                            "V": "0",
                            "Q": "0",
                            "B": "0",
                        },
                    }
                )
            )
        return out
