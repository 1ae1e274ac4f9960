"""``webhook`` tool (aiohttp client): send the rendered arguments as JSON to an HTTP endpoint.

One ``ClientSession`` per tool, opened in ``start()`` and closed in ``stop()``. Every request goes
through the SSRF guard (:mod:`handlers.netguard`): the URL's host is checked before anything is
sent, and the session's resolver checks every address a name resolves to and pins the
connection to them. Redirects are not followed unless configured, and each hop is checked again.

Idempotency: every attempt of one call carries the same ``webhook-id`` and ``Idempotency-Key``
(the call id). With a ``signing_secret``, requests are signed as in the Standard Webhooks
scheme: ``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` with a
fresh ``webhook-timestamp`` per attempt.

Outcomes: 2xx succeeds; 408, 425, 429 and 5xx are retryable (``Retry-After`` honoured, capped at
an hour); 410 Gone disables the tool until the configuration is reloaded; any other status,
an unfollowed redirect and a refused address fail for good. Connection errors and timeouts are
retryable. The runner owns retries and the per-attempt timeout; this module never loops on a
failure. The response body is read in chunks up to ``max_response_bytes`` and never decoded
(``Accept-Encoding: identity``, no automatic decompression).

Configured header values and the signing secret may come from the environment: they are never
logged, and errors name only the target's origin (scheme, host, port), never its full URL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Literal

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver
from pydantic import Field, SecretStr, field_validator, model_validator
from yarl import URL

from daemon.errors import ExpressionError, ToolError
from daemon.logs import get_logger
from handlers.base import CallContext, Tool, ToolConfig
from handlers.netguard import AddressRefused, GuardedResolver, InvalidTarget, NetPolicy
from streams.component import BuildContext, ComponentSpec
from streams.event import Event
from streams.expressions import compile_template, is_constant_template
from streams.tracing import TRACEPARENT

__all__ = ["SPEC", "WebhookTool", "WebhookToolConfig", "parse_retry_after", "signing_key"]

log = get_logger("tool.webhook")

RETRY_AFTER_CAP_SECONDS = 3600.0
MAX_REDIRECTS = 5
READ_CHUNK = 64 * 1024
RETRYABLE_STATUSES = frozenset({408, 425, 429})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Headers the tool sets itself; configuration may not override them.
RESERVED_HEADERS = frozenset(
    {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "idempotency-key",
        "content-length",
        "transfer-encoding",
        "host",
        "connection",
        "accept-encoding",
    }
)
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_SECONDS = re.compile(r"^\d{1,10}(\.\d{1,6})?$")


def signing_key(secret: str) -> bytes:
    """The HMAC key of a signing secret: ``whsec_<base64>`` is decoded, anything else is used as UTF-8."""
    if secret.startswith("whsec_"):
        try:
            key = base64.b64decode(secret[len("whsec_") :], validate=True)
        except binascii.Error:
            raise ValueError("a whsec_ signing secret must be followed by base64") from None
    else:
        key = secret.encode()
    if not key:
        raise ValueError("the signing secret is empty")
    return key


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or HTTP-date), capped at an hour."""
    if not value:
        return None
    text = value.strip()
    if _SECONDS.match(text):
        seconds = float(text)
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # an HTTP-date is always GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_SECONDS)


def _origin(url: URL) -> str:
    """scheme://host:port, the only part of a target URL that errors and logs may show."""
    try:
        return str(url.origin())
    except ValueError:
        return f"{url.scheme}://{url.host}"


