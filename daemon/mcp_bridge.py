"""``reflexd mcp``: a stdio bridge to the running daemon's MCP endpoint, for clients that only start
MCP servers as programs (Claude Desktop's ``claude_desktop_config.json``).

::

    MCP client ──stdio──► reflexd mcp ──streamable HTTP + bearer token──► reflexd run (/mcp)
               ◄─────────              ◄──────────────────────────────── responses, resources/updated

Both halves are the SDK's own transports: its stdio server transport towards the client (it points
fd 1 at stderr while it serves, so nothing but protocol frames reaches stdout) and its streamable
HTTP client transport towards the daemon. The bridge forwards each message as it is, in both
directions, and adds the HTTP headers the SDK's client session would have set, which a raw message
does not carry (:func:`routing_headers`): ``MCP-Protocol-Version`` (from a 2026-07-28 request's
``_meta``, else the version the session-era ``initialize`` agreed), ``Mcp-Method`` and ``Mcp-Name``.
So both protocol generations pass through (without the headers a 2026-07-28 client would fall back
to a session); server→client notifications (``resources/updated`` on a session's event stream or in
a ``subscriptions/listen`` response) reach the client, and a long ``wait_for_events`` is just a
request whose answer comes later. stdin is read on the event loop when it is a pipe
(:class:`_PipeLines`), so the bridge can end while its client still holds stdin open.

The ``mcp`` SDK is imported at the top: the CLI imports this module only for ``reflexd mcp``. Only
``agent.mcp`` is read from the configuration (:func:`bridge_target`): other ``${VAR}``\\ s need
not be set in the bridge's environment, only the token's. The token is never printed.

Before it serves, the bridge asks the endpoint once (:func:`probe`): a daemon that is not running, a
wrong token (401) or a refused Host end it with a one-line reason on stderr and exit code 3, before
the client has sent anything. Later, losing the daemon or its token ends it with exit code 1. The
client closing stdin ends it with 0 (the session-era session is deleted on the way out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import stat
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anyio
import httpx2
import mcp_types as types
from mcp.client.streamable_http import MCP_SESSION_ID, streamable_http_client
from mcp.server.stdio import stdio_server
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    NAME_BEARING_METHODS,
    encode_header_value,
)
from mcp.shared.message import ClientMessageMetadata, SessionMessage
from mcp_types.version import LATEST_MODERN_VERSION
from pydantic import ValidationError

from daemon.endpoint import parse_listen
from daemon.errors import ConfigError, ConfigIssue
from daemon.mcp import McpConfig
from daemon.yamlio import format_path, load_yaml_file

__all__ = [
    "BridgeError",
    "BridgeTarget",
    "bridge_target",
    "probe",
    "relay",
    "routing_headers",
    "run_bridge",
]

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_STARTUP = 0, 1, 2, 3
PROBE_TIMEOUT_SECONDS = 5.0
#: The longest line (one JSON-RPC message) read from stdin.
MAX_LINE_BYTES = 64 * 1024 * 1024
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


class BridgeError(Exception):
    """Why the bridge cannot (or can no longer) reach the daemon: one line, never the token."""


@dataclass(frozen=True, slots=True)
class BridgeTarget:
    """Where the daemon's MCP endpoint is and the headers every request carries (the bearer token)."""

    url: str
    headers: dict[str, str]

    def __repr__(self) -> str:  # the token stays out of any traceback or log
        return f"BridgeTarget(url={self.url!r}, headers={sorted(self.headers)})"


