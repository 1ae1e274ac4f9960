"""The runner's batching mode (handlers/batching.py, ``batch_limit`` > 0): calls handed over together,
judged one by one by the same bookkeeping as the one-call path."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pytest

from daemon.errors import ShutdownTimeout, ToolError
from handlers.base import CallContext, StartedCalls, Tool, ToolConfig
from handlers.batching import lane_shape
from handlers.runner import ToolRunner
from streams.ack import OffsetTracker
from streams.event import Event
from tests.servers import wait_for

FAST_RETRY = {"max_attempts": 3, "initial_seconds": 0.01, "max_seconds": 0.02}

#: What the fake does with one call: a value to resolve with, an exception to fail with, or
#: None to leave its future pending.
Decide = Callable[[dict[str, Any], CallContext], Any]


class BatchTool(Tool):
    """Starts calls in batches; resolves each future ``delay`` seconds later as ``decide`` says."""

    type_name: ClassVar[str] = "batchy"

    def __init__(
        self, config: ToolConfig, limit: int, decide: Decide, delay: float = 0.005, shared: bool = False
    ) -> None:
        super().__init__("b", config)
        self.shared = shared  # one future for every call of a batch (as a Kafka producer batch)
        self.limit = limit
        self.decide = decide
        self.delay = delay
        self.batches: list[list[tuple[int, int]]] = []  # per start_calls: (i, attempt) of each call
        self.call_ids: dict[int, set[str]] = {}
        self.pending = 0
        self.max_pending = 0
        self.tokens: list[object] = []
        self.start_error: Exception | None = None
        self.shared_futures: list[asyncio.Future[Any]] = []

    @property
    def batch_limit(self) -> int:
        return self.limit

    async def call(self, args: dict[str, Any], ctx: CallContext) -> Any:  # pragma: no cover - batched
        raise AssertionError("a batching tool is never called one by one")

    async def start_calls(self, calls: Sequence[tuple[dict[str, Any], CallContext]]) -> StartedCalls:
        self.batches.append([(args["i"], ctx.attempt) for args, ctx in calls])
        if self.start_error is not None:
            error, self.start_error = self.start_error, None
            raise error
        loop = asyncio.get_running_loop()
        token = object()
        self.tokens.append(token)
        futures: list[asyncio.Future[Any]] = []
        common: asyncio.Future[Any] = loop.create_future()
        self.shared_futures.append(common)
        for args, ctx in calls:
            self.call_ids.setdefault(args["i"], set()).add(ctx.call_id)
            fut: asyncio.Future[Any] = common if self.shared else loop.create_future()
            futures.append(fut)
            outcome = self.decide(args, ctx)
            if outcome is None:
                fut.add_done_callback(lambda _: None)
                continue
            self.pending += 1
            self.max_pending = max(self.max_pending, self.pending)
            loop.call_later(self.delay, self._settle, fut, outcome)
        return StartedCalls(futures, token)

    def _settle(self, fut: asyncio.Future[Any], outcome: Any) -> None:
        self.pending -= 1
        if fut.done():
            return
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)

    async def call_failed(self, exc: BaseException, token: Any) -> BaseException:
        assert token in self.tokens  # the token of the batch the call was started in
        if isinstance(exc, ConnectionResetError):  # the tool's own judgement: worth another try
            return ToolError(self.name, "connection reset", retryable=True)
        return exc


def ctx(i: int, ack: Any = None) -> CallContext:
    return CallContext("b", "rule", Event("src", float(i), float(i), None, {"i": i}, {}, ack=ack), f"rule:{i}:0")


def submit_records(runner: ToolRunner, tracker: OffsetTracker, n: int) -> list[Any]:
    """Submit one call per record 0..n-1, each holding its record's ack; release the dispatcher's own hold
    (the rules have seen the record), as the dispatcher does."""
    acks = []
    for i in range(n):
        ack = tracker.received(i)
        assert runner.submit("b", {"i": i}, ctx(i, ack))
        ack.release()
        acks.append(ack)
    return acks


async def run(tool: BatchTool, n: int) -> ToolRunner:
    runner = ToolRunner({"b": tool})
    await runner.start()
    for i in range(n):
        assert runner.submit("b", {"i": i}, ctx(i))
    stats = runner.stats("b")
    await wait_for(lambda: stats.succeeded + stats.failures == n and stats.in_flight == 0)
    await runner.stop(5)
    return runner


class OneCall(Tool):
    """The one-call twin of :class:`BatchTool`: each call resolves ``delay`` seconds later as ``decide`` says."""

    type_name: ClassVar[str] = "onecall"

    def __init__(self, config: ToolConfig, decide: Decide, delay: float = 0.005) -> None:
        super().__init__("b", config)
        self.decide = decide
        self.delay = delay

    async def call(self, args: dict[str, Any], ctx: CallContext) -> Any:
        await asyncio.sleep(self.delay)
        outcome = self.decide(args, ctx)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def test_lane_shape_gives_a_batching_tool_few_workers_within_its_concurrency() -> None:
    """A one-call tool gets one worker per concurrency slot and no batch; a batching tool ceil(concurrency /
    limit) workers of equal batches (never more than concurrency calls in all); batch_limit without
    start_calls is refused."""
    decide: Decide = lambda a, c: "ok"  # noqa: E731
    assert lane_shape(OneCall(ToolConfig(type="x", concurrency=7), decide)) == (7, 0)
    shapes = [(c, lim, lane_shape(BatchTool(ToolConfig(type="x", concurrency=c), lim, decide))) for c, lim in
              [(20, 8), (1024, 256), (5, 256), (1, 1)]]
    assert [shape for *_, shape in shapes] == [(3, 6), (4, 256), (1, 5), (1, 1)]
    assert all(workers * batch <= c for c, _, (workers, batch) in shapes)

    class NoStart(OneCall):
        batch_limit = 4  # type: ignore[assignment]

    with pytest.raises(TypeError, match="sets batch_limit but has no start_calls"):
        lane_shape(NoStart(ToolConfig(type="x"), decide))


async def test_a_wrong_number_of_futures_fails_every_call_of_the_batch() -> None:
    """start_calls answering with fewer futures than calls is a tool bug: every call of the batch fails
    (not retried), none is left hanging."""

    class Short(BatchTool):
        async def start_calls(self, calls: Sequence[tuple[dict[str, Any], CallContext]]) -> StartedCalls:
            started = await super().start_calls(calls)
            return StartedCalls(started.futures[:-1], started.token)

    tool = Short(ToolConfig(type="x", concurrency=4, retry=FAST_RETRY), limit=4, decide=lambda a, c: "ok")
    stats = (await run(tool, 4)).stats("b")
    assert (stats.attempts, stats.retries, stats.succeeded, stats.failures) == (4, 0, 0, 4)


@pytest.mark.parametrize("batched", [True, False])
async def test_both_modes_judge_outcomes_alike(batched: bool) -> None:
    """The same calls with the same outcomes end the same way through the one-call path and the batching
    mode: success, retried then succeeded, not retryable, retries exhausted — same attempts seen by the
    tool, same final outcomes, same counters (one place judges and books outcomes for both)."""

    seen: list[tuple[int, int]] = []

    def decide(args: dict[str, Any], ctx: CallContext) -> Any:
        seen.append((args["i"], ctx.attempt))
        kind = args["i"] % 4
        if (kind == 1 and ctx.attempt == 1) or kind == 3:
            return ToolError("b", "try again", retryable=True)
        if kind == 2:
            return ToolError("b", "refused", retryable=False)
        return args["i"]

    config = ToolConfig(type="x", concurrency=8, retry=FAST_RETRY)
    tool: Tool = BatchTool(config, limit=8, decide=decide) if batched else OneCall(config, decide)
    runner = ToolRunner({"b": tool})
    await runner.start()
    loop = asyncio.get_running_loop()
    done = [loop.create_future() for _ in range(8)]
    for i in range(8):
        assert runner.submit("b", {"i": i}, ctx(i), done=done[i])
    outcomes = [(await fut).outcome for fut in done]
    stats = runner.stats("b")
    await runner.stop(5)
    assert outcomes == ["succeeded", "succeeded", "failed", "failed"] * 2
    attempts = {0: 1, 1: 2, 2: 1, 3: 3}  # per kind: succeeded, retried once, refused, max_attempts
    assert sorted(seen) == [(i, a) for i in range(8) for a in range(1, attempts[i % 4] + 1)]
    assert (stats.calls, stats.attempts, stats.retries, stats.succeeded, stats.failures) == (8, 14, 6, 4, 4)


async def test_calls_are_handed_over_in_batches_within_the_concurrency() -> None:
    """concurrency 20 with batches of at most 8: 3 workers of 6 calls — never more than 20 in flight."""
    tool = BatchTool(ToolConfig(type="x", concurrency=20), limit=8, decide=lambda a, c: a["i"])
    stats = (await run(tool, 300)).stats("b")
    sizes = [len(b) for b in tool.batches]
    assert max(sizes) == 6 and sum(sizes) == 300
    assert tool.max_pending <= 20
    assert (stats.calls, stats.attempts, stats.succeeded, stats.failures) == (300, 300, 300, 0)


async def test_only_the_failed_calls_of_a_batch_are_retried() -> None:
    """Retryable failures (as the tool judges them) are retried together with the same call id and the
    next attempt number; a non-retryable one fails at once; the rest of the batch succeeded once."""

    def decide(args: dict[str, Any], ctx: CallContext) -> Any:
        i = args["i"]
        if i == 5:
            return ValueError("bad record")  # a bug: never retried
        if i % 3 == 0 and ctx.attempt == 1:
            return ConnectionResetError()  # call_failed makes it retryable
        return "ok"

    tool = BatchTool(ToolConfig(type="x", concurrency=10, retry=FAST_RETRY), limit=10, decide=decide)
    stats = (await run(tool, 10)).stats("b")
    assert tool.batches[0] == [(i, 1) for i in range(10)]
    assert tool.batches[1:] == [[(0, 2), (3, 2), (6, 2), (9, 2)]]
    assert all(len(ids) == 1 for ids in tool.call_ids.values())
    assert (stats.attempts, stats.retries, stats.succeeded, stats.failures) == (14, 4, 9, 1)


async def test_a_batch_timeout_fails_only_the_calls_still_running() -> None:
    """The timeout covers the batch; calls resolved in time succeed, the others time out and are retried."""

    def decide(args: dict[str, Any], ctx: CallContext) -> Any:
        return None if args["i"] % 2 and ctx.attempt == 1 else "ok"

    config = ToolConfig(type="x", concurrency=8, timeout_seconds=0.1, retry=FAST_RETRY)
    tool = BatchTool(config, limit=8, decide=decide)
    stats = (await run(tool, 8)).stats("b")
    assert tool.batches == [[(i, 1) for i in range(8)], [(1, 2), (3, 2), (5, 2), (7, 2)]]
    assert (stats.timeouts, stats.attempts, stats.succeeded, stats.failures) == (4, 12, 8, 0)


async def test_a_timeout_never_cancels_a_future_the_calls_share() -> None:
    """Calls sharing one future (one Kafka producer batch) that runs past the timeout all time out — none is
    mistaken for 'cancelled by the tool' — and the shared future is left to the tool, not cancelled."""
    config = ToolConfig(type="x", concurrency=3, timeout_seconds=0.05, retry={"retry_timeouts": False})
    tool = BatchTool(config, limit=3, decide=lambda a, c: None, shared=True)
    stats = (await run(tool, 3)).stats("b")
    assert (stats.timeouts, stats.failures, stats.attempts, stats.retries) == (3, 3, 3, 0)
    assert not tool.shared_futures[0].cancelled()


async def test_the_worker_survives_a_bookkeeping_failure() -> None:
    """An error in the runner's own bookkeeping after a call ended (here: the journal refusing a row) does not
    kill the worker or strand the records: the calls without an outcome are dead-lettered, every ack is
    released, and the next calls run."""
    tracker = OffsetTracker()
    tool = BatchTool(ToolConfig(type="x", concurrency=3), limit=3, decide=lambda a, c: "ok")
    journal = FlakyJournal()
    runner = ToolRunner({"b": tool}, journal=journal)  # type: ignore[arg-type]
    await runner.start()
    submit_records(runner, tracker, 3)
    await wait_for(lambda: tracker.committable == 3)
    assert runner.submit("b", {"i": 3}, ctx(3))
    await wait_for(lambda: runner.stats("b").succeeded == 2)  # call 0, then call 3 on the same worker
    await runner.stop(5)
    assert [key for key, *_ in journal.dead] == ["rule:1:0", "rule:2:0"]


class FlakyJournal:
    """The runner's journal interface in memory; refuses to record the end of the first call."""

    def __init__(self) -> None:
        self.dead: list[tuple[Any, ...]] = []
        self.refused = False

    def new_id(self) -> str:
        return "id"

    def started(self, *args: Any, **kwargs: Any) -> None:
        pass

    def succeeded(self, key: str) -> bool:
        return False

    def ended(self, inv_id: str, key: str, *args: Any) -> None:
        if not self.refused:
            self.refused = True
            raise OSError("disk on fire")

    async def dead_letter(self, *args: Any) -> None:
        self.dead.append(args)


