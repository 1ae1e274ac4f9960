"""The MCP server's configuration (``agent.mcp:``) and its feed: the half that needs no MCP SDK.

The server (:mod:`daemon.mcp_server`) imports the ``mcp`` SDK, whose import takes over a second; the
daemon imports it only when ``agent.mcp`` is configured. This module imports nothing heavy: the
configuration is validated with it, and the daemon records what MCP clients will hear into it.

**The feed** (:class:`McpFeed`) is one sequenced, bounded log of what happened:

- ``fire``: a rule matched and made its calls. Recorded by wrapping the submit function the daemon
  hands its rules (:meth:`McpFeed.recording`, only when ``agent.mcp`` is configured): one item per
  match, holding each call (tool, arguments, whether the runner took it), the rule and the event
  (without its delivery ack);
- ``notification``: an item put in the notification queue (the queue's listener hook), as the model
  sees it.

Sequence numbers increase by one per item from 1 in each process; ``max_events`` items are kept,
the oldest go first. A reader keeps the last number it saw as its cursor (``since``):
:meth:`McpFeed.after` returns what came after it, with how many items it missed (evicted before it
read them) and ``reset`` when the cursor is above every number given so far (a cursor from an earlier
process: it reads from the start). :meth:`McpFeed.wait` is the long-poll: at once when there is
something after the cursor, else at the first item to arrive, else empty at the timeout. All waiters
share one future, made only while someone waits: with no reader, recording an item is a deque append.

**Pushes**: the server tells the feed which resource URIs have subscribers (:meth:`McpFeed.watch`);
an item marks its watched URIs changed (a fire: its rule's fires and the status; a notification:
the notifications and the status) and wakes the server's pusher (:meth:`McpFeed.changes`). URIs
nobody watches cost nothing.

**Latest event per source**: the dispatchers hand over the last event of each batch
(:meth:`McpFeed.saw`), without its ack: one dict store per batch, not per event.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from daemon.endpoint import MIN_TOKEN_CHARS, bearer_token, host_names, parse_listen
from handlers.notifications import Notification
from streams.call import CallContext
from streams.event import Event
from streams.rules.sink import Submit

__all__ = [
    "BUILTIN_TOOLS",
    "FIRE",
    "NOTIFICATION",
    "NOTIFICATIONS_URI",
    "STATUS_URI",
    "FeedItem",
    "FeedRead",
    "FiredCall",
    "McpConfig",
    "McpFeed",
    "McpStats",
    "Redactor",
    "fires_uri",
    "latest_uri",
    "render_event",
]

#: The MCP server's own tools, listed beside the configured ones (a configured tool may not take a name).
BUILTIN_TOOLS = ("wait_for_events", "recent_events", "status")

FIRE = "fire"
NOTIFICATION = "notification"

STATUS_URI = "reflexd://status"
NOTIFICATIONS_URI = "reflexd://notifications"

#: An event's data longer than this (as JSON) is served cut, with a marker.
MAX_DATA_CHARS = 4000


def fires_uri(rule: str) -> str:
    return f"reflexd://rules/{rule}/fires"


def latest_uri(source: str) -> str:
    return f"reflexd://sources/{source}/latest"


class McpConfig(BaseModel):
    """``agent.mcp:``: the MCP server (streamable HTTP at ``/mcp``): configured tools, the events
    (rule fires and notifications) and the daemon's status for any MCP client (docs/agent.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    listen: str = Field(
        "127.0.0.1:9109",
        description="host:port of the MCP endpoint (`http://HOST:PORT/mcp`); off loopback only with a token.",
    )
    auth: Literal["token", "none"] = Field(
        "token",
        description="`token`: every request carries `Authorization: Bearer <token>` (else 401); `none`: no "
        "token, allowed only on a loopback listen address.",
    )
    token: SecretStr | None = Field(
        None,
        description=(
            f"The bearer token, from the environment only (`${{REFLEXD_MCP_TOKEN}}`); at least "
            f"{MIN_TOKEN_CHARS} characters."
        ),
    )
    tools: list[str] = Field(
        default_factory=list,
        description="Configured tools MCP clients may call, through the runner (an llm tool starts an "
        "agent run); besides them the server has wait_for_events, recent_events and status.",
    )
    require_approval: list[str] = Field(
        default_factory=list,
        description="Tools of `tools` whose calls wait for a person (`reflexd approvals`), as "
        "model-chosen calls do; the client is told it awaits approval.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "Host names accepted in the `Host` header besides the listen address (on loopback also "
            "`localhost` / `127.0.0.1` / `[::1]`); others get 421. Also the origins a browser request "
            "may come from (others get 403). `*` accepts any Host."
        ),
        examples=[["reflexd.internal"]],
    )
    max_events: int = Field(
        1000,
        ge=10,
        le=100_000,
        description="Events (rule fires and notifications) kept for wait_for_events, recent_events and "
        "the resources; the oldest go first.",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    # -- what a client on this machine uses (the ``reflexd mcp`` stdio bridge, tests, benches) ------

    def client_url(self, port: int | None = None) -> str:
        """The URL of the endpoint for a client on this machine: a wildcard listen address is reached
        on loopback (a Host the server accepts); ``port`` replaces the configured one (a daemon started
        on port 0 says which in its ``ready`` log line and ``/status``)."""
        host, configured = parse_listen(self.listen)
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{configured if port is None else port}/mcp"

    def client_headers(self) -> dict[str, str]:
        """The headers every request carries: ``Authorization: Bearer <token>`` (none with ``auth: none``)."""
        if self.auth == "none" or self.token is None:
            return {}
        return {"Authorization": f"Bearer {self.token.get_secret_value()}"}

    _token = field_validator("token", mode="before")(bearer_token)
    _allowed_hosts = field_validator("allowed_hosts")(host_names)

    @field_validator("tools", "require_approval")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"names {', '.join(repeated)} more than once")
        return value