class _Lenient(Mapping[str, str]):
    """The environment, where a variable that is not set reads as empty: the bridge needs only
    ``agent.mcp``'s, and a desktop app starts it with little more than the token."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def __getitem__(self, name: str) -> str:
        return self._env.get(name, "")

    def __iter__(self) -> Iterator[str]:
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)


def bridge_target(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> BridgeTarget:
    """The endpoint ``agent.mcp`` of the configuration at ``path`` names. Raises :class:`ConfigError`
    (with ``file:line``) when there is none, it is invalid, or its token is not in the environment."""
    loaded = load_yaml_file(path, _Lenient(os.environ if env is None else env))
    at = ("agent", "mcp")

    def issue(where: tuple[str | int, ...], reason: str) -> ConfigError:
        return ConfigError([ConfigIssue(loaded.file, loaded.line_of(where), format_path(where), reason)])

    root = loaded.data if isinstance(loaded.data, dict) else {}
    agent = root.get("agent")
    raw = agent.get("mcp") if isinstance(agent, dict) else None
    if raw is None:
        raise issue(at, "not configured: the daemon serves MCP only with agent.mcp (docs/agent.md, MCP)")
    try:
        config = McpConfig.model_validate(raw)
    except ValidationError as exc:
        issues = []
        for error in exc.errors():
            where = (*at, *error["loc"])
            reason = error["msg"].removeprefix("Value error, ")  # (the messages never hold the value)
            issues.append(ConfigIssue(loaded.file, loaded.line_of(where), format_path(where), reason))
        raise ConfigError(issues) from None
    if parse_listen(config.listen)[1] == 0:
        raise issue(
            (*at, "listen"),
            "port 0 (a free port each run): give the daemon a fixed port the bridge can reach",
        )
    if config.auth == "token" and config.token is None:
        names = _placeholders(Path(path), loaded.line_of((*at, "token")))
        what = f"the environment variable {names}" if names else "token: ${REFLEXD_MCP_TOKEN}"
        raise issue((*at, "token"), f"empty: set {what} for `reflexd mcp` too (the daemon's token)")
    return BridgeTarget(config.client_url(), config.client_headers())


def _placeholders(path: Path, line: int | None) -> str:
    """The ``${NAME}`` names on a line of the file (to say which variable is missing)."""
    if line is None:
        return ""
    try:
        text = path.read_text(encoding="utf-8").splitlines()[line - 1]
    except (OSError, IndexError, UnicodeDecodeError):
        return ""
    return ", ".join(dict.fromkeys(_PLACEHOLDER.findall(text)))


# -- the relay ----------------------------------------------------------------------------------------


def routing_headers(message: types.JSONRPCMessage, legacy_version: str | None) -> dict[str, str] | None:
    """The HTTP headers a message needs on its POST, as the SDK's client session sets them: a
    2026-07-28 message names its version in ``params._meta`` (then ``MCP-Protocol-Version``,
    ``Mcp-Method`` and ``Mcp-Name``, which the server checks against the body); a session-era one
    after ``initialize`` carries the agreed version; ``initialize`` itself none. (``Mcp-Param-*``
    headers, which a tool's schema may ask for with ``x-mcp-header``, are not set: reflexd's server
    does not require them.)"""
    if isinstance(message, types.JSONRPCRequest | types.JSONRPCNotification):
        params = message.params or {}
        meta = params.get("_meta")
        version = meta.get(types.PROTOCOL_VERSION_META_KEY) if isinstance(meta, dict) else None
        if isinstance(version, str):
            headers = {MCP_PROTOCOL_VERSION_HEADER: version, MCP_METHOD_HEADER: message.method}
            name_key = NAME_BEARING_METHODS.get(message.method)
            name = params.get(name_key) if name_key is not None else None
            if isinstance(name, str):
                headers[MCP_NAME_HEADER] = encode_header_value(name)
            return headers
        if message.method in ("initialize", "server/discover"):
            return None
    if legacy_version is not None:
        return {MCP_PROTOCOL_VERSION_HEADER: legacy_version}
    return None


class _Relay:
    """What the bridge remembers between the two directions: the session-era version, from the answer
    to the client's ``initialize``, and whether that answer is still awaited."""

    def __init__(self) -> None:
        self.legacy_version: str | None = None
        self._initialize: types.RequestId | None = None
        self._answered: anyio.Event | None = None

    async def initialized(self) -> None:
        """Return once no ``initialize`` awaits its answer. The daemon names a session-era session
        only in that answer, so a message posted before it would be refused (400, "Missing session
        ID"): a client that writes its next lines without waiting (the specification asks it to wait;
        not every client does) has them held here until the answer, then sent in order."""
        if self._answered is not None:
            await self._answered.wait()

    def up(self, message: types.JSONRPCMessage) -> dict[str, str] | None:
        if isinstance(message, types.JSONRPCRequest) and message.method == "initialize":
            self._initialize, self.legacy_version = message.id, None
            self._answered = anyio.Event()
        return routing_headers(message, self.legacy_version)

    def down(self, message: types.JSONRPCMessage) -> None:
        if (
            self._initialize is not None
            and isinstance(message, types.JSONRPCResponse | types.JSONRPCError)
            and message.id == self._initialize
        ):
            self._initialize = None
            if isinstance(message, types.JSONRPCResponse):
                version = message.result.get("protocolVersion")
                self.legacy_version = version if isinstance(version, str) else None
            if self._answered is not None:
                self._answered.set()
                self._answered = None


