"""The tool runner: concurrency limits, timeouts, propagated exceptions, bounded backlog, drain on stop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from daemon.errors import ShutdownTimeout, ToolError
from handlers.base import CallContext, Tool, ToolConfig
from handlers.file import FileTool, FileToolConfig
from handlers.log import LogTool, LogToolConfig
from handlers.runner import ToolRunner
from streams.event import Event
from tests.servers import wait_for


def ctx(i: int = 0, tool: str = "t") -> CallContext:
    return CallContext(tool, "rule", Event("src", float(i), float(i), "k", {"i": i}, {}), f"rule:{i}:0")


class SlowTool(Tool):
    type_name: ClassVar[str] = "slow"

    def __init__(self, name: str, config: ToolConfig, delay: float = 0.0) -> None:
        super().__init__(name, config)
        self.delay = delay
        self.running = 0
        self.max_running = 0
        self.done: list[int] = []
        self.release = asyncio.Event()

    async def call(self, args: dict[str, Any], ctx: CallContext) -> None:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            else:
                await self.release.wait()
            self.done.append(args["i"])
        finally:
            self.running -= 1


class SyncBoom(Tool):
    type_name: ClassVar[str] = "boom"

    def __init__(self, name: str, config: ToolConfig) -> None:
        super().__init__(name, config)
        self.threads: set[str] = set()

    def call(self, args: dict[str, Any], ctx: CallContext) -> None:
        self.threads.add(threading.current_thread().name)
        if args["i"] % 2:
            raise ValueError(f"odd {args['i']}")


def cfg(**kw: Any) -> ToolConfig:
    return ToolConfig(type="x", **kw)


async def test_concurrency_limit_is_respected() -> None:
    """No more than `concurrency` calls of a tool run at once."""
    tool = SlowTool("t", cfg(concurrency=3), delay=0.01)
    runner = ToolRunner({"t": tool})
    await runner.start()
    for i in range(30):
        assert runner.submit("t", {"i": i}, ctx(i))
    await wait_for(lambda: len(tool.done) == 30)
    await runner.stop(5)
    assert tool.max_running == 3 and sorted(tool.done) == list(range(30))


async def test_sync_tool_runs_in_thread_and_exceptions_are_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A plain-function tool runs in the executor; its exceptions come back, are counted and logged."""
    tool = SyncBoom("b", cfg())
    runner = ToolRunner({"b": tool})
    await runner.start()
    with caplog.at_level(logging.WARNING, logger="reflexd"):
        for i in range(10):
            runner.submit("b", {"i": i}, ctx(i, "b"))
        await wait_for(lambda: runner.stats("b").calls == 10 and runner.stats("b").in_flight == 0)
    await runner.stop(5)
    st = runner.stats("b")
    assert st.succeeded == 5 and st.failures == 5
    assert all(name.startswith("reflexd-tool") for name in tool.threads)
    assert any("ValueError: odd" in str(getattr(r, "fields", {}).get("error")) for r in caplog.records)
    assert any(r.exc_info and r.exc_info[0] is ValueError for r in caplog.records)


async def test_timeout_cancels_the_call() -> None:
    """A call running past timeout_seconds is cancelled and counted as a timeout."""
    tool = SlowTool("t", cfg(timeout_seconds=0.05, retry={"max_attempts": 1}))
    runner = ToolRunner({"t": tool})
    await runner.start()
    runner.submit("t", {"i": 1}, ctx(1))
    await wait_for(lambda: runner.stats("t").timeouts == 1)
    await runner.stop(1)
    assert tool.done == [] and runner.stats("t").failures == 1


async def test_backlog_marks_runner_full_and_recovers() -> None:
    """Reaching max_pending marks the runner full; draining below it releases waiters."""
    tool = SlowTool("t", cfg(concurrency=1, max_pending=5))
    runner = ToolRunner({"t": tool})
    await runner.start()
    for i in range(7):
        runner.submit("t", {"i": i}, ctx(i))
    await asyncio.sleep(0)
    assert runner.full
    waiter = asyncio.create_task(runner.wait_for_room())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    tool.release.set()
    await asyncio.wait_for(waiter, 2)
    await wait_for(lambda: len(tool.done) == 7)
    assert not runner.full
    await runner.stop(1)


