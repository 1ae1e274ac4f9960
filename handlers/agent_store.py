"""What the agent loop needs to persist, as a protocol the handlers own (a leaf module).

The daemon's SQLite store (``daemon.agent_state.AgentState``) is one; tests may use another.
Writes that a crash must not lose (a run's transcript, its end, a proposal waiting for a person)
are awaited and durable before they return; bookkeeping that only counts (token usage, runs the
gate turned away) is buffered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["RUN_OUTCOMES", "AgentStore", "Approval", "RunState"]

#: How a run ends (``None`` while it runs).
RUN_OUTCOMES = ("answered", "max_rounds", "over_budget", "failed", "deduplicated", "interrupted")


@dataclass
class RunState:
    """One agent run: who started it, its conversation so far (neutral form, see
    :mod:`handlers.models`) and, once ended, how."""

    run_id: str
    tool: str  # the llm tool
    rule: str | None
    key: Any
    event: dict[str, Any] | None  # the escalating event, journaled form
    prompt: str
    started: float
    messages: list[dict[str, Any]] = field(default_factory=list)
    rounds: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    outcome: str | None = None
    answer: str | None = None
    error: str | None = None
    ended: float | None = None
    call_id: str | None = None  # the idempotency key of the llm tool's call that runs it

    def result(self) -> dict[str, Any]:
        """What the llm tool's call returns (and the journal keeps as its result)."""
        return {
            "run": self.run_id,
            "outcome": self.outcome,
            "text": self.answer,
            "rounds": self.rounds,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
        }


@dataclass(frozen=True)
class Approval:
    """A model-chosen call of a ``require_approval`` tool, waiting for (or past) a person's decision.

    ``status``: pending → approved → executing → executed | failed; or pending → rejected.
    """

    id: int
    run_id: str
    llm: str
    rule: str | None
    tool: str
    args: dict[str, Any]
    key: str  # the call's idempotency key
    event: dict[str, Any] | None
    reasoning: str
    status: str
    created: float
    decided_at: float | None = None
    decided_by: str | None = None
    note: str | None = None
    outcome: str | None = None
    result: Any = None
    error: str | None = None


class AgentStore(Protocol):
    """Agent runs, token usage and approvals."""

    async def load_run(self, run_id: str) -> RunState | None:
        """The run with this id and its transcript, or None."""
        ...

    async def begin_run(self, run: RunState) -> None:
        """Record a new run with its first messages (durable)."""
        ...

    async def add_messages(self, run: RunState, messages: list[dict[str, Any]]) -> None:
        """Append messages to the run's transcript and save its counters (durable)."""
        ...

    async def end_run(self, run: RunState) -> None:
        """Record how the run ended (its ``outcome``, ``answer``, ``error``, counters; durable)."""
        ...

    def screened(self, run: RunState) -> None:
        """Record a run the gate settled before it started (deduplicated, over budget; buffered)."""
        ...

    def add_usage(self, tool: str, ts: float, tokens: int) -> None:
        """Tokens one model call of ``tool`` used (buffered)."""
        ...

    def usage_since(self, tool: str, since: float) -> list[tuple[float, int]]:
        """(time, tokens) of ``tool``'s model calls since ``since`` (read at start)."""
        ...

    def runs_since(self, tool: str, since: float) -> list[float]:
        """Start times of ``tool``'s runs since ``since`` that were not settled by the gate."""
        ...

    async def propose(self, approval: Approval) -> int:
        """Store a proposal (durable); its id. A proposal with the same key already stored keeps its id."""
        ...