def _http_client(target: BridgeTarget) -> httpx2.AsyncClient:
    return create_mcp_http_client(headers=dict(target.headers))


def _refusal(status: int, url: str) -> str | None:
    """A one-line reason for a refused request, or None when the endpoint answered as MCP does."""
    if status == 401:
        return f"{url} refused the token (401): set the token the daemon was started with"
    if status == 403:
        return f"{url} refused the request (403)"
    if status == 421:
        return f"{url} refused this Host (421): check agent.mcp.listen and allowed_hosts"
    if status == 429:
        return f"{url} refused the bridge after failed tokens (429): try again in a minute"
    if status == 404:
        return f"{url}: no MCP endpoint there (404): is agent.mcp.listen another server's port?"
    if status >= 500:
        return f"{url} failed ({status})"
    return None


async def probe(target: BridgeTarget) -> None:
    """One request to the endpoint before serving (a 2026-07-28 ``server/discover``: stateless, it
    leaves no session behind); :class:`BridgeError` says why the endpoint cannot be used."""
    method = "server/discover"
    body = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": method,
        "params": {
            "_meta": {
                types.PROTOCOL_VERSION_META_KEY: LATEST_MODERN_VERSION,
                types.CLIENT_CAPABILITIES_META_KEY: {},
                types.CLIENT_INFO_META_KEY: {"name": "reflexd-mcp-bridge", "version": "0"},
            }
        },
    }
    headers = {
        "Accept": "application/json, text/event-stream",
        MCP_PROTOCOL_VERSION_HEADER: LATEST_MODERN_VERSION,
        MCP_METHOD_HEADER: method,
    }
    async with _http_client(target) as http:
        try:
            response = await http.post(target.url, json=body, headers=headers, timeout=PROBE_TIMEOUT_SECONDS)
        except httpx2.TimeoutException:
            raise BridgeError(f"{target.url} did not answer within {PROBE_TIMEOUT_SECONDS:g} s") from None
        except httpx2.TransportError as exc:
            raise BridgeError(
                f"cannot reach the daemon at {target.url} ({_why(exc)}): is `reflexd run` running with "
                "this configuration?"
            ) from None
    refusal = _refusal(response.status_code, target.url)
    if refusal is not None:
        raise BridgeError(refusal)


def _why(exc: BaseException) -> str:
    """The innermost cause of a transport error, short (``connection refused``)."""
    inner: BaseException | None = exc
    while inner is not None:
        exc, inner = inner, inner.__cause__ or inner.__context__
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).splitlines()[0][:200].lower()


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