async def test_backlog_has_a_hard_bound() -> None:
    """Past max_pending + slack, calls are rejected and counted — never an unbounded backlog."""
    tool = SlowTool("t", cfg(concurrency=1, max_pending=1))
    runner = ToolRunner({"t": tool})
    accepted = sum(runner.submit("t", {"i": i}, ctx(i)) for i in range(1000))
    assert accepted == runner.pending("t") < 1000
    assert runner.stats("t").rejected == 1000 - accepted


async def test_stop_drains_queued_calls_within_budget() -> None:
    """stop() lets queued and running calls finish when the budget allows."""
    tool = SlowTool("t", cfg(concurrency=2), delay=0.01)
    runner = ToolRunner({"t": tool})
    await runner.start()
    for i in range(20):
        runner.submit("t", {"i": i}, ctx(i))
    await runner.stop(5)
    assert sorted(tool.done) == list(range(20))


async def test_stop_names_what_it_cancelled() -> None:
    """When the budget runs out, stop() cancels and names the tool with unfinished calls."""
    tool = SlowTool("t", cfg(concurrency=1))
    runner = ToolRunner({"t": tool})
    await runner.start()
    for i in range(3):
        runner.submit("t", {"i": i}, ctx(i))
    with pytest.raises(ShutdownTimeout) as info:
        await runner.stop(0.05)
    assert info.value.cancelled == ["tool t (3 calls)"]


async def test_file_tool_appends_json_lines(tmp_path: Path) -> None:
    """The file tool appends one JSON object per call, creating parent folders."""
    path = tmp_path / "out" / "alerts.jsonl"
    tool = FileTool("f", FileToolConfig(type="file", path=str(path)), path)
    runner = ToolRunner({"f": tool})
    await runner.start()
    for i in range(50):
        runner.submit("f", {"i": i, "text": "a\nb"}, ctx(i, "f"))
    await runner.stop(5)
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [rec["args"]["i"] for rec in lines] == list(range(50))
    assert lines[0]["rule"] == "rule" and lines[0]["source"] == "src" and lines[0]["args"]["text"] == "a\nb"


async def test_log_tool_writes_structured_line(caplog: pytest.LogCaptureFixture) -> None:
    """The log tool logs the `text` argument with the rule, source and arguments as fields."""
    tool = LogTool("l", LogToolConfig(type="log", level="warning"))
    with caplog.at_level(logging.INFO, logger="reflexd"):
        await tool.call({"text": "big trade", "n": 3}, ctx(1, "l"))
    (record,) = [r for r in caplog.records if r.name == "reflexd.tool.l"]
    assert record.levelno == logging.WARNING and record.getMessage() == "big trade"
    assert record.fields["args"] == {"text": "big trade", "n": 3} and record.fields["rule"] == "rule"  # type: ignore[attr-defined]


class Flaky(Tool):
    type_name: ClassVar[str] = "flaky"

    def __init__(self, name: str, config: ToolConfig, failures: int, error: Exception) -> None:
        super().__init__(name, config)
        self.failures = failures
        self.error = error
        self.seen: list[tuple[str, int, float]] = []

    async def call(self, args: dict[str, Any], ctx: CallContext) -> None:
        self.seen.append((ctx.call_id, ctx.attempt, time.monotonic()))
        if len(self.seen) <= self.failures:
            raise self.error


FAST_RETRY = {"max_attempts": 4, "initial_seconds": 0.01, "max_seconds": 0.05}


async def run_one(tool: Tool) -> ToolRunner:
    runner = ToolRunner({tool.name: tool})
    await runner.start()
    runner.submit(tool.name, {"i": 1}, ctx(1, tool.name))
    await wait_for(lambda: runner.stats(tool.name).calls == 1 and runner.stats(tool.name).in_flight == 0)
    await runner.stop(5)
    return runner


async def test_retryable_failures_are_retried_with_the_same_call_id() -> None:
    """A retryable error is retried; every attempt carries the same call id and its own attempt number."""
    tool = Flaky("f", cfg(retry=FAST_RETRY), failures=2, error=ToolError("f", "503", retryable=True))
    st = (await run_one(tool)).stats("f")
    assert [a for _, a, _ in tool.seen] == [1, 2, 3] and len({c for c, _, _ in tool.seen}) == 1
    assert (st.calls, st.attempts, st.retries, st.succeeded, st.failures) == (1, 3, 2, 1, 0)