# -- the feed ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class McpStats:
    """Counters of the MCP server, read by ``/metrics`` (``reflexd_mcp_*`` in daemon/telemetry.py)."""

    calls: Counter[tuple[str, str]] = field(default_factory=Counter)  # (tool, outcome)
    refused: Counter[str] = field(default_factory=Counter)  # by reason (host, origin, token_*, throttled)
    pushes: int = 0  # notifications/resources/updated sent (both generations)
    subscriptions: int = 0  # open now: resources/subscribe (per session and URI) and listen streams


@dataclass(slots=True)
class FiredCall:
    tool: str
    args: dict[str, Any]
    accepted: bool  # False: the runner refused it (backlog full, stopping)


@dataclass(slots=True)
class FeedItem:
    seq: int
    type: str  # FIRE | NOTIFICATION
    ts: float
    rule: str | None
    event: Event | None = None  # a fire's event, without its ack
    calls: list[FiredCall] = field(default_factory=list)  # a fire's calls
    note: dict[str, Any] | None = None  # a notification, as the model sees it (Notification.as_dict)


class FeedRead(NamedTuple):
    """What a reader gets: ``items`` after its cursor (at most the limit asked), ``next`` (the cursor
    to pass next time), ``missed`` (items evicted before it read them), ``reset`` (its cursor was
    above every number given so far: read from the start)."""

    items: list[FeedItem]
    next: int
    missed: int = 0
    reset: bool = False


class Redactor(Protocol):
    """How served items lose their secrets (:class:`daemon.agent_view.Shown` is one)."""

    def value(self, value: Any, names: Iterable[str] = ()) -> Any: ...

    def args(self, tool: str, args: dict[str, Any]) -> dict[str, Any]: ...