class WebhookToolConfig(ToolConfig):
    """An HTTP request per call; the JSON body is the rendered call arguments."""

    template_fields: ClassVar[frozenset[str]] = frozenset({"url", "headers"})

    url: str = Field(description="Target URL (http or https); may hold `{expression}` placeholders.")
    method: Literal["POST", "PUT", "PATCH", "DELETE", "GET"] = Field("POST", description="HTTP method.")
    headers: dict[str, str] = Field(
        default_factory=dict,
        repr=False,
        description="Extra request headers; values may be templates or ${ENV} secrets (never logged).",
    )
    body: Literal["json", "none"] = Field(
        "json", description="`json`: the call arguments as a JSON body; `none`: no body (always so for GET)."
    )
    follow_redirects: bool = Field(
        False, description="Follow 3xx responses (each hop is checked by the SSRF guard); else a 3xx fails."
    )
    max_response_bytes: int = Field(
        64 * 1024, ge=0, le=16 * 1024 * 1024, description="Read at most this much of a response body."
    )
    allow_private_networks: bool = Field(
        False,
        description="Allow loopback, private, link-local and other non-global addresses (tests, on-prem).",
    )
    allowed_networks: list[str] = Field(
        default_factory=list,
        description="CIDR blocks allowed despite the SSRF guard, e.g. one on-prem subnet.",
    )
    signing_secret: SecretStr | None = Field(
        None, description="Standard Webhooks signing secret (`whsec_<base64>`, or any string used as is)."
    )
    verify_tls: bool = Field(True, description="Verify the server's TLS certificate.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        try:
            compile_template(value)
        except ExpressionError as exc:
            raise ValueError(f"invalid template: {exc}") from None
        if is_constant_template(value):
            try:
                url = URL(value)
            except ValueError as exc:
                raise ValueError(f"invalid URL: {exc}") from None
            if url.scheme not in ("http", "https"):
                raise ValueError("the URL must start with http:// or https://")
            if not url.host:
                raise ValueError("the URL has no host")
        elif not value.lower().startswith(("http://", "https://", "{")):
            raise ValueError("the URL must start with http:// or https://")
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():  # messages name the header, never its value (it may be a secret)
            if not _TOKEN.match(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP token")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by the tool and cannot be configured")
            if any(c in text for c in "\r\n\0"):
                raise ValueError(f"header {name!r}: the value contains a line break or NUL")
            try:
                compile_template(text)
            except ExpressionError as exc:
                where = f" at column {exc.column}" if exc.column is not None else ""
                raise ValueError(
                    f"header {name!r}: invalid template{where} (write literal braces as {{{{ and }}}})"
                ) from None
        return value

    @field_validator("allowed_networks")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        NetPolicy.build(False, value)  # raises ValueError naming the bad block
        return value

    @field_validator("signing_secret")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            signing_key(value.get_secret_value())  # message never contains the secret
        return value

    @model_validator(mode="after")
    def _check_body(self) -> WebhookToolConfig:
        if self.method == "GET" and self.body == "json" and "body" in self.model_fields_set:
            raise ValueError("a GET request carries no body: drop `body: json` or use another method")
        return self


class WebhookTool(Tool):
    type_name: ClassVar[str] = "webhook"
    description: ClassVar[str] = (
        "Send the arguments as a JSON request to an HTTP endpoint (signed, idempotent)."
    )
    args_schema: ClassVar[dict[str, Any]] = {"type": "object", "additionalProperties": True}
    config: WebhookToolConfig

    def __init__(
        self,
        name: str,
        config: WebhookToolConfig,
        *,
        resolver: AbstractResolver | None = None,
        trace_configs: list[aiohttp.TraceConfig] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``resolver`` does the DNS lookups behind the guard (tests inject one); ``clock`` is the
        wall clock for ``webhook-timestamp`` and HTTP-date ``Retry-After`` values."""
        super().__init__(name, config)
        self._url = compile_template(config.url)
        self._headers = [(k, compile_template(v)) for k, v in config.headers.items()]
        self._key = (
            signing_key(config.signing_secret.get_secret_value())
            if config.signing_secret is not None
            else None
        )
        self._sends_body = config.body == "json" and config.method != "GET"
        self._policy = NetPolicy.build(config.allow_private_networks, config.allowed_networks)
        self._inner_resolver = resolver
        self._trace_configs = trace_configs
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._resolver: GuardedResolver | None = None
        self._disabled: str | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        self._disabled = None
        self._resolver = GuardedResolver(self._policy, self._inner_resolver)
        connector = aiohttp.TCPConnector(
            resolver=self._resolver,
            limit=self.concurrency,
            ttl_dns_cache=10,
            ssl=cfg.verify_tls,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=cfg.timeout_seconds + 1.0,  # the runner's per-attempt timeout normally fires first
                sock_connect=min(cfg.timeout_seconds, 10.0),
            ),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,  # no proxy from the environment: the guard checks the real target
            trace_configs=self._trace_configs,
        )
        if not cfg.verify_tls:
            log.warning("TLS verification is off", extra={"fields": {"tool": self.name}})
        if cfg.allow_private_networks:
            log.info("SSRF guard: private networks allowed", extra={"fields": {"tool": self.name}})

    async def stop(self) -> None:
        session, self._session = self._session, None
        resolver, self._resolver = self._resolver, None
        try:
            if session is not None:
                await session.close()
            if resolver is not None:
                await resolver.close()
        except Exception as exc:
            log.warning(
                "webhook session close failed", extra={"fields": {"tool": self.name, "error": repr(exc)}}
            )

    @property
    def disabled(self) -> str | None:
        """Why the tool is disabled (after a 410), or None."""
        return self._disabled

    # -- one call ----------------------------------------------------------------------------------

    async def call(self, args: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        if self._disabled is not None:
            raise ToolError(self.name, self._disabled, permanent=True)
        session = self._session
        if session is None:
            raise ToolError(self.name, "the tool is not started")
        event = ctx.event if ctx.event is not None else Event(ctx.tool, 0.0, 0.0, None, {}, {})
        url = self._render_url(event)
        headers = self._render_headers(event)
        method: str = self.config.method
        body = orjson.dumps(args, default=str) if self._sends_body else b""
        has_body = self._sends_body
        for hop in range(MAX_REDIRECTS + 1):
            self._check(url)
            request_headers = self._request_headers(headers, ctx.call_id, body, has_body)
            if ctx.trace is not None:  # tracing on: the receiver's spans join this attempt's trace
                request_headers.setdefault(TRACEPARENT, ctx.trace.traceparent)
            try:
                async with session.request(
                    method,
                    url,
                    data=body if has_body else None,
                    headers=request_headers,
                    allow_redirects=False,
                ) as resp:
                    status = resp.status
                    if status not in REDIRECT_STATUSES:
                        read, truncated = await self._read_capped(resp)
                        return self._outcome(resp, url, read, truncated, hop)
                    next_url = self._redirect_target(resp, url)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                raise self._map_error(exc, url) from exc
            if status == 303 or (status in (301, 302) and method == "POST"):
                method, body, has_body = "GET", b"", False
            if _origin(next_url) != _origin(url):
                headers = {}  # configured headers (credentials) never follow to another origin
            url = next_url
        raise ToolError(self.name, f"more than {MAX_REDIRECTS} redirects from {_origin(url)}")

    def _render_url(self, event: Event) -> URL:
        try:
            text = str(self._url(event))
        except Exception as exc:
            raise ToolError(self.name, f"url template failed: {type(exc).__name__}: {exc}") from exc
        try:
            url = URL(text)
        except ValueError as exc:
            raise ToolError(self.name, f"rendered url is invalid: {exc}") from exc
        return url

    def _render_headers(self, event: Event) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, render in self._headers:
            try:
                value = render(event)
            except Exception as exc:  # the message could quote the template: name the type only
                raise ToolError(
                    self.name, f"header {name!r}: template failed ({type(exc).__name__})"
                ) from exc
            text = "" if value is None else str(value)
            if any(c in text for c in "\r\n\0"):
                raise ToolError(
                    self.name, f"header {name!r}: the rendered value contains a line break or NUL"
                )
            headers[name] = text
        return headers

    def _request_headers(
        self, base: Mapping[str, str], call_id: str, body: bytes, has_body: bool
    ) -> dict[str, str]:
        timestamp = str(int(self._clock()))
        headers = dict(base)
        headers["webhook-id"] = call_id
        headers["Idempotency-Key"] = call_id
        headers["webhook-timestamp"] = timestamp
        headers["Accept-Encoding"] = "identity"
        if has_body:
            headers.setdefault("Content-Type", "application/json")
        if self._key is not None:
            signed = f"{call_id}.{timestamp}.".encode() + body
            digest = hmac.new(self._key, signed, hashlib.sha256).digest()
            headers["webhook-signature"] = "v1," + base64.b64encode(digest).decode()
        return headers

    def _check(self, url: URL) -> None:
        try:
            self._policy.check_url(url)
        except AddressRefused as exc:
            raise ToolError(self.name, f"{exc} (allow_private_networks is off)", permanent=True) from exc
        except InvalidTarget as exc:
            raise ToolError(self.name, f"invalid target {_origin(url)}: {exc}", permanent=True) from exc

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> tuple[int, bool]:
        """Read at most ``max_response_bytes`` of the body, in chunks; drop the connection if more is left."""
        cap = self.config.max_response_bytes
        read = 0
        while read < cap:
            chunk = await resp.content.read(min(READ_CHUNK, cap - read))
            if not chunk:
                break
            read += len(chunk)
        truncated = read >= cap and not resp.content.at_eof()
        if truncated:
            resp.close()  # never drain the rest: the connection is not reused
        return read, truncated

    def _outcome(
        self, resp: aiohttp.ClientResponse, url: URL, read: int, truncated: bool, redirects: int
    ) -> dict[str, Any]:
        status = resp.status
        if 200 <= status < 300:
            result: dict[str, Any] = {"status": status, "bytes": read, "truncated": truncated}
            if redirects:
                result["redirects"] = redirects
            return result
        target = _origin(url)
        if status == 410:
            self._disable(target)
            raise ToolError(
                self.name, f"HTTP 410 Gone from {target}: the tool is disabled until reload", permanent=True
            )
        if status in RETRYABLE_STATUSES or 500 <= status <= 599:
            retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._clock())
            wait = f", Retry-After {retry_after:g}s" if retry_after is not None else ""
            raise ToolError(
                self.name, f"HTTP {status} from {target}{wait}", retryable=True, retry_after=retry_after
            )
        raise ToolError(self.name, f"HTTP {status} from {target} (not retried)")

    def _redirect_target(self, resp: aiohttp.ClientResponse, url: URL) -> URL:
        target = _origin(url)
        if not self.config.follow_redirects:
            raise ToolError(
                self.name, f"HTTP {resp.status} redirect from {target} not followed (follow_redirects is off)"
            )
        location = resp.headers.get("Location")
        if not location:
            raise ToolError(self.name, f"HTTP {resp.status} from {target} without a Location header")
        try:
            next_url = url.join(URL(location))
        except ValueError as exc:
            raise ToolError(self.name, f"HTTP {resp.status} from {target}: invalid Location") from exc
        if url.scheme == "https" and next_url.scheme != "https":
            raise ToolError(self.name, f"HTTP {resp.status} from {target}: refusing a redirect off https")
        return next_url

    def _disable(self, target: str) -> None:
        if self._disabled is None:
            self._disabled = (
                f"disabled after HTTP 410 Gone from {target}; reload the configuration to re-enable"
            )
            log.error(
                "webhook target is gone (410); tool disabled until reload",
                extra={"fields": {"tool": self.name, "target": target}},
            )

    def _map_error(self, exc: BaseException, url: URL) -> ToolError:
        target = _origin(url)
        cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
        if isinstance(cause, AddressRefused):
            return ToolError(self.name, f"{cause} (allow_private_networks is off)", permanent=True)
        if isinstance(exc, (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError)):
            return ToolError(self.name, f"TLS error with {target}: {type(exc).__name__}")
        if isinstance(exc, aiohttp.ServerFingerprintMismatch):
            return ToolError(self.name, f"TLS fingerprint mismatch with {target}")
        if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
            return ToolError(self.name, f"invalid target {target}: {type(exc).__name__}", permanent=True)
        if isinstance(exc, TimeoutError):
            return ToolError(self.name, f"timed out talking to {target}", retryable=True)
        if isinstance(exc, aiohttp.ClientError | OSError):
            return ToolError(self.name, f"{type(exc).__name__} talking to {target}", retryable=True)
        return ToolError(self.name, f"request to {target} failed: {type(exc).__name__}")


# -- registry entry (daemon/registry.py lists SPEC) ----------------------------------------------------


def _factory(name: str, cfg: WebhookToolConfig, ctx: BuildContext) -> Tool:
    return WebhookTool(name, cfg)


def _summary(c: WebhookToolConfig) -> list[tuple[str, Any]]:
    return [
        ("url", c.url),
        ("method", c.method),
        ("headers", sorted(c.headers)),
        ("signed", c.signing_secret is not None),
        ("follow_redirects", c.follow_redirects),
        ("allow_private_networks", c.allow_private_networks),
        *WebhookTool.common_summary(c),
    ]


SPEC = ComponentSpec(
    "tool",
    "webhook",
    WebhookToolConfig,
    _factory,
    _summary,
    WebhookTool.description,
    {"type": "webhook", "url": "https://hooks.example.com/reflexd/{key}", "timeout_seconds": 15},
)
