""":class:`RunnerHost`: the :class:`~handlers.base.ToolHost` the daemon lends its tools.

Calls go through the same :class:`~handlers.runner.ToolRunner` as the rules' calls; the
notification queue, the agent store and the event sink are the daemon's. ``reflexd dlq replay``
builds one too (without an event sink), so a tool that needs a host can be replayed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from handlers.agent_store import AgentStore
from handlers.base import CallContext, CallReply, Tool
from handlers.notifications import NotificationQueue
from handlers.runner import ToolRunner
from streams.backoff import backoff_delay
from streams.event import Event

__all__ = ["RunnerHost"]


class RunnerHost:
    def __init__(
        self,
        runner: ToolRunner,
        notifications: NotificationQueue,
        store: AgentStore | None = None,
        emitters: dict[str, Callable[[Event], bool]] | None = None,
    ) -> None:
        self.runner = runner
        self._notifications = notifications
        self._store = store
        self._emitters = emitters or {}

    @property
    def notifications(self) -> NotificationQueue:
        return self._notifications

    @property
    def store(self) -> AgentStore | None:
        return self._store

    def set_emitters(self, emitters: dict[str, Callable[[Event], bool]]) -> None:
        """The event sinks per tool from now on (a reload added or removed an llm tool)."""
        self._emitters = emitters

    def attach_all(self) -> None:
        """Hand this host to every tool of the runner (before the runner starts them)."""
        for tool in self.runner.tools.values():
            tool.attach(self)

    def call(self, tool: str, args: dict[str, Any], ctx: CallContext) -> asyncio.Future[CallReply]:
        future: asyncio.Future[CallReply] = asyncio.get_running_loop().create_future()
        if tool not in self.runner.tools:
            future.set_result(CallReply("rejected", None, f"no tool named {tool!r}"))
            return future
        self.runner.submit(tool, args, ctx, done=future, resumable=False)
        return future

    def describe(self, tool: str) -> dict[str, Any] | None:
        found: Tool | None = self.runner.tools.get(tool)
        return None if found is None else found.schema()

    def timeout_of(self, tool: str) -> float:
        found = self.runner.tools.get(tool)
        if found is None:
            return 0.0
        retry = found.config.retry
        waits = sum(backoff_delay(retry, attempt, 1.0) for attempt in range(1, retry.max_attempts))
        return found.config.timeout_seconds * retry.max_attempts + waits

    def emit(self, event: Event) -> bool:
        emit = self._emitters.get(event.source)
        return emit(event) if emit is not None else False
