"""Exchange emulators for offline tests: the real ccxt library talks to them over 127.0.0.1.

- :class:`BinanceEmulator`: Binance spot REST + WebSocket (what ``ccxt.pro.binance`` uses).
- :class:`BtcMarketsEmulator`: BTC Markets REST, an exchange ccxt has no WebSocket class for.

Both are driven by a scenario: scripted prices per market (:class:`MarketSpec`), trades produced
on demand or at a rate, and faults (HTTP errors and slow answers per path; WebSocket drops,
stalls with the socket open and refused handshakes). Every request is logged.
"""

from tests.exchange.binance import BinanceEmulator, Order, WsConnection
from tests.exchange.btcmarkets import BtcMarketsEmulator
from tests.exchange.core import EmTrade, ExchangeEmulator, Market, MarketSpec, RecordedRequest

__all__ = [
    "BinanceEmulator",
    "BtcMarketsEmulator",
    "EmTrade",
    "ExchangeEmulator",
    "Market",
    "MarketSpec",
    "Order",
    "RecordedRequest",
    "WsConnection",
]
