"""The tool runner: one lane per tool, each with a bounded backlog and N workers.

Rules ``submit()`` calls synchronously (they run inside reactivex ``on_next``). A lane whose
backlog reaches ``max_pending`` marks the runner ``full``; the dispatcher feeding the rules
checks that flag after each event and waits for room, so the pressure moves back to the
source's bounded queue and its ``when_full`` policy. A lane accepts at most
``max_pending + CALL_SLACK`` calls (the slack absorbs the calls of the event that filled it);
past that a call is rejected and counted, never silently lost.

A call whose event carries an acknowledgement (``event.ack``, Kafka records) holds it until
the call has ended — succeeded, or failed for good — so the record's offset is committed only
after every tool it triggered has finished. A rejected call keeps its hold: the record is never
committed and is delivered again after a restart.

A worker takes calls and runs them to their end in three layers, the same for every tool:

- :meth:`ToolRunner._invoke` — the outcome bookkeeping, in one place: deduplication by the
  idempotency key, the circuit breaker, counters, the journal, the dead-letter queue and the
  release of acknowledgements;
- :meth:`ToolRunner._attempts` — attempt after attempt: each call's outcome is judged (ended,
  or retried after the retry policy's backoff, :func:`streams.backoff.backoff_delay`) until
  every call has ended;
- :meth:`ToolRunner._attempt` — one attempt under the tool's timeout. The one-call path awaits
  a coroutine tool on the loop or runs a plain function in a thread pool (its exceptions come
  back to the runner, which counts and logs them with the traceback, rate-limited); a batching
  tool (``batch_limit`` > 0) gets several queued calls at once through its own mode,
  :mod:`handlers.batching`, and one timeout covers the batch's attempt.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import inspect
import logging
import operator
import random
import time
import traceback
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from daemon.errors import ShutdownTimeout, ToolError
from daemon.logs import RateLimitedLog, get_logger
from handlers.base import CallContext, CallReply, CircuitConfig, RetryConfig, Tool
from handlers.batching import BatchAttempt, Outcome, lane_shape
from handlers.journal import BatchCallJournal, CallJournal
from streams.ack import Ack
from streams.backoff import backoff_delay
from streams.event import event_record
from streams.tracing import Span

__all__ = ["DURATION_BUCKETS", "CircuitBreaker", "Invocation", "ToolRunner", "ToolStats"]

log = get_logger("runner")

CALL_SLACK = 256
CIRCUIT_OPEN = "circuit open: the tool failed too often"
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class _AttemptTimeout(Exception):
    def __init__(self, seconds: float, attempt: int) -> None:
        super().__init__(f"timed out after {seconds:g}s (attempt {attempt})")


def _retryable(policy: RetryConfig, exc: BaseException) -> bool:
    """Retry what the tool marked retryable, and timeouts if the policy says so; never bugs."""
    if isinstance(exc, _AttemptTimeout):
        return policy.retry_timeouts
    return isinstance(exc, ToolError) and exc.retryable


def _retry_delay(
    policy: RetryConfig, rng: random.Random, failed_attempt: int, retry_after: float | None
) -> float:
    """The policy's backoff after attempt ``failed_attempt``, never sooner than ``retry_after``."""
    delay = backoff_delay(policy, failed_attempt, rng.random())
    return max(delay, retry_after) if retry_after is not None else delay


_NOT_ENDED: tuple[int, Any, str | None] = (0, None, None)


def _retry_after(exc: BaseException) -> float | None:
    return exc.retry_after if isinstance(exc, ToolError) else None


def _call_spans(tool: str, invs: list[Invocation]) -> list[Span | None] | None:
    """A span per traced call (a child of the span it was submitted under), which its attempts run
    under: ``invs`` are given contexts carrying it. None when no call is traced (tracing off)."""
    spans: list[Span | None] | None = None
    for i, inv in enumerate(invs):
        parent = inv.ctx.trace
        if parent is None:
            continue
        if spans is None:
            spans = [None] * len(invs)
        ctx = inv.ctx
        attributes = {"reflexd.tool": tool, "reflexd.rule": ctx.rule or "", "reflexd.call_id": ctx.call_id}
        span = parent.child(f"call {tool}", attributes)
        spans[i] = span
        invs[i] = inv._replace(ctx=ctx._replace(trace=span))
    return spans


def _attempt_spans(calls: list[tuple[dict[str, Any], CallContext]], attempt: int) -> list[Span | None]:
    """A span per traced call for this attempt, under its call span; the tool gets it in ``ctx.trace``
    (a webhook or Kafka tool sends its traceparent on, the llm tool's model calls are its children)."""
    spans: list[Span | None] = []
    for k, (args, ctx) in enumerate(calls):
        parent = ctx.trace
        if parent is None:
            spans.append(None)
            continue
        span = parent.child(f"attempt {attempt}", {"reflexd.attempt": attempt})
        spans.append(span)
        calls[k] = (args, ctx._replace(trace=span))
    return spans


def _error_text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, _AttemptTimeout | ToolError) else f"{type(exc).__name__}: {exc}"


