"""Ops HTTP server (aiohttp, on the daemon's loop): / /healthz /readyz /metrics /status /kill-switch
/approvals /agent/runs.

- ``/``: the live status page (:mod:`daemon.status_view`): one static HTML file, no external assets,
  that polls ``/status`` every second and shows it as text.

- ``/healthz``: 200 while the process serves requests (liveness).
- ``/readyz``: 200 when every source is connected and delivering within its idle timeout,
  503 otherwise, with the reason per source.
- ``/metrics``: Prometheus text format.
- ``/status``: JSON with sources, rules (with the last fire: when, and a redacted sample), tools
  (with p50/p99 durations from the histogram and the last error's first line, redacted), the
  journal, the dead-letter queue's size, pending approvals and the kill switch. It never contains
  configuration values (URLs, headers, arguments), and every text from ``${VAR}`` is replaced by
  ``***`` wherever it would occur, so secrets from the environment cannot leak through it.
- ``/kill-switch``: the kill switch of every tool that has one (``Tool.kill_switch``: the order
  tools). ``GET`` shows it, ``POST`` engages it (optional JSON body ``{"reason": "..."}``),
  ``DELETE`` releases what ``POST`` engaged (a kill-switch file, if present, keeps blocking).
  404 when no tool has a kill switch.
- ``/approvals``: ``GET`` lists the model-chosen calls waiting for a person (``?all=1``: decided
  ones too); ``POST /approvals/{id}/approve`` and ``/reject`` decide one (optional JSON body
  ``{"note": "..."}``), as ``reflexd approvals`` does: an approval wakes the daemon's approvals task,
  which makes the call once through the runner. The answer holds the approval (``{"approval": …}``);
  404 for an unknown id, 409 when it was decided already (nothing changes).
- ``/agent/runs``: the newest agent runs (``?tool=NAME&limit=N``); ``/agent/runs/{id}`` one run with
  its conversation. Approvals and runs are shown as ``reflexd agent`` prints them
  (:class:`daemon.agent_view.Shown`: secrets from the environment and secret-looking values are
  ``***``); both answer 404 when the journal (where they live) is off.

Who may do what — one middleware (:meth:`OpsServer._guard`) applies it to every route, present and
future, so a new route cannot forget it:

- **Host** (all requests): the ``Host`` header must name the listen address, a name in
  ``daemon.http.allowed_hosts``, or — on loopback — ``localhost`` / ``127.0.0.1`` / ``[::1]``;
  otherwise 421. The port in the header is not compared (port forwards and proxies change it).
  *Bound to 0.0.0.0 or ``::``*: any IP-address Host (and ``localhost``) is accepted without
  configuration, because probes, scrapers and port-mapped clients address a container by IP and
  DNS rebinding needs a name; a DNS name must be listed. ``allowed_hosts: ["*"]`` turns the check
  off. A request without a ``Host`` header (HTTP/1.0 tools; browsers always send one) is accepted.
- **State-changing** = every method but ``GET`` / ``HEAD`` (GET handlers never change state):
  without ``daemon.http.token`` → 403 (those endpoints are off); an ``Origin`` header that is not
  this server's own origin or a listed name → 403 (a page can POST cross-site without a preflight);
  a peer with :data:`MAX_AUTH_FAILURES` failures in :data:`AUTH_FAILURE_WINDOW_SECONDS` → 429 with
  ``Retry-After`` until its window ends; no or a wrong ``Authorization: Bearer <token>`` → 401 with
  ``WWW-Authenticate: Bearer``. The token is compared in constant time (SHA-256 digests through
  :func:`hmac.compare_digest`) and never logged.
- **Bodies**: at most :data:`MAX_BODY_BYTES` (413), complete within ``request_timeout_seconds`` of
  the headers (408); an unreadable body (bad ``Content-Encoding``, broken chunking, invalid JSON)
  is a 400 with the reason. The connection is closed after an unread or refused body.
- **Connections**: a request's headers must arrive within ``request_timeout_seconds`` of connecting
  or of the previous response (aiohttp's keep-alive timer, which starts at connect), else the
  connection is closed: idle and slowloris clients are shed. At ``max_connections`` a new connection
  replaces the oldest one that has no request being handled, so ``/healthz`` keeps answering under
  a flood of stalled connections; when every connection is busy the new one gets 503 and is closed.
- **Malformed HTTP** from a client is counted and logged rate-limited, one line without a traceback
  (aiohttp's ``aiohttp.server`` logger is replaced by :class:`_ServerLog`).

Every refusal is counted in ``reflexd_http_refused_total{reason}`` (:data:`REFUSAL_REASONS`) and
logged rate-limited per reason with the peer, method and path.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import orjson
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from yarl import URL

from daemon.agent_state import AgentState, DecisionError
from daemon.agent_view import Shown
from daemon.config import AppConfig, HttpConfig, parse_listen
from daemon.errors import StartupError
from daemon.logs import RateLimitedLog, get_logger
from daemon.state import StateStore
from daemon.status_view import status_page, texts_shown
from daemon.telemetry import Observed, metrics_registry
from handlers.base import KillSwitchControl, Tool
from streams.metrics import MetricSpec

__all__ = [
    "AUTH_FAILURE_WINDOW_SECONDS",
    "HTTP_METRICS",
    "MAX_AUTH_FAILURES",
    "MAX_BODY_BYTES",
    "REFUSAL_REASONS",
    "FailureThrottle",
    "HostPolicy",
    "HttpStats",
    "OpsServer",
    "OpsTarget",
    "split_host",
]

log = get_logger("http")

SAFE_METHODS = frozenset({"GET", "HEAD"})
MAX_BODY_BYTES = 64 * 1024
MAX_AUTH_FAILURES = 20
AUTH_FAILURE_WINDOW_SECONDS = 60.0
SHUTDOWN_SECONDS = 2.0
REFUSAL_REASONS = (
    "host",  # Host header not accepted (421)
    "origin",  # state-changing request from a foreign Origin (403)
    "token_off",  # state-changing request while no token is configured (403)
    "token_missing",  # no bearer token (401)
    "token_wrong",  # a wrong bearer token (401)
    "throttled",  # too many auth failures from the peer (429)
    "body_unreadable",  # bad Content-Encoding, broken chunking, invalid JSON (400)
    "body_too_large",  # over MAX_BODY_BYTES (413)
    "body_timeout",  # body not complete within request_timeout_seconds (408)
    "malformed",  # bad request line or headers, answered by aiohttp's parser (400)
)
_NO_KILL_SWITCH = {"error": "no tool with a kill switch is configured"}
_NO_AGENT_STATE = {"error": "agent runs and approvals live in the journal, which is off (daemon.journal)"}
#: Most runs ``GET /agent/runs`` returns.
MAX_RUNS = 500
#: Most pending approvals ``/status`` lists (oldest first; ``pending`` counts them all).
MAX_APPROVALS_SHOWN = 10


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


class _Refused(Exception):
    """Raised inside a handler to answer with ``response``; the middleware counts ``reason``."""

    def __init__(self, reason: str, response: web.Response) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response


# -- pure parts: Host / Origin policy, failure throttle ---------------------------------------------


def split_host(value: str) -> tuple[str, int | None] | None:
    """A ``Host`` header (or URL authority) → (lower-case name without brackets or final dot, port);
    None when it is malformed."""
    value = value.strip()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    elif value.count(":") > 1:
        return None  # an IPv6 literal must be in brackets
    else:
        name, sep, port_text_ = value.partition(":")
        port_text = port_text_ if sep else None
    if port_text is not None and not (port_text.isdigit() and len(port_text) <= 5):
        return None
    name = name.lower().rstrip(".")
    if not name:
        return None
    return name, int(port_text) if port_text is not None else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARDS = frozenset({"0.0.0.0", "::"})


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """Which ``Host`` headers and ``Origin`` values the ops server accepts (see the module docstring)."""

    names: frozenset[str]  # accepted host names (lower case, no brackets)
    listed: frozenset[str]  # from allowed_hosts: accepted as Origins too
    any_ip: bool = False  # bound to a wildcard address: any IP literal
    any_host: bool = False  # allowed_hosts has "*"

    @classmethod
    def build(cls, listen_host: str, allowed_hosts: Sequence[str]) -> HostPolicy:
        listen = listen_host.lower().strip("[]").rstrip(".")
        listed = set()
        for entry in allowed_hosts:
            parsed = split_host(entry) if entry != "*" else None
            if parsed is not None:
                listed.add(parsed[0])
        names = {listen, *listed}
        wildcard = listen in _WILDCARDS
        try:
            loopback = ipaddress.ip_address(listen).is_loopback
        except ValueError:
            loopback = listen == "localhost"
        if loopback or wildcard:
            names |= _LOOPBACK_NAMES
        return cls(frozenset(names), frozenset(listed), any_ip=wildcard, any_host="*" in allowed_hosts)

    def allows_host(self, header: str | None) -> bool:
        if header is None or self.any_host:
            return True
        parsed = split_host(header)
        if parsed is None:
            return False
        name = parsed[0]
        return name in self.names or (self.any_ip and _is_ip(name))

    def allows_origin(self, origin: str, host_header: str | None) -> bool:
        """Same origin as the request's Host (http or https), or a listed name."""
        try:
            url = URL(origin)
        except ValueError:
            return False
        if url.scheme not in ("http", "https") or not url.host or url.path not in ("", "/"):
            return False
        name = url.host.lower().rstrip(".")
        if name in self.listed:
            return True
        if host_header is None:
            return False
        parsed = split_host(host_header)
        if parsed is None:
            return False
        port = parsed[1] if parsed[1] is not None else (443 if url.scheme == "https" else 80)
        return parsed[0] == name and url.port == port


