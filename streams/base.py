"""The source contract: what every source type implements, and its shared config.

A source is driven by the engine (:class:`streams.reconnect.Reconnector`):

- ``connect()`` opens one session (raises on failure);
- ``read()`` hands events to ``self.queue`` until the session ends (returns or raises);
- ``close()`` releases the session (always called, also after a failure);
- ``classify_error(exc)`` says whether the engine should try again (True) or give up.

Sources never write their own retry loop and never block on slow consumers: they put
events into their bounded queue, whose ``when_full`` policy decides.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from daemon.logs import RateLimitedLog, get_logger
from streams.backoff import ReconnectConfig
from streams.decode import MAX_FUTURE_SECONDS
from streams.event import Event
from streams.metrics import MetricSpec
from streams.queue import BoundedQueue, QueueConfig, WhenFull

__all__ = ["Source", "SourceConfig", "SourceStats", "StartAt"]

#: Where ``reflexd record`` starts a source that keeps a position (Kafka): its oldest record, only
#: what arrives from now on, or the first record at or after a time (an int: epoch milliseconds).
StartAt = Literal["earliest", "latest"] | int


class SourceConfig(BaseModel):
    """Fields every source has. Each source type subclasses this next to its code."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    type: str = Field(description="Component type.")
    queue: QueueConfig = Field(
        default_factory=QueueConfig, description="Bounded queue in front of the rules."
    )
    reconnect: ReconnectConfig = Field(
        default_factory=ReconnectConfig, description="Backoff between sessions."
    )
    max_future_seconds: float | None = Field(
        MAX_FUTURE_SECONDS,
        gt=0,
        description="An event whose time is further ahead than this (of the wall clock when it arrives; "
        "of the recording's own progress when replayed) is counted as `future` and dropped: a time in "
        "the wrong unit must not move the rules' watermark. null: no bound.",
    )

    #: Source types whose reader must never wait for room set why (``when_full: block`` is refused).
    block_refused: ClassVar[str | None] = None

    @field_validator("queue")
    @classmethod
    def _block_allowed(cls, value: QueueConfig) -> QueueConfig:
        if value.when_full == "block" and cls.block_refused:
            raise ValueError(
                f"when_full: block is not allowed for {cls.block_refused}; use drop_oldest or drop_newest"
            )
        return value


class SourceStats:
    """Plain counters, read by /status and /metrics at scrape time (never locked, never logged per event)."""

    __slots__ = (
        "attempts",
        "connected_since",
        "connects",
        "decode_errors",
        "disconnects",
        "errors",
        "filtered",
        "future",
        "gaps",
        "last_error",
        "last_error_at",
        "last_event_at",
        "next_attempt_in",
        "received",
        "reconnect_attempts",
        "state",
    )

    def __init__(self) -> None:
        self.state = "idle"  # idle | connecting | connected | backoff | failed | finished | stopped
        self.attempts = 0  # sessions started (first connect included)
        self.reconnect_attempts = 0  # sessions started after the first
        self.connects = 0  # sessions that connected
        self.disconnects = 0  # connected sessions that ended
        self.gaps = 0  # gap events emitted
        self.received = 0  # messages received from the peer
        self.decode_errors = 0  # undecodable messages, and messages whose key is not a scalar
        self.future = 0  # event time beyond max_future_seconds: dropped
        self.filtered = 0  # messages the source's `where:` refused (intentional, not errors)
        self.errors: dict[str, int] = {}  # other per-reason error counts (e.g. message_too_big)
        self.last_event_at: float | None = None  # wall clock of the last data event
        self.connected_since: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.next_attempt_in: float | None = None

    def count_error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        now = time.time()
        return {
            "state": self.state,
            "attempts": self.attempts,
            "reconnect_attempts": self.reconnect_attempts,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "gaps": self.gaps,
            "received": self.received,
            "decode_errors": self.decode_errors,
            "future": self.future,
            "filtered": self.filtered,
            "errors": dict(self.errors),
            "last_event_age_seconds": None
            if self.last_event_at is None
            else round(now - self.last_event_at, 3),
            "connected_for_seconds": None
            if self.connected_since is None
            else round(now - self.connected_since, 3),
            "last_error": self.last_error,
        }