class Invocation(NamedTuple):
    args: dict[str, Any]
    ctx: CallContext
    ack: Ack | None  # the record this call must finish before it may be committed (Kafka)
    done: asyncio.Future[CallReply] | None = None  # resolved with how it ended (replays, the llm tool)
    dead_letter: bool = True  # park a final failure in the DLQ (a replay keeps its original entry instead)
    journal_id: str | None = None  # its journal row, written when it was queued (_LATER: when it ends)


#: ``Invocation.journal_id`` of a Kafka record's call to a batching tool: journaled when it ends,
#: with the calls it ran with (``BatchCallJournal.calls_ended``, if the journal is one), not when queued
_LATER = ""
_NO_SECRETS: frozenset[str] = frozenset()
_NO_RULE = object()  # no rule's secret names looked up yet (a rule may be None)
#: fields of an invocation, its context and its ``_attempts`` outcome, by index (an attribute of a named
#: tuple is a descriptor call): the columns ``calls_succeeded`` takes
_CTX = operator.itemgetter(Invocation._fields.index("ctx"))
_ARGS = operator.itemgetter(Invocation._fields.index("args"))
_RULE = operator.itemgetter(CallContext._fields.index("rule"))
_EVENT = operator.itemgetter(CallContext._fields.index("event"))
_CALL_ID = operator.itemgetter(CallContext._fields.index("call_id"))
_ATTEMPTS = operator.itemgetter(0)
_RESULT = operator.itemgetter(1)


#: ``Invocation(...)`` without the NamedTuple's ``__new__`` (reached through ``type.__call__``), for
#: :meth:`ToolRunner.submit`: the same value, every field given, ~0.2 µs cheaper per call
_new_invocation = tuple.__new__


class CircuitBreaker:
    """Per tool: opens after ``failures`` consecutive failed calls, lets one probe through after
    ``open_seconds``, closes again when the probe succeeds. Each change of state is logged once,
    naming the tool: opened at warning, half-open and closed at info."""

    __slots__ = ("consecutive", "failures", "open_seconds", "opened_at", "probing", "state", "tool")

    def __init__(self, config: CircuitConfig, tool: str = "") -> None:
        self.tool = tool
        self.failures = config.failures
        self.open_seconds = config.open_seconds
        self.state = "closed"  # closed | open | half_open
        self.consecutive = 0
        self.opened_at = 0.0
        self.probing = False

    def allow(self) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open" and time.monotonic() - self.opened_at >= self.open_seconds:
            self.state = "half_open"
            log.info(
                "circuit half-open: letting one probe call through", extra={"fields": {"tool": self.tool}}
            )
        if self.state == "half_open" and not self.probing:
            self.probing = True
            return True
        return False

    def success(self) -> None:
        if self.state != "closed":
            log.info("circuit closed", extra={"fields": {"tool": self.tool}})
            self.state = "closed"
        self.consecutive = 0
        self.probing = False

    def failure(self) -> None:
        self.consecutive += 1
        self.probing = False
        if self.failures and (self.state == "half_open" or self.consecutive >= self.failures):
            if self.state != "open":
                log.warning(
                    "circuit opened", extra={"fields": {"tool": self.tool, "failures": self.consecutive}}
                )
            self.state = "open"
            self.opened_at = time.monotonic()

    @property
    def code(self) -> int:
        return {"closed": 0, "open": 1, "half_open": 2}[self.state]


