"""The tool contract: a named, typed action with a JSON Schema for its arguments.

The same tool can be fired by a rule or, later, called by a language model with the same
schema. ``call`` may be a coroutine function or a plain function; the runner awaits the
former and runs the latter in a thread executor, propagating its exceptions.

Capabilities the daemon looks for on any tool, whatever its type:

- :attr:`Tool.kill_switch` (a :class:`KillSwitchControl`, for tools whose actions an operator must be
  able to halt at once; the ops server's ``/kill-switch`` drives every tool that has one);
- :meth:`Tool.attach`: every tool is handed the daemon's :class:`ToolHost` before it starts; a tool that
  works through other tools (the ``llm`` tool) or feeds the notification queue (``notify``) keeps it;
- :meth:`Tool.screen`: a tool may settle a call before it is queued (the ``llm`` tool's dedup and
  budget gates), so a busy rule never waits behind a slow call just to be told no.

Whether a type's results are events rules can read (``from: [<tool>]``), and which other tools it
calls, its ``SPEC`` says (``emits_events``, ``tool_refs``): the configuration is checked by spec.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from handlers.agent_store import AgentStore
from handlers.notifications import NotificationQueue
from streams.backoff import BackoffPolicy
from streams.call import CallContext
from streams.event import Event
from streams.metrics import MetricSpec

__all__ = [
    "CallContext",
    "CallReply",
    "CircuitConfig",
    "KillSwitchControl",
    "RetryConfig",
    "StartedCalls",
    "Tool",
    "ToolConfig",
    "ToolHost",
]


class _RetryAttempts(BaseModel):
    """``retry.max_attempts``: a base of its own only so that it stays the first key of ``retry:``
    (pydantic orders fields by base class), as docs/components.md and the JSON Schema show it."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    max_attempts: int = Field(3, ge=1, le=100, description="Attempts in all, the first one included.")


class RetryConfig(BackoffPolicy, _RetryAttempts):
    """``retry:`` of a tool. Only failures the tool marks retryable (and timeouts) are retried."""

    # The wait between attempts is the backoff policy a source's ``reconnect:`` uses too
    # (streams.backoff.BackoffPolicy, waited by backoff_delay); a tool's first retry waits longer.

    initial_seconds: float = Field(0.5, gt=0, le=600, description="Wait before the second attempt.")
    retry_timeouts: bool = Field(True, description="Retry a call that ran past timeout_seconds.")


class CircuitConfig(BaseModel):
    """``circuit:`` of a tool: stop calling a target that keeps failing, probe it now and then."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    failures: int = Field(
        5, ge=0, le=10_000, description="Consecutive failed calls (after retries) that open it; 0 = never."
    )
    open_seconds: float = Field(
        30.0, gt=0, le=86_400, description="How long it stays open before one probe call."
    )


class ToolConfig(BaseModel):
    """Fields every tool has. Each tool type subclasses this next to its code."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    type: str = Field(description="Component type.")
    description: str | None = Field(None, description="What the tool does (shown to a language model).")
    timeout_seconds: float = Field(10.0, gt=0, le=3600, description="One call is cancelled after this long.")
    concurrency: int = Field(4, ge=1, le=1024, description="Calls of this tool running at once.")
    max_pending: int = Field(
        1_000, ge=1, le=1_000_000, description="Calls waiting for a free slot; above it the rules wait."
    )
    retry: RetryConfig = Field(default_factory=RetryConfig, description="Retries of failed calls.")
    circuit: CircuitConfig = Field(default_factory=CircuitConfig, description="Circuit breaker of the tool.")
    parameters: dict[str, Any] | None = Field(
        None,
        description="JSON Schema of the arguments, as a language model sees it and its calls are checked "
        "against (default: the type's own). Narrow a tool that takes any object (file, webhook) to what "
        "the model should send.",
    )

    @field_validator("parameters")
    @classmethod
    def _a_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        import jsonschema

        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            raise ValueError(f"not a JSON Schema{f' at {where}' if where else ''}: {exc.message}") from None
        if value.get("type") != "object":
            raise ValueError('must describe an object (type: object): arguments are named')
        return value

    template_fields: ClassVar[frozenset[str]] = frozenset()
    """Fields whose text is a template (``{expression}``): a value from ``${VAR}`` in them has its braces
    doubled by the configuration loader, so it renders as the literal text it is, never as a template."""


class StartedCalls(NamedTuple):
    """What a batching tool's :meth:`Tool.start_calls` returns."""

    futures: list[asyncio.Future[Any]]  # one per call, in the order of the calls
    token: Any = None  # handed back to :meth:`Tool.call_failed` (e.g. the client that sent them)


class KillSwitchControl(Protocol):
    """A tool's kill switch as the ops server drives it: engaged, the tool refuses its actions."""

    def engage(self, reason: str) -> None:
        """Refuse actions from now on, for ``reason`` (until :meth:`release`)."""

    def release(self) -> None:
        """Undo :meth:`engage` (other causes the switch knows of, such as a file, may still block)."""

    def state(self) -> dict[str, Any]:
        """JSON-ready state; ``"engaged"`` is true while actions are refused, whatever the cause."""