class FailureThrottle:
    """Per peer, at most ``limit`` auth failures in a fixed window; then 429 until the window ends."""

    __slots__ = ("_limit", "_max_peers", "_peers", "_window")

    def __init__(self, limit: int = MAX_AUTH_FAILURES, window: float = AUTH_FAILURE_WINDOW_SECONDS) -> None:
        self._limit = limit
        self._window = window
        self._max_peers = 4096
        self._peers: dict[str, tuple[float, int]] = {}  # peer → (window start, failures)

    def retry_after(self, peer: str, now: float) -> float | None:
        """Seconds until ``peer`` may try again, or None when it is not throttled."""
        entry = self._peers.get(peer)
        if entry is None:
            return None
        start, failures = entry
        left = start + self._window - now
        if left <= 0:
            del self._peers[peer]
            return None
        return left if failures >= self._limit else None

    def failed(self, peer: str, now: float) -> None:
        entry = self._peers.get(peer)
        if entry is None or now - entry[0] >= self._window:
            self._peers[peer] = (now, 1)
            if len(self._peers) > self._max_peers:
                self._prune(now)
        else:
            self._peers[peer] = (entry[0], entry[1] + 1)

    def _prune(self, now: float) -> None:
        self._peers = {p: e for p, e in self._peers.items() if now - e[0] < self._window}
        if len(self._peers) > self._max_peers:  # keep the newer half
            keep = list(self._peers.items())[len(self._peers) // 2 :]
            self._peers = dict(keep)


# -- counters and their metrics -----------------------------------------------------------------


@dataclass(slots=True)
class HttpStats:
    refused: Counter[str] = field(default_factory=Counter)  # by REFUSAL_REASONS
    connections_evicted: int = 0  # idle connections closed to make room at max_connections
    connections_refused: int = 0  # new connections closed at once: every connection was busy
    errors: int = 0  # handler or server errors (500)


HTTP_REFUSED = MetricSpec(
    "reflexd_http_refused_total",
    "counter",
    "Ops HTTP requests refused, by reason.",
    ("reason",),
    "`reason`: `host` (421), `origin`, `token_off` (403), `token_missing`, `token_wrong` (401), "
    "`throttled` (429), `body_unreadable` (400/415), `body_too_large` (413), `body_timeout` (408), "
    "`malformed` (400 from the HTTP parser)",
)
HTTP_CONNECTIONS_DROPPED = MetricSpec(
    "reflexd_http_connections_dropped_total",
    "counter",
    "Ops HTTP connections closed at max_connections: evicted (idle) or refused (all busy).",
    ("reason",),
    "`reason`: `evicted` (an idle connection closed), `refused` (503, all busy)",
)
HTTP_ERRORS = MetricSpec(
    "reflexd_http_errors_total",
    "counter",
    "Ops HTTP requests that failed (500).",
    (),
    "A bug: logged with the traceback.",
)
HTTP_CONNECTIONS = MetricSpec("reflexd_http_connections", "gauge", "Open ops HTTP connections.")
#: The ops server's metrics, in the order /metrics shows them (after the daemon's).
HTTP_METRICS = (HTTP_REFUSED, HTTP_CONNECTIONS_DROPPED, HTTP_ERRORS, HTTP_CONNECTIONS)


class _HttpCollector(Collector):
    def __init__(self, server: OpsServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        stats = self.server.stats
        refused = CounterMetricFamily(HTTP_REFUSED.name, HTTP_REFUSED.help, labels=list(HTTP_REFUSED.labels))
        for reason in REFUSAL_REASONS:
            refused.add_metric([reason], stats.refused[reason])
        dropped = CounterMetricFamily(
            HTTP_CONNECTIONS_DROPPED.name,
            HTTP_CONNECTIONS_DROPPED.help,
            labels=list(HTTP_CONNECTIONS_DROPPED.labels),
        )
        dropped.add_metric(["evicted"], stats.connections_evicted)
        dropped.add_metric(["refused"], stats.connections_refused)
        errors = CounterMetricFamily(HTTP_ERRORS.name, HTTP_ERRORS.help)
        errors.add_metric([], stats.errors)
        open_ = GaugeMetricFamily(HTTP_CONNECTIONS.name, HTTP_CONNECTIONS.help)
        open_.add_metric([], self.server.open_connections())
        yield from (refused, dropped, errors, open_)


# -- aiohttp glue -------------------------------------------------------------------------------


class _ServerLog(logging.Logger):
    """Stands in for aiohttp's ``aiohttp.server`` logger: a client's malformed HTTP is counted and
    logged rate-limited on one line without a traceback; other server errors are counted and logged
    rate-limited (with the traceback); debug chatter (premature disconnects) is dropped."""

    def __init__(self, stats: HttpStats) -> None:
        super().__init__("reflexd.http.server")
        self._stats = stats
        self._malformed = RateLimitedLog(log, "malformed HTTP request refused", level=logging.INFO)
        self._errors = RateLimitedLog(log, "ops HTTP server error", level=logging.ERROR)

    def handle(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
        if isinstance(exc, HttpProcessingError):
            self._stats.refused["malformed"] += 1
            detail = (exc.message or "").strip().splitlines()
            self._malformed.hit(
                peer=peer, error=f"{type(exc).__name__}: {detail[0][:120] if detail else exc.code}"
            )
            return
        if record.levelno < logging.WARNING:
            return
        self._stats.errors += 1
        self._errors.hit(exc_info=record.exc_info, error=record.getMessage())


_TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b'Content-Length: 38\r\nConnection: close\r\n\r\n{"error": "too many open connections"}'
)


class _Connection(web.RequestHandler):
    """aiohttp's request handler, admitted by :meth:`OpsServer._admit` when the connection arrives
    (``connection_made`` runs in accept order, so the count of open connections is exact)."""

    def __init__(self, ops: OpsServer, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, loop=asyncio.get_running_loop(), **kwargs)
        self._ops = ops
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._ops._admit(self):
            cast(asyncio.WriteTransport, transport).write(_TOO_MANY)
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._ops._connections.pop(self, None)
        if self._admitted:
            super().connection_lost(exc)


class _CappedSite(web.BaseSite):
    """A TCP site whose connections are :class:`_Connection` (``max_connections`` applies)."""

    __slots__ = ("_factory", "_host", "_port", "bound")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, factory: Any, *, backlog: int = 128
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._factory = factory
        self.bound: asyncio.Server | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self.bound = await loop.create_server(self._factory, self._host, self._port, backlog=self._backlog)
        self._server = self.bound


# -- the server ---------------------------------------------------------------------------------


class OpsTarget(Observed, Protocol):
    """What the ops server reads of a running daemon (:class:`daemon.supervisor.Daemon` is one)."""

    tools: dict[str, Tool]
    config: AppConfig
    agent_state: AgentState | None
    store: StateStore | None  # the state file (dead letters), None with the journal off
    approvals_wake: asyncio.Event  # set: the approvals task looks for approved calls at once

    def status(self) -> dict[str, Any]: ...


class OpsServer:
    """The ops endpoints of one daemon."""

    def __init__(self, daemon: OpsTarget, config: HttpConfig) -> None:
        self.daemon = daemon
        self.config = config
        self.host, self.port = parse_listen(config.listen)
        self.stats = HttpStats()
        self._hosts = HostPolicy.build(self.host, config.allowed_hosts)
        token = config.token.get_secret_value() if config.token is not None else None
        self._token_digest = hashlib.sha256(token.encode()).digest() if token else None
        self._throttle = FailureThrottle()
        self._refusal_logs: dict[str, RateLimitedLog] = {}
        self._connections: dict[web.RequestHandler, None] = {}  # admitted and open, oldest first
        self._busy: set[web.RequestHandler] = set()  # connections whose request is being handled
        self._cap_log = RateLimitedLog(log, "ops HTTP connection cap reached")
        self._metrics = metrics_registry(daemon)
        self._metrics.register(_HttpCollector(self))
        self._shown = Shown(daemon.config)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/", self._page)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_handler)
        app.router.add_get("/status", self._status)
        app.router.add_get("/kill-switch", self._kill_switch_get)
        app.router.add_post("/kill-switch", self._kill_switch_post)
        app.router.add_delete("/kill-switch", self._kill_switch_delete)
        app.router.add_get("/approvals", self._approvals_get)
        app.router.add_post("/approvals/{id}/approve", self._approve)
        app.router.add_post("/approvals/{id}/reject", self._reject)
        app.router.add_get("/agent/runs", self._runs_get)
        app.router.add_get("/agent/runs/{id}", self._run_get)
        timeout = self.config.request_timeout_seconds
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_SECONDS)
        await runner.setup()
        server = runner.server
        assert server is not None
        handler_args: dict[str, Any] = {
            "access_log": None,
            "keepalive_timeout": timeout,  # from connect, and from each response, to the next headers
            "lingering_time": 0,  # an unread body closes the connection instead of being drained
            "logger": _ServerLog(self.stats),
        }
        site = _CappedSite(runner, self.host, self.port, lambda: _Connection(self, server, **handler_args))
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError("http", f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from exc
        self._runner = runner
        sockets = site.bound.sockets if site.bound is not None else ()
        if sockets:
            self.port = sockets[0].getsockname()[1]  # the bound port, when 0 was asked for

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def open_connections(self) -> int:
        return len(self._connections)

    def _admit(self, connection: web.RequestHandler) -> bool:
        """At ``max_connections``, close the oldest idle connection to make room, or refuse this one."""
        connections = self._connections
        cap = self.config.max_connections
        if len(connections) >= cap:
            idle = next((c for c in connections if c not in self._busy), None)
            if idle is None:
                self.stats.connections_refused += 1
                self._cap_log.hit(max_connections=cap, action="new connection refused: all are busy")
                return False
            self.stats.connections_evicted += 1
            self._cap_log.hit(max_connections=cap, action="oldest idle connection closed")
            del connections[idle]
            idle.force_close()
        connections[connection] = None
        return True

    # -- access rules (every route) ---------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get(hdrs.HOST)
        if not self._hosts.allows_host(host):
            return self._refuse(
                request,
                "host",
                421,
                f"Host {host[:100]!r} is not accepted here: add it to daemon.http.allowed_hosts"
                if host is not None
                else "bad Host",
            )
        if request.method not in SAFE_METHODS:
            refused = self._authorize(request, host)
            if refused is not None:
                return refused
        protocol = request.protocol
        self._busy.add(protocol)
        try:
            return await handler(request)
        except _Refused as refusal:
            self._count_refusal(request, refusal.reason)
            return refusal.response
        except web.HTTPException:
            raise
        except Exception:
            self.stats.errors += 1
            log.exception("ops HTTP handler failed", extra={"fields": {"path": request.path[:100]}})
            return _json({"error": "internal error (see the daemon's log)"}, 500)
        finally:
            self._busy.discard(protocol)

    def _authorize(self, request: web.Request, host: str | None) -> web.Response | None:
        """None when a state-changing request may proceed; otherwise the refusal."""
        if self._token_digest is None:
            return self._refuse(
                request, "token_off", 403, "state-changing endpoints are off: set daemon.http.token"
            )
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and not self._hosts.allows_origin(origin, host):
            return self._refuse(
                request, "origin", 403, "cross-origin request refused: the Origin is not this server"
            )
        peer = request.remote or "unknown"
        now = time.monotonic()
        wait = self._throttle.retry_after(peer, now)
        if wait is not None:
            return self._refuse(
                request,
                "throttled",
                429,
                "too many failed attempts: try again later",
                headers={"Retry-After": str(max(1, int(wait + 0.999)))},
            )
        presented = request.headers.get(hdrs.AUTHORIZATION)
        if presented is None:
            self._throttle.failed(peer, now)
            return self._refuse(
                request,
                "token_missing",
                401,
                "this endpoint needs Authorization: Bearer <daemon.http.token>",
                headers={"WWW-Authenticate": 'Bearer realm="reflexd"'},
            )
        scheme, _, token = presented.strip().partition(" ")
        digest = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        # compare_digest on equal-length digests: the time does not depend on the token
        if not hmac.compare_digest(digest, self._token_digest) or scheme.lower() != "bearer":
            self._throttle.failed(peer, now)
            return self._refuse(
                request,
                "token_wrong",
                401,
                "the bearer token is not valid",
                headers={"WWW-Authenticate": 'Bearer realm="reflexd", error="invalid_token"'},
            )
        return None

    def _refuse(
        self,
        request: web.Request,
        reason: str,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        self._count_refusal(request, reason)
        return _json({"error": message}, status, headers)

    def _count_refusal(self, request: web.Request, reason: str) -> None:
        self.stats.refused[reason] += 1
        limited = self._refusal_logs.get(reason)
        if limited is None:
            limited = self._refusal_logs[reason] = RateLimitedLog(log, "ops HTTP request refused")
        limited.hit(reason=reason, peer=request.remote, method=request.method, path=request.path[:100])

    async def _json_body(self, request: web.Request) -> Any:
        """The request's JSON body (None when there is none); raises :class:`_Refused` when it cannot
        be read: 400 unreadable or not JSON, 408 not complete in time, 413 too large, 415 not JSON."""
        if not request.body_exists:
            return None
        if request.content_type != "application/json":
            raise _Refused("body_unreadable", self._closing(415, "the body must be JSON"))
        if (request.content_length or 0) > MAX_BODY_BYTES:
            raise _Refused("body_too_large", self._closing(413, f"the body is over {MAX_BODY_BYTES} bytes"))
        timeout = self.config.request_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                data = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _Refused(
                "body_too_large", self._closing(413, f"the body is over {MAX_BODY_BYTES} bytes")
            ) from None
        except TimeoutError:
            raise _Refused(
                "body_timeout", self._closing(408, f"the body did not arrive within {timeout:g} s")
            ) from None
        except (web.RequestPayloadError, HttpProcessingError, ConnectionError) as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, HttpProcessingError) else exc
            detail = cause.message if isinstance(cause, HttpProcessingError) else type(cause).__name__
            raise _Refused(
                "body_unreadable", self._closing(400, f"the body cannot be read: {str(detail).strip()[:100]}")
            ) from None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise _Refused("body_unreadable", self._closing(400, "the body is not valid JSON")) from None

    @staticmethod
    def _closing(status: int, message: str) -> web.Response:
        response = _json({"error": message}, status)
        response.force_close()  # what is left of the body is not read: the connection ends here
        return response

    # -- read-only endpoints ---------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, reasons = self.daemon.readiness()
        return _json({"ready": ready, "sources": reasons}, 200 if ready else 503)

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        body = generate_latest(self._metrics)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _status(self, request: web.Request) -> web.Response:
        status = self.daemon.status()
        store, state = self.daemon.store, self.daemon.agent_state
        if store is not None:
            status["dead_letters"] = {"pending": await asyncio.to_thread(store.dead_letter_count)}
        if state is not None:
            pending = await asyncio.to_thread(state.approvals, status="pending")
            now = time.time()
            status["approvals"] = {
                "pending": len(pending),
                "oldest": [
                    {
                        "id": a.id,
                        "tool": a.tool,
                        "llm": a.llm,
                        "age_seconds": round(max(0.0, now - a.created), 3),
                    }
                    for a in pending[:MAX_APPROVALS_SHOWN]
                ],
            }
        switches = self._switches()
        if switches:
            states = {name: sw.state() for name, sw in switches.items()}
            status["kill_switch"] = {"engaged": any(s["engaged"] for s in states.values()), "tools": states}
        return _json(texts_shown(self._shown, status))

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(
            body=status_page(),
            content_type="text/html",
            charset="utf-8",
            headers={
                # the page's own inline script and style, fetches to this origin only, no framing
                "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
                "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store",
            },
        )

    # -- kill switch ----------------------------------------------------------------------------

    def _switches(self) -> dict[str, KillSwitchControl]:
        """The tools that expose a kill switch (a capability of the tool, whatever its type)."""
        return {name: sw for name, tool in self.daemon.tools.items() if (sw := tool.kill_switch) is not None}

    def _kill_switch_state(self, switches: dict[str, KillSwitchControl]) -> web.Response:
        states = {name: sw.state() for name, sw in switches.items()}
        return _json({"engaged": any(s["engaged"] for s in states.values()), "tools": states})

    async def _kill_switch_get(self, request: web.Request) -> web.Response:
        switches = self._switches()
        if not switches:
            return _json(_NO_KILL_SWITCH, 404)
        return self._kill_switch_state(switches)

    async def _kill_switch_post(self, request: web.Request) -> web.Response:
        switches = self._switches()
        if not switches:
            return _json(_NO_KILL_SWITCH, 404)
        reason = "engaged over HTTP"
        body = await self._json_body(request)
        if isinstance(body, dict) and isinstance(body.get("reason"), str) and body["reason"].strip():
            reason = body["reason"].strip()[:200]
        for switch in switches.values():
            switch.engage(reason)
        log.warning(
            "kill switch engaged: live orders are refused",
            extra={"fields": {"tools": sorted(switches), "reason": reason, "peer": request.remote}},
        )
        return self._kill_switch_state(switches)

    async def _kill_switch_delete(self, request: web.Request) -> web.Response:
        switches = self._switches()
        if not switches:
            return _json(_NO_KILL_SWITCH, 404)
        for switch in switches.values():
            switch.release()
        still = sorted(name for name, sw in switches.items() if sw.state()["engaged"])
        log.warning(
            "kill switch released over HTTP",
            extra={
                "fields": {"tools": sorted(switches), "still_blocked_by_file": still, "peer": request.remote}
            },
        )
        return self._kill_switch_state(switches)

    # -- approvals and agent runs ------------------------------------------------------------------

    async def _approvals_get(self, request: web.Request) -> web.Response:
        state = self.daemon.agent_state
        if state is None:
            return _json(_NO_AGENT_STATE, 404)
        everything = request.query.get("all", "") not in ("", "0", "false")
        found = await asyncio.to_thread(state.approvals, status=None if everything else "pending")
        now = time.time()
        return _json({"approvals": [self._shown.approval(a, now) for a in found]})

    async def _approve(self, request: web.Request) -> web.Response:
        return await self._decide(request, approve=True)

    async def _reject(self, request: web.Request) -> web.Response:
        return await self._decide(request, approve=False)

    async def _decide(self, request: web.Request, *, approve: bool) -> web.Response:
        state = self.daemon.agent_state
        if state is None:
            return _json(_NO_AGENT_STATE, 404)
        text = request.match_info["id"]
        if not text.isdigit() or len(text) > 18:
            return _json({"error": f"no approval {text[:20]!r}"}, 404)
        approval_id = int(text)
        body = await self._json_body(request)
        note = None
        if isinstance(body, dict) and isinstance(body.get("note"), str) and body["note"].strip():
            note = body["note"].strip()[:500]
        by = f"http:{request.remote or 'unknown'}"
        try:
            decided = await asyncio.to_thread(state.decide, approval_id, approve, by=by, note=note)
        except DecisionError:
            found = await asyncio.to_thread(state.approval, approval_id)
            if found is None:
                return _json({"error": f"no approval {approval_id}"}, 404)
            message = f"approval {approval_id} is {found.status} already"
            return _json({"error": message, "approval": self._shown.approval(found)}, 409)
        if approve:
            self.daemon.approvals_wake.set()  # the approvals task makes the call now, not at its next poll
        log.info(
            "approval decided over HTTP",
            extra={
                "fields": {
                    "approval": approval_id,
                    "tool": decided.tool,
                    "decision": decided.status,
                    "peer": request.remote,
                }
            },
        )
        return _json({"approval": self._shown.approval(decided)})

    async def _runs_get(self, request: web.Request) -> web.Response:
        state = self.daemon.agent_state
        if state is None:
            return _json(_NO_AGENT_STATE, 404)
        text = request.query.get("limit", "20")
        if not text.isdigit() or not 1 <= int(text) <= MAX_RUNS:
            return _json({"error": f"limit must be a number from 1 to {MAX_RUNS}"}, 400)
        tool = request.query.get("tool") or None
        runs = await asyncio.to_thread(state.runs, tool=tool, limit=int(text))
        return _json({"runs": [self._shown.run(run) for run in runs]})

    async def _run_get(self, request: web.Request) -> web.Response:
        state = self.daemon.agent_state
        if state is None:
            return _json(_NO_AGENT_STATE, 404)
        run_id = request.match_info["id"]
        run = await asyncio.to_thread(state.run, run_id)
        if run is None:
            return _json({"error": f"no run {run_id[:40]!r}"}, 404)
        return _json(self._shown.run(run, messages=True))
