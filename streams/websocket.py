"""``websocket`` source: a WebSocket feed (websockets asyncio client) into a bounded queue.

One session = one connection: connect (with headers, size limit, keepalive), send the
``subscribe`` messages, then read. The reader only decodes and ``put_nowait``s into the
queue, whose drop policy decides when the rules fall behind; it never awaits slow work,
so keepalive pongs keep flowing. An idle watchdog closes a connection that delivered no
message for ``idle_timeout_seconds``; the engine then reconnects and queues a ``gap``.
Messages websockets has already parsed (one socket read holds many) are taken straight from its
frame buffer, as ``recv()`` would return them, flow control included; a fragmented message, or
an empty buffer, goes through ``recv()`` (:func:`_frame_buffer`).

Redirects: the source follows 3xx handshake answers itself (at most :data:`MAX_REDIRECTS`, within
``open_timeout_seconds``), not the library, so that the configured ``headers`` (API keys, tokens,
often from ``${VAR}``) go only to the origin (scheme, host, port) of the configured URL: once a
redirect leaves that origin they are not sent again, even if a later hop comes back. A redirect
from ``wss://`` to ``ws://`` is refused. Errors name origins, never a full URL (it may carry a token).
A redirect to another origin is refused too when the ``subscribe`` messages hold values from
``${VAR}`` (they would be sent there).
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections import deque
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field, field_validator
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.messages import Assembler
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidProxy,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import Frame
from websockets.uri import WebSocketURI, parse_uri

from daemon.errors import IdleTimeout, NotConnected
from daemon.logs import RateLimitedLog, get_logger
from streams.base import Source, SourceConfig
from streams.component import BuildContext, ComponentSpec
from streams.decode import BadKey, BadTime, DecodeFields, NotJson, TooFarAhead, make_live_decoder
from streams.queue import WhenFull

__all__ = ["SPEC", "WebSocketSource", "WebSocketSourceConfig"]

log = get_logger("source.websocket")

#: Handshake answers worth retrying: rate limits, timeouts and server-side failures.
RETRYABLE_STATUS = frozenset({408, 425, 429})
#: Handshake answers that are redirects (the source follows them itself, see the module docstring).
REDIRECT_STATUS = frozenset({300, 301, 302, 303, 307, 308})
MAX_REDIRECTS = 5


class RedirectRefused(ValueError):
    """A redirect the source will not follow; the message names origins only."""


def ws_origin(uri: WebSocketURI) -> str:
    """``ws://host:port`` of a parsed URL (the default port included): what may be shown, and what
    decides where configured headers may go."""
    host = f"[{uri.host}]" if ":" in uri.host else uri.host
    return f"{'wss' if uri.secure else 'ws'}://{host.lower()}:{uri.port}"


def redirect_target(current_url: str, location: str | None) -> tuple[str, WebSocketURI]:
    """Where a redirect answered to ``current_url`` leads: ``location`` resolved against it.

    Raises :class:`RedirectRefused` without a Location, for a target that is not a ws:// or
    wss:// URL, and for a downgrade from wss:// to ws://.
    """
    current = parse_uri(current_url)
    origin = ws_origin(current)
    if not location:
        raise RedirectRefused(f"redirect from {origin} without a Location")
    target = urllib.parse.urljoin(current_url, location)
    try:
        uri = parse_uri(target)
    except (InvalidURI, ValueError):
        raise RedirectRefused(f"redirect from {origin} to a target that is not a ws(s):// URL") from None
    if current.secure and not uri.secure:
        raise RedirectRefused(f"refusing a redirect from {origin} to {ws_origin(uri)} (wss:// to ws://)")
    return target, uri


def _frame_buffer(ws: ClientConnection) -> tuple[deque[Frame], Assembler]:
    """The frames ``ws`` has received and not yet handed out (websockets 17's ``Assembler``), for
    the read loop to take whole messages from without a ``recv()`` each; an empty deque that stays
    empty (every message then comes through ``recv()``) if the library keeps them elsewhere."""
    assembler = getattr(ws, "recv_messages", None)
    frames = getattr(getattr(assembler, "frames", None), "queue", None)
    if isinstance(assembler, Assembler) and isinstance(frames, deque):
        return frames, assembler
    return deque(), Assembler()


class _Connect(connect):
    """The library's ``connect`` without its own redirect following: a redirect is raised as the
    :class:`InvalidStatus` it is, and :meth:`WebSocketSource.connect` decides what follows it."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


class WebSocketSourceConfig(DecodeFields, SourceConfig):
    """A WebSocket feed."""

    block_refused: ClassVar[str | None] = (
        "websocket sources (blocking the reader would stall keepalive pings)"
    )

    url: str = Field(
        description="ws:// or wss:// URL.", examples=["wss://stream.binance.com:9443/ws/btcusdt@trade"]
    )
    subscribe: list[dict[str, Any] | list[Any] | str] = Field(
        default_factory=list,
        description="Messages sent after every (re)connect; mappings and lists are sent as JSON text.",
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers for the handshake.")
    decode: Literal["json", "text"] = Field("json", description="How a message becomes `data`.")
    ping_interval_seconds: float | None = Field(
        20.0, gt=0, description="Keepalive ping interval; null disables."
    )
    ping_timeout_seconds: float | None = Field(20.0, gt=0, description="A pong must come within this.")
    close_timeout_seconds: float = Field(5.0, gt=0, description="Wait this long for the closing handshake.")
    open_timeout_seconds: float = Field(10.0, gt=0, description="Connect + handshake budget.")
    idle_timeout_seconds: float | None = Field(
        None, gt=0, description="No message for this long forces a reconnect; null disables."
    )
    max_message_bytes: int = Field(
        1 << 20, gt=0, description="Larger messages close the connection with 1009."
    )
    compression: Literal["deflate", "none"] = Field("deflate", description="permessage-deflate offer.")

    @field_validator("url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://")):
            raise ValueError("must start with ws:// or wss://")
        try:
            parse_uri(value)
        except (InvalidURI, ValueError) as exc:
            # say what is wrong without repeating the URL: it may carry a token from the environment
            reason = exc.msg if isinstance(exc, InvalidURI) else str(exc)
            raise ValueError(f"not a valid WebSocket URL: {reason}") from None
        return value


class WebSocketSource(Source):
    type_name: ClassVar[str] = "websocket"
    default_when_full: ClassVar[WhenFull] = "drop_oldest"
    config: WebSocketSourceConfig

    def __init__(self, name: str, config: WebSocketSourceConfig, *, secret_subscribe: bool = False) -> None:
        """``secret_subscribe``: the subscribe messages hold values from ``${VAR}`` (a redirect to
        another origin is then refused, since they would go there)."""
        super().__init__(name, config)
        self._secret_subscribe = secret_subscribe and bool(config.subscribe)
        self._ws: ClientConnection | None = None
        self._idle_fired = False
        self._subscribe_frames = [
            m if isinstance(m, str) else orjson.dumps(m).decode() for m in config.subscribe
        ]
        self._bad_frame_log = RateLimitedLog(log, "undecodable message dropped", interval=10.0)

    @property
    def idle_timeout(self) -> float | None:
        return self.config.idle_timeout_seconds

    async def connect(self) -> None:
        try:
            self._ws = await self._open()
        except RedirectRefused as exc:
            self.stats.count_error("redirect")
            raise NotConnected(self.name, str(exc), retryable=False) from None
        except InvalidStatus as exc:
            status = exc.response.status_code
            self.stats.count_error(f"http_{status}")
            retryable = status in RETRYABLE_STATUS or status >= 500
            raise NotConnected(
                self.name, f"handshake rejected with HTTP {status}", retryable=retryable
            ) from exc
        except (InvalidURI, InvalidProxy) as exc:
            # the message would repeat the URL, which may carry a token from the environment
            what = "url" if isinstance(exc, InvalidURI) else "proxy"
            raise NotConnected(self.name, f"invalid {what}: {exc.msg}", retryable=False) from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            self.stats.count_error("connect")
            raise NotConnected(self.name, f"{type(exc).__name__}: {exc}") from exc
        try:
            for frame in self._subscribe_frames:
                await self._ws.send(frame)
        except ConnectionClosed as exc:
            raise NotConnected(self.name, f"closed while subscribing: {exc}") from exc
        if self._subscribe_frames:
            log.debug(
                "subscribed", extra={"fields": {"source": self.name, "messages": len(self._subscribe_frames)}}
            )

    async def _open(self) -> ClientConnection:
        """Connect and hand-shake, following redirects; configured headers go only to the
        configured URL's origin, and never again once a redirect left it."""
        cfg = self.config
        url = cfg.url
        home = ws_origin(parse_uri(url))
        headers = cfg.headers or None
        deadline = time.monotonic() + cfg.open_timeout_seconds
        for _ in range(MAX_REDIRECTS + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out during opening handshake")
            try:
                return await _Connect(
                    url,
                    additional_headers=headers,
                    max_size=cfg.max_message_bytes,
                    ping_interval=cfg.ping_interval_seconds,
                    ping_timeout=cfg.ping_timeout_seconds,
                    close_timeout=cfg.close_timeout_seconds,
                    open_timeout=remaining,
                    compression="deflate" if cfg.compression == "deflate" else None,
                )
            except InvalidStatus as exc:
                response = exc.response
                if response.status_code not in REDIRECT_STATUS:
                    raise
                url, target = redirect_target(url, response.headers.get("Location"))
            if self._secret_subscribe and ws_origin(target) != home:
                raise RedirectRefused(
                    f"refusing a redirect from {home} to {ws_origin(target)}: "
                    "the subscribe messages carry values from the environment"
                )
            if headers is not None and ws_origin(target) != home:
                headers = None
                log.warning(
                    "redirected to another origin: configured headers are not sent there",
                    extra={"fields": {"source": self.name, "from": home, "to": ws_origin(target)}},
                )
        raise RedirectRefused(f"more than {MAX_REDIRECTS} redirects from {home}")

    async def read(self) -> None:
        ws = self._ws
        assert ws is not None
        self._idle_fired = False
        watchdog = None
        if self.config.idle_timeout_seconds is not None:
            watchdog = asyncio.create_task(self._watch_idle(ws), name=f"reflexd:idle:{self.name}")
        try:
            await self._read_loop(ws)
        except ConnectionClosed as exc:
            if self._idle_fired:
                raise IdleTimeout(self.name, self.config.idle_timeout_seconds or 0.0) from exc
            sent = exc.sent
            if sent is not None and sent.code == 1009:
                self.stats.count_error("message_too_big")
                raise NotConnected(self.name, f"message above max_message_bytes ({sent.reason})") from exc
            rcvd = exc.rcvd
            if rcvd is None and sent is None:
                raise NotConnected(self.name, "connection dropped (no close frame)") from exc
            code = rcvd.code if rcvd is not None else sent.code if sent is not None else 1006
            why = rcvd.reason if rcvd is not None else ""
            raise NotConnected(self.name, f"closed by peer: code {code} {why}".rstrip()) from exc
        finally:
            if watchdog is not None:
                watchdog.cancel()

    async def _read_loop(self, ws: ClientConnection) -> None:
        name = self.name
        stats = self.stats
        put = self.queue.put_nowait
        clock = time.time
        recv = ws.recv
        cfg = self.config
        decode = make_live_decoder(
            name,
            cfg.key_field,
            cfg.time_field,
            cfg.time_unit,
            text=cfg.decode == "text",
            max_future=cfg.max_future_seconds,
        )
        keep = cfg.compiled_where()  # None unless `where:` is set: then one call per message
        sleep0 = asyncio.sleep
        received = stats.received  # counted here, stored at once: the status reads stats.received
        # Whole messages websockets has already parsed are taken from its buffer directly: one
        # socket read holds hundreds of frames, and recv() costs several calls per message.
        frames, assembler = _frame_buffer(ws)
        low = -1 if assembler.low is None else assembler.low  # None: no flow control
        while True:
            if frames and frames[0].fin:  # an unfragmented message (fragments wait for recv())
                raw = frames.popleft().data  # a bytearray (bytes if inflated): decoded as recv()'s bytes
                if len(frames) <= low and assembler.paused:  # as recv(): resume reading once low
                    assembler.maybe_resume()
            else:
                raw = await recv(decode=False)
            now = clock()
            stats.received = received = received + 1
            try:
                event = decode(raw, now, {"seq": received})
            except NotJson:
                self._bad_frame(raw)
                continue
            except (BadKey, BadTime) as exc:
                self._bad_frame(raw, exc.problem)
                continue
            except TooFarAhead as exc:  # e.g. µs read as ms: would poison the watermark
                self.drop_future(exc.time, now, raw)
                continue
            if keep is not None and not self.admit(keep, event):
                continue
            put(event)
            stats.last_event_at = now
            if not received & 511:
                # One socket read can hold thousands of frames; let the dispatcher take its share
                # before the queue's drop policy has to act on a burst the CPU can keep up with.
                await sleep0(0)

    def _bad_frame(self, raw: bytes | bytearray | memoryview, reason: str | None = None) -> None:
        self.stats.decode_errors += 1
        fields: dict[str, object] = {"source": self.name}
        if reason is not None:
            fields["reason"] = reason
        self._bad_frame_log.hit(**fields, sample=str(raw[:200], "utf-8", "replace"), bytes=len(raw))

    async def _watch_idle(self, ws: ClientConnection) -> None:
        idle = self.config.idle_timeout_seconds
        assert idle is not None
        step = max(0.01, idle / 8)
        started = time.time()
        while True:
            await asyncio.sleep(step)
            last = self.stats.last_event_at
            reference = last if last is not None and last > started else started
            if time.time() - reference >= idle:
                self._idle_fired = True
                self.stats.count_error("idle_timeout")
                log.warning(
                    "no data within idle timeout; reconnecting",
                    extra={"fields": {"source": self.name, "idle_timeout_seconds": idle}},
                )
                await ws.close(4000, "idle timeout")
                return

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is None:
            return
        try:
            await ws.close()
        except Exception:
            ws.transport.abort()


# -- registry entry (daemon/registry.py lists SPEC) ----------------------------------------------------


def _factory(name: str, config: WebSocketSourceConfig, ctx: BuildContext) -> WebSocketSource:
    return WebSocketSource(name, config, secret_subscribe=ctx.from_env("sources", name, "subscribe"))


def _summary(c: WebSocketSourceConfig) -> list[tuple[str, Any]]:
    return [
        ("url", c.url),
        ("subscribe", len(c.subscribe)),
        ("headers", sorted(c.headers)),
        ("idle_timeout_seconds", c.idle_timeout_seconds),
        ("queue", WebSocketSource.queue_summary(c)),
    ]


SPEC = ComponentSpec(
    "source",
    "websocket",
    WebSocketSourceConfig,
    _factory,
    _summary,
    "A WebSocket feed.",
    {
        "type": "websocket",
        "url": "wss://stream.binance.com:9443/ws",
        "subscribe": [{"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}],
        "key_field": "s",
        "time_field": "T",
    },
)
