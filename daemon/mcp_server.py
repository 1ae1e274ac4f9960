"""The MCP server (``agent.mcp``): reflexd's tools and events for any MCP client, over streamable HTTP
at ``/mcp``. Imports the ``mcp`` SDK (over a second): the daemon imports this module only when
``agent.mcp`` is configured (:mod:`daemon.mcp` holds the configuration and the feed, without it).

::

    rule fires ─┐                                    ┌─ tools/call ──► runner (journal, idempotency, DLQ)
    notifications ─► McpFeed ──► wait_for_events ◄───┤                  or a proposal (require_approval)
                          └──► pusher ──► resources/updated (sessions and subscriptions/listen)

- **Server**: the SDK's low-level ``Server`` (tool schemas come from the configuration, not from Python
  signatures), its streamable HTTP app served by uvicorn on the daemon's loop — a uvicorn ``Server``
  that leaves the daemon's signal handlers alone. The socket is bound here (a port in use is a
  :class:`StartupError`; port 0 picks a free one, :attr:`McpServer.port` says which). Both protocol
  generations the SDK serves: the session era (``initialize``, ``resources/subscribe``) and
  2026-07-28 (stateless requests, ``subscriptions/listen``).
- **Access** (:class:`_Guard`, in front of every request): the ``Host`` header as the ops server checks
  it (:class:`daemon.http.HostPolicy`, 421), a browser's ``Origin`` (403), then the bearer token
  (401, compared in constant time; 429 after :data:`~daemon.http.MAX_AUTH_FAILURES` failures of a
  peer in a minute). ``auth: none`` (loopback only) skips the token. The SDK's own Host/Origin check
  is off: one policy, the daemon's.
- **Tools**: each tool in ``agent.mcp.tools`` with its :meth:`~handlers.base.Tool.schema` parameters
  (what ``reflexd tools`` prints) plus an optional ``idempotency_key``; a call is checked against the
  schema and goes through the daemon's :class:`~handlers.host.RunnerHost` with the key
  ``mcp:<tool>:<idempotency_key>`` (a fresh one without it), rule ``mcp``: journaled, retried, dead-
  lettered, made once per key. Its event (source ``mcp``, key = the call's key) gives an llm tool's
  gate a key per call (one ``None`` key would deduplicate every MCP escalation after the first within
  ``dedup_seconds``). A tool in ``require_approval`` is proposed as a model-chosen call is
  (``llm: mcp``) and made once when a person approves it (the daemon's approvals task); its outcome
  reaches the feed as a notification. Besides them: ``wait_for_events`` (the long-poll every client
  can use), ``recent_events``, ``status``.
- **Resources**: ``reflexd://status``, ``reflexd://notifications`` (the notification queue),
  ``reflexd://rules/{name}/fires``, ``reflexd://sources/{name}/latest``; subscribable in both
  generations. A fire or a notification pushes ``notifications/resources/updated`` to the subscribers
  of the URIs it changes (:class:`daemon.mcp.McpFeed` says which), from one pusher task; a source's
  latest event is read, not pushed (it changes with every batch).
- Everything served goes through :class:`daemon.agent_view.Shown`: values from ``${VAR}`` and
  secret-looking fields are ``***``; the status is ``/status``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from importlib import metadata
from typing import Any, Protocol

import jsonschema
import mcp_types as types
import orjson
import uvicorn
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourceUpdated
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from starlette.types import ASGIApp, Receive, Scope, Send

from daemon.agent_state import AgentState
from daemon.agent_view import Shown
from daemon.config import AppConfig
from daemon.endpoint import parse_listen
from daemon.errors import StartupError
from daemon.http import FailureThrottle, HostPolicy
from daemon.logs import RateLimitedLog, get_logger
from daemon.mcp import (
    NOTIFICATIONS_URI,
    STATUS_URI,
    McpConfig,
    McpFeed,
    fires_uri,
    latest_uri,
    render_event,
)
from handlers.agent_store import Approval
from handlers.base import CallContext, Tool
from handlers.host import RunnerHost
from handlers.notifications import NotificationQueue
from streams.base import Source
from streams.event import Event, event_record
from streams.rules.pipeline import Rule

__all__ = ["IDEMPOTENCY_KEY", "MAX_WAIT_SECONDS", "McpServer", "McpTarget"]

log = get_logger("mcp")

#: The longest ``wait_for_events`` holds a call: clients give up on a tool call after 30-60 s.
MAX_WAIT_SECONDS = 25.0
MAX_WAIT_EVENTS = 1000
#: The argument every configured tool takes besides its own: the same key makes the call once.
IDEMPOTENCY_KEY = "idempotency_key"
MAX_KEY_CHARS = 200
#: Most session-era subscriptions (session and URI) and listen streams at once.
MAX_SUBSCRIPTIONS = 1000
#: How long one resources/updated may take to be handed to a session before it is dropped.
PUSH_TIMEOUT_SECONDS = 2.0
#: At a stop, how long requests get to end before their connections are closed.
STOP_GRACE_SECONDS = 0.5
STOP_SECONDS = 3
#: Connections and requests served at once (a long-poll holds one for up to 25 s); more get 503.
MAX_CONCURRENCY = 256
FIRES_SHOWN = 100

_INSTRUCTIONS = (
    "reflexd watches live streams with rules and calls tools. Call wait_for_events(since=N) in a loop, "
    "passing back the `next` it returned, to hear rule fires and notifications as they happen; "
    "recent_events for what happened lately; status for the daemon's counters. Tools marked for "
    "approval return awaiting_approval: a person decides (reflexd approvals), the outcome arrives as "
    "an event."
)


class McpTarget(Protocol):
    """What the MCP server reads of a running daemon (:class:`daemon.supervisor.Daemon` is one)."""

    config: AppConfig
    tools: dict[str, Tool]
    rules: dict[str, Rule]
    sources: dict[str, Source]
    host: RunnerHost
    agent_state: AgentState | None
    notifications: NotificationQueue

    def status(self) -> dict[str, Any]: ...


def _version() -> str:
    try:
        return metadata.version("reflexd")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout without install
        return ""


def _result(payload: dict[str, Any], *, error: bool = False) -> types.CallToolResult:
    """A tool's answer: the JSON text (what every client shows a model) and the same as structured content."""
    text = orjson.dumps(payload, default=str).decode()
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], structured_content=payload, is_error=error
    )