class McpFeed:
    """The log MCP clients read (see the module docstring). Used from the event loop only."""

    def __init__(self, max_items: int = 1000) -> None:
        self.max_items = max_items
        self._items: deque[FeedItem] = deque(maxlen=max_items)
        self._seq = 0
        self.fires = 0
        self.notifications = 0
        self.stats = McpStats()
        #: the newest event of each source (its last batch's last), without its ack
        self.latest: dict[str, Event] = {}
        self._open: FeedItem | None = None  # the fire whose later calls may still come
        self._open_id: tuple[str | None, int] = (None, 0)  # (rule, id of its event)
        self._arrived: asyncio.Future[None] | None = None
        self._watched: dict[str, int] = {}  # URI → subscribers
        self._changed: set[str] = set()
        self._push_wake: asyncio.Event | None = None
        self.closed = False

    # -- recording ------------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._seq

    def recording(self, submit: Submit) -> Submit:
        """``submit`` that also records each call a rule fires."""
        fired = self.fired

        def submit_recorded(tool: str, args: dict[str, Any], ctx: CallContext) -> bool:
            accepted = submit(tool, args, ctx)
            fired(tool, args, ctx, accepted)
            return accepted

        return submit_recorded

    def fired(self, tool: str, args: dict[str, Any], ctx: CallContext, accepted: bool) -> None:
        """One call of a rule's fire. A rule fires its calls one after the other, numbered in their
        ``call_id`` (``rule:event:index``): a later call of the same match joins its item."""
        call = FiredCall(tool, args, accepted)
        event = ctx.event
        ident = (ctx.rule, id(event))
        open_ = self._open
        if open_ is not None and ident == self._open_id and not ctx.call_id.endswith(":0"):
            open_.calls.append(call)
            return
        if event is not None and event.ack is not None:
            event = event._replace(ack=None)
        self._seq += 1
        item = FeedItem(self._seq, FIRE, time.time(), ctx.rule, event, [call])
        self._open, self._open_id = item, ident
        self.fires += 1
        self._add(item)

    def noted(self, note: Notification) -> None:
        """An item put in the notification queue (its listener)."""
        self._seq += 1
        self.notifications += 1
        self._add(FeedItem(self._seq, NOTIFICATION, note.ts, note.rule, note=note.as_dict()))

    def saw(self, event: Event) -> None:
        """The newest event of its source (a dispatcher's batch's last)."""
        self.latest[event.source] = event if event.ack is None else event._replace(ack=None)

    def _add(self, item: FeedItem) -> None:
        self._items.append(item)
        arrived = self._arrived
        if arrived is not None:
            self._arrived = None
            if not arrived.done():
                arrived.set_result(None)
        if self._watched:
            uris = (
                (fires_uri(item.rule) if item.rule is not None else None, STATUS_URI)
                if item.type == FIRE
                else (NOTIFICATIONS_URI, STATUS_URI)
            )
            changed = [uri for uri in uris if uri is not None and uri in self._watched]
            if changed:
                self._changed.update(changed)
                if self._push_wake is not None:
                    self._push_wake.set()

    # -- reading --------------------------------------------------------------------------------

    def after(self, since: int, limit: int) -> FeedRead:
        """Items after ``since`` (at most ``limit``, oldest first); see :class:`FeedRead`."""
        reset = since > self._seq
        if reset:
            since = 0
        items = self._items
        first = items[0].seq if items else self._seq + 1
        missed = max(0, first - since - 1)
        start = max(0, since + 1 - first)  # sequence numbers are contiguous in the deque
        got = list(itertools.islice(items, start, start + max(0, limit)))
        return FeedRead(got, got[-1].seq if got else min(since, self._seq), missed, reset)

    def recent(self, limit: int, *, rule: str | None = None) -> list[FeedItem]:
        """The newest ``limit`` items (oldest first); with ``rule``, that rule's fires only."""
        if rule is None:
            got = list(itertools.islice(reversed(self._items), max(0, limit)))
        else:
            fires = (i for i in reversed(self._items) if i.type == FIRE and i.rule == rule)
            got = list(itertools.islice(fires, max(0, limit)))
        got.reverse()
        return got

    async def wait(self, since: int, seconds: float, limit: int) -> FeedRead:
        """The long-poll: :meth:`after` at once if it holds items, else when the first one arrives,
        else (empty) after ``seconds`` or when the feed closes."""
        read = self.after(since, limit)
        if read.items or seconds <= 0 or self.closed or limit <= 0:
            return read
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() + seconds):
                while True:
                    arrived = self._arrived
                    if arrived is None:
                        arrived = self._arrived = loop.create_future()
                    await asyncio.shield(arrived)
                    read = self.after(since, limit)
                    if read.items or self.closed:
                        return read
        except TimeoutError:
            return self.after(since, limit)

    def close(self) -> None:
        """Wake every waiter and the pusher: the daemon is stopping."""
        self.closed = True
        arrived, self._arrived = self._arrived, None
        if arrived is not None and not arrived.done():
            arrived.set_result(None)
        if self._push_wake is not None:
            self._push_wake.set()

    # -- pushes ---------------------------------------------------------------------------------

    def watch(self, uri: str) -> None:
        self._watched[uri] = self._watched.get(uri, 0) + 1

    def unwatch(self, uri: str) -> None:
        left = self._watched.get(uri, 0) - 1
        if left > 0:
            self._watched[uri] = left
        else:
            self._watched.pop(uri, None)
            self._changed.discard(uri)

    async def changes(self) -> set[str]:
        """The watched URIs changed since the last call, once there is at least one (empty once the
        feed is closed)."""
        if self._push_wake is None:
            self._push_wake = asyncio.Event()
        while not self._changed and not self.closed:
            self._push_wake.clear()
            await self._push_wake.wait()
        changed, self._changed = self._changed, set()
        return changed

    # -- serving --------------------------------------------------------------------------------

    @staticmethod
    def render(item: FeedItem, shown: Redactor) -> dict[str, Any]:
        """An item as MCP clients read it, secrets taken out as ``/status`` and ``reflexd agent`` do."""
        out: dict[str, Any] = {"seq": item.seq, "type": item.type, "ts": round(item.ts, 3)}
        if item.type == NOTIFICATION:
            note = dict(item.note or {})
            out["queue_seq"] = note.pop("seq", None)
            note.pop("ts", None)
            out.update(shown.value(note))
            return out
        out["rule"] = item.rule
        out["calls"] = [
            {"tool": c.tool, "args": shown.args(c.tool, c.args), "accepted": c.accepted} for c in item.calls
        ]
        if item.event is not None:
            out["event"] = render_event(item.event, shown)
        return out


def render_event(event: Event, shown: Redactor) -> dict[str, Any]:
    """An event as MCP clients read it: where it came from and its data (cut past
    :data:`MAX_DATA_CHARS` of JSON), secrets taken out."""
    data = shown.value(event.data)
    if isinstance(data, dict | list):
        text = orjson.dumps(data, default=str).decode()
        if len(text) > MAX_DATA_CHARS:
            data = f"{text[:MAX_DATA_CHARS]}…[truncated {len(text) - MAX_DATA_CHARS} characters]"
    elif isinstance(data, str) and len(data) > MAX_DATA_CHARS:
        data = f"{data[:MAX_DATA_CHARS]}…[truncated {len(data) - MAX_DATA_CHARS} characters]"
    return {
        "source": event.source,
        "kind": event.kind,
        "ts": event.ts,
        "key": shown.value(event.key),
        "data": data,
    }