async def test_non_retryable_failure_is_not_retried() -> None:
    """An error the tool does not mark retryable (or a bug) fails after one attempt."""
    for error in (ToolError("f", "400", retryable=False), KeyError("bug")):
        tool = Flaky("f", cfg(retry=FAST_RETRY), failures=1, error=error)
        st = (await run_one(tool)).stats("f")
        assert (st.attempts, st.failures, st.succeeded) == (1, 1, 0)


async def test_retries_stop_at_max_attempts() -> None:
    """A target that keeps failing is tried exactly max_attempts times, then counted as failed."""
    tool = Flaky("f", cfg(retry=FAST_RETRY), failures=99, error=ToolError("f", "503", retryable=True))
    st = (await run_one(tool)).stats("f")
    assert (st.attempts, st.retries, st.failures) == (4, 3, 1)


async def test_retry_after_is_honoured() -> None:
    """A Retry-After longer than the backoff delays the next attempt at least that long."""
    error = ToolError("f", "429", retryable=True, retry_after=0.3)
    tool = Flaky("f", cfg(retry=FAST_RETRY), failures=1, error=error)
    await run_one(tool)
    (_, _, first), (_, _, second) = tool.seen
    assert second - first >= 0.3  # a sleep never returns early; no upper bound is asserted


async def test_timeouts_are_retried_by_default() -> None:
    """An attempt that runs past timeout_seconds is retried (the call id lets the target drop duplicates)."""
    tool = SlowTool("t", cfg(timeout_seconds=0.02, retry=FAST_RETRY))
    runner = ToolRunner({"t": tool})
    await runner.start()
    runner.submit("t", {"i": 1}, ctx(1))
    await wait_for(lambda: runner.stats("t").failures == 1)
    await runner.stop(1)
    assert runner.stats("t").timeouts == 4 and runner.stats("t").attempts == 4


def test_duration_histogram_buckets_are_upper_inclusive() -> None:
    """A duration equal to a bucket's bound lands in that bucket; above the last bound lands in +Inf."""
    from handlers.runner import DURATION_BUCKETS, ToolStats

    stats = ToolStats()
    for seconds in (0.0, DURATION_BUCKETS[0], DURATION_BUCKETS[0] * 1.01, DURATION_BUCKETS[-1], 1e9):
        stats.observe(seconds)
    assert stats.buckets[0] == 2 and stats.buckets[1] == 1
    assert stats.buckets[len(DURATION_BUCKETS) - 1] == 1 and stats.buckets[-1] == 1
    assert sum(stats.buckets) == 5


async def test_circuit_transitions_are_logged_with_the_tool_name(caplog: pytest.LogCaptureFixture) -> None:
    """Opening (warning), half-opening and closing (info) of a tool's circuit are each logged once, naming the tool."""
    circuit = {"failures": 2, "open_seconds": 0.05}
    tool = Flaky("hook", cfg(retry={"max_attempts": 1}, circuit=circuit), 2, ToolError("hook", "503", retryable=True))
    runner = ToolRunner({"hook": tool})
    await runner.start()
    with caplog.at_level(logging.INFO, logger="reflexd"):
        for i in range(2):
            runner.submit("hook", {"i": i}, ctx(i, "hook"))
        await wait_for(lambda: runner.stats("hook").failures == 2)
        await asyncio.sleep(0.1)
        runner.submit("hook", {"i": 2}, ctx(2, "hook"))  # the probe: succeeds and closes the circuit
        await wait_for(lambda: runner.stats("hook").succeeded == 1)
        runner.submit("hook", {"i": 3}, ctx(3, "hook"))  # closed already: nothing more is logged
        await wait_for(lambda: runner.stats("hook").succeeded == 2)
    await runner.stop(5)
    logged = [
        (r.levelname, r.getMessage(), getattr(r, "fields", {}).get("tool"))
        for r in caplog.records
        if "circuit" in r.getMessage()
    ]
    assert logged == [
        ("WARNING", "circuit opened", "hook"),
        ("INFO", "circuit half-open: letting one probe call through", "hook"),
        ("INFO", "circuit closed", "hook"),
    ]