def _integer(args: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ValueError(f"{name} must be an integer")
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low} to {high}")
    return int(value)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the daemon keeps its own (SIGTERM and SIGINT stop it)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class McpServer:
    """One daemon's MCP endpoint. :meth:`start` binds and serves; :meth:`stop` ends every request."""

    def __init__(self, daemon: McpTarget, config: McpConfig, feed: McpFeed) -> None:
        self.daemon = daemon
        self.config = config
        self.feed = feed
        self.stats = feed.stats
        self.host, self.port = parse_listen(config.listen)
        self._shown = Shown(daemon.config)
        self._approval = frozenset(config.require_approval)
        self._tools: dict[str, types.Tool] = {}
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}
        for name in config.tools:
            schema = daemon.tools[name].schema()
            parameters = dict(schema["parameters"])
            self._validators[name] = jsonschema.Draft202012Validator(parameters)
            properties = dict(parameters.get("properties") or {})
            properties[IDEMPOTENCY_KEY] = {
                "type": "string",
                "maxLength": MAX_KEY_CHARS,
                "description": "Optional: a call with a key already used is not made again.",
            }
            parameters["properties"] = properties
            description = schema["description"] or ""
            if name in self._approval:
                description = (description + " " if description else "") + "(Waits for a person's approval.)"
            self._tools[name] = types.Tool(name=name, description=description, input_schema=parameters)
        self._tools.update(_builtin_tools())
        self._bus = InMemorySubscriptionBus()
        self._listen = ListenHandler(self._bus, max_subscriptions=MAX_SUBSCRIPTIONS)
        self._listened: Counter[str] = Counter()  # URI → listen streams asking for it
        self._sessions: dict[str, dict[str, ServerSession]] = {}  # URI → session id → session
        server: Server[Any] = Server(
            "reflexd",
            version=_version(),
            instructions=_INSTRUCTIONS,
            # (2026-07-28 calls: the schema their Mcp-Param-* headers are checked against, without a
            # tools/list round through the SDK's kernel per call)
            get_tool_input_schema=self._input_schema,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_templates,
            on_read_resource=self._read_resource,
            on_subscribe_resource=self._subscribe,
            on_unsubscribe_resource=self._unsubscribe,
            on_subscriptions_listen=self._listen_stream,
        )
        server.middleware.clear()  # the SDK's OpenTelemetry span per message: no exporter here
        app = server.streamable_http_app(
            streamable_http_path="/mcp",
            host=self.host,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        token = (
            config.token.get_secret_value() if config.token is not None and config.auth == "token" else None
        )
        self._app = _Guard(app, HostPolicy.build(self.host, config.allowed_hosts), token, self.stats.refused)
        self._uvicorn: _Uvicorn | None = None
        self._serving: asyncio.Task[None] | None = None
        self._pusher: asyncio.Task[None] | None = None
        self._push_failed = RateLimitedLog(log, "resources/updated not delivered; subscription dropped")

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind ``listen`` and serve; raise :class:`StartupError` if it cannot."""
        try:
            sock = _listening_socket(self.host, self.port)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise StartupError("mcp", f"cannot listen on {self.config.listen}: {reason}") from exc
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            lifespan="on",
            log_config=None,
            access_log=False,
            server_header=False,
            ws="none",
            limit_concurrency=MAX_CONCURRENCY,
            timeout_graceful_shutdown=STOP_SECONDS,
        )
        server = self._uvicorn = _Uvicorn(config)
        self._serving = asyncio.create_task(server.serve(sockets=[sock]), name="reflexd:mcp")
        while not server.started:
            if self._serving.done():
                sock.close()
                error = self._serving.exception() if not self._serving.cancelled() else None
                raise StartupError("mcp", f"the MCP server did not start: {error!r}")
            await asyncio.sleep(0.005)
        self._pusher = asyncio.create_task(self._push(), name="reflexd:mcp:push")
        log.info(
            "MCP server listening",
            extra={"fields": {"url": f"http://{self.config.listen.rpartition(':')[0]}:{self.port}/mcp"}},
        )

    async def stop(self) -> None:
        """Long-polls return, listen streams end, then uvicorn stops; connections still open after
        :data:`STOP_GRACE_SECONDS` (session-era event streams) are closed. Twice is a no-op."""
        self.feed.close()
        self._listen.close()
        server, serving = self._uvicorn, self._serving
        self._uvicorn = self._serving = None
        if server is not None and serving is not None:
            server.should_exit = True
            done, _ = await asyncio.wait([serving], timeout=STOP_GRACE_SECONDS)
            if not done:
                for connection in list(server.server_state.connections):
                    transport = getattr(connection, "transport", None)
                    if transport is not None:
                        transport.close()
                done, _ = await asyncio.wait([serving], timeout=STOP_SECONDS)
            if not done:
                serving.cancel()
                await asyncio.wait([serving], timeout=1.0)
            elif not serving.cancelled() and serving.exception() is not None:
                log.error("MCP server failed", exc_info=serving.exception())
        pusher, self._pusher = self._pusher, None
        if pusher is not None:
            pusher.cancel()
            await asyncio.wait([pusher], timeout=1.0)

    def status(self) -> dict[str, Any]:
        """The ``mcp`` part of ``/status``."""
        return {
            "listen": f"{self.host}:{self.port}",
            "subscriptions": self.stats.subscriptions,
            "calls": sum(self.stats.calls.values()),
            "pushes": self.stats.pushes,
            "events": {
                "last_seq": self.feed.last_seq,
                "fires": self.feed.fires,
                "notifications": self.feed.notifications,
            },
        }

    # -- tools ------------------------------------------------------------------------------------

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        tool = self._tools.get(name)
        return tool.input_schema if tool is not None else None

    async def _list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=list(self._tools.values()))

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        name = params.name
        if name not in self._tools:
            raise MCPError(types.INVALID_PARAMS, f"no tool {name[:100]!r}")
        args = dict(params.arguments or {})
        try:
            if name == "wait_for_events":
                result = await self._wait_for_events(args)
            elif name == "recent_events":
                result = self._recent_events(args)
            elif name == "status":
                result = _result(self.daemon.status())
            else:
                result = await self._call_configured(name, args)
        except ValueError as exc:
            result = _result({"error": str(exc)}, error=True)
            self.stats.calls[(name, "invalid")] += 1
        return result

    async def _wait_for_events(self, args: dict[str, Any]) -> types.CallToolResult:
        since = _integer(args, "since", 0, 0, 2**62)
        limit = _integer(args, "max", 100, 1, MAX_WAIT_EVENTS)
        seconds = args.get("timeout_seconds", MAX_WAIT_SECONDS)
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 <= seconds <= MAX_WAIT_SECONDS
        ):
            raise ValueError(f"timeout_seconds must be a number from 0 to {MAX_WAIT_SECONDS:g}")
        read = await self.feed.wait(since, float(seconds), limit)
        self.stats.calls[("wait_for_events", "events" if read.items else "timed_out")] += 1
        payload: dict[str, Any] = {
            "events": [self.feed.render(item, self._shown) for item in read.items],
            "next": read.next,
        }
        if read.missed:
            payload["missed"] = read.missed
        if read.reset:
            payload["reset"] = True
        if not read.items:
            payload["timed_out"] = not self.feed.closed
        return _result(payload)

    def _recent_events(self, args: dict[str, Any]) -> types.CallToolResult:
        limit = _integer(args, "max", 20, 1, MAX_WAIT_EVENTS)
        items = self.feed.recent(limit)
        self.stats.calls[("recent_events", "succeeded")] += 1
        return _result(
            {"events": [self.feed.render(item, self._shown) for item in items], "next": self.feed.last_seq}
        )

    async def _call_configured(self, name: str, args: dict[str, Any]) -> types.CallToolResult:
        given = args.pop(IDEMPOTENCY_KEY, None)
        if given is not None and (not isinstance(given, str) or not given or len(given) > MAX_KEY_CHARS):
            raise ValueError(
                f"{IDEMPOTENCY_KEY} must be a non-empty string of at most {MAX_KEY_CHARS} characters"
            )
        problems = [
            f"{'/'.join(str(p) for p in e.absolute_path) or '(arguments)'}: {e.message}"
            for e in self._validators[name].iter_errors(args)
        ]
        if problems:
            raise ValueError("invalid arguments: " + "; ".join(problems[:5]))
        key = f"mcp:{name}:{given if given is not None else uuid.uuid4().hex}"
        now = time.time()
        event = Event("mcp", now, now, key, {"tool": name}, {})
        if name in self._approval:
            return await self._propose(name, args, key, event)
        reply = await self.daemon.host.call(name, args, CallContext(name, "mcp", event, key))
        self.stats.calls[(name, reply.outcome)] += 1
        payload: dict[str, Any] = {"outcome": reply.outcome, "key": key}
        if reply.result is not None:
            payload["result"] = self._shown.value(reply.result)
        if reply.error:
            payload["error"] = self._shown.text(reply.error)
        if reply.outcome == "duplicate":
            payload["note"] = f"a call with this {IDEMPOTENCY_KEY} was made already; it was not made again"
        return _result(payload, error=reply.outcome not in ("succeeded", "duplicate"))

    async def _propose(self, name: str, args: dict[str, Any], key: str, event: Event) -> types.CallToolResult:
        state = self.daemon.agent_state
        if state is None:
            self.stats.calls[(name, "failed")] += 1
            return _result(
                {"error": f"{name} needs a person's approval, which needs the journal (off)"}, error=True
            )
        approval_id = await state.propose(
            Approval(
                0,
                "mcp",
                "mcp",
                "mcp",
                name,
                args,
                key,
                event_record(event),
                "called by an MCP client",
                "pending",
                time.time(),
            )
        )
        found = await asyncio.to_thread(state.approval, approval_id)
        status = found.status if found is not None else "pending"
        self.stats.calls[(name, "awaiting_approval" if status == "pending" else status)] += 1
        payload: dict[str, Any] = {
            "status": "awaiting_approval" if status == "pending" else status,
            "approval": approval_id,
            "key": key,
        }
        if status == "pending":
            payload["note"] = (
                "not made yet: a person must approve it (reflexd approvals); its outcome arrives as an "
                "event (wait_for_events)"
            )
        elif found is not None:
            payload["approval_record"] = self._shown.approval(found)
        return _result(payload)

    # -- resources --------------------------------------------------------------------------------

    async def _list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        json_type = "application/json"
        resources = [
            types.Resource(
                uri=STATUS_URI, name="status", description="The daemon's /status.", mime_type=json_type
            ),
            types.Resource(
                uri=NOTIFICATIONS_URI,
                name="notifications",
                description="The notification queue (what the next model call will read).",
                mime_type=json_type,
            ),
        ]
        for rule in self.daemon.rules:
            resources.append(
                types.Resource(
                    uri=fires_uri(rule),
                    name=f"{rule} fires",
                    description=f"Rule {rule}'s recent fires.",
                    mime_type=json_type,
                )
            )
        for source in self.daemon.sources:
            resources.append(
                types.Resource(
                    uri=latest_uri(source),
                    name=f"{source} latest",
                    description=f"Source {source}'s newest event.",
                    mime_type=json_type,
                )
            )
        return types.ListResourcesResult(resources=resources)

    async def _list_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(
                    uri_template="reflexd://rules/{name}/fires",
                    name="rule fires",
                    description="A rule's recent fires (calls and the event).",
                    mime_type="application/json",
                ),
                types.ResourceTemplate(
                    uri_template="reflexd://sources/{name}/latest",
                    name="source latest",
                    description="A source's newest event.",
                    mime_type="application/json",
                ),
            ]
        )

    def _content(self, uri: str) -> dict[str, Any] | None:
        """The resource at ``uri`` as JSON, or None when there is none."""
        if uri == STATUS_URI:
            return self.daemon.status()
        if uri == NOTIFICATIONS_URI:
            queue = self.daemon.notifications
            return {
                "notifications": [self._shown.value(item.as_dict()) for item in queue.since(0)],
                "last_seq": queue.last_seq,
            }
        head, _, rest = uri.partition("://")
        parts = rest.split("/")
        if head != "reflexd" or len(parts) != 3:
            return None
        kind, name, leaf = parts
        if kind == "rules" and leaf == "fires" and name in self.daemon.rules:
            fires = self.feed.recent(FIRES_SHOWN, rule=name)
            return {
                "rule": name,
                "fired": self.daemon.rules[name].stats.fired,
                "fires": [self.feed.render(item, self._shown) for item in fires],
            }
        if kind == "sources" and leaf == "latest" and name in self.daemon.sources:
            event = self.feed.latest.get(name)
            return {"source": name, "event": render_event(event, self._shown) if event is not None else None}
        return None

    async def _read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        content = self._content(uri)
        if content is None:
            raise MCPError(types.INVALID_PARAMS, f"no resource {uri[:200]!r}")
        text = orjson.dumps(content, default=str).decode()
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
        )

    def _known(self, uri: str) -> bool:
        if uri in (STATUS_URI, NOTIFICATIONS_URI):
            return True
        return any(uri == fires_uri(r) for r in self.daemon.rules) or any(
            uri == latest_uri(s) for s in self.daemon.sources
        )

    # -- subscriptions ----------------------------------------------------------------------------

    async def _subscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        uri = str(params.uri)
        if not self._known(uri):
            raise MCPError(types.INVALID_PARAMS, f"no resource {uri[:200]!r}")
        session_id = _session_id(ctx)
        if session_id is None:
            raise MCPError(types.INVALID_PARAMS, "resources/subscribe needs a session (Mcp-Session-Id)")
        subscribers = self._sessions.setdefault(uri, {})
        if session_id not in subscribers:
            if self.stats.subscriptions >= MAX_SUBSCRIPTIONS:
                raise MCPError(types.INTERNAL_ERROR, "too many subscriptions")
            self.feed.watch(uri)
            self.stats.subscriptions += 1
            # A push to a session that ended is dropped without an error, so the subscription goes when
            # the session does (a DELETE, its idle timeout, a stop): the SDK unwinds the connection's
            # exit stack then. The ServerRequestContext has no public path to the connection.
            connection = getattr(ctx.session, "_connection", None)
            exit_stack = getattr(connection, "exit_stack", None)
            if exit_stack is not None:
                exit_stack.callback(self._drop, uri, session_id)
        subscribers[session_id] = ctx.session
        return types.EmptyResult()

    async def _unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        session_id = _session_id(ctx)
        if session_id is not None:
            self._drop(str(params.uri), session_id)
        return types.EmptyResult()

    def _drop(self, uri: str, session_id: str) -> None:
        subscribers = self._sessions.get(uri)
        if subscribers is not None and subscribers.pop(session_id, None) is not None:
            self.feed.unwatch(uri)
            self.stats.subscriptions -= 1
            if not subscribers:
                del self._sessions[uri]

    async def _listen_stream(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        """``subscriptions/listen`` (2026-07-28): the SDK's handler serves the stream; the feed is told
        which URIs it asks for while it is open."""
        uris = list(dict.fromkeys(params.notifications.resource_subscriptions or ()))
        for uri in uris:
            self.feed.watch(uri)
            self._listened[uri] += 1
        self.stats.subscriptions += 1
        try:
            return await self._listen(ctx, params)
        finally:
            self.stats.subscriptions -= 1
            for uri in uris:
                self.feed.unwatch(uri)
                self._listened[uri] -= 1
                if self._listened[uri] <= 0:
                    del self._listened[uri]

    async def _push(self) -> None:
        """Send resources/updated for each changed URI to its subscribers, both generations."""
        while True:
            changed = await self.feed.changes()
            if not changed:
                return  # the feed closed
            for uri in sorted(changed):
                listening = self._listened.get(uri, 0)
                if listening:
                    await self._bus.publish(ResourceUpdated(uri=uri))
                    self.stats.pushes += listening
                for session_id, session in list(self._sessions.get(uri, {}).items()):
                    try:
                        async with asyncio.timeout(PUSH_TIMEOUT_SECONDS):
                            await session.send_resource_updated(uri)
                        self.stats.pushes += 1
                    except Exception as exc:  # a session that ended or stopped reading
                        self._drop(uri, session_id)
                        self._push_failed.hit(uri=uri, error=type(exc).__name__)


def _listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening, non-blocking TCP socket. Made from getaddrinfo's answer, as asyncio makes
    its own: a socket whose ``proto`` is 0 (``socket.create_server``'s) makes asyncio skip
    TCP_NODELAY on the connections it accepts, and a response written in two parts (headers, then the
    body) then waits for the client's delayed ACK: 40 ms per tool call answered as JSON."""
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, socket.IPPROTO_TCP, socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _session_id(ctx: ServerRequestContext[Any, Any]) -> str | None:
    headers = getattr(ctx.request, "headers", None)
    if headers is None:
        return None
    value = headers.get("mcp-session-id")
    return value if isinstance(value, str) and value else None


def _builtin_tools() -> dict[str, types.Tool]:
    read_only = types.ToolAnnotations(read_only_hint=True)
    return {
        "wait_for_events": types.Tool(
            name="wait_for_events",
            description=(
                "Wait for reflexd's events (rule fires and notifications) after the cursor `since`: "
                "returns at once if there are some, else as soon as one happens, else empty after "
                "timeout_seconds. Pass the `next` it returns as `since` next time (0 the first time)."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "since": {
                        "type": "integer",
                        "minimum": 0,
                        "default": 0,
                        "description": "The last seq seen.",
                    },
                    "timeout_seconds": {
                        "type": "number",
                        "minimum": 0,
                        "maximum": MAX_WAIT_SECONDS,
                        "default": MAX_WAIT_SECONDS,
                        "description": "How long to wait for the first event.",
                    },
                    "max": {"type": "integer", "minimum": 1, "maximum": MAX_WAIT_EVENTS, "default": 100},
                },
                "additionalProperties": False,
            },
            annotations=read_only,
        ),
        "recent_events": types.Tool(
            name="recent_events",
            description="The newest events (rule fires and notifications), oldest first, and the cursor "
            "after them.",
            input_schema={
                "type": "object",
                "properties": {
                    "max": {"type": "integer", "minimum": 1, "maximum": MAX_WAIT_EVENTS, "default": 20}
                },
                "additionalProperties": False,
            },
            annotations=read_only,
        ),
        "status": types.Tool(
            name="status",
            description="The daemon's status: sources, rules, tools, queues (counters, no configuration).",
            input_schema={"type": "object", "properties": {}, "additionalProperties": False},
            annotations=read_only,
        ),
    }