class CallReply(NamedTuple):
    """How a call queued through the runner ended, for a caller that waits for it."""

    outcome: str  # succeeded | failed | dead_lettered | duplicate | rejected | cancelled | a screen's verdict
    result: Any = None
    error: str | None = None


class ToolHost(Protocol):
    """What the daemon lends its tools (:meth:`Tool.attach`): the other tools, through the same
    runner as the rules' calls, the notification queue, the agent's store and an event sink."""

    @property
    def notifications(self) -> NotificationQueue: ...

    @property
    def store(self) -> AgentStore | None:
        """Where agent runs, usage and approvals persist (None when the journal is off)."""
        ...

    def call(self, tool: str, args: dict[str, Any], ctx: CallContext) -> asyncio.Future[CallReply]:
        """Queue one call through the runner (concurrency, timeout, retries, breaker, journal, DLQ);
        the future ends with its :class:`CallReply` (``rejected`` at once if it could not be queued).
        The call is not resumed by the runner after a crash: the caller owns that."""
        ...

    def describe(self, tool: str) -> dict[str, Any] | None:
        """The tool's :meth:`Tool.schema`, or None if there is no such tool."""
        ...

    def timeout_of(self, tool: str) -> float:
        """The longest a call of ``tool`` can take, retries included (seconds)."""
        ...

    def emit(self, event: Event) -> bool:
        """Hand an event of this tool (its spec's ``emits_events``) to the rules reading it;
        False if it was dropped."""
        ...


class Tool(ABC):
    """Base of every tool type."""

    type_name: ClassVar[str]
    description: ClassVar[str] = ""
    #: JSON Schema of the arguments (an object); types override it.
    args_schema: ClassVar[dict[str, Any]] = {"type": "object"}
    #: Default concurrency when the configuration does not set one.
    default_concurrency: ClassVar[int | None] = None
    #: Capability: the tool's kill switch, if its actions can be halted by an operator (``/kill-switch``).
    kill_switch: KillSwitchControl | None = None

    def __init__(self, name: str, config: ToolConfig) -> None:
        self.name = name
        self.config = config

    @property
    def concurrency(self) -> int:
        return self.concurrency_of(self.config)

    @classmethod
    def concurrency_of(cls, config: ToolConfig) -> int:
        """Calls at once for ``config``: its ``concurrency``, or the type's default when it sets none."""
        if "concurrency" not in config.model_fields_set and cls.default_concurrency is not None:
            return cls.default_concurrency
        return config.concurrency

    @classmethod
    def common_summary(cls, config: ToolConfig) -> list[tuple[str, Any]]:
        """The fields every tool's ``reflexd check`` line ends with (its ``SPEC.summary`` adds them)."""
        return [("concurrency", cls.concurrency_of(config)), ("timeout_seconds", config.timeout_seconds)]

    @property
    def batch_limit(self) -> int:
        """Most queued calls the runner hands to :meth:`start_calls` at once; 0 (the default): the
        tool takes one call at a time through :meth:`call`."""
        return 0

    def schema(self) -> dict[str, Any]:
        """What a caller (a rule, a language model) needs to know: name, description, argument schema."""
        return {
            "name": self.name,
            "type": self.type_name,
            "description": self.config.description or self.description,
            "parameters": self.config.parameters or self.args_schema,
        }

    def attach(self, host: ToolHost) -> None:
        """Called once before :meth:`start` with what the daemon lends its tools; most ignore it."""

    def screen(self, args: dict[str, Any], ctx: CallContext) -> str | None:
        """Settle a call before it is queued: None queues it; a string is its outcome, journaled at once
        (the runner calls this only on tools whose type overrides it, and never for a resumed call)."""
        return None

    def extra_status(self) -> dict[str, Any]:
        """Type-specific fields for /status (never configuration values)."""
        return {}

    def metric_samples(self) -> list[tuple[MetricSpec, tuple[str, ...], float]]:
        """Type-specific metrics as (spec, label values after the tool's name, value); each spec is
        declared in the type's ``SPEC.metrics``."""
        return []

    async def start(self) -> None:
        """Acquire resources (open files, sessions). Raise :class:`daemon.errors.StartupError` on failure."""

    async def stop(self) -> None:
        """Release resources; must not raise."""

    @abstractmethod
    def call(self, args: dict[str, Any], ctx: CallContext) -> Any:
        """Perform the action. A coroutine function is awaited; a plain one runs in a thread."""

    async def start_calls(self, calls: Sequence[tuple[dict[str, Any], CallContext]]) -> StartedCalls:
        """Batching tools (``batch_limit`` > 0): start every call without waiting for it to end and
        return one future per call. Raising fails every call of the batch with that error; a call
        that cannot start alone gets a future that already holds its error."""
        raise NotImplementedError(f"{type(self).__name__} does not batch calls")

    async def call_failed(self, exc: BaseException, token: Any) -> BaseException:
        """Batching tools: the error the runner should judge (retryable or not) for a call whose
        future failed with ``exc``; ``token`` is :attr:`StartedCalls.token` of its batch."""
        return exc
