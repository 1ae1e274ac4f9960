"""Real local servers for tests, and a bounded poll helper.

:class:`FeedServer` is a ``websockets`` server on 127.0.0.1 (port 0 by default) whose
behaviour per connection is a :class:`Plan`: wait for N client messages (subscriptions),
send frames (paced or not), then close, abort, or hold the socket open and silent (the
library still answers pings). Handshakes can be answered with HTTP errors a number of
times (``reject=[429, 429]``). Everything is recorded with ``time.monotonic()``
timestamps: every handshake request (with its headers and the status given), every
accepted connection, every message a client sent, and the close code the client sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Literal

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = [
    "ACCEPT_AND_CLOSE",
    "ConnectionRecord",
    "FeedServer",
    "Handshake",
    "Plan",
    "holds_for",
    "wait_for",
]

Frame = str | bytes
After = Literal["hold", "close", "abort"]


@dataclass(frozen=True)
class Plan:
    """What the server does on one connection.

    - ``await_messages``: wait until the client sent this many messages (e.g. its subscriptions)
    - ``frames``: then send these, ``burst`` at a time with ``interval`` seconds between bursts
    - ``after``: ``hold`` the socket open and silent until the client closes (pings are still
      answered), ``close`` with ``close_code``, or ``abort`` the TCP connection (no close frame)
    """

    frames: Sequence[Frame] = ()
    await_messages: int = 0
    interval: float = 0.0
    burst: int = 1
    after: After = "hold"
    close_code: int = 1000
    close_reason: str = ""


#: Accept the handshake, then close at once.
ACCEPT_AND_CLOSE = Plan(after="close")


@dataclass
class Handshake:
    """One HTTP upgrade request and the status it got (101 when accepted)."""

    at: float
    path: str
    headers: Headers
    status: int


@dataclass
class ConnectionRecord:
    """One accepted WebSocket connection."""

    index: int
    opened_at: float
    headers: Headers
    received: list[tuple[float, Frame]] = field(default_factory=list)
    sent: int = 0
    closed_at: float | None = None
    close_code: int | None = None  # close code the client sent (1006: none, the TCP connection dropped)
    close_reason: str | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _reading: bool = field(default=True, repr=False)

    @property
    def messages(self) -> list[Frame]:
        return [m for _, m in self.received]


class FeedServer:
    """A scriptable local WebSocket feed. Use ``async with FeedServer(...) as server``."""

    def __init__(
        self,
        plans: Plan | Sequence[Plan] | Callable[[int], Plan] = Plan(),
        *,
        reject: Sequence[int] = (),
        path: str = "/ws",
    ) -> None:
        """``plans``: one plan for every connection, a list (connection i gets ``plans[i]``, the last
        repeats), or a function of the connection index. ``reject``: HTTP statuses answered to the
        first ``len(reject)`` handshakes, in order."""
        if isinstance(plans, Plan):
            one = plans
            self._plan: Callable[[int], Plan] = lambda _i: one
        elif callable(plans):
            self._plan = plans
        else:
            listed = list(plans)
            if not listed:
                raise ValueError("plans must not be empty")
            self._plan = lambda i: listed[min(i, len(listed) - 1)]
        self._reject = list(reject)
        self.path = path
        self.port = 0
        self.handshakes: list[Handshake] = []
        self.connections: list[ConnectionRecord] = []
        self._server: Server | None = None
        self._open: dict[int, ServerConnection] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, port: int | None = None) -> FeedServer:
        """Listen on ``port`` (default: the previous port, else a free one)."""
        if self._server is not None:
            raise RuntimeError("already started")
        self._server = await serve(
            self._handler,
            "127.0.0.1",
            self.port if port is None else port,
            process_request=self._process_request,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Close every connection (1001) and stop listening; the port can be reused by ``start()``."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def __aenter__(self) -> FeedServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.path}"

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- what the server saw -------------------------------------------------------------------

    def messages(self) -> list[Frame]:
        """Every message clients sent, in connection order."""
        return [m for c in self.connections for m in c.messages]

    def opened_at(self) -> list[float]:
        """Monotonic times at which connections were accepted."""
        return [c.opened_at for c in self.connections]

    async def broadcast(self, frame: Frame) -> int:
        """Send ``frame`` to every open connection now; returns how many got it."""
        sent = 0
        for index, ws in list(self._open.items()):
            try:
                await ws.send(frame)
            except ConnectionClosed:
                continue
            self.connections[index].sent += 1
            sent += 1
        return sent

    # -- protocol ----------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        index = len(self.handshakes)
        status = self._reject[index] if index < len(self._reject) else 101
        self.handshakes.append(Handshake(time.monotonic(), request.path, request.headers, status))
        if status != 101:
            return connection.respond(HTTPStatus(status), "")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        index = len(self.connections)
        record = ConnectionRecord(index, time.monotonic(), ws.request.headers if ws.request else Headers())
        self.connections.append(record)
        self._open[index] = ws
        plan = self._plan(index)
        reader = asyncio.create_task(self._record_messages(ws, record))
        try:
            await self._play(ws, record, plan)
        except ConnectionClosed:
            pass
        finally:
            if plan.after == "abort":
                ws.transport.abort()
            await ws.wait_closed()
            await reader
            self._open.pop(index, None)
            record.closed_at = time.monotonic()
            record.close_code = ws.close_code
            record.close_reason = ws.close_reason

    async def _play(self, ws: ServerConnection, record: ConnectionRecord, plan: Plan) -> None:
        while len(record.received) < plan.await_messages:
            if not record._reading:
                return  # the client went away first
            record._arrived.clear()
            await record._arrived.wait()
        burst = max(1, plan.burst)
        for i, frame in enumerate(plan.frames):
            await ws.send(frame)
            record.sent += 1
            if plan.interval and (i + 1) % burst == 0:
                await asyncio.sleep(plan.interval)
        if plan.after == "close":
            await ws.close(plan.close_code, plan.close_reason)
        # "hold": the finally block waits until the client closes; "abort": it drops the TCP connection

    @staticmethod
    async def _record_messages(ws: ServerConnection, record: ConnectionRecord) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                record.received.append((time.monotonic(), message))
                record._arrived.set()
        record._reading = False
        record._arrived.set()


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]],
    within: float = 5.0,
    *,
    interval: float = 0.005,
    what: str | Callable[[], str] = "condition",
) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            detail = what() if callable(what) else what
            raise AssertionError(f"timed out after {within:g}s waiting for {detail}")
        await asyncio.sleep(interval)


async def holds_for(predicate: Callable[[], bool], duration: float, *, interval: float = 0.01) -> bool:
    """True if ``predicate`` stays true for ``duration`` seconds; returns False as soon as it fails."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not predicate():
            return False
        await asyncio.sleep(interval)
    return predicate()