# -- access ---------------------------------------------------------------------------------------


class _Guard:
    """ASGI middleware in front of the SDK's app: Host (421), Origin (403), bearer token (401/429)."""

    def __init__(self, app: ASGIApp, hosts: HostPolicy, token: str | None, refused: Counter[str]) -> None:
        self.app = app
        self.hosts = hosts
        self._digest = hashlib.sha256(token.encode()).digest() if token else None
        self._throttle = FailureThrottle()
        self._refused = refused
        self._logs: dict[str, RateLimitedLog] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = origin = authorization = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"authorization":
                authorization = value.decode("latin-1")
        refusal = self._check(scope, host, origin, authorization)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        reason, status, message, headers = refusal
        self._refused[reason] += 1
        limited = self._logs.get(reason)
        if limited is None:
            limited = self._logs[reason] = RateLimitedLog(log, "MCP request refused")
        client = scope.get("client")
        limited.hit(reason=reason, peer=client[0] if client else None, path=str(scope.get("path", ""))[:100])
        body = orjson.dumps({"error": message})
        raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})

    def _check(
        self, scope: Scope, host: str | None, origin: str | None, authorization: str | None
    ) -> tuple[str, int, str, dict[str, str]] | None:
        """None when the request may go on; else (reason, status, message, headers)."""
        if not self.hosts.allows_host(host):
            return "host", 421, "this Host is not accepted here: add it to agent.mcp.allowed_hosts", {}
        if origin is not None and not self.hosts.allows_origin(origin, host):
            return "origin", 403, "cross-origin request refused: the Origin is not this server", {}
        if self._digest is None:
            return None
        client = scope.get("client")
        peer = client[0] if client else "unknown"
        now = time.monotonic()
        wait = self._throttle.retry_after(peer, now)
        if wait is not None:
            return (
                "throttled",
                429,
                "too many failed attempts: try again later",
                {"Retry-After": str(max(1, int(wait + 0.999)))},
            )
        if authorization is None:
            self._throttle.failed(peer, now)
            return (
                "token_missing",
                401,
                "this endpoint needs Authorization: Bearer <token>",
                {"WWW-Authenticate": 'Bearer realm="reflexd"'},
            )
        scheme, _, token = authorization.strip().partition(" ")
        digest = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        if not hmac.compare_digest(digest, self._digest) or scheme.lower() != "bearer":
            self._throttle.failed(peer, now)
            return (
                "token_wrong",
                401,
                "the bearer token is not valid",
                {"WWW-Authenticate": 'Bearer realm="reflexd", error="invalid_token"'},
            )
        return None