class Source(ABC):
    """Base of every source type."""

    type_name: ClassVar[str]
    #: Sources that can lose data across reconnects emit ``gap`` events; replay cannot.
    emits_gaps: ClassVar[bool] = True
    #: ``queue.when_full`` when the configuration does not say.
    default_when_full: ClassVar[WhenFull] = "block"
    #: Events carry an acknowledgement (``event.ack``) that must be released when finished.
    acknowledges: ClassVar[bool] = False

    def __init__(self, name: str, config: SourceConfig) -> None:
        self.name = name
        self.config = config
        self.queue: BoundedQueue[Event] = BoundedQueue(
            config.queue.max_events, config.queue.when_full or self.default_when_full
        )
        self.stats = SourceStats()
        self.stopping = False
        self._future_log = RateLimitedLog(
            get_logger(f"source.{getattr(self, 'type_name', 'source')}"),
            "event time too far ahead (wrong time_unit?); event dropped",
            interval=10.0,
        )

    def drop_future(self, ts: float, reference: float, sample: Any) -> None:
        """Count an event whose time ``ts`` is more than ``max_future_seconds`` past ``reference``
        (the wall clock when it arrived, or a replay's progress) and log it rate-limited, with a sample."""
        self.stats.future += 1
        if isinstance(sample, bytes | bytearray | memoryview):
            sample = bytes(sample[:200]).decode("utf-8", "replace")
        else:
            sample = repr(sample)[:200]
        self._future_log.hit(
            source=self.name,
            ts=ts,
            ahead_seconds=round(ts - reference, 3),
            max_future_seconds=self.config.max_future_seconds,
            sample=sample,
        )

    def observe_only(self, start: StartAt | None) -> None:
        """Called by ``reflexd record`` before the first ``connect()``: read as an observer that takes
        nothing from a daemon reading the same peer (no consumer group, nothing committed or
        acknowledged upstream), from ``start`` (None: where the type naturally starts, i.e. what
        arrives from now on). A type that shares its peer's records with other readers (a group, a
        work queue) overrides this; a type that cannot start at ``start`` raises ``ValueError``."""
        if start is not None:
            raise ValueError(f"a {self.type_name} source reads what arrives; it cannot start at {start!r}")

    def admit(self, keep: Callable[[Event], Any], event: Event) -> bool:
        """Whether ``event`` passes the source's ``where:`` filter ``keep``; a refused event (false, or
        the expression cannot evaluate it: a field it reads is missing) is counted as ``filtered``."""
        try:
            if keep(event):
                return True
        except Exception:  # a control frame without the field is what the filter is for
            pass
        self.stats.filtered += 1
        return False

    def begin_stop(self) -> None:
        """The daemon is stopping: the next ``close()`` may keep what ``finish()`` still needs."""
        self.stopping = True

    async def finish(self) -> None:
        """Called once the queue and the tools have drained (e.g. commit offsets); must not raise."""

    @abstractmethod
    async def connect(self) -> None:
        """Open one session; raise on failure."""

    @abstractmethod
    async def read(self) -> None:
        """Queue events until the session ends."""

    @abstractmethod
    async def close(self) -> None:
        """Release the session; must not raise."""

    @classmethod
    def queue_summary(cls, config: SourceConfig) -> str:
        """``max_events/when_full`` of ``config``'s queue (the type's default policy when it sets none),
        as ``reflexd check`` shows it (each type's ``SPEC.summary`` adds it)."""
        return f"{config.queue.max_events}/{config.queue.when_full or cls.default_when_full}"

    def extra_status(self) -> dict[str, Any]:
        """Type-specific fields for /status (never configuration values)."""
        return {}

    def metric_samples(self) -> list[tuple[MetricSpec, float]]:
        """Type-specific metrics as (spec, value), labelled by source; each spec is declared in the
        type's ``SPEC.metrics`` (counters and gauges)."""
        return []

    def classify_error(self, exc: BaseException) -> bool:
        """True if the engine should try again after ``exc``.

        The default honours a ``retryable`` attribute (set by :class:`daemon.errors.SourceError`
        and its subclasses) and retries everything else: a daemon that must stay up for weeks
        backs off from the unexpected rather than stopping.
        """
        return bool(getattr(exc, "retryable", True))

    @property
    def idle_timeout(self) -> float | None:
        """Seconds without data after which the source is not ready (None: no such limit)."""
        return None

    def readiness(self, now: float | None = None) -> tuple[bool, str]:
        """(ready, reason): connected, and delivering data within its idle timeout."""
        stats = self.stats
        if stats.state != "connected":
            detail = f" ({stats.last_error})" if stats.last_error else ""
            return False, f"{stats.state}{detail}"
        idle = self.idle_timeout
        if idle is None:
            return True, "connected"
        now = time.time() if now is None else now
        last = stats.last_event_at
        since = stats.connected_since or now
        if last is None or last < since:
            if now - since > idle:
                return False, f"connected but no data for {now - since:.1f}s"
            return False, "connected, waiting for the first message"
        if now - last > idle:
            return False, f"no data for {now - last:.1f}s"
        return True, "connected"
