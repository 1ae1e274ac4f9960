"""``ccxt_order`` tool: place a market or limit order through ccxt, guarded, dry-run by default.

Every call goes through the same steps, in this order:

1. **Guards, before any network call**: the symbol is in ``allowed_symbols``; side and type
   are known; amount and price parse as finite decimals with ``0 < x`` (NaN, infinities,
   zero and negative values are refused — the checks read ``not (0 < x <= limit)``, which NaN
   never passes); the notional (amount * price; for a market order ``price`` is the reference
   price the rule passes, e.g. the last trade's) is at most ``max_notional``; at most
   ``max_orders`` orders per ``window_seconds`` (a retry of the same call does not count again).
   A refusal is a non-retryable :class:`~daemon.errors.ToolError`.
2. **Dry run** (``dry_run: true``, the default): the order is logged and returned; nothing is
   sent and ccxt is not even imported.
3. **Kill switch**: while the file ``kill_switch_path`` exists, or the ops endpoint
   ``POST /kill-switch`` engaged it (until ``DELETE /kill-switch``), live orders are refused.
4. **Idempotent placement**: the order carries a ``clientOrderId`` derived from the call's
   idempotency key (rule, event, call index), which stays the same across the runner's
   retries. A timeout or network error is a *retryable* ToolError; before placing again, the
   retry looks the order up by that ``clientOrderId`` and returns it if the first attempt
   reached the exchange — a retry after a timeout never places a second order. An exchange
   that refuses a duplicate ``clientOrderId`` is handled the same way.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator

from daemon.errors import StartupError, ToolError
from daemon.logs import get_logger
from handlers.base import CallContext, Tool, ToolConfig
from streams.ccxt_client import CcxtCredentials, ExchangeId, build_exchange, ccxt_error_kind, read_credentials
from streams.component import BuildContext, ComponentSpec

__all__ = ["SPEC", "CcxtOrderTool", "CcxtOrderToolConfig", "KillSwitch", "client_order_id"]

log = get_logger("tool.ccxt_order")

RETRYABLE = ("NetworkError", "RequestTimeout", "ExchangeNotAvailable", "DDoSProtection", "RateLimitExceeded")


def client_order_id(tool: str, call_id: str, prefix: str) -> str:
    """A deterministic id for (tool, call): letters and digits only, 32 characters in all."""
    digest = hashlib.sha256(f"{tool}\x00{call_id}".encode()).hexdigest()
    return (prefix + digest)[:32]


class KillSwitch:
    """Blocks live orders while engaged: by the ops endpoint (in memory) or by a file's existence.

    The two are independent; either one blocks. The file survives restarts, the endpoint's state
    does not.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.http_reason: str | None = None
        self.http_since: float | None = None

    def engage(self, reason: str) -> None:
        self.http_reason = reason or "engaged over HTTP"
        self.http_since = time.time()

    def release(self) -> None:
        self.http_reason = None
        self.http_since = None

    @property
    def by_file(self) -> bool:
        return self.path is not None and self.path.exists()

    def blocking(self) -> str | None:
        """Why live orders are blocked now, or None."""
        if self.http_reason is not None:
            return f"kill switch engaged over HTTP: {self.http_reason}"
        if self.by_file:
            return f"kill switch file {self.path} exists"
        return None

    def state(self) -> dict[str, Any]:
        return {
            "engaged": self.blocking() is not None,
            "http": self.http_reason is not None,
            "http_reason": self.http_reason,
            "http_since": self.http_since,
            "file": self.by_file,
        }


