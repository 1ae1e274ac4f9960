"""A bounded event queue with an explicit policy for when it is full.

``when_full``:

- ``block``: lossless; ``await put()`` waits for room. ``put_nowait()`` on a full queue
  raises :class:`QueueFull` and the caller decides (a Kafka source pauses partitions).
- ``drop_oldest``: the oldest queued event is evicted to make room (live market data:
  the newest price matters). Counted as ``evicted``.
- ``drop_newest``: the incoming event is discarded. Counted as ``rejected``.

The consumer takes events in batches (:meth:`get_batch`), which keeps the per-event cost
to a deque pop instead of one task switch per event. Counters are plain integers, read
by the metrics collector at scrape time; nothing here touches a lock or a logger.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BoundedQueue", "QueueConfig", "QueueFull", "WhenFull"]

T = TypeVar("T")
WhenFull = Literal["block", "drop_oldest", "drop_newest"]


class QueueConfig(BaseModel):
    """``queue: {max_events, when_full}`` of a source."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    max_events: int = Field(
        10_000, gt=0, le=10_000_000, description="Most events held before `when_full` applies."
    )
    when_full: WhenFull | None = Field(
        None,
        description="What to do with a new event when the queue is full; the default depends on the source "
        "type (drop_oldest for websocket, block for replay and kafka).",
    )


class QueueFull(Exception):
    """``put_nowait`` on a full ``block`` queue."""


class BoundedQueue(Generic[T]):
    """Single-consumer bounded FIFO with a full-queue policy and counters."""

    __slots__ = (
        "_closed",
        "_getter",
        "_items",
        "_putters",
        "evicted",
        "high_water",
        "max_events",
        "rejected",
        "taken",
        "when_full",
    )

    def __init__(self, max_events: int, when_full: WhenFull = "block") -> None:
        if max_events <= 0:
            raise ValueError("max_events must be positive")
        self.max_events = max_events
        self.when_full: WhenFull = when_full
        self._items: deque[T] = deque()
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self.taken = 0  # events handed to the consumer
        self.evicted = 0  # drop_oldest: queued events pushed out
        self.rejected = 0  # drop_newest: incoming events discarded
        self.high_water = 0  # deepest the queue has been

    @property
    def put_total(self) -> int:
        """Events offered to the queue: taken + evicted + rejected + still queued (derived, not counted)."""
        return self.taken + self.evicted + self.rejected + len(self._items)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put_nowait(self, item: T) -> bool:
        """Offer one item without waiting. Returns False if the item itself was dropped.

        Raises :class:`QueueFull` for a full ``block`` queue (nothing is counted as dropped).
        """
        items = self._items
        n = len(items)  # the depth once the item is in
        if n >= self.max_events:
            policy = self.when_full
            if policy == "drop_oldest":
                items.popleft()
                self.evicted += 1
            elif policy == "drop_newest":
                self.rejected += 1
                return False
            else:
                raise QueueFull
        else:
            n += 1
        items.append(item)
        if n > self.high_water:
            self.high_water = n
        getter = self._getter
        if getter is not None:
            self._getter = None
            if not getter.done():
                getter.set_result(None)
        return True

    async def put(self, item: T) -> bool:
        """Offer one item; under ``block`` wait until there is room."""
        if self.when_full == "block" and len(self._items) >= self.max_events:
            await self.wait_depth(self.max_events - 1)
        if self._closed:
            return False
        try:
            return self.put_nowait(item)
        except QueueFull:  # pragma: no cover - room was checked just above, single-threaded
            return False

    async def get_batch(self, max_items: int = 512) -> list[T]:
        """Wait for at least one item and return up to ``max_items``; [] once closed and empty."""
        items = self._items
        while not items:
            if self._closed:
                return []
            fut = asyncio.get_running_loop().create_future()
            self._getter = fut
            try:
                await fut
            finally:
                if self._getter is fut:
                    self._getter = None
        n = min(len(items), max_items)
        if n == len(items):
            batch = list(items)
            items.clear()
        else:
            popleft = items.popleft
            batch = [popleft() for _ in range(n)]
        self.taken += n
        self._wake_putters()
        return batch

    async def wait_depth(self, depth: int) -> None:
        """Wait until at most ``depth`` items are queued (or the queue is closed); woken once per
        batch taken, never per item."""
        while len(self._items) > depth and not self._closed:
            fut = asyncio.get_running_loop().create_future()
            self._putters.append(fut)
            try:
                await fut
            finally:
                if not fut.done():
                    fut.cancel()
                try:
                    self._putters.remove(fut)
                except ValueError:
                    pass

    def _wake_putters(self) -> None:
        room = self.max_events - len(self._items)
        for fut in self._putters:
            if room <= 0:
                break
            if not fut.done():
                fut.set_result(None)
                room -= 1

    def discard(self, predicate: Callable[[T], bool]) -> list[T]:
        """Remove and return the queued items matching ``predicate`` (rare: O(n))."""
        kept: deque[T] = deque()
        removed: list[T] = []
        for item in self._items:
            (removed if predicate(item) else kept).append(item)
        if removed:
            self._items = kept
            self.taken += len(removed)
            self._wake_putters()
        return removed

    def close(self) -> None:
        """No more puts; the consumer drains what is left, then gets []."""
        self._closed = True
        if self._getter is not None and not self._getter.done():
            self._getter.set_result(None)
        for fut in self._putters:
            if not fut.done():
                fut.set_result(None)

    def stats(self) -> dict[str, Any]:
        return {
            "depth": len(self._items),
            "max_events": self.max_events,
            "when_full": self.when_full,
            "high_water": self.high_water,
            "put": self.put_total,
            "taken": self.taken,
            "dropped": {"queue_full_oldest": self.evicted, "queue_full_newest": self.rejected},
        }
