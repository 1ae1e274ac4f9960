"""ccxt's unified structures → event data, without a socket: inputs come from ccxt's own parsers."""

from __future__ import annotations

from typing import Any

import ccxt
import pytest
from ccxt.async_support.base.ws.order_book import OrderBook

from streams.ccxt_normalize import (
    book_data,
    candle_data,
    close_candles,
    ticker_data,
    ticker_fingerprint,
    trade_data,
    trade_key,
)

T0 = 1768485600000  # ms


@pytest.fixture(scope="module")
def binance() -> Any:
    return ccxt.binance()


def test_a_trade_keeps_id_price_amount_side_and_exchange_time(binance: Any) -> None:
    """A Binance aggTrade parsed by ccxt becomes symbol/id/price/amount/side/ts, ts in ms as ccxt gives it."""
    raw = {
        "e": "aggTrade",
        "s": "BTCUSDT",
        "a": 5933014,
        "p": "65000.10",
        "q": "0.012",
        "T": T0 + 139,
        "m": True,
    }
    trade = binance.parse_trade(raw)
    assert trade_data("BTC/USDT", trade) == {
        "symbol": "BTC/USDT",
        "id": "5933014",
        "price": 65000.1,
        "amount": 0.012,
        "side": "sell",
        "ts": T0 + 139,
    }
    assert trade_key(trade) == "5933014"


def test_a_trade_without_id_is_known_by_time_price_amount_and_side() -> None:
    """Exchanges that send no trade id: two identical trades de-duplicate, a different amount does not."""
    a = {"id": None, "timestamp": T0, "price": 1.5, "amount": 2.0, "side": "buy"}
    assert trade_key(a) == (T0, 1.5, 2.0, "buy")
    assert trade_key(dict(a)) == trade_key(a)
    assert trade_key({**a, "amount": 2.5}) != trade_key(a)


def test_a_ticker_names_volumes_in_snake_case_and_missing_fields_are_null(binance: Any) -> None:
    """bidVolume/askVolume become bid_volume/ask_volume; a field the exchange omits is None, not absent."""
    raw = {
        "symbol": "BTCUSDT",
        "lastPrice": "65000.1",
        "bidPrice": "65000.0",
        "bidQty": "1.5",
        "askPrice": "65000.2",
        "askQty": "2.0",
        "closeTime": T0 + 139,
    }
    data = ticker_data("BTC/USDT", binance.parse_ticker(raw))
    assert data == {
        "symbol": "BTC/USDT",
        "bid": 65000.0,
        "ask": 65000.2,
        "last": 65000.1,
        "bid_volume": 1.5,
        "ask_volume": 2.0,
        "ts": T0 + 139,
    }
    assert ticker_data("X/Y", {}) == dict.fromkeys(
        ("bid", "ask", "last", "bid_volume", "ask_volume", "ts")
    ) | {"symbol": "X/Y"}


def test_ticker_fingerprint_ignores_volumes_but_not_prices_or_time() -> None:
    """A polled ticker whose time and prices did not change is the same ticker (not emitted again)."""
    t = {"timestamp": T0, "bid": 1.0, "ask": 2.0, "last": 1.5, "bidVolume": 3.0}
    assert ticker_fingerprint(t) == ticker_fingerprint({**t, "bidVolume": 9.0})
    for field in ("timestamp", "bid", "ask", "last"):
        assert ticker_fingerprint(t) != ticker_fingerprint({**t, field: 0})


def test_an_order_book_is_a_copy_of_the_top_levels() -> None:
    """Only ``depth`` levels per side are kept, as [price, amount]; ccxt changing its live book later
    does not change the event's data."""
    book = OrderBook(
        {
            "bids": [[65000.0, 1.5], [64999.9, 0.5], [64999.8, 3.0]],
            "asks": [[65000.2, 2.0], [65000.3, 1.0]],
            "timestamp": T0 + 139,
            "nonce": 7,
        }
    )
    data = book_data("BTC/USDT", book, depth=2)
    expected = {
        "symbol": "BTC/USDT",
        "bids": [[65000.0, 1.5], [64999.9, 0.5]],
        "asks": [[65000.2, 2.0], [65000.3, 1.0]],
        "ts": T0 + 139,
        "nonce": 7,
    }
    assert data == expected
    book["bids"].store(65000.1, 9.0)  # what ccxt does on the next update: a new level,
    book["bids"].store(65000.0, 7.0)  # a changed one,
    book["asks"].store(65000.2, 0.0)  # a removed one
    assert data == expected


def test_a_candle_row_becomes_named_fields(binance: Any) -> None:
    """[ts, open, high, low, close, volume] (extra columns of the exchange dropped) with timeframe and closed."""
    row = binance.parse_ohlcv([T0, "1", "2", "0.5", "1.5", "10", T0 + 59_999, "0", 1, "0", "0", "0"])
    assert candle_data("BTC/USDT", "1m", row, True) == {
        "symbol": "BTC/USDT",
        "timeframe": "1m",
        "ts": T0,
        "open": 1.0,
        "high": 2.0,
        "low": 0.5,
        "close": 1.5,
        "volume": 10.0,
        "closed": True,
    }


def candle(minute: int, close: float) -> list[Any]:
    return [T0 + minute * 60_000, 1.0, 2.0, 0.5, close, 10.0]


def test_a_candle_is_emitted_once_when_the_next_one_appears_with_its_final_values() -> None:
    """Updates of the forming candle emit nothing; the next candle closes it, with its last update."""
    emits, forming, closed_ts = close_candles([candle(0, 1.1)], None, None, include_forming=False)
    assert (emits, forming, closed_ts) == ([], candle(0, 1.1), None)
    emits, forming, closed_ts = close_candles([candle(0, 1.2)], forming, closed_ts, include_forming=False)
    assert (emits, forming) == ([], candle(0, 1.2))
    emits, forming, closed_ts = close_candles([candle(1, 1.3)], forming, closed_ts, include_forming=False)
    assert emits == [(candle(0, 1.2), True)]
    assert (forming, closed_ts) == (candle(1, 1.3), T0)


def test_old_rows_are_ignored_and_rows_are_taken_in_time_order() -> None:
    """A page out of order closes candles in time order; rows at or before the last closed candle, or
    older than the forming one, change nothing."""
    emits, forming, closed_ts = close_candles(
        [candle(2, 3.0), candle(0, 1.0), candle(1, 2.0)], None, None, False
    )
    assert emits == [(candle(0, 1.0), True), (candle(1, 2.0), True)]
    assert (forming, closed_ts) == (candle(2, 3.0), T0 + 60_000)
    again = close_candles([candle(0, 9.0), candle(1, 9.0)], forming, closed_ts, False)
    assert again == ([], forming, closed_ts)


def test_include_forming_emits_every_update_of_the_forming_candle() -> None:
    """With include_forming each update is emitted with closed false, and the close is still emitted once."""
    emits, forming, closed_ts = close_candles(
        [candle(0, 1.0), candle(0, 1.1)], None, None, include_forming=True
    )
    assert emits == [(candle(0, 1.0), False), (candle(0, 1.1), False)]
    emits, _, _ = close_candles([candle(1, 2.0)], forming, closed_ts, include_forming=True)
    assert emits == [(candle(0, 1.1), True), (candle(1, 2.0), False)]
