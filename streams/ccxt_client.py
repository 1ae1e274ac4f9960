"""ccxt client helpers shared by the ``ccxt`` source and the ``ccxt_order`` tool.

- the ``exchange`` field (:data:`ExchangeId`), validated without importing ccxt
  (:func:`exchange_exists` looks for the exchange's module file);
- credentials named by environment variable (:class:`CcxtCredentials`, :func:`read_credentials`);
- :func:`build_exchange`: one configured ccxt client (rate limiting on, timeout, options, urls,
  sandbox), whose class reports lost WebSockets to ``reflexd_on_ws_lost``;
- error classification: :func:`ccxt_error_kind`, :func:`is_fatal`, :data:`ERROR_REASON`,
  :func:`describe_error`.

ccxt is imported only by :func:`import_ccxt` (and so by :func:`build_exchange`): the import costs
~0.5 s and ~100 MB, and configuration models must validate without it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from daemon.errors import StartupError

__all__ = [
    "ERROR_REASON",
    "FATAL_ERRORS",
    "CcxtCredentials",
    "ExchangeId",
    "build_exchange",
    "ccxt_error_kind",
    "describe_error",
    "exchange_exists",
    "exchange_id",
    "import_ccxt",
    "is_fatal",
    "read_credentials",
]

#: Errors that stop one subscription for good (a configuration problem, not an outage).
FATAL_ERRORS = ("AuthenticationError", "BadSymbol", "BadRequest", "NotSupported", "ArgumentsRequired")

#: The ``reason`` a source counts for a retryable ccxt error (by :func:`ccxt_error_kind`).
ERROR_REASON = {
    "RateLimitExceeded": "rate_limited",
    "DDoSProtection": "rate_limited",
    "RequestTimeout": "request_timeout",
    "ExchangeNotAvailable": "exchange_not_available",
    "NetworkError": "network",
    "InvalidNonce": "network",
}


def exchange_exists(name: str) -> bool | None:
    """True if ccxt has an exchange class ``name``; None if ccxt is not installed.

    Looks for the module file instead of importing ccxt (which loads every exchange).
    """
    spec = importlib.util.find_spec("ccxt")
    if spec is None or not spec.submodule_search_locations:
        return None
    return any(
        (Path(location) / "async_support" / f"{name}.py").is_file()
        for location in spec.submodule_search_locations
    )


def exchange_id(value: str) -> str:
    """Validate a ccxt exchange id: lower-case identifier of an exchange ccxt has."""
    if not value.isidentifier() or not value.islower():
        raise ValueError("must be a ccxt exchange id (lower case, e.g. binance)")
    if exchange_exists(value) is False:
        raise ValueError(f"ccxt has no exchange {value!r}")
    return value


#: The ``exchange`` field of ccxt sources and tools.
ExchangeId = Annotated[str, AfterValidator(exchange_id)]


def import_ccxt(pro: bool) -> Any:
    """``ccxt.pro`` (WebSocket + REST) or ``ccxt.async_support`` (REST), imported on first use."""
    return importlib.import_module("ccxt.pro" if pro else "ccxt.async_support")


class CcxtCredentials(BaseModel):
    """Names of the environment variables holding the API credentials (never the values)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_key_env: str = Field(description="Variable holding the API key.", examples=["BINANCE_API_KEY"])
    secret_env: str = Field(description="Variable holding the API secret.", examples=["BINANCE_API_SECRET"])
    password_env: str | None = Field(None, description="Variable holding the API passphrase, if any.")


def read_credentials(creds: CcxtCredentials | None, env: Mapping[str, str], component: str) -> dict[str, str]:
    """ccxt's ``apiKey`` / ``secret`` / ``password`` from the environment; StartupError if one is unset."""
    if creds is None:
        return {}
    wanted = {"apiKey": creds.api_key_env, "secret": creds.secret_env}
    if creds.password_env:
        wanted["password"] = creds.password_env
    missing = [var for var in wanted.values() if not env.get(var)]
    if missing:
        raise StartupError(component, f"credentials: environment variable(s) not set: {', '.join(missing)}")
    return {key: env[var] for key, var in wanted.items()}


def _with_hooks(cls: type) -> type:
    """``cls`` with its WebSocket close / error callbacks reported to ``reflexd_on_ws_lost``.

    ``on_close`` / ``on_error`` are the callbacks ccxt's clients call on the exchange; the
    override keeps ccxt's own handling and only adds the report.
    """

    class Hooked(cls):  # type: ignore[misc]
        reflexd_on_ws_lost: Callable[[str], None] | None = None

        def on_close(self, client: Any, error: Any) -> None:
            super().on_close(client, error)
            report = self.reflexd_on_ws_lost
            if report is not None:
                report(f"WebSocket closed by the exchange (code {error})")

        def on_error(self, client: Any, error: Any) -> None:
            super().on_error(client, error)
            report = self.reflexd_on_ws_lost
            if report is not None:
                report(f"WebSocket error: {type(error).__name__}: {error}")

    Hooked.__name__ = Hooked.__qualname__ = cls.__name__
    return Hooked


_hooked = functools.lru_cache(maxsize=None)(_with_hooks)


def build_exchange(
    exchange: str,
    *,
    pro: bool,
    credentials: Mapping[str, str],
    timeout_seconds: float,
    options: Mapping[str, Any],
    urls: Mapping[str, Any],
    sandbox: bool,
    rate_limit_ms: int | None = None,
) -> Any:
    """A ccxt exchange instance. ``pro`` picks the ccxt.pro class when the exchange has one."""
    module = import_ccxt(pro)
    cls = getattr(module, exchange, None)
    if cls is None and pro:
        cls = getattr(import_ccxt(False), exchange, None)
    if cls is None:
        raise StartupError("ccxt", f"ccxt has no exchange {exchange!r}")
    config: dict[str, Any] = {
        "enableRateLimit": True,
        "timeout": int(timeout_seconds * 1000),
        "options": dict(options),
        **credentials,
    }
    if rate_limit_ms is not None:
        config["rateLimit"] = rate_limit_ms
    ex = _hooked(cls)(config)
    if sandbox:
        ex.set_sandbox_mode(True)  # replaces urls['api'] wholesale: before the overrides below
    if urls:
        ex.urls = ex.deep_extend(ex.urls, dict(urls))
    return ex


def ccxt_error_kind(exc: BaseException) -> str | None:
    """The first ccxt error class name in ``exc``'s hierarchy that reflexd cares about, else None."""
    for klass in type(exc).__mro__:
        if klass.__module__.startswith("ccxt."):
            name = klass.__name__
            if name in FATAL_ERRORS or name in (
                "RateLimitExceeded",
                "DDoSProtection",
                "RequestTimeout",
                "ExchangeNotAvailable",
                "NetworkError",
                "InvalidNonce",
                "ExchangeError",
                "OperationFailed",
                "BaseError",
            ):
                return name
    return None


def is_fatal(exc: BaseException) -> bool:
    """A ccxt error that retrying cannot fix (:data:`FATAL_ERRORS`)."""
    return any(k.__name__ in FATAL_ERRORS and k.__module__.startswith("ccxt.") for k in type(exc).__mro__)


def describe_error(exc: BaseException) -> str:
    """``Type: message`` of an error, the message cut at 300 characters."""
    text = str(exc)
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
