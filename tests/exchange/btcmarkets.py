"""BTC Markets (``ccxt.async_support.btcmarkets``): an exchange without WebSocket support in ccxt.

ccxt.pro has no ``btcmarkets`` class, so reflexd polls it over REST. Public API v3 only:
``/v3/markets``, ``/v3/time``, ``/v3/markets/{id}/trades`` (newest first, ``limit`` default
10, max 200, like the real one), ``…/ticker``, ``…/orderbook`` and ``…/candles``. Market ids are
``BASE-QUOTE`` (``BTC-AUD``); times are ISO 8601 strings with microseconds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from aiohttp import web

from tests.exchange.core import INTERVALS_MS, ExchangeEmulator, Market, MarketSpec

__all__ = ["BtcMarketsEmulator"]

V3 = "/v3"


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def parse_iso(text: str) -> int:
    return int(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


class BtcMarketsEmulator(ExchangeEmulator):
    """BTC Markets public REST API."""

    name = "btcmarkets"

    def __init__(
        self, markets: Sequence[MarketSpec] = (MarketSpec("BTC/AUD"),), *, speed: float = 1.0
    ) -> None:
        super().__init__(markets, speed=speed)

    def market_id(self, symbol: str) -> str:
        return symbol.replace("/", "-")

    def ccxt_config(self) -> dict[str, Any]:
        return {"urls": {"api": {"public": self.base_url, "private": self.base_url}}}

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get(f"{V3}/markets", self._markets)
        r.add_get(f"{V3}/time", self._time)
        r.add_get(V3 + "/markets/{id}/trades", self._trades)
        r.add_get(V3 + "/markets/{id}/ticker", self._ticker)
        r.add_get(V3 + "/markets/{id}/orderbook", self._orderbook)
        r.add_get(V3 + "/markets/{id}/candles", self._candles)

    def error_body(self, status: int) -> tuple[dict[str, Any] | str, str]:
        if status == 429:
            return {"code": "TooManyRequests", "message": "too many requests"}, ""
        return {"code": "InternalServerError", "message": "scripted failure"}, ""

    def _market(self, request: web.Request) -> Market | web.Response:
        market = self.by_id.get(request.match_info["id"])
        if market is None:
            return web.json_response({"code": "MarketNotFound", "message": "invalid marketId"}, status=404)
        return market

    async def _markets(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {
                    "marketId": self.market_id(m.symbol),
                    "baseAssetName": m.spec.base,
                    "quoteAssetName": m.spec.quote,
                    "minOrderAmount": "0.0001",
                    "maxOrderAmount": "1000000",
                    "amountDecimals": "8",
                    "priceDecimals": "2",
                    "status": "Online",
                }
                for m in self.markets.values()
            ]
        )

    async def _time(self, request: web.Request) -> web.Response:
        return web.json_response({"timestamp": iso(self.clock_ms())})

    async def _trades(self, request: web.Request) -> web.Response:
        market = self._market(request)
        if isinstance(market, web.Response):
            return market
        limit = min(int(request.query.get("limit", "10")), 200)
        newest_first = list(reversed(market.trades[-limit:]))
        return web.json_response(
            [
                {
                    "id": str(t.id),
                    "price": t.price,
                    "amount": t.amount,
                    "timestamp": iso(t.ts),
                    "side": "Ask" if t.buyer_maker else "Bid",
                }
                for t in newest_first
            ]
        )

    async def _ticker(self, request: web.Request) -> web.Response:
        m = self._market(request)
        if isinstance(m, web.Response):
            return m
        bid, _, ask, _ = m.best()
        last_ts = m.trades[-1].ts if m.trades else self.clock_ms()
        volume = sum((Decimal(t.amount) for t in m.trades[-1000:]), Decimal(0))
        return web.json_response(
            {
                "marketId": self.market_id(m.symbol),
                "bestBid": bid,
                "bestAsk": ask,
                "lastPrice": m.last_price,
                "volume24h": str(volume),
                "volumeQte24h": str(volume * Decimal(m.last_price)),
                "price24h": "0",
                "pricePct24h": "0",
                "low24h": min(m.spec.prices, key=Decimal),
                "high24h": max(m.spec.prices, key=Decimal),
                "timestamp": iso(last_ts),
            }
        )

    async def _orderbook(self, request: web.Request) -> web.Response:
        m = self._market(request)
        if isinstance(m, web.Response):
            return m
        m.move_book()
        bids, asks = m.book(50)
        return web.json_response(
            {
                "marketId": self.market_id(m.symbol),
                "snapshotId": self.clock_ms() * 1000,
                "bids": bids,
                "asks": asks,
            }
        )

    async def _candles(self, request: web.Request) -> web.Response:
        m = self._market(request)
        if isinstance(m, web.Response):
            return m
        interval = request.query.get("timeWindow", "1m")
        if interval not in INTERVALS_MS:
            return web.json_response({"code": "InvalidTimeWindow", "message": "bad timeWindow"}, status=400)
        start = parse_iso(request.query["from"]) if "from" in request.query else None
        limit = min(int(request.query.get("limit", "10")), 200)
        candles = m.candles_from_trades(interval, start, None, limit)
        return web.json_response(
            [[iso(c.start), c.open, c.high, c.low, c.close, str(c.volume)] for c in reversed(candles)]
        )