class CcxtOrderToolConfig(ToolConfig):
    """Market and limit orders through ccxt, with guards; dry-run unless told otherwise."""

    exchange: ExchangeId = Field(description="ccxt exchange id.", examples=["binance"])
    dry_run: bool = Field(True, description="Log and return the order instead of placing it.")
    allowed_symbols: list[str] = Field(min_length=1, description="The only symbols orders may be placed on.")
    max_notional: float = Field(gt=0, description="Most amount * price (quote currency) one order may have.")
    max_orders: int = Field(10, ge=1, description="Most orders per `window_seconds` (retries not counted).")
    window_seconds: float = Field(60.0, gt=0, description="Window of `max_orders`.")
    kill_switch_path: str | None = Field(
        None, description="While this file exists, live orders are refused (relative to the config file)."
    )
    credentials: CcxtCredentials | None = Field(
        None, description="Environment variables holding the API credentials (required when live)."
    )
    client_order_id_prefix: str = Field(
        "rx", pattern=r"^[A-Za-z0-9]{0,8}$", description="Start of every clientOrderId (letters, digits)."
    )
    request_timeout_seconds: float = Field(
        5.0, gt=0, le=600, description="ccxt's timeout of one request; below timeout_seconds."
    )
    rate_limit_ms: int | None = Field(None, ge=0, description="ccxt's minimum delay between requests.")
    sandbox: bool = Field(False, description="Use the exchange's test environment (ccxt set_sandbox_mode).")
    options: dict[str, Any] = Field(default_factory=dict, description="ccxt `options` of the exchange.")
    urls: dict[str, Any] = Field(default_factory=dict, description="Deep-merged into ccxt's `urls`.")

    @model_validator(mode="after")
    def _live_needs_credentials(self) -> CcxtOrderToolConfig:
        if not self.dry_run and self.credentials is None:
            raise ValueError("credentials: required when dry_run is false")
        if self.request_timeout_seconds >= self.timeout_seconds:
            raise ValueError(
                "request_timeout_seconds must be below timeout_seconds (a retry must be able to look the "
                "order up)"
            )
        return self


def _decimal(value: Any, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"{name} must be a number, not {type(value).__name__}")
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{name} is not a number: {str(value)[:40]!r}") from None
    if not d.is_finite():
        raise ValueError(f"{name} must be finite, not {d}")
    if not d > 0:
        raise ValueError(f"{name} must be above 0, not {d}")
    return d