async def test_a_batch_that_cannot_start_fails_every_call_in_it() -> None:
    """start_calls raising fails each call of the batch with that error; retryable → all retried."""
    tool = BatchTool(ToolConfig(type="x", concurrency=6, retry=FAST_RETRY), limit=6, decide=lambda a, c: "ok")
    tool.start_error = ToolError("b", "producer cannot start", retryable=True)
    stats = (await run(tool, 6)).stats("b")
    assert tool.batches == [[(i, 1) for i in range(6)], [(i, 2) for i in range(6)]]
    assert (stats.attempts, stats.retries, stats.succeeded) == (12, 6, 6)


@pytest.mark.parametrize("batched", [True, False])
async def test_calls_cut_off_by_shutdown_leave_their_record_unfinished(batched: bool) -> None:
    """A call cancelled because the stop budget ran out never releases its record's hold: the record is
    not committed (its offset stays behind) and is delivered again after the restart."""
    tracker = OffsetTracker()
    if batched:
        tool: Tool = BatchTool(ToolConfig(type="x", concurrency=2), limit=2, decide=lambda a, c: None)
    else:
        tool = Hanging("b", ToolConfig(type="x", concurrency=2))
    runner = ToolRunner({"b": tool})
    await runner.start()
    acks = submit_records(runner, tracker, 2)
    await wait_for(lambda: runner.stats("b").in_flight == 2)
    with pytest.raises(ShutdownTimeout):
        await runner.stop(0.05)
    assert tracker.committable is None and tracker.in_flight == 2
    assert [ack.holds for ack in acks] == [1, 1]


class Hanging(Tool):
    type_name: ClassVar[str] = "hanging"

    async def call(self, args: dict[str, Any], ctx: CallContext) -> None:
        await asyncio.Event().wait()


async def test_finished_calls_release_their_record() -> None:
    """The control of the test above: calls that end let their record's offset become committable."""
    tracker = OffsetTracker()
    tool = BatchTool(ToolConfig(type="x", concurrency=4), limit=4, decide=lambda a, c: "ok")
    runner = ToolRunner({"b": tool})
    await runner.start()
    submit_records(runner, tracker, 4)
    await wait_for(lambda: tracker.committable == 4)
    await runner.stop(5)


class ColumnsJournal(FlakyJournal):
    """The runner's journal interface in memory, with both records of calls ended together: which one
    took which calls. The key ``rule:5:0`` already succeeded."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = True  # records every end
        self.by_call: list[list[tuple[Any, ...]]] = []  # calls_ended: its calls, (key, rule, outcome, ...)
        self.by_column: list[tuple[Any, ...]] = []  # calls_succeeded: its columns

    def succeeded(self, key: str) -> bool:
        return key == "rule:5:0"

    def succeeded_any(self, keys: list[str]) -> bool:
        return any(map(self.succeeded, keys))

    def calls_ended(self, tool: str, started: float, calls: list[tuple[Any, ...]]) -> None:
        self.by_call.append([(key, rule, outcome, args["i"], hide, attempts, result)
                             for key, rule, outcome, args, hide, _, attempts, result in calls])  # fmt: skip

    def calls_succeeded(
        self,
        tool: str,
        started: float,
        rule: str | None,
        secret_args: frozenset[str],
        keys: Sequence[str],
        args: Sequence[dict[str, Any]],
        events: Sequence[Event],
        attempts: Sequence[int],
        results: Sequence[Any],
    ) -> None:
        data = [event.data["i"] for event in events]
        self.by_column.append((tool, rule, secret_args, list(keys), [a["i"] for a in args], data, list(attempts), list(results)))  # fmt: skip


async def test_a_batch_that_succeeded_whole_is_journaled_column_by_column() -> None:
    """The calls of a Kafka record (journaled when they end) of a batch that all succeeded with one rule
    go to the journal's ``calls_succeeded`` as columns, without a tuple each; a batch with a duplicate
    in it goes to ``calls_ended`` call by call as before: the duplicate, then the others, in order."""
    tracker = OffsetTracker()
    tool = BatchTool(ToolConfig(type="x", concurrency=4), limit=4, decide=lambda a, c: f"r{a['i']}")
    journal = ColumnsJournal()
    hide = frozenset({"token"})
    runner = ToolRunner({"b": tool}, journal=journal, secret_args={("rule", "b"): hide})  # type: ignore[arg-type]
    await runner.start()
    submit_records(runner, tracker, 8)
    await wait_for(lambda: tracker.committable == 8)
    await runner.stop(5)
    assert runner.stats("b").deduplicated == 1 and runner.stats("b").succeeded == 7
    [with_duplicate] = journal.by_call  # the batch that 5 was taken in
    others = [entry[3] for entry in with_duplicate[1:]]
    assert with_duplicate[0] == ("rule:5:0", "rule", "duplicate", 5, hide, 0, None)
    assert others == sorted(others) and with_duplicate[1:] == [
        (f"rule:{i}:0", "rule", "succeeded", i, hide, 1, f"r{i}") for i in others
    ]
    assert journal.by_column  # fails if every batch took calls_ended
    whole = [i for columns in journal.by_column for i in columns[4]]
    assert sorted([*whole, 5, *others]) == list(range(8))
    for tool_name, rule, secrets, keys, args, data, attempts, results in journal.by_column:
        assert (tool_name, rule, secrets) == ("b", "rule", hide)
        assert keys == [f"rule:{i}:0" for i in args] and data == args
        assert attempts == [1] * len(args) and results == [f"r{i}" for i in args]