class ToolStats:
    """Counters and a latency histogram of one tool, read at scrape time."""

    __slots__ = (
        "attempts",
        "buckets",
        "calls",
        "dead_lettered",
        "deduplicated",
        "duration_sum",
        "failures",
        "in_flight",
        "last_error",
        "rejected",
        "retries",
        "screened",
        "screened_by",
        "short_circuited",
        "succeeded",
        "timeouts",
    )

    def __init__(self) -> None:
        self.calls = 0  # invocations started
        self.attempts = 0  # attempts, retries included
        self.retries = 0  # attempts after the first
        self.succeeded = 0  # invocations that succeeded (possibly after retries)
        self.failures = 0  # invocations that failed for good (retries exhausted or not retryable)
        self.timeouts = 0  # attempts that ran past timeout_seconds
        self.deduplicated = 0  # skipped: the idempotency key already succeeded
        self.dead_lettered = 0  # parked in the dead-letter queue after failing
        self.short_circuited = 0  # refused while the circuit was open
        self.rejected = 0  # backlog over its hard bound
        self.screened = 0  # settled by the tool's screen before queueing (llm: deduplicated, over budget)
        self.screened_by: dict[str, int] = {}  # the same, by outcome
        self.in_flight = 0
        self.duration_sum = 0.0
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # last = +Inf
        #: the newest failure for good: (wall clock, the error as the tool gave it); /status shows its
        #: first line with the secrets taken out
        self.last_error: tuple[float, str] | None = None

    def observe(self, seconds: float, calls: int = 1) -> None:
        """``calls`` calls that each took ``seconds`` (the calls of one batch end together)."""
        self.duration_sum += seconds * calls
        # bucket i: ≤ bound i; last: +Inf
        self.buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)] += calls

    def failed(self, error: str) -> None:
        """A call failed for good with ``error``."""
        self.failures += 1
        self.last_error = (time.time(), error)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of the call durations, estimated from the histogram as Prometheus's
        ``histogram_quantile`` does (linear within a bucket; the +Inf bucket answers its lower bound);
        None before any call ended."""
        total = sum(self.buckets)
        if total == 0:
            return None
        rank = q * total
        below = 0
        for i, count in enumerate(self.buckets):
            if count and below + count >= rank:
                if i == len(DURATION_BUCKETS):
                    return DURATION_BUCKETS[-1]
                lower = DURATION_BUCKETS[i - 1] if i else 0.0
                upper = DURATION_BUCKETS[i]
                return lower + (upper - lower) * (rank - below) / count
            below += count
        return DURATION_BUCKETS[-1]  # pragma: no cover - the loop reaches rank


class _Backlog:
    """A lane's queued calls, taken by its workers: a deque, not an :class:`asyncio.Queue` (whose
    put/get/qsize/full cost ~10 % of the daemon's CPU when every record fires), with the same
    semantics the runner relies on: a bound (``put_nowait`` raises :class:`asyncio.QueueFull`),
    one idle worker woken per call queued, and :meth:`join` until every call taken has been
    marked :meth:`done`."""

    __slots__ = ("_getters", "_idle", "items", "maxsize", "unfinished")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: deque[Invocation] = deque()
        self.unfinished = 0  # queued, or taken and not yet done
        self._getters: deque[asyncio.Future[None]] = deque()
        self._idle = asyncio.Event()
        self._idle.set()

    def qsize(self) -> int:
        return len(self.items)

    def full(self) -> bool:
        return len(self.items) >= self.maxsize

    def put_nowait(self, inv: Invocation) -> None:
        items = self.items
        if len(items) >= self.maxsize:
            raise asyncio.QueueFull
        items.append(inv)
        if self.unfinished == 0:
            self._idle.clear()
        self.unfinished += 1
        getters = self._getters
        while getters:
            getter = getters.popleft()
            if not getter.done():
                getter.set_result(None)
                break

    async def take(self, size: int) -> list[Invocation]:
        """Wait for a call, then take up to ``size`` queued calls (in order)."""
        items = self.items
        while not items:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                try:
                    self._getters.remove(getter)
                except ValueError:
                    pass
                if items and not getter.cancelled():  # woken, then cancelled: wake another worker
                    while self._getters:
                        other = self._getters.popleft()
                        if not other.done():
                            other.set_result(None)
                            break
                raise
        if len(items) <= size:
            taken = list(items)
            items.clear()
            return taken
        popleft = items.popleft
        return [popleft() for _ in range(size)]

    def done(self, n: int) -> None:
        """``n`` calls taken earlier have ended (or were cut off)."""
        self.unfinished -= n
        if self.unfinished <= 0:
            self.unfinished = 0
            self._idle.set()

    async def join(self) -> None:
        """Until every queued call has been taken and is done."""
        await self._idle.wait()


class _Lane:
    __slots__ = (
        "batch",
        "breaker",
        "config_log",
        "fail_log",
        "full",
        "is_async",
        "later",
        "max_pending",
        "queue",
        "screen",
        "stats",
        "tool",
        "worker_count",
        "workers",
    )

    def __init__(self, tool: Tool) -> None:
        self.tool = tool
        self.worker_count, self.batch = lane_shape(tool)  # batch 0: one call at a time
        #: a Kafka record's call is journaled when it ends, with the others of its batch (_LATER)
        self.later = False
        self.max_pending = tool.config.max_pending
        self.queue = _Backlog(self.max_pending + CALL_SLACK)
        self.stats = ToolStats()
        self.is_async = inspect.iscoroutinefunction(tool.call)
        self.full = False
        self.workers: list[asyncio.Task[None]] = []
        self.fail_log = RateLimitedLog(log, "tool call failed", level=logging.WARNING, interval=10.0)
        #: a failure the configuration causes (ToolError.permanent): one line, apart from the others
        self.config_log = RateLimitedLog(
            log, "tool call failed: configuration problem", level=logging.ERROR, interval=60.0
        )
        self.breaker = CircuitBreaker(tool.config.circuit, tool.name)
        #: the tool's own gate before a call is queued, if its type has one (Tool.screen)
        self.screen = tool.screen if type(tool).screen is not Tool.screen else None


class ToolRunner:
    """Runs tool calls with per-tool concurrency, timeout and a bounded backlog."""

    def __init__(
        self,
        tools: Mapping[str, Tool],
        *,
        journal: CallJournal | None = None,
        secret_args: Mapping[tuple[str | None, str], frozenset[str]] | None = None,
    ) -> None:
        self.tools = dict(tools)
        self.journal = journal
        #: the journal, if it records calls that ended together (the SQLite journal does)
        self._batch_journal = journal if isinstance(journal, BatchCallJournal) else None
        self._secret_args = dict(secret_args or {})
        self._lanes = {name: _Lane(tool) for name, tool in self.tools.items()}
        for lane in self._lanes.values():
            lane.later = bool(lane.batch) and self._batch_journal is not None
        self._full_lanes = 0
        self.full = False  # read by the dispatcher after every event: keep it a plain attribute
        self._room = asyncio.Event()
        self._room.set()
        self._executor: ThreadPoolExecutor | None = None
        self._started: list[Tool] = []
        self._rng = random.Random()
        self._closed = False

    # -- submitting (hot path) ---------------------------------------------------------------

    def submit(
        self,
        tool: str,
        args: dict[str, Any],
        ctx: CallContext,
        *,
        done: asyncio.Future[CallReply] | None = None,
        dead_letter: bool = True,
        resumable: bool = True,
        screen: bool = True,
    ) -> bool:
        """Queue one call; False if it had to be rejected (counted).

        ``done`` gets the call's :class:`CallReply` when it ends; ``resumable=False`` leaves a call cut
        off by a crash to its caller (the llm tool resumes its own); ``screen=False`` skips the tool's
        :meth:`~handlers.base.Tool.screen` (a call being resumed was admitted before)."""
        lane = self._lanes[tool]
        if self._closed:
            lane.stats.rejected += 1
            if ctx.event is not None and (closed_ack := ctx.event.ack) is not None:
                closed_ack.hold()  # stopping: leave the record uncommitted
            if done is not None and not done.done():
                done.set_result(CallReply("rejected", None, "the daemon is stopping"))
            return False
        if screen and lane.screen is not None:
            verdict = lane.screen(args, ctx)
            if verdict is not None:  # settled before queueing: journaled as its outcome, nothing held
                stats = lane.stats
                stats.screened += 1
                stats.screened_by[verdict] = stats.screened_by.get(verdict, 0) + 1
                if self.journal is not None:
                    row = self.journal.new_id()
                    hide = self._secret_args.get((ctx.rule, tool), frozenset())
                    self.journal.started(row, ctx.call_id, ctx.rule, tool, args, None, hide, resumable=False)
                    self.journal.ended(row, ctx.call_id, 0, verdict, None, None)
                if done is not None and not done.done():
                    done.set_result(CallReply(verdict))
                return True
        event = ctx.event
        ack = event.ack if event is not None else None
        try:
            if self.journal is None:
                journal_id = None
            elif lane.later and ack is not None and resumable:  # as _journal_queued decides, inline
                journal_id = _LATER
            else:
                journal_id = self._journal_queued(lane, args, ctx, resumable)
            inv = _new_invocation(Invocation, (args, ctx, ack, done, dead_letter, journal_id))
            lane.queue.put_nowait(inv)
        except asyncio.QueueFull:
            lane.stats.rejected += 1
            lane.fail_log.hit(tool=tool, rule=ctx.rule, error="backlog above max_pending; call rejected")
            if ack is not None:
                ack.hold()  # never released: the record stays uncommitted and is delivered again
            if done is not None and not done.done():
                done.set_result(CallReply("rejected", None, f"tool {tool}: backlog full, call rejected"))
            return False
        if ack is not None:
            ack.hold()
        if not lane.full and len(lane.queue.items) >= lane.max_pending:
            lane.full = True
            self._full_lanes += 1
            self.full = True
            self._room.clear()
        return True

    def _journal_queued(
        self, lane: _Lane, args: dict[str, Any], ctx: CallContext, resumable: bool = True
    ) -> str | None:
        """Journal the call as soon as it is accepted: a crash before it ran still leaves a row to resume."""
        journal = self.journal
        if journal is None:
            return None
        event = ctx.event
        # a Kafka record: redelivery, not the journal, resumes it after a crash, so its row keeps only
        # where the record came from (its data stays in Kafka, and in the DLQ if it fails)
        redelivered = resumable and event is not None and event.ack is not None
        if redelivered and lane.later:
            return _LATER  # one row for the calls that end alike with it (see _invoke); none if refused
        if lane.queue.full():
            return None  # put_nowait is about to refuse it: nothing to resume
        journal_id = journal.new_id()
        name = lane.tool.name
        secrets = self._secret_args.get((ctx.rule, name), _NO_SECRETS)
        journal.started(
            journal_id,
            ctx.call_id,
            ctx.rule,
            name,
            args,
            event_record(event, data=not redelivered),
            secrets,
            resumable=resumable and not redelivered,
        )
        return journal_id

    def _journal_now(self, journal: CallJournal, lane: _Lane, inv: Invocation) -> str:
        """The row of a call journaled when it ends (``_LATER``) that ends on its own: failed, or cut off."""
        journal_id = journal.new_id()
        ctx = inv.ctx
        name = lane.tool.name
        secrets = self._secret_args.get((ctx.rule, name), _NO_SECRETS)
        record = event_record(ctx.event, data=False)
        journal.started(journal_id, ctx.call_id, ctx.rule, name, inv.args, record, secrets, resumable=False)
        return journal_id

    async def wait_for_room(self) -> None:
        await self._room.wait()

    def _taken(self, lane: _Lane) -> None:
        if lane.full and len(lane.queue.items) < lane.max_pending:
            lane.full = False
            self._full_lanes -= 1
            if self._full_lanes == 0:
                self.full = False
                self._room.set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every tool (raising StartupError if one cannot), then the workers."""
        sync_slots = sum(lane.tool.concurrency for lane in self._lanes.values() if not lane.is_async)
        if sync_slots:
            self._executor = ThreadPoolExecutor(
                max_workers=min(sync_slots, 64), thread_name_prefix="reflexd-tool"
            )
        for lane in self._lanes.values():
            await lane.tool.start()
            self._started.append(lane.tool)
        for name, lane in self._lanes.items():
            lane.workers = [
                asyncio.create_task(self._work(lane), name=f"reflexd:tool:{name}:{i}")
                for i in range(lane.worker_count)
            ]

    async def _work(self, lane: _Lane) -> None:
        """One worker: takes a call (or, for a batching tool, every queued call up to its batch
        size) and runs it to its end."""
        queue = lane.queue
        take = queue.take
        size = lane.batch or 1
        while True:
            invs = await take(size)
            self._taken(lane)
            try:
                await self._invoke(lane, invs)
            except Exception:  # never expected (_invoke parks what it cannot finish): keep the worker
                log.exception("tool worker failed", extra={"fields": {"tool": lane.tool.name}})
            finally:
                queue.done(len(invs))

    async def _invoke(self, lane: _Lane, invs: list[Invocation]) -> None:
        """Invocations taken together: each deduplicated by its key and guarded by the circuit
        breaker; the rest run their attempts under the tool's timeout, retried per its ``retry``
        policy; a final failure is parked in the dead-letter queue before the record (if any) is
        released.

        Every attempt of a call carries the same ``call_id`` (the idempotency key) and its own
        ``attempt``. A call cut off by shutdown keeps its record's hold: it is never committed.
        """
        stats = lane.stats
        journal = self.journal
        n = len(invs)
        stats.calls += n
        stats.in_flight += n
        outcomes: list[str | None] = [None] * n
        replies: dict[int, tuple[Any, str | None]] = {}  # result / error of the calls someone waits for
        # a span per traced call (tracing on); one untraced call, the common case, costs one test
        spans = None if n == 1 and invs[0].ctx.trace is None else _call_spans(lane.tool.name, invs)
        breaker = lane.breaker
        #: calls journaled as they end, together (``_LATER``): what ``calls_ended`` takes
        later: list[tuple[Any, ...]] = []
        #: those of them that succeeded, by their index in ``run`` / ``ended`` (their entries of ``later``
        #: are built only if they cannot be journaled column by column, see _journal_ended)
        succeeded_later: list[int] = []
        run: list[int] = []
        ended: list[tuple[int, Any, str | None]] = []
        begun = time.time()
        secret_args = self._secret_args
        name = lane.tool.name
        try:
            if breaker.state == "closed" and (journal is None or not self._any_succeeded(journal, invs)):
                run = list(range(n))  # nothing to deduplicate, nothing refused
            else:
                run = []
                for i, inv in enumerate(invs):
                    if journal is not None and journal.succeeded(inv.ctx.call_id):
                        stats.deduplicated += 1
                        outcomes[i] = "duplicate"
                        if inv.journal_id:
                            journal.ended(inv.journal_id, inv.ctx.call_id, 0, "duplicate", None, None)
                        elif inv.journal_id is not None:
                            ctx = inv.ctx
                            hide = secret_args.get((ctx.rule, name), _NO_SECRETS)
                            later.append(
                                (ctx.call_id, ctx.rule, "duplicate", inv.args, hide, ctx.event, 0, None)
                            )
                    elif not breaker.allow():
                        stats.short_circuited += 1
                        stats.failed(CIRCUIT_OPEN)
                        replies[i] = (None, CIRCUIT_OPEN)
                        outcomes[i] = await self._give_up(lane, inv, CIRCUIT_OPEN, 0)
                    else:
                        run.append(i)
            if not run:
                return
            ended = await self._attempts(
                lane, invs if len(run) == n else [invs[i] for i in run], spans is not None
            )
            for k, (attempts, result, error) in enumerate(ended):
                i = run[k]  # indexing, not zip(..., strict=True), which costs ~0.4 µs per call here
                inv = invs[i]
                if inv.done is not None:
                    replies[i] = (result, error)
                if error is None:
                    stats.succeeded += 1
                    if breaker.consecutive or breaker.state != "closed" or breaker.probing:
                        breaker.success()  # otherwise a no-op: skip the call
                    outcomes[i] = "succeeded"
                    if journal is None or (row := inv.journal_id) is None:
                        pass
                    elif row:
                        journal.ended(row, inv.ctx.call_id, attempts, "succeeded", None, result)
                    else:
                        succeeded_later.append(k)
                else:
                    stats.failed(error)
                    breaker.failure()
                    outcomes[i] = await self._give_up(lane, inv, error, attempts)
        except Exception as exc:
            # a bug in the runner or the journal, not in the tool: the calls still without an
            # outcome go to the dead-letter queue (their records stay retrievable) and the lane goes on
            log.exception("tool call bookkeeping failed", extra={"fields": {"tool": lane.tool.name}})
            for i, inv in enumerate(invs):
                if outcomes[i] is None:
                    outcomes[i] = await self._give_up(
                        lane, inv, f"runner error: {type(exc).__name__}: {exc}", 0
                    )
        finally:
            stats.in_flight -= n
            if journal is not None:
                self._journal_ended(journal, lane, invs, outcomes, later, begun, run, ended, succeeded_later)
            for i, inv in enumerate(invs):
                outcome = outcomes[i]
                if inv.done is not None and not inv.done.done():
                    result, error = replies.get(i, (None, None))
                    inv.done.set_result(CallReply(outcome or "cancelled", result, error))
                if inv.ack is not None and outcome is not None:
                    inv.ack.release()  # cut off (outcome None): the record stays unfinished
            if spans is not None:
                for i, span in enumerate(spans):
                    if span is not None:
                        outcome = outcomes[i] or "cancelled"
                        span.set({"reflexd.outcome": outcome})
                        span.end(None if outcome in ("succeeded", "duplicate") else outcome)

    def _any_succeeded(self, journal: CallJournal, invs: list[Invocation]) -> bool:
        """Whether the key of any of ``invs`` already succeeded (one set test for them all, if the
        journal can answer so)."""
        if self._batch_journal is not None:
            return self._batch_journal.succeeded_any([inv.ctx.call_id for inv in invs])
        succeeded = journal.succeeded
        return any(succeeded(inv.ctx.call_id) for inv in invs)

    def _journal_ended(
        self,
        journal: CallJournal,
        lane: _Lane,
        invs: list[Invocation],
        outcomes: list[str | None],
        later: list[tuple[Any, ...]],
        begun: float,
        run: list[int],
        ended: list[tuple[int, Any, str | None]],
        succeeded_later: list[int],
    ) -> None:
        """Journal the calls of ``invs`` left to journal when they end (``_LATER``): those that ended
        alike together, those cut off (shutdown) each as running. Those that succeeded are
        ``succeeded_later``, indexes in ``run`` and ``ended``: when they are all of ``invs`` and have one
        rule (a Kafka tool's batch, the common case), their columns go to ``calls_succeeded`` as they
        are; otherwise each becomes an entry of ``later``, after its duplicates."""
        try:
            if succeeded_later:
                n = len(succeeded_later)
                ctxs = list(map(_CTX, invs))
                rule = ctxs[0].rule
                batch_journal = self._batch_journal
                if n == len(invs) and batch_journal is not None and list(map(_RULE, ctxs)).count(rule) == n:
                    secrets = self._secret_args.get((rule, lane.tool.name), _NO_SECRETS)
                    batch_journal.calls_succeeded(
                        lane.tool.name,
                        begun,
                        rule,
                        secrets,
                        list(map(_CALL_ID, ctxs)),
                        list(map(_ARGS, invs)),
                        list(map(_EVENT, ctxs)),
                        list(map(_ATTEMPTS, ended)),
                        list(map(_RESULT, ended)),
                    )
                    return
                self._later_entries(lane, invs, later, run, ended, succeeded_later)
            if later and self._batch_journal is not None:
                self._batch_journal.calls_ended(lane.tool.name, begun, later)
            if len(later) < len(invs):
                for i, inv in enumerate(invs):
                    if outcomes[i] is None and inv.journal_id == _LATER:
                        self._journal_now(journal, lane, inv)
        except Exception:  # the outcomes stand; the records are released as they would be
            log.exception("could not journal tool calls", extra={"fields": {"tool": lane.tool.name}})

    def _later_entries(
        self,
        lane: _Lane,
        invs: list[Invocation],
        later: list[tuple[Any, ...]],
        run: list[int],
        ended: list[tuple[int, Any, str | None]],
        succeeded_later: list[int],
    ) -> None:
        """The entries of ``later`` (what ``calls_ended`` takes) of the calls that succeeded, in order."""
        secret_args = self._secret_args
        name = lane.tool.name
        secrets_rule: Any = _NO_RULE  # the rule ``secrets`` are the secret argument names of
        secrets = _NO_SECRETS
        for k in succeeded_later:
            inv = invs[run[k]]
            attempts, result, _ = ended[k]
            ctx = inv.ctx
            if ctx.rule is not secrets_rule:  # the calls of a batch mostly have one rule
                secrets_rule = ctx.rule
                secrets = secret_args.get((secrets_rule, name), _NO_SECRETS)
            later.append(
                (ctx.call_id, secrets_rule, "succeeded", inv.args, secrets, ctx.event, attempts, result)
            )

    async def _attempts(
        self, lane: _Lane, invs: list[Invocation], traced: bool = False
    ) -> list[tuple[int, Any, str | None]]:
        """Run the calls' attempts until each has ended; per call (attempts, result, None) on success,
        (attempts, None, error text) on failure.

        Attempt 1 runs every call. Each call's outcome is judged here, for every attempt and both
        modes: a success or a failure that is not retried (not retryable, or the last attempt)
        ends the call; the calls that failed retryably run their next attempt together, after
        the retry policy's backoff and never sooner than the longest Retry-After among them.
        """
        policy = lane.tool.config.retry
        last = policy.max_attempts
        n = len(invs)
        ended: list[tuple[int, Any, str | None]] = [_NOT_ENDED] * n  # every slot is set below
        pending: list[int] | None = None  # the indexes of this attempt's calls; None: all of them
        calls = [(inv.args, inv.ctx) for inv in invs]
        attempt = 1
        while True:
            again: list[int] = []
            retry_after: float | None = None
            spans = _attempt_spans(calls, attempt) if traced else None
            outcomes = await self._attempt(lane, calls)
            if spans is not None:
                for k, span in enumerate(spans):
                    if span is not None:
                        failed = outcomes[k][1] if k < len(outcomes) else None
                        span.end(_error_text(failed) if failed is not None else None)
            for k, (result, exc) in enumerate(outcomes):
                i = k if pending is None else pending[k]  # not zip(..., strict=True): ~0.4 µs more
                if exc is None:
                    ended[i] = (attempt, result, None)
                elif attempt < last and _retryable(policy, exc):
                    again.append(i)
                    wait = _retry_after(exc)
                    if wait is not None and (retry_after is None or wait > retry_after):
                        retry_after = wait
                else:
                    ended[i] = (attempt, None, self._failure_text(lane, invs[i], exc))
            if not again:
                return ended
            lane.stats.retries += len(again)
            await asyncio.sleep(_retry_delay(policy, self._rng, attempt, retry_after))
            attempt += 1
            pending = again
            calls = [(invs[i].args, invs[i].ctx._replace(attempt=attempt)) for i in pending]

    def _failure_text(self, lane: _Lane, inv: Invocation, exc: BaseException) -> str:
        """Log the final failure (rate-limited) and say what to journal and dead-letter."""
        if isinstance(exc, _AttemptTimeout):
            lane.fail_log.hit(tool=lane.tool.name, rule=inv.ctx.rule, error=str(exc))
            return str(exc)
        self._log_failure(lane, inv, exc)
        if isinstance(exc, ToolError):
            return exc.reason
        trace = "".join(traceback.format_exception(exc))
        return f"{type(exc).__name__}: {exc}\n{trace}"

    async def _give_up(self, lane: _Lane, inv: Invocation, error: str, attempts: int) -> str:
        """A final failure: into the dead-letter queue (durably, before the record is released)."""
        journal = self.journal
        ctx = inv.ctx
        inv_id = inv.journal_id
        if inv_id == _LATER and journal is not None:
            inv_id = self._journal_now(journal, lane, inv)
        if journal is None or not inv.dead_letter:
            if journal is not None and inv_id is not None:
                journal.ended(inv_id, ctx.call_id, attempts, "failed", error, None)
            return "failed"
        try:
            name = lane.tool.name
            secrets = self._secret_args.get((ctx.rule, name), frozenset())  # stored redacted
            await journal.dead_letter(
                ctx.call_id, ctx.rule, name, inv.args, event_record(ctx.event), error, attempts, secrets
            )
        except Exception:
            log.exception("could not write the dead-letter queue", extra={"fields": {"tool": lane.tool.name}})
            if inv.ack is not None:
                inv.ack.hold()  # not parked: keep the record uncommitted so it is delivered again
            return "failed"
        lane.stats.dead_lettered += 1
        if inv_id is not None:
            journal.ended(inv_id, ctx.call_id, attempts, "dead_lettered", error, None)
        return "dead_lettered"

    async def _attempt(self, lane: _Lane, calls: list[tuple[dict[str, Any], CallContext]]) -> list[Outcome]:
        """One attempt of each call, under one timeout: (result, None) or (None, error) per call.

        The one-call path gives the tool exactly one call; a batching tool gets them all at once
        (:class:`~handlers.batching.BatchAttempt`), collected in order.
        """
        tool = lane.tool
        stats = lane.stats
        n = len(calls)
        stats.attempts += n
        started = time.perf_counter()
        # the timeout as one timer that cancels this task (asyncio.timeout costs several times more per call)
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        loop = asyncio.get_running_loop()
        timer = loop.call_later(tool.config.timeout_seconds, expire)
        results: list[Outcome] = []
        batch = BatchAttempt(tool, calls) if lane.batch else None
        try:
            if batch is not None:
                await batch.run(results, task)
            elif lane.is_async:
                results.append((await tool.call(*calls[0]), None))
            else:
                results.append(
                    (
                        await loop.run_in_executor(self._executor, functools.partial(tool.call, *calls[0])),
                        None,
                    )
                )
        except asyncio.CancelledError as exc:
            if not expired or task.uncancel() > 0:
                raise  # cancelled from outside (shutdown), not by our timer
            timeout = _AttemptTimeout(tool.config.timeout_seconds, calls[len(results)][1].attempt)
            timeout.__cause__ = exc
            for k in range(len(results), n):
                late = await batch.ended_in_time(k) if batch is not None else None
                if late is not None:
                    results.append(late)
                    continue
                stats.timeouts += 1
                results.append((None, timeout))
        except Exception as exc:
            # the tool failed as a whole (a call raised, or a batch could not start): every call
            # still without an outcome failed with it
            results.extend((None, exc) for _ in range(n - len(results)))
        finally:
            timer.cancel()
            if batch is not None:
                batch.abandon(len(results))
            stats.observe(time.perf_counter() - started, n)
        return results

    def _log_failure(self, lane: _Lane, inv: Invocation, exc: BaseException) -> None:
        if isinstance(exc, ToolError) and exc.permanent:  # its reason is the whole story: no traceback
            lane.config_log.hit(tool=lane.tool.name, rule=inv.ctx.rule, error=exc.reason)
            return
        before = lane.fail_log.suppressed
        lane.fail_log.hit(tool=lane.tool.name, rule=inv.ctx.rule, error=f"{type(exc).__name__}: {exc}")
        if lane.fail_log.suppressed == before:  # this one was logged: add its traceback
            log.warning(
                "tool call traceback",
                exc_info=(type(exc), exc, exc.__traceback__),
                extra={"fields": {"tool": lane.tool.name}},
            )

    async def stop(self, budget: float) -> None:
        """Finish queued and running calls within ``budget`` seconds, then stop the tools.

        Raises :class:`ShutdownTimeout` naming the tools whose calls had to be cancelled.
        """
        self._closed = True
        self._room.set()
        cut: list[str] = []
        try:
            async with asyncio.timeout(budget):
                for lane in self._lanes.values():
                    await lane.queue.join()
        except TimeoutError:
            for name, lane in self._lanes.items():
                left = lane.queue.qsize() + lane.stats.in_flight
                if left:
                    cut.append(f"tool {name} ({left} calls)")
        for lane in self._lanes.values():
            for task in lane.workers:
                task.cancel()
        for lane in self._lanes.values():
            if lane.workers:
                await asyncio.gather(*lane.workers, return_exceptions=True)
        for tool in reversed(self._started):
            try:
                await tool.stop()
            except Exception:
                log.exception("tool stop failed", extra={"fields": {"tool": tool.name}})
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if cut:
            raise ShutdownTimeout(budget, cut)

    # -- reload -------------------------------------------------------------------------------

    def set_secret_args(self, secret_args: Mapping[tuple[str | None, str], frozenset[str]]) -> None:
        """The arguments to redact in the journal, per (rule, tool), from the next call on (a reload)."""
        self._secret_args = dict(secret_args)

    async def put_tool(self, tool: Tool) -> _Lane | None:
        """Route the calls of ``tool``'s name to it from now on (a reload adds or changes a tool; the
        caller started it). Returns the lane it replaced, still finishing its calls: :meth:`retire`
        it."""
        lane = _Lane(tool)
        if not lane.is_async and self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=min(tool.concurrency, 64), thread_name_prefix="reflexd-tool"
            )
        self._started.append(tool)
        lane.workers = [
            asyncio.create_task(self._work(lane), name=f"reflexd:tool:{tool.name}:{i}")
            for i in range(lane.worker_count)
        ]
        old = self._lanes.get(tool.name)
        self._lanes[tool.name] = lane
        self.tools[tool.name] = tool
        if old is not None:
            self._unmark_full(old)
        return old

    def take_tool(self, name: str) -> _Lane | None:
        """Stop routing calls to ``name`` (a reload removes it: a call for it is now a KeyError to the
        caller, which counts it rejected). Returns its lane, to :meth:`retire`."""
        lane = self._lanes.pop(name, None)
        self.tools.pop(name, None)
        if lane is not None:
            self._unmark_full(lane)
        return lane

    def _unmark_full(self, lane: _Lane) -> None:
        if lane.full:
            lane.full = False
            self._full_lanes -= 1
            if self._full_lanes == 0:
                self.full = False
                self._room.set()

    async def retire(self, lane: _Lane, budget: float) -> list[str]:
        """Let a lane no longer routed to finish its queued and running calls within ``budget``, then
        cancel its workers (a call cut off keeps its record's hold, as at shutdown) and stop its tool.
        Returns what had to be cut."""
        cut: list[str] = []
        try:
            async with asyncio.timeout(budget):
                await lane.queue.join()
        except TimeoutError:
            cut.append(f"tool {lane.tool.name} ({lane.queue.qsize() + lane.stats.in_flight} calls)")
        for task in lane.workers:
            task.cancel()
        if lane.workers:
            await asyncio.gather(*lane.workers, return_exceptions=True)
        if lane.tool in self._started:
            self._started.remove(lane.tool)
        try:
            await lane.tool.stop()
        except Exception:
            log.exception("tool stop failed", extra={"fields": {"tool": lane.tool.name}})
        return cut

    # -- introspection ----------------------------------------------------------------------

    def stats(self, tool: str) -> ToolStats:
        return self._lanes[tool].stats

    def breaker(self, tool: str) -> CircuitBreaker:
        return self._lanes[tool].breaker

    def pending(self, tool: str) -> int:
        return self._lanes[tool].queue.qsize()

    def lanes(self) -> dict[str, tuple[Tool, ToolStats, int]]:
        return {name: (lane.tool, lane.stats, lane.queue.qsize()) for name, lane in self._lanes.items()}
