"""``ccxt`` source: exchange market data through ccxt (WebSocket ``watch_*`` or REST polling).

::

    connect()  build one exchange client (ccxt.pro class, or ccxt.async_support for polling),
               load its markets (reused from the previous client after a reconnect)
    read()     one task per symbol: watch_* (or fetch_* every poll_interval_seconds), each call
               under the stall watchdog; events normalised and put into the bounded queue
    close()    cancel the symbol tasks, close the client (every WebSocket of it)

**One session per source, one task per symbol inside it.** A session owns one ccxt client
(its rate limiter, HTTP session and WebSocket connections). A retryable error in any symbol
(``NetworkError`` family: dropped socket, ``RequestTimeout``, ``ExchangeNotAvailable``,
``DDoSProtection``, 429/5xx) or a stall (no answer within ``stall_timeout_seconds``) ends the
session; the engine's :class:`~streams.reconnect.Reconnector` backs off, builds a new client,
queues a ``gap`` event, and every symbol subscribes again — trades are backfilled with
``fetch_trades`` since the last seen trade and de-duplicated by trade id, candles with
``fetch_ohlcv``. A fatal error of one symbol (``BadSymbol``, ``AuthenticationError``,
``BadRequest``, ``NotSupported``) stops that symbol only: it is named in ``/readyz`` and
``/status`` while the others go on; when every symbol has stopped, the source fails.
(Separate sessions per symbol would mean one client — and one rate limiter — per symbol,
which the exchange counts against one account; ccxt's ``close()`` also drops every socket
of a client, so the client is the natural unit of reconnection.)

ccxt reconnects lazily and silently: a ``watch_*`` call made after a socket closed opens a
new one without raising. The source therefore hooks the client's ``on_close`` / ``on_error``
callbacks so that every lost socket ends the session and is counted as a gap.

Every ``recycle_after_seconds`` the client is rebuilt without losing data: the new client
subscribes while the old one still delivers; trades from both are de-duplicated by id,
tickers / books / candles switch to the new client at its first update; then the old client
is closed (long-running ccxt clients grow: ccxt#29331, freqtrade#13082).

ccxt is imported only when a ccxt source is built (the import costs ~0.5 s and ~100 MB);
this module's configuration model imports nothing from it.

The client helpers shared with the ``ccxt_order`` tool (building a client, credentials, error
classes) are in :mod:`streams.ccxt_client`; turning ccxt's trades, tickers, books and candles
into event data (pure functions) is :mod:`streams.ccxt_normalize`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field, field_validator

from daemon.errors import IdleTimeout, NotConnected, StartupError
from daemon.logs import RateLimitedLog, get_logger
from streams.base import Source, SourceConfig, SourceStats
from streams.ccxt_client import (
    ERROR_REASON,
    CcxtCredentials,
    ExchangeId,
    build_exchange,
    ccxt_error_kind,
    describe_error,
    import_ccxt,
    is_fatal,
    read_credentials,
)
from streams.ccxt_normalize import (
    book_data,
    candle_data,
    close_candles,
    ticker_data,
    ticker_fingerprint,
    trade_data,
    trade_key,
)
from streams.component import BuildContext, ComponentSpec
from streams.decode import future_limit
from streams.event import new_event
from streams.metrics import MetricSpec
from streams.queue import WhenFull

__all__ = [
    "SPEC",
    "CcxtSource",
    "CcxtSourceConfig",
    "CcxtStats",
]

log = get_logger("source.ccxt")

T = TypeVar("T")
Channel = Literal["trades", "ticker", "order_book", "ohlcv"]

WATCH_METHOD: dict[str, str] = {
    "trades": "watchTrades",
    "ticker": "watchTicker",
    "order_book": "watchOrderBook",
    "ohlcv": "watchOHLCV",
}
FETCH_METHOD: dict[str, str] = {
    "trades": "fetchTrades",
    "ticker": "fetchTicker",
    "order_book": "fetchOrderBook",
    "ohlcv": "fetchOHLCV",
}
#: Per-exchange watch parameters reflexd needs. Binance: the aggTrade stream carries the same
#: ids as the REST aggTrades endpoint ccxt uses for fetch_trades (the raw trade stream does
#: not), so backfilled trades de-duplicate; the full ticker stream carries bid/ask (ccxt's
#: default miniTicker does not).
WATCH_PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "binance": {"trades": {"name": "aggTrade"}, "ticker": {"name": "ticker"}},
    "binanceus": {"trades": {"name": "aggTrade"}, "ticker": {"name": "ticker"}},
    "binanceusdm": {"trades": {"name": "aggTrade"}, "ticker": {"name": "ticker"}},
    "binancecoinm": {"trades": {"name": "aggTrade"}, "ticker": {"name": "ticker"}},
}
BACKFILL_PAGE = 1000
BACKFILL_WAIT = 2.0  # seconds to wait for the first live trade before backfilling without it
CLOSE_TIMEOUT = 12.0  # above aiohttp's 10 s wait for the peer's closing handshake
TASK_STOP_TIMEOUT = 5.0


# -- configuration ---------------------------------------------------------------------------


class CcxtSourceConfig(SourceConfig):
    """Exchange market data through ccxt."""

    block_refused: ClassVar[str | None] = (
        "ccxt sources (a blocked reader stops calling watch_*, and ccxt then drops trades from its cache "
        "without counting them)"
    )

    exchange: ExchangeId = Field(description="ccxt exchange id.", examples=["binance"])
    channel: Channel = Field("trades", description="What to stream: trades, ticker, order_book or ohlcv.")
    symbols: list[str] = Field(min_length=1, description="Unified symbols, e.g. BTC/USDT.")
    mode: Literal["watch", "poll"] = Field(
        "watch",
        description="watch = WebSocket (ccxt.pro); poll = REST every poll_interval_seconds. Exchanges "
        "without WebSocket support for the channel are polled in either case.",
    )
    timeframe: str = Field("1m", description="Candle length (ohlcv).")
    include_forming: bool = Field(
        False, description="ohlcv: also emit every update of the forming candle (closed: false)."
    )
    depth: int = Field(10, ge=1, le=1000, description="order_book: levels per side copied into each event.")
    poll_interval_seconds: float = Field(
        1.0, gt=0, le=3600, description="Time between two polls (mode poll)."
    )
    stall_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="Every watch_*/fetch_* call must answer within this; otherwise the client is closed "
        "and every symbol subscribes again. Keep it above the quietest symbol's normal silence.",
    )
    rate_limit_ms: int | None = Field(
        None,
        ge=0,
        description="ccxt's minimum delay between two requests of this source's client; null = the "
        "exchange's default (polls cannot be more frequent than this).",
    )
    request_timeout_seconds: float = Field(
        10.0, gt=0, le=600, description="ccxt's timeout of one REST request."
    )
    recycle_after_seconds: float | None = Field(
        3600.0, gt=0, description="Rebuild the ccxt client this often, without a gap; null = never."
    )
    backfill: bool = Field(True, description="trades/ohlcv: fetch what was missed after a reconnect.")
    backfill_max_trades: int = Field(10_000, ge=0, description="Most trades fetched per symbol per backfill.")
    dedupe_window: int = Field(
        5_000,
        ge=100,
        le=10_000_000,
        description="Trade ids remembered per symbol to drop duplicates (backfill and recycle overlaps).",
    )
    credentials: CcxtCredentials | None = Field(
        None, description="Environment variables holding the API credentials (optional for market data)."
    )
    sandbox: bool = Field(False, description="Use the exchange's test environment (ccxt set_sandbox_mode).")
    options: dict[str, Any] = Field(default_factory=dict, description="ccxt `options` of the exchange.")
    urls: dict[str, Any] = Field(
        default_factory=dict,
        description="Deep-merged into ccxt's `urls` (regional endpoints, a local exchange emulator).",
    )
    watch_params: dict[str, Any] = Field(
        default_factory=dict, description="Extra `params` of every watch_* call (exchange-specific)."
    )

    @field_validator("symbols")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("symbols must be unique")
        if any(not s.strip() for s in value):
            raise ValueError("symbols must not be empty")
        return value


# -- runtime state ---------------------------------------------------------------------------


class CcxtStats(SourceStats):
    """The common source counters plus backfill, dedupe, recycling and per-symbol state."""

    __slots__ = ("backfilled", "backfills", "duplicates", "mode", "recycles", "stalls", "symbols")

    def __init__(self) -> None:
        super().__init__()
        self.mode = "watch"  # the mode in use (watch falls back to poll without WebSocket support)
        self.backfills = 0  # backfill runs (one per symbol per reconnect)
        self.backfilled = 0  # trades or candles emitted from a backfill
        self.duplicates = 0  # trades dropped because their id was already emitted
        self.recycles = 0  # clients rebuilt by recycle_after_seconds
        self.stalls = 0  # watchdog expiries
        self.symbols: dict[str, _Symbol] = {}

    def as_dict(self) -> dict[str, Any]:
        out = super().as_dict()
        out.update(
            mode=self.mode,
            backfills=self.backfills,
            backfilled=self.backfilled,
            duplicates=self.duplicates,
            recycles=self.recycles,
            stalls=self.stalls,
            symbols={s: {"state": st.state, "error": st.error} for s, st in self.symbols.items()},
        )
        return out


class _SeenIds:
    """A bounded set: the last ``capacity`` keys, oldest forgotten first."""

    __slots__ = ("_keys", "_order", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._keys: set[Any] = set()
        self._order: deque[Any] = deque()

    def add(self, key: Any) -> bool:
        """False if ``key`` was already there."""
        keys = self._keys
        if key in keys:
            return False
        keys.add(key)
        order = self._order
        order.append(key)
        if len(order) > self.capacity:
            keys.discard(order.popleft())
        return True

    def __contains__(self, key: Any) -> bool:
        return key in self._keys


class _Symbol:
    """What the source remembers about one symbol across sessions."""

    __slots__ = (
        "closed_ts",
        "error",
        "forming",
        "last_ticker",
        "last_ts",
        "owner",
        "polled",
        "seen",
        "state",
        "symbol",
    )

    def __init__(self, symbol: str, dedupe: int) -> None:
        self.symbol = symbol
        self.state = "active"  # active | stopped
        self.error: str | None = None
        self.last_ts: int | None = None  # ms of the newest trade emitted
        self.seen = _SeenIds(dedupe)
        self.owner = 0  # generation whose updates are emitted (ticker, order book, ohlcv)
        self.forming: list[Any] | None = None  # ohlcv: the newest candle seen, not yet closed
        self.closed_ts: int | None = None  # ohlcv: open time of the last closed candle emitted
        self.last_ticker: tuple[Any, ...] | None = None  # poll: skip unchanged tickers
        self.polled = False  # poll: the first fetch (a baseline) has been made


class _Generation:
    """One ccxt client and the symbol tasks reading through it."""

    __slots__ = ("backfill", "closing", "delivered", "exchange", "number", "started", "tasks")

    def __init__(self, number: int, exchange: Any, backfill: bool) -> None:
        self.number = number
        self.exchange = exchange
        self.backfill = backfill
        self.started = time.monotonic()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.delivered: set[str] = set()
        self.closing = False


class _Stall(Exception):
    pass


async def _timed(aw: Awaitable[T], seconds: float) -> T:
    """``await aw`` under the stall watchdog; an expiry raises :class:`_Stall` (never ccxt's own timeouts)."""
    cm = asyncio.timeout(seconds)
    try:
        async with cm:
            return await aw
    except TimeoutError:
        if cm.expired():
            raise _Stall from None
        raise


# -- the source ------------------------------------------------------------------------------


class CcxtSource(Source):
    type_name: ClassVar[str] = "ccxt"
    default_when_full: ClassVar[WhenFull] = "drop_oldest"
    config: CcxtSourceConfig
    stats: CcxtStats

    def __init__(self, name: str, config: CcxtSourceConfig, env: Mapping[str, str] | None = None) -> None:
        super().__init__(name, config)
        try:  # at build time: the import cost is paid at startup, a broken install is a startup error
            import_ccxt(pro=config.mode == "watch")
        except ImportError as exc:
            raise StartupError(f"source {name}", f"cannot import ccxt: {exc}") from exc
        self.stats = CcxtStats()
        self._credentials = read_credentials(
            config.credentials, os.environ if env is None else env, f"source {name}"
        )
        self._symbols = {s: _Symbol(s, config.dedupe_window) for s in config.symbols}
        self.stats.symbols = self._symbols
        self._max_future = future_limit(config.max_future_seconds)
        profile = WATCH_PROFILES.get(config.exchange, {}).get(config.channel, {})
        self._watch_params = {**profile, **config.watch_params}
        self._generations: list[_Generation] = []
        self._next_generation = 1
        self._markets: tuple[Any, Any] | None = None
        self._poll = config.mode == "poll"
        self._failure: BaseException | None = None
        self._wake = asyncio.Event()
        self._seq = 0
        self._close_log = RateLimitedLog(log, "closing a ccxt client failed", interval=30.0)
        self._closing: set[asyncio.Task[None]] = set()  # clients being closed in the background

    # -- contract ------------------------------------------------------------------------------

    def metric_samples(self) -> list[tuple[MetricSpec, float]]:
        st = self.stats
        stopped = sum(1 for sym in st.symbols.values() if sym.state == "stopped")
        values = (st.backfills, st.backfilled, st.duplicates, st.recycles, st.stalls, stopped)
        return list(zip(_METRICS, values, strict=True))

    @property
    def idle_timeout(self) -> float | None:
        return self.config.stall_timeout_seconds + (self.config.poll_interval_seconds if self._poll else 0.0)

    def classify_error(self, exc: BaseException) -> bool:
        if ccxt_error_kind(exc) is not None:
            return not is_fatal(exc)
        return super().classify_error(exc)

    def readiness(self, now: float | None = None) -> tuple[bool, str]:
        ok, reason = super().readiness(now)
        stopped = [st for st in self._symbols.values() if st.state == "stopped"]
        if not stopped or self.stats.state != "connected":
            return ok, reason
        detail = "; ".join(f"{st.symbol}: {st.error}" for st in stopped[:5])
        more = f" (+{len(stopped) - 5} more)" if len(stopped) > 5 else ""
        return False, f"{reason}; {len(stopped)} of {len(self._symbols)} symbols stopped: {detail}{more}"

    async def connect(self) -> None:
        cfg = self.config
        if not self._active():
            raise NotConnected(self.name, self._all_stopped(), retryable=False)
        ex = self._new_exchange()
        try:
            if self._markets is not None:
                ex.set_markets(*self._markets)
            else:
                await _timed(ex.load_markets(), cfg.stall_timeout_seconds)
                self._markets = (ex.markets, ex.currencies)
        except _Stall:
            await self._close_exchange(ex)
            self.stats.count_error("stall")
            raise IdleTimeout(self.name, cfg.stall_timeout_seconds) from None
        except Exception as exc:
            await self._close_exchange(ex)
            raise self._mapped(exc, "loading markets") from exc
        except BaseException:  # cancelled (shutdown): still release the client
            await asyncio.shield(self._close_exchange(ex))
            raise
        for st in self._active():
            if st.symbol not in ex.markets:
                self._stop_symbol(st, f"BadSymbol: {cfg.exchange} has no market {st.symbol}")
        if not self._active():
            await self._close_exchange(ex)
            raise NotConnected(self.name, self._all_stopped(), retryable=False)
        gen = _Generation(self._next_generation, ex, backfill=self.stats.connects > 0)
        self._next_generation += 1
        self._generations.append(gen)

    async def read(self) -> None:
        cfg = self.config
        self._failure = None
        self._wake.clear()
        current = self._generations[-1]
        self._start(current)
        log.info(
            "ccxt session started",
            extra={
                "fields": {
                    "source": self.name,
                    "exchange": cfg.exchange,
                    "channel": cfg.channel,
                    "mode": self.stats.mode,
                    "symbols": len(self._active()),
                }
            },
        )
        incoming: _Generation | None = None
        while True:
            timeout = None
            if incoming is None and cfg.recycle_after_seconds is not None:
                timeout = max(0.0, current.started + cfg.recycle_after_seconds - time.monotonic())
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if self._failure is not None:
                raise self._failure
            if incoming is not None:
                if {st.symbol for st in self._active()} <= incoming.delivered:
                    await self._retire(current)
                    current, incoming = incoming, None
                    self.stats.recycles += 1
                    log.info("ccxt client recycled", extra={"fields": {"source": self.name}})
                continue
            if cfg.recycle_after_seconds is not None and (
                time.monotonic() - current.started >= cfg.recycle_after_seconds
            ):
                incoming = _Generation(self._next_generation, self._new_exchange(), backfill=False)
                self._next_generation += 1
                assert self._markets is not None
                incoming.exchange.set_markets(*self._markets)
                self._generations.append(incoming)
                self._start(incoming)

    async def close(self) -> None:
        generations, self._generations = self._generations, []
        for gen in generations:
            await self._retire(gen)

    # -- clients and generations --------------------------------------------------------------

    def _new_exchange(self) -> Any:
        cfg = self.config
        ex = build_exchange(
            cfg.exchange,
            pro=not self._poll,
            credentials=self._credentials,
            timeout_seconds=cfg.request_timeout_seconds,
            options=cfg.options,
            urls=cfg.urls,
            sandbox=cfg.sandbox,
            rate_limit_ms=cfg.rate_limit_ms,
        )
        if not self._poll and not ex.has.get(WATCH_METHOD[cfg.channel]):
            self._poll = True
            log.info(
                "no WebSocket support for this channel; polling instead",
                extra={
                    "fields": {
                        "source": self.name,
                        "exchange": cfg.exchange,
                        "channel": cfg.channel,
                        "poll_interval_seconds": cfg.poll_interval_seconds,
                    }
                },
            )
        if self._poll and self.stats.mode != "poll" and ex.rateLimit > cfg.poll_interval_seconds * 1000:
            log.warning(
                "polls are throttled by the exchange's rate limit (rate_limit_ms)",
                extra={"fields": {"source": self.name, "rate_limit_ms": ex.rateLimit}},
            )
        self.stats.mode = "poll" if self._poll else "watch"
        if self._poll and not ex.has.get(FETCH_METHOD[cfg.channel]):
            raise NotConnected(
                self.name,
                f"{cfg.exchange} supports neither {WATCH_METHOD[cfg.channel]} nor "
                f"{FETCH_METHOD[cfg.channel]}",
                retryable=False,
            )
        return ex

    def _start(self, gen: _Generation) -> None:
        gen.exchange.reflexd_on_ws_lost = functools.partial(self._ws_lost, gen)
        for st in self._active():
            gen.tasks[st.symbol] = asyncio.create_task(
                self._run_symbol(gen, st), name=f"reflexd:ccxt:{self.name}:{st.symbol}"
            )

    async def _retire(self, gen: _Generation) -> None:
        """Stop ``gen``'s symbol tasks and close its client.

        The client is closed in the background (a peer that never answers the closing handshake
        would otherwise hold the reconnect for ~10 s), except when the source itself is being
        cancelled (shutdown, the end of ``reflexd record``): then every close is awaited.
        """
        gen.closing = True
        gen.exchange.reflexd_on_ws_lost = None
        tasks = [t for t in gen.tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=TASK_STOP_TIMEOUT)
        if gen in self._generations:
            self._generations.remove(gen)
        closing = asyncio.create_task(
            self._close_exchange(gen.exchange), name=f"reflexd:ccxt:{self.name}:close"
        )
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            await asyncio.shield(asyncio.wait(set(self._closing), timeout=CLOSE_TIMEOUT + 1))

    async def _close_exchange(self, ex: Any) -> None:
        """``ex.close()``; if the peers do not let it finish in time, close its HTTP session hard."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await ex.close()
            return
        except Exception as exc:
            self._close_log.hit(source=self.name, error=describe_error(exc))
        session = getattr(ex, "session", None)
        if session is not None and not session.closed:
            try:
                await session.close()  # closes the connector: every socket of the client
            except Exception as exc:
                self._close_log.hit(source=self.name, error=describe_error(exc))

    def _ws_lost(self, gen: _Generation, reason: str) -> None:
        if gen.closing:
            return
        self.stats.count_error("ws_closed")
        self._fail(NotConnected(self.name, reason))

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self._wake.set()

    def _all_stopped(self) -> str:
        stopped = [st for st in self._symbols.values() if st.state == "stopped"]
        detail = "; ".join(f"{st.symbol}: {st.error}" for st in stopped[:5])
        return f"every symbol has stopped: {detail}" + (
            f" (+{len(stopped) - 5} more)" if len(stopped) > 5 else ""
        )

    def _active(self) -> list[_Symbol]:
        return [st for st in self._symbols.values() if st.state == "active"]

    def _stop_symbol(self, st: _Symbol, reason: str) -> None:
        if st.state == "stopped":
            return
        st.state = "stopped"
        st.error = reason
        self.stats.count_error("symbol_stopped")
        log.error(
            "symbol stopped",
            extra={"fields": {"source": self.name, "symbol": st.symbol, "reason": reason}},
        )
        for gen in self._generations:
            task = gen.tasks.get(st.symbol)
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        if not self._active():
            self._fail(NotConnected(self.name, self._all_stopped(), retryable=False))
        else:
            self._wake.set()  # a recycle may have been waiting for this symbol

    def _mapped(self, exc: BaseException, doing: str) -> NotConnected:
        kind = ccxt_error_kind(exc)
        if kind is None:
            self.stats.count_error("unexpected")
            return NotConnected(self.name, f"{doing}: {describe_error(exc)}")
        self.stats.count_error(ERROR_REASON.get(kind, "exchange_error"))
        return NotConnected(self.name, f"{doing}: {describe_error(exc)}", retryable=not is_fatal(exc))

    # -- per-symbol tasks ---------------------------------------------------------------------

    async def _run_symbol(self, gen: _Generation, st: _Symbol) -> None:
        cfg = self.config
        runner = {
            "trades": self._trades,
            "ticker": self._ticker,
            "order_book": self._order_book,
            "ohlcv": self._ohlcv,
        }[cfg.channel]
        try:
            await runner(gen, st)
        except asyncio.CancelledError:
            raise
        except _Stall:
            if gen.closing:
                return
            self.stats.stalls += 1
            self.stats.count_error("stall")
            log.warning(
                "no answer within the stall timeout; closing the client and subscribing again",
                extra={
                    "fields": {
                        "source": self.name,
                        "symbol": st.symbol,
                        "stall_timeout_seconds": cfg.stall_timeout_seconds,
                    }
                },
            )
            self._fail(IdleTimeout(self.name, cfg.stall_timeout_seconds))
        except Exception as exc:
            if gen.closing:
                return
            if is_fatal(exc):
                self._stop_symbol(st, describe_error(exc))
                return
            err = self._mapped(exc, st.symbol)
            err.__cause__ = exc
            self._fail(err)

    def _delivered(self, gen: _Generation, st: _Symbol) -> bool:
        """Record that ``gen`` delivered for ``st``; False if an older client's update must be skipped."""
        if st.symbol not in gen.delivered:
            gen.delivered.add(st.symbol)
            if len(self._generations) > 1:
                self._wake.set()  # a recycle is waiting for the new client's first updates
        if gen.number < st.owner:
            return False
        st.owner = gen.number
        return True

    def _put(self, st: _Symbol, ts_ms: Any, data: dict[str, Any], now: float, backfill: bool = False) -> None:
        self._seq += 1
        ts = ts_ms / 1000 if type(ts_ms) is int or type(ts_ms) is float else now
        if ts - now > self._max_future:  # an exchange time in the wrong unit: would poison the watermark
            self.drop_future(ts, now, data)
            return
        meta = {"seq": self._seq, "backfill": True} if backfill else {"seq": self._seq}
        self.queue.put_nowait(new_event(self.name, ts, now, st.symbol, data, meta))

    async def _polling(self, fetch: Callable[[], Awaitable[None]]) -> None:
        interval = self.config.poll_interval_seconds
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await fetch()
            next_at += interval
            delay = next_at - loop.time()
            if delay < 0:
                next_at = loop.time()
                delay = 0.0
            await asyncio.sleep(delay)

    # trades ----------------------------------------------------------------------------------

    def _emit_trades(self, gen: _Generation, st: _Symbol, trades: list[Any], backfill: bool = False) -> int:
        """Queue the trades whose id was not emitted yet; returns how many were queued."""
        now = time.time()
        stats = self.stats
        seen = st.seen
        symbol = st.symbol
        last = st.last_ts
        put = self._put
        emitted = 0
        for t in trades:
            ts = t["timestamp"]
            if not seen.add(trade_key(t)):
                stats.duplicates += 1
                continue
            stats.received += 1
            emitted += 1
            put(st, ts, trade_data(symbol, t), now, backfill)
            if ts is not None and (last is None or ts > last):
                last = ts
        st.last_ts = last
        if emitted:
            stats.last_event_at = now
        if trades and symbol not in gen.delivered:
            self._delivered(gen, st)
        return emitted

    async def _trades(self, gen: _Generation, st: _Symbol) -> None:
        ex = gen.exchange
        stall = self.config.stall_timeout_seconds
        if self._poll:

            async def poll() -> None:
                page = await _timed(ex.fetch_trades(st.symbol, st.last_ts), stall)
                if not st.polled:  # the first poll is a baseline: history before the start is not replayed
                    st.polled = True
                    for t in page:
                        st.seen.add(trade_key(t))
                    st.last_ts = max(
                        (t["timestamp"] for t in page if t["timestamp"] is not None), default=None
                    )
                else:
                    self._emit_trades(gen, st, page)
                self._delivered(gen, st)
                self.stats.last_event_at = time.time()

            await self._polling(poll)
            return
        watch = functools.partial(ex.watch_trades, st.symbol)
        params = self._watch_params
        if (
            gen.backfill
            and self.config.backfill
            and st.last_ts is not None
            and self.config.backfill_max_trades
        ):
            # Subscribe first, so that nothing between the backfill and the live feed is missed.
            # Backfill up to the first live trade; a quiet symbol (no live trade soon) is
            # backfilled up to the exchange's newest trade first and up to its first live trade
            # once that arrives.
            first_task = asyncio.ensure_future(_timed(watch(params=dict(params)), stall))
            try:
                self.stats.backfills += 1
                await asyncio.wait([first_task], timeout=min(stall, BACKFILL_WAIT))
                if not first_task.done():
                    await self._backfill_trades(gen, st, None)
                first = await first_task
            finally:
                first_task.cancel()
            stamps = [t["timestamp"] for t in first if t["timestamp"] is not None]
            if stamps and st.last_ts is not None and min(stamps) > st.last_ts:
                await self._backfill_trades(gen, st, min(stamps))
            self._emit_trades(gen, st, first)
        while True:
            trades = await _timed(watch(params=dict(params)), stall)
            self._emit_trades(gen, st, trades)

    async def _backfill_trades(self, gen: _Generation, st: _Symbol, until: int | None) -> None:
        """fetch_trades since the last seen trade, page by page, de-duplicated by id.

        Up to ``until`` (ms, exclusive: the first live trade), or — without it — until a page comes
        back short (the exchange's newest trades), so a busy symbol is never chased forever.
        """
        ex = gen.exchange
        if not ex.has.get("fetchTrades"):
            return
        cfg = self.config
        budget = cfg.backfill_max_trades
        since = st.last_ts
        while budget > 0 and since is not None:
            asked = min(BACKFILL_PAGE, budget)
            page = await _timed(ex.fetch_trades(st.symbol, since, asked), cfg.stall_timeout_seconds)
            short = len(page) < asked
            if until is not None:
                page = [t for t in page if t["timestamp"] is None or t["timestamp"] < until]
            if not page:
                return
            budget -= len(page)
            emitted = self._emit_trades(gen, st, page, backfill=True)
            self.stats.backfilled += emitted
            newest = max((t["timestamp"] for t in page if t["timestamp"] is not None), default=None)
            if emitted == 0 or newest is None or newest <= since or (short and until is None):
                return
            since = newest

    # ticker ----------------------------------------------------------------------------------

    async def _ticker(self, gen: _Generation, st: _Symbol) -> None:
        ex = gen.exchange
        stall = self.config.stall_timeout_seconds
        params = self._watch_params
        symbol = st.symbol

        def emit(t: dict[str, Any]) -> None:
            if not self._delivered(gen, st):
                return
            now = time.time()
            data = ticker_data(symbol, t)
            self.stats.received += 1
            self.stats.last_event_at = now
            self._put(st, data["ts"], data, now)

        if self._poll:

            async def poll() -> None:
                t = await _timed(ex.fetch_ticker(symbol), stall)
                fingerprint = ticker_fingerprint(t)
                if fingerprint == st.last_ticker:
                    self._delivered(gen, st)
                    self.stats.last_event_at = time.time()
                    return
                st.last_ticker = fingerprint
                emit(t)

            await self._polling(poll)
            return
        while True:
            emit(await _timed(ex.watch_ticker(symbol, params=dict(params)), stall))

    # order book ------------------------------------------------------------------------------

    async def _order_book(self, gen: _Generation, st: _Symbol) -> None:
        ex = gen.exchange
        cfg = self.config
        stall = cfg.stall_timeout_seconds
        depth = cfg.depth
        params = self._watch_params
        symbol = st.symbol

        def emit(ob: Any) -> None:
            if not self._delivered(gen, st):
                return
            now = time.time()
            data = book_data(symbol, ob, depth)  # a copy: ccxt keeps mutating the object it returned
            self.stats.received += 1
            self.stats.last_event_at = now
            self._put(st, data["ts"], data, now)

        if self._poll:

            async def poll() -> None:
                emit(await _timed(ex.fetch_order_book(symbol), stall))

            await self._polling(poll)
            return
        while True:
            emit(await _timed(ex.watch_order_book(symbol, params=dict(params)), stall))

    # ohlcv -----------------------------------------------------------------------------------

    def _feed_candles(
        self, gen: _Generation, st: _Symbol, rows: list[list[Any]], backfill: bool = False
    ) -> None:
        """Track the forming candle; a candle is closed once a later one appears."""
        if not self._delivered(gen, st):
            return
        now = time.time()
        emits, st.forming, st.closed_ts = close_candles(
            rows, st.forming, st.closed_ts, self.config.include_forming
        )
        timeframe = self.config.timeframe
        stats = self.stats
        for row, closed in emits:
            stats.received += 1
            stats.last_event_at = now
            if backfill and closed:
                stats.backfilled += 1
            self._put(st, row[0], candle_data(st.symbol, timeframe, row, closed), now, backfill)

    async def _ohlcv(self, gen: _Generation, st: _Symbol) -> None:
        ex = gen.exchange
        cfg = self.config
        stall = cfg.stall_timeout_seconds
        tf = cfg.timeframe
        symbol = st.symbol
        params = self._watch_params

        if self._poll:

            async def poll() -> None:
                since = st.forming[0] if st.forming is not None else None
                rows = await _timed(ex.fetch_ohlcv(symbol, tf, since, None if since else 2), stall)
                if since is None and rows:
                    rows = [max(rows, key=lambda r: r[0])]  # first poll: start from the forming candle
                if rows:
                    self._feed_candles(gen, st, rows)
                else:
                    self._delivered(gen, st)
                self.stats.last_event_at = time.time()

            await self._polling(poll)
            return
        if gen.backfill and cfg.backfill and st.forming is not None and ex.has.get("fetchOHLCV"):
            self.stats.backfills += 1
            rows = await _timed(ex.fetch_ohlcv(symbol, tf, st.forming[0]), stall)
            self._feed_candles(gen, st, rows, backfill=True)
        while True:
            rows = await _timed(ex.watch_ohlcv(symbol, tf, params=dict(params)), stall)
            self._feed_candles(gen, st, rows)


# -- registry entry (daemon/registry.py lists SPEC) ----------------------------------------------------


def _factory(name: str, config: CcxtSourceConfig, ctx: BuildContext) -> CcxtSource:
    return CcxtSource(name, config)  # ccxt itself is imported when the source connects


def _summary(c: CcxtSourceConfig) -> list[tuple[str, Any]]:
    return [
        ("exchange", c.exchange),
        ("channel", c.channel if c.channel != "ohlcv" else f"ohlcv {c.timeframe}"),
        ("symbols", c.symbols),
        ("mode", c.mode),
        ("credentials", "from environment" if c.credentials else "none"),
        ("queue", CcxtSource.queue_summary(c)),
    ]


_S = ("source",)
#: The ccxt source's own metrics (``SPEC.metrics``), in the order of ``metric_samples()``.
_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("reflexd_ccxt_backfills_total", "counter", "Backfill runs after reconnects.", _S),
    MetricSpec("reflexd_ccxt_backfilled_total", "counter", "Trades or candles emitted from backfills.", _S),
    MetricSpec("reflexd_ccxt_duplicates_total", "counter", "Trades dropped as already emitted.", _S),
    MetricSpec("reflexd_ccxt_recycles_total", "counter", "Exchange clients rebuilt.", _S),
    MetricSpec("reflexd_ccxt_stalls_total", "counter", "Watchdog expiries (silent stalls).", _S),
    MetricSpec("reflexd_ccxt_symbols_stopped", "gauge", "Symbols stopped by a fatal error.", _S),
)

SPEC = ComponentSpec(
    "source",
    "ccxt",
    CcxtSourceConfig,
    _factory,
    _summary,
    "Exchange market data through ccxt: trades, ticker, order book or candles, "
    "over WebSocket (ccxt.pro) or REST polling.",
    {
        "type": "ccxt",
        "exchange": "binance",
        "channel": "trades",
        "symbols": ["BTC/USDT", "ETH/USDT"],
        "stall_timeout_seconds": 30,
    },
    metrics=_METRICS,
)