class _PipeLines:
    """Lines of a pipe (or socket) on stdin, read by the event loop: a read that waits can be
    cancelled. The SDK's stdio transport reads stdin in a worker thread, which nothing can interrupt:
    a bridge that must end while its client keeps stdin open (the daemon went away) would wait for
    the client's next line."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> _PipeLines:
        return self

    async def __anext__(self) -> str:
        while True:
            try:
                line = await self._reader.readline()
            except ValueError:  # longer than MAX_LINE_BYTES: dropped (the SDK's parser reports the rest)
                print(f"reflexd mcp: a line over {MAX_LINE_BYTES} bytes on stdin: dropped", file=sys.stderr)
                continue
            if not line:
                raise StopAsyncIteration
            return line.decode("utf-8", "replace")


@contextlib.asynccontextmanager
async def _stdin_lines() -> AsyncIterator[_PipeLines | None]:
    """stdin as :class:`_PipeLines` when it is a pipe or a socket (how MCP clients start a server);
    None otherwise (a terminal, a file), for the SDK's own reader."""
    mode = os.fstat(0).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        yield None
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES, loop=loop)
    # a duplicate: closing the transport closes it, not fd 0
    pipe = os.fdopen(os.dup(0), "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
    try:
        yield _PipeLines(reader)
    finally:
        transport.close()


async def relay(target: BridgeTarget) -> int:
    """Serve stdio until the client closes it (0); :class:`BridgeError` when the daemon is lost or
    refuses the bridge (its reason is printed at once)."""
    state = _Relay()
    lost: list[str] = []

    def end(reason: str) -> None:
        if not lost:
            lost.append(reason)
            print(f"reflexd mcp: {reason}", file=sys.stderr, flush=True)
            scope.cancel()

    async def on_response(response: httpx2.Response) -> None:
        """A refusal the bridge cannot get past ends it (a single failed request does not)."""
        status = response.status_code
        if status == 404 and MCP_SESSION_ID in response.request.headers:
            end(f"{target.url} no longer knows this session (the daemon restarted?): reconnect the client")
        elif status in (401, 421):
            end(_refusal(status, target.url) or str(status))

    async def serve(client_read: Any, client_write: Any, http: httpx2.AsyncClient) -> None:
        async with (
            client_write,  # closed at the end: the stdio transport's writer ends with it
            streamable_http_client(target.url, http_client=http) as (daemon_read, daemon_write),
            anyio.create_task_group() as tg,
        ):

            async def down() -> None:
                async for item in daemon_read:
                    if isinstance(item, Exception):
                        print(f"reflexd mcp: from the daemon: {item}", file=sys.stderr)
                        continue
                    state.down(item.message)
                    await client_write.send(SessionMessage(item.message))

            tg.start_soon(down)
            async for item in client_read:
                if isinstance(item, Exception):
                    print(f"reflexd mcp: not a JSON-RPC message on stdin: {item}", file=sys.stderr)
                    continue
                await state.initialized()
                headers = state.up(item.message)
                await daemon_write.send(
                    SessionMessage(item.message, metadata=ClientMessageMetadata(headers=headers))
                )
            tg.cancel_scope.cancel()  # stdin closed: the client is gone

    with anyio.CancelScope() as scope:
        async with (
            _stdin_lines() as stdin,
            stdio_server(cast(Any, stdin)) as (client_read, client_write),
            _http_client(target) as http,
        ):
            http.event_hooks = {"request": [], "response": [on_response]}
            try:
                await serve(client_read, client_write, http)
            except Exception as exc:  # the HTTP transport failed: the daemon went away
                leaf = next((e for e in _leaves(exc) if isinstance(e, httpx2.TransportError)), None)
                if leaf is None:
                    raise
                end(f"lost the daemon at {target.url} ({_why(leaf)})")
    if lost:
        raise BridgeError(lost[0])
    return EXIT_OK


def run_bridge(config_path: str) -> int:
    """``reflexd mcp -c CONFIG``: the exit code."""
    try:
        target = bridge_target(config_path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return EXIT_CONFIG
    # The SDK logs through `logging`: its warnings go to stderr, never to the protocol's stdout.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("reflexd mcp: %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    try:
        asyncio.run(probe(target))
    except BridgeError as exc:
        print(f"reflexd mcp: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    try:
        return asyncio.run(relay(target))
    except BridgeError:  # (its reason is printed already)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK
