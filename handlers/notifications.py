"""The notification queue: what happened while no model was looking, handed to the next model call.

One bounded queue per daemon. It is fed by the ``notify`` tool, by escalations that were
deduplicated or over budget, by background tool results and by approved calls once they ran;
every ``llm`` tool drains it into one message before each model call (and, later, MCP clients
read it by sequence number).

- Each item has a sequence number, increasing by one per item, never reused while the process runs.
- Bounded: ``max_items``; when full the oldest item goes and ``dropped`` counts it if some reader
  had not taken it yet.
- ``coalesce``: an item reporting an event (kinds ``notify``, ``deduplicated``, ``over_budget``) with
  the same kind, rule and key as one no reader has taken yet replaces it in place (its ``repeats``
  counts the items it stands for), so a storm of repeats of one event costs one line of the model's
  context. The other kinds (a background result, an approved call's outcome, an interrupted run)
  each say something of their own and are never merged. Finding the item to merge into is one
  dict lookup, whatever the queue's length.
- Readers are named (one per ``llm`` tool); each has its own cursor, so every reader sees every item
  once, in sequence order.
- Listeners (:meth:`NotificationQueue.add_listener`; the MCP server's feed, when ``agent.mcp`` is
  configured) are called with each item as it is put, a coalesced one included; with none, a put
  costs one test more.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["COALESCING_KINDS", "Notification", "NotificationQueue", "NotificationsConfig"]

#: Kinds that report an event a rule saw: repeats of the same (kind, rule, key) coalesce while unread.
COALESCING_KINDS = frozenset({"notify", "deduplicated", "over_budget"})


class NotificationsConfig(BaseModel):
    """``agent.notifications:``: the queue an llm tool drains before each model call."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    max_items: int = Field(256, ge=1, le=100_000, description="Items kept; the oldest goes first when full.")
    coalesce: bool = Field(
        True, description="A repeat of the same (rule, key) not yet read replaces the earlier item."
    )


@dataclass
class Notification:
    """One item. ``kind``: notify | deduplicated | over_budget | background | approval | interrupted."""

    seq: int
    kind: str
    text: str
    fields: dict[str, Any] = field(default_factory=dict)
    rule: str | None = None
    key: Any = None
    ts: float = 0.0
    repeats: int = 1

    def as_dict(self) -> dict[str, Any]:
        """The JSON form the model sees (docs/agent.md, "What the model sees")."""
        out: dict[str, Any] = {"seq": self.seq, "kind": self.kind, "text": self.text, "ts": round(self.ts, 3)}
        if self.rule is not None:
            out["rule"] = self.rule
        if self.key is not None:
            out["key"] = self.key
        if self.fields:
            out["fields"] = self.fields
        if self.repeats > 1:
            out["repeats"] = self.repeats
        return out


