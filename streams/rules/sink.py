"""What the rule layer needs from whoever runs the tools, as protocols the rule layer owns.

A rule hands each call it fires to a :data:`Submit` function; the dispatcher that feeds a source's
events to its rules asks a :class:`ToolSink` whether it is full and waits for room, so pressure
moves back to the source's bounded queue. The daemon passes its tool runner
(``handlers.runner.ToolRunner`` is both: ``runner.submit`` and ``runner``); ``reflexd replay``
passes a function that only reports. Nothing here imports ``handlers``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from streams.call import CallContext

__all__ = ["Submit", "ToolSink"]

#: ``submit(tool, args, ctx)``: queue one call; False if it was rejected (the caller counts it).
Submit = Callable[[str, dict[str, Any], CallContext], bool]


class ToolSink(Protocol):
    """The backpressure side of the tool runner."""

    @property
    def full(self) -> bool:
        """True while some tool's backlog is at its ``max_pending``: stop feeding events."""
        ...

    async def wait_for_room(self) -> None:
        """Return once no tool's backlog is full any more."""
        ...
