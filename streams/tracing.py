"""What the rule layer and the tools need from a tracer, as protocols this layer owns.

Tracing is optional (``daemon.tracing``) and must cost nothing on an event that fires no rule.
So nothing here runs per event: a rule holds a :class:`Tracer` only when tracing is configured,
and asks it for a span only when it fires. That span travels with each call it makes, in
:attr:`streams.call.CallContext.trace`; the tool runner, the tools and the llm tool's loop make
their spans as its children (:meth:`Span.child`) and pass its W3C ``traceparent`` on in the
headers they send, so they need no tracer of their own. A call without a span (tracing off, a
call resumed from the journal) makes none.

The implementation (OpenTelemetry, exported over OTLP) lives in ``daemon.tracing`` and is
injected at start; nothing here imports it.
"""

from __future__ import annotations

from typing import Any, Protocol

from streams.event import Event

__all__ = ["TRACEPARENT", "Span", "Tracer"]

#: The W3C Trace Context header (and Kafka record header) that carries a span across processes.
TRACEPARENT = "traceparent"


class Span(Protocol):
    """One started span; ended exactly once by whoever started it."""

    @property
    def traceparent(self) -> str:
        """Its W3C ``traceparent`` value, for the headers of a request made under it."""
        ...

    def child(self, name: str, attributes: dict[str, Any]) -> Span:
        """Start a span under this one."""
        ...

    def set(self, attributes: dict[str, Any]) -> None:
        """Add attributes (known only at the end: tokens, the outcome)."""
        ...

    def end(self, error: str | None = None) -> None:
        """End it; with ``error`` it is marked failed."""
        ...


class Tracer(Protocol):
    """Starts the span of a rule that fired on an event (the root of reflexd's part of a trace)."""

    def fired(self, rule: str, event: Event) -> Span:
        """A span for ``rule`` firing on ``event``, the child of the ``traceparent`` the event
        carries (a Kafka record header, a configured field of the payload), if any."""
        ...