class CcxtOrderTool(Tool):
    type_name: ClassVar[str] = "ccxt_order"
    description: ClassVar[str] = (
        "Place a market or limit order on a crypto exchange (guarded; dry-run unless configured live)."
    )
    args_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "symbol": {"type": "string", "description": "Unified symbol, e.g. BTC/USDT."},
            "side": {"enum": ["buy", "sell"]},
            "type": {"enum": ["market", "limit"], "default": "market"},
            "amount": {"type": ["number", "string"], "description": "Base-currency amount, > 0."},
            "price": {
                "type": ["number", "string"],
                "description": "Limit price; for a market order the reference price of the notional check.",
            },
        },
        "required": ["symbol", "side", "amount", "price"],
        "additionalProperties": False,
    }
    default_concurrency: ClassVar[int | None] = 1
    config: CcxtOrderToolConfig
    kill_switch: KillSwitch  # the capability the ops server drives (handlers.base.KillSwitchControl)

    def __init__(
        self,
        name: str,
        config: CcxtOrderToolConfig,
        kill_switch_path: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(name, config)
        self.kill_switch = KillSwitch(kill_switch_path)
        self._env = os.environ if env is None else env
        self._allowed = frozenset(config.allowed_symbols)
        self._max_notional = Decimal(repr(config.max_notional))
        self._window: deque[tuple[float, str]] = deque()  # (monotonic, call_id) of accepted orders
        self._exchange: Any = None
        self._markets_loaded = False
        self.placed = 0  # orders created on the exchange
        self.found = 0  # retries that found the order of an earlier attempt
        self.refused = 0  # calls refused by a guard or the kill switch

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        if cfg.dry_run:
            log.info("dry run: orders are logged, never sent", extra={"fields": {"tool": self.name}})
            return
        credentials = read_credentials(cfg.credentials, self._env, f"tool {self.name}")
        try:
            self._exchange = build_exchange(
                cfg.exchange,
                pro=False,
                credentials=credentials,
                timeout_seconds=cfg.request_timeout_seconds,
                options=cfg.options,
                urls=cfg.urls,
                sandbox=cfg.sandbox,
                rate_limit_ms=cfg.rate_limit_ms,
            )
        except ImportError as exc:
            raise StartupError(f"tool {self.name}", f"cannot import ccxt: {exc}") from exc
        log.warning(
            "live trading enabled",
            extra={"fields": {"tool": self.name, "exchange": cfg.exchange, "symbols": cfg.allowed_symbols}},
        )

    async def stop(self) -> None:
        ex, self._exchange = self._exchange, None
        if ex is not None:
            try:
                await ex.close()
            except Exception:
                log.exception("closing the ccxt client failed", extra={"fields": {"tool": self.name}})

    # -- one call -------------------------------------------------------------------------------

    def _refuse(self, reason: str) -> ToolError:
        self.refused += 1
        return ToolError(self.name, f"order refused: {reason}")

    def _check(self, args: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """The argument guards; returns the order to place. Raises a non-retryable ToolError. No I/O."""
        unknown = set(args) - {"symbol", "side", "type", "amount", "price"}
        if unknown:
            raise self._refuse(f"unknown argument(s): {', '.join(sorted(unknown))}")
        symbol = args.get("symbol")
        if not isinstance(symbol, str) or symbol not in self._allowed:
            raise self._refuse(f"symbol {str(symbol)[:40]!r} is not in allowed_symbols")
        side = args.get("side")
        if side not in ("buy", "sell"):
            raise self._refuse(f"side must be buy or sell, not {str(side)[:20]!r}")
        kind = args.get("type", "market")
        if kind not in ("market", "limit"):
            raise self._refuse(f"type must be market or limit, not {str(kind)[:20]!r}")
        if "price" not in args:
            raise self._refuse("price is required (the limit price, or a market order's reference price)")
        try:
            amount = _decimal(args.get("amount"), "amount")
            price = _decimal(args.get("price"), "price")
        except ValueError as exc:
            raise self._refuse(str(exc)) from None
        notional = amount * price
        if not (0 < notional <= self._max_notional):
            raise self._refuse(f"notional {notional} is above max_notional {self._max_notional}")
        return {
            "symbol": symbol,
            "side": side,
            "type": kind,
            "amount": str(amount),
            "price": str(price),
            "notional": str(notional),
            "client_order_id": client_order_id(self.name, ctx.call_id, self.config.client_order_id_prefix),
        }

    def _count(self, ctx: CallContext) -> None:
        """The max_orders guard: count this call (once, however often it is retried) or refuse it."""
        now = time.monotonic()
        window = self._window
        while window and now - window[0][0] > self.config.window_seconds:
            window.popleft()
        if any(call_id == ctx.call_id for _, call_id in window):
            return
        if len(window) >= self.config.max_orders:
            raise self._refuse(
                f"max_orders: {len(window)} orders in the last {self.config.window_seconds:g}s"
            )
        window.append((now, ctx.call_id))

    async def call(self, args: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        order = self._check(args, ctx)
        fields = {"tool": self.name, "rule": ctx.rule, "attempt": ctx.attempt, **order}
        if not self.config.dry_run:
            blocked = self.kill_switch.blocking()
            if blocked is not None:
                log.warning(
                    "order refused by the kill switch", extra={"fields": {**fields, "reason": blocked}}
                )
                raise self._refuse(blocked)
        self._count(ctx)
        if self.config.dry_run:
            log.info("dry run: order not placed", extra={"fields": fields})
            return {"dry_run": True, **order}
        placed = await self._place(order, ctx)
        log.info(
            "order placed" if not placed.get("found") else "order found (placed by an earlier attempt)",
            extra={"fields": {**fields, "order_id": placed.get("order_id"), "status": placed.get("status")}},
        )
        return placed

    # -- exchange -------------------------------------------------------------------------------

    def _error(self, exc: BaseException, doing: str) -> ToolError:
        kind = ccxt_error_kind(exc)
        text = str(exc)
        reason = f"{doing}: {type(exc).__name__}: {text[:300]}"
        if kind in RETRYABLE:
            retry_after = None
            if kind in ("DDoSProtection", "RateLimitExceeded"):
                headers = getattr(self._exchange, "last_response_headers", None) or {}
                try:
                    retry_after = float(headers.get("Retry-After") or headers.get("retry-after") or "")
                except ValueError:
                    retry_after = None
            return ToolError(self.name, reason, retryable=True, retry_after=retry_after)
        return ToolError(self.name, reason)

    async def _place(self, order: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        ex = self._exchange
        assert ex is not None, "tool not started"
        symbol, cid = order["symbol"], order["client_order_id"]
        try:
            if not self._markets_loaded:
                await ex.load_markets()
                self._markets_loaded = True
            if ctx.attempt > 1:  # an earlier attempt may have reached the exchange
                existing = await self._lookup(symbol, cid)
                if existing is not None:
                    return existing
            price = float(order["price"]) if order["type"] == "limit" else None
            created = await ex.create_order(
                symbol, order["type"], order["side"], float(order["amount"]), price, {"clientOrderId": cid}
            )
        except ToolError:
            raise
        except Exception as exc:
            if ccxt_error_kind(exc) is None:
                raise
            if "DuplicateOrderId" in [k.__name__ for k in type(exc).__mro__] or "uplicate" in str(exc):
                existing = await self._lookup(symbol, cid)
                if existing is not None:
                    return existing
            raise self._error(exc, "create_order") from exc
        self.placed += 1
        return self._result(order, created, found=False)

    async def _lookup(self, symbol: str, cid: str) -> dict[str, Any] | None:
        """The order with clientOrderId ``cid``, or None if the exchange does not know it."""
        ex = self._exchange
        if not ex.has.get("fetchOrder"):
            return None
        try:
            found = await ex.fetch_order(None, symbol, {"clientOrderId": cid})
        except Exception as exc:
            names = [k.__name__ for k in type(exc).__mro__]
            if "OrderNotFound" in names:
                return None
            if "NotSupported" in names or "ArgumentsRequired" in names:
                return None  # no lookup by client id: rely on the exchange refusing a duplicate id
            if ccxt_error_kind(exc) is None:
                raise
            raise self._error(exc, "looking the order up by clientOrderId") from exc
        if found.get("clientOrderId") not in (None, cid):
            return None
        self.found += 1
        order = {"symbol": symbol, "client_order_id": cid}
        return self._result(order, found, found=True)

    def _result(self, order: dict[str, Any], ccxt_order: Mapping[str, Any], *, found: bool) -> dict[str, Any]:
        return {
            "dry_run": False,
            **order,
            "order_id": ccxt_order.get("id"),
            "status": ccxt_order.get("status"),
            "filled": ccxt_order.get("filled"),
            "found": found,
        }


# -- registry entry (daemon/registry.py lists SPEC) ----------------------------------------------------


def _factory(name: str, config: CcxtOrderToolConfig, ctx: BuildContext) -> CcxtOrderTool:
    path = ctx.resolve(config.kill_switch_path) if config.kill_switch_path else None
    return CcxtOrderTool(name, config, path)


def _summary(c: CcxtOrderToolConfig) -> list[tuple[str, Any]]:
    return [
        ("exchange", c.exchange),
        ("mode", "DRY RUN" if c.dry_run else "LIVE"),
        ("allowed_symbols", c.allowed_symbols),
        ("max_notional", c.max_notional),
        ("max_orders", f"{c.max_orders}/{c.window_seconds:g}s"),
        ("kill_switch_path", c.kill_switch_path),
        *CcxtOrderTool.common_summary(c),
    ]


SPEC = ComponentSpec(
    "tool",
    "ccxt_order",
    CcxtOrderToolConfig,
    _factory,  # ccxt itself is imported when a live tool starts
    _summary,
    "Market and limit orders through ccxt, guarded (allowed symbols, max notional, max orders "
    "per window, kill switch), idempotent (clientOrderId), dry-run by default.",
    {
        "type": "ccxt_order",
        "exchange": "binance",
        "allowed_symbols": ["BTC/USDT"],
        "max_notional": 500,
        "max_orders": 5,
        "window_seconds": 60,
        "kill_switch_path": "var/kill-switch",
    },
)
