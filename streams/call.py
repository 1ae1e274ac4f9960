"""A tool call as its caller describes it: :class:`CallContext`.

It lives beside the event it points to, below both of its users: the rule layer builds one
each time a rule fires (and the daemon when it resumes or replays a call), the tools receive it
(``handlers.base`` re-exports it as part of the tool contract). So ``streams`` never imports
``handlers`` to fire a tool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from streams.event import Event

if TYPE_CHECKING:
    from streams.tracing import Span

__all__ = ["CallContext", "event_ref"]


class CallContext(NamedTuple):
    """Why a tool is being called."""

    tool: str
    rule: str | None
    event: Event | None
    call_id: str  # stable per (rule, event, call) and across retries: the idempotency key
    attempt: int = 1  # 1 for the first attempt, 2 for the first retry, ...
    #: the span the call runs under (tracing on): the firing rule's, then the runner's call and
    #: attempt spans; None when tracing is off or the call was not made by a rule firing now
    trace: Span | None = None


def event_ref(event: Event) -> str:
    """A stable name for an event, the middle of a rule's call ids: the same record gives the same
    name after a restart."""
    meta = event.meta
    if "offset" in meta:  # Kafka: topic, partition and offset name a record exactly
        return f"{event.source}:{meta.get('topic')}/{meta.get('partition')}@{meta['offset']}"
    for field in ("seq", "line"):
        if field in meta:
            run = f":run={meta['run']}" if "run" in meta else ""  # a replay session: each run is new
            return f"{event.source}{run}:{field}={meta[field]}:lap={meta.get('lap', 0)}:ts={event.ts!r}"
    return f"{event.source}:ts={event.ts!r}"