class NotificationQueue:
    """Bounded, sequenced, read by named cursors. Not thread-safe: used from the event loop."""

    def __init__(self, max_items: int = 256, *, coalesce: bool = True) -> None:
        self.max_items = max_items
        self.coalesce = coalesce
        self._items: deque[Notification] = deque()
        #: (kind, rule, key) → the newest queued item of it (coalescing looks here; gone with the item)
        self._latest: dict[tuple[str, str, Any], Notification] = {}
        self._cursors: dict[str, int] = {}
        self._owners: dict[str, object] = {}
        self._seq = 0
        self.put_count = 0  # items put (coalesced repeats included)
        self.coalesced = 0  # puts merged into an unread item
        self.dropped = 0  # items evicted before every reader had taken them
        self._changed = asyncio.Event()  # bound to a loop only when first awaited
        self._listeners: list[Callable[[Notification], None]] = []

    @classmethod
    def from_config(cls, config: NotificationsConfig) -> NotificationQueue:
        return cls(config.max_items, coalesce=config.coalesce)

    @property
    def last_seq(self) -> int:
        return self._seq

    def __len__(self) -> int:
        return len(self._items)

    def add_reader(self, name: str, *, from_start: bool = False, owner: object = None) -> None:
        """A reader that takes items from now on (or every item still queued, with ``from_start``).
        A reader of that name already there keeps its cursor; ``owner`` becomes its owner (a tool
        rebuilt by a reload takes over its predecessor's cursor)."""
        if name not in self._cursors:
            self._cursors[name] = 0 if from_start else self._seq
        self._owners[name] = owner

    def remove_reader(self, name: str, *, owner: object = None) -> None:
        """Forget a reader (a tool that is gone), unless another owner has taken it over since: items
        it will never take no longer count as dropped when evicted."""
        if self._owners.get(name) is owner:
            self._cursors.pop(name, None)
            self._owners.pop(name, None)

    def add_listener(self, listener: Callable[[Notification], None]) -> None:
        """Call ``listener`` with every item put from now on (a coalesced item again, with its new
        text and ``repeats``). It runs inside :meth:`put`: keep it short, and it must not raise."""
        self._listeners.append(listener)

    def put(
        self,
        kind: str,
        text: str,
        fields: dict[str, Any] | None = None,
        *,
        rule: str | None = None,
        key: Any = None,
        ts: float | None = None,
    ) -> int:
        """Add an item; its sequence number (an unread item it was coalesced into keeps its own)."""
        self.put_count += 1
        now = time.time() if ts is None else ts
        slot: tuple[str, str, Any] | None = None
        if self.coalesce and rule is not None and kind in COALESCING_KINDS:
            slot = (kind, rule, key)
            try:
                item = self._latest.get(slot)
            except TypeError:  # a key that cannot be hashed: never merged
                slot, item = None, None
            # merged only while no reader has taken it (with no reader at all, nothing is merged)
            if item is not None and item.seq > max(self._cursors.values(), default=self._seq):
                item.text, item.fields, item.ts = text, dict(fields or {}), now
                item.repeats += 1
                self.coalesced += 1
                self._wake()
                for listener in self._listeners:
                    listener(item)
                return item.seq
        self._seq += 1
        added = Notification(self._seq, kind, text, dict(fields or {}), rule, key, now)
        self._items.append(added)
        if slot is not None:
            self._latest[slot] = added
        if len(self._items) > self.max_items:
            gone = self._items.popleft()
            if any(cursor < gone.seq for cursor in self._cursors.values()):
                self.dropped += 1
            if gone.rule is not None and gone.kind in COALESCING_KINDS:
                gone_slot = (gone.kind, gone.rule, gone.key)
                try:
                    if self._latest.get(gone_slot) is gone:
                        del self._latest[gone_slot]
                except TypeError:
                    pass
        self._wake()
        for listener in self._listeners:
            listener(added)
        return self._seq

    def drain(self, reader: str) -> list[Notification]:
        """The items ``reader`` has not taken yet, oldest first; its cursor moves past them."""
        cursor = self._cursors.get(reader, 0)
        items = self.since(cursor)
        self._cursors[reader] = self._seq
        return items

    def since(self, seq: int) -> list[Notification]:
        """Items after sequence number ``seq`` still queued, oldest first (a cursor-less read)."""
        if not self._items or self._items[-1].seq <= seq:
            return []
        return [item for item in self._items if item.seq > seq]

    async def wait(self, since: int, seconds: float) -> list[Notification]:
        """Items after ``since``, waiting up to ``seconds`` for the first one to arrive."""
        deadline = time.monotonic() + seconds
        while True:
            items = self.since(since)
            left = deadline - time.monotonic()
            if items or left <= 0:
                return items
            self._changed.clear()
            try:
                async with asyncio.timeout(left):
                    await self._changed.wait()
            except TimeoutError:
                return self.since(since)

    def stats(self) -> dict[str, int]:
        return {
            "queued": len(self._items),
            "last_seq": self._seq,
            "put": self.put_count,
            "coalesced": self.coalesced,
            "dropped": self.dropped,
        }

    def _wake(self) -> None:
        self._changed.set()
