"""The events a component hands over itself (an ``llm`` tool's answers), as a source the rules read.

Rules name such a component in ``from:`` like any source; the daemon puts one
:class:`EmittedEvents` in front of it, with the same bounded queue and dispatcher as a source,
so its events are routed, counted and drained at a stop like every other. It has no peer: its
session is open from the start until the daemon stops, and :meth:`emit` is the only way in. A
full queue refuses the newest event (counted as rejected): emitting never waits. An event emitted
once the daemon has begun to stop (its queue is closed) is not routed: it is counted as
``errors.stopping`` and logged once (an llm tool's answer stays in its journaled run).
"""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

from daemon.logs import RateLimitedLog, get_logger
from streams.base import Source, SourceConfig
from streams.event import Event
from streams.queue import QueueConfig

__all__ = ["EmittedEvents"]


class EmittedEvents(Source):
    type_name: ClassVar[str] = "emitted"
    emits_gaps: ClassVar[bool] = False

    def __init__(self, name: str, of_type: str, max_events: int = 10_000) -> None:
        config = SourceConfig(
            type="emitted", queue=QueueConfig(max_events=max_events, when_full="drop_newest")
        )
        super().__init__(name, config)
        self.of_type = of_type  # the type of the component whose events these are (status shows it)
        self._closed = asyncio.Event()
        self._late_log = RateLimitedLog(
            get_logger("source.emitted"), "event not routed: the daemon is stopping", interval=10.0
        )

    def emit(self, event: Event) -> bool:
        """Queue ``event`` for the rules; False if the queue was full (counted) or closed."""
        if self.queue.closed:
            self.stats.count_error("stopping")
            self._late_log.hit(source=self.name, kind=event.kind)
            return False
        self.stats.received += 1
        self.stats.last_event_at = time.time()
        return self.queue.put_nowait(event)

    async def connect(self) -> None:
        self._closed.clear()

    async def read(self) -> None:
        await self._closed.wait()  # nothing to read: events arrive through emit() until the stop

    async def close(self) -> None:
        self._closed.set()

    def extra_status(self) -> dict[str, str]:
        return {"events_of": self.of_type}
