"""ccxt's unified structures → the ``data`` of a ``ccxt`` source's events. Pure: no client, no I/O.

=============  ==========================================================================
channel        ``data``
=============  ==========================================================================
trades         ``symbol, id, price, amount, side, ts`` (:func:`trade_data`)
ticker         ``symbol, bid, ask, last, bid_volume, ask_volume, ts`` (:func:`ticker_data`)
order_book     ``symbol, bids, asks, ts, nonce``: copies of the top ``depth`` levels
               (:func:`book_data`)
ohlcv          ``symbol, timeframe, ts, open, high, low, close, volume, closed``
               (:func:`candle_data`; :func:`close_candles` decides when a candle is closed)
=============  ==========================================================================

``ts`` is the exchange's time in milliseconds, as ccxt gives it (the event's ``ts`` is the same
in seconds).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "book_data",
    "candle_data",
    "close_candles",
    "ticker_data",
    "ticker_fingerprint",
    "trade_data",
    "trade_key",
]


def trade_key(t: Mapping[str, Any]) -> Any:
    """A trade's id, or what identifies it on exchanges that send none (for de-duplication)."""
    tid = t["id"]
    return tid if tid is not None else (t["timestamp"], t["price"], t["amount"], t["side"])


def trade_data(symbol: str, t: Mapping[str, Any]) -> dict[str, Any]:
    """One ccxt trade."""
    return {
        "symbol": symbol,
        "id": t["id"],
        "price": t["price"],
        "amount": t["amount"],
        "side": t["side"],
        "ts": t["timestamp"],
    }


def ticker_data(symbol: str, t: Mapping[str, Any]) -> dict[str, Any]:
    """One ccxt ticker (a field the exchange does not send is None)."""
    return {
        "symbol": symbol,
        "bid": t.get("bid"),
        "ask": t.get("ask"),
        "last": t.get("last"),
        "bid_volume": t.get("bidVolume"),
        "ask_volume": t.get("askVolume"),
        "ts": t.get("timestamp"),
    }


def ticker_fingerprint(t: Mapping[str, Any]) -> tuple[Any, ...]:
    """What tells two polled tickers apart: a ticker with the same fingerprint is not emitted again."""
    return (t.get("timestamp"), t.get("bid"), t.get("ask"), t.get("last"))


def book_data(symbol: str, ob: Mapping[str, Any], depth: int) -> dict[str, Any]:
    """The top ``depth`` levels of a ccxt order book, copied: ``watch_order_book`` returns one live
    object that ccxt keeps mutating, and a rule (or a tool running later) must not see it change."""
    bids = [[level[0], level[1]] for level in ob["bids"][:depth]]
    asks = [[level[0], level[1]] for level in ob["asks"][:depth]]
    return {"symbol": symbol, "bids": bids, "asks": asks, "ts": ob.get("timestamp"), "nonce": ob.get("nonce")}


def candle_data(symbol: str, timeframe: str, row: list[Any], closed: bool) -> dict[str, Any]:
    """One ccxt OHLCV row ``[ts, open, high, low, close, volume]``."""
    ts, o, h, low, c, v = row[:6]
    return {
        "symbol": symbol,
        "timeframe": timeframe,
        "ts": ts,
        "open": o,
        "high": h,
        "low": low,
        "close": c,
        "volume": v,
        "closed": closed,
    }


def close_candles(
    rows: Iterable[list[Any]],
    forming: list[Any] | None,
    closed_ts: int | None,
    include_forming: bool,
) -> tuple[list[tuple[list[Any], bool]], list[Any] | None, int | None]:
    """Which candles to emit for new OHLCV ``rows``, given the candle still forming and the open time
    of the last one closed: ``(emits, forming, closed_ts)`` after them, each emit ``(row, closed)``.

    A candle is closed once a later one appears, and emitted then with its final values; rows at or
    before the last closed candle, and rows older than the forming one, are ignored. With
    ``include_forming`` every update of the forming candle is emitted too (``closed`` false).
    """
    emits: list[tuple[list[Any], bool]] = []
    for row in sorted(rows, key=lambda r: r[0]):
        ts = row[0]
        if closed_ts is not None and ts <= closed_ts:
            continue
        if forming is not None and ts < forming[0]:
            continue
        if forming is not None and ts > forming[0]:
            emits.append((forming, True))
            closed_ts = forming[0]
        forming = list(row[:6])
        if include_forming:
            emits.append((forming, False))
    return emits, forming, closed_ts
