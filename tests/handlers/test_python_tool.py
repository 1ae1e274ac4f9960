"""The python tool: import at start, sync functions in a thread pool, coroutines awaited, failures and timeouts."""

from __future__ import annotations

import logging
import threading
import traceback
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from daemon.errors import StartupError
from daemon.registry import BuildContext
from handlers.base import CallContext
from handlers.python import SPEC, PythonTool, PythonToolConfig, bounded_result
from handlers.runner import ToolRunner
from streams.event import Event
from tests.handlers import pyfuncs
from tests.servers import wait_for

ROOT = Path(__file__).resolve().parents[2]
FAST_RETRY = {"max_attempts": 4, "initial_seconds": 0.01, "max_seconds": 0.05}


def ctx(i: int = 0, *, no_event: bool = False) -> CallContext:
    ev = None if no_event else Event("src", 1.0, 1.0, f"k{i}", {"i": i}, {})
    return CallContext("py", "rule", ev, f"rule:{i}:0")


def tool(function: str, **kw: Any) -> PythonTool:
    return PythonTool(
        "py", PythonToolConfig(type="python", function=f"tests.handlers.pyfuncs:{function}", **kw)
    )


async def started(function: str, **kw: Any) -> PythonTool:
    t = tool(function, **kw)
    await t.start()
    return t


async def run(t: PythonTool, calls: int = 1) -> ToolRunner:
    runner = ToolRunner({"py": t})
    await runner.start()
    for i in range(calls):
        runner.submit("py", {"amount": i, "seconds": 0.3}, ctx(i))
    await wait_for(lambda: runner.stats("py").calls == calls and runner.stats("py").in_flight == 0, within=5)
    await runner.stop(2)
    return runner


async def test_sync_function_runs_in_the_tools_thread_pool() -> None:
    """A plain function gets (args, event), runs in a 'reflexd-python-*' thread; its return value is the result."""
    t = await started("echo")
    result = await t.call({"a": 1}, ctx(3))
    assert result["args"] == {"a": 1} and result["key"] == "k3"
    assert result["thread"].startswith("reflexd-python-py")
    await t.stop()


async def test_coroutine_function_is_awaited_on_the_loop() -> None:
    """An async function (or an object with an async __call__) is awaited in the loop's thread."""
    t = await started("aecho")
    result = await t.call({"a": 1}, ctx(1, no_event=True))
    assert result == {"args": {"a": 1}, "key": None, "thread": threading.current_thread().name}
    obj = await started("handler")
    assert await obj.call({}, ctx()) == threading.current_thread().name
    coro = await started("returns_coroutine")
    assert (await coro.call({"b": 2}, ctx(2)))["args"] == {"b": 2}


async def test_sync_exception_propagates_with_its_traceback() -> None:
    """The function's own exception comes back unchanged, its traceback holding the function's frames, plus a note."""
    t = await started("boom")
    with pytest.raises(ValueError, match="bad amount 5") as info:
        await t.call({"amount": 5}, ctx())
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert frames[-2:] == ["boom", "_check_amount"]
    assert info.value.__notes__ == ["in python tool 'py' calling tests.handlers.pyfuncs:boom"]
    await t.stop()


async def test_sync_failure_is_recorded_by_the_runner_and_the_daemon_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through the runner: counted as a failure (not retried: a bug), logged with its traceback; later calls run."""
    t = tool("boom", retry=FAST_RETRY)
    with caplog.at_level(logging.WARNING, logger="reflexd"):
        runner = await run(t, calls=3)
    st = runner.stats("py")
    assert (st.calls, st.attempts, st.failures, st.succeeded) == (3, 3, 3, 0)
    (record,) = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ValueError][:1]
    assert record.exc_info is not None
    rendered = "".join(traceback.format_exception(*record.exc_info))
    assert "_check_amount" in rendered and "pyfuncs.py" in rendered and "in python tool 'py'" in rendered
    ok = tool("echo")
    assert (await run(ok, calls=2)).stats("py").succeeded == 2


async def test_async_function_past_the_timeout_is_cancelled_and_recorded() -> None:
    """Through the runner: an async function running past timeout_seconds sees CancelledError; a timeout is counted."""
    pyfuncs.CANCELLED.clear()
    t = tool("slow", timeout_seconds=0.1, retry={"max_attempts": 1})
    st = (await run(t)).stats("py")
    assert (st.timeouts, st.failures, st.succeeded) == (1, 1, 0)
    assert pyfuncs.CANCELLED == ["rule:0:0"]


async def test_sync_function_past_the_timeout_is_counted_as_a_timeout() -> None:
    """A blocking plain function cannot be interrupted, but the call is timed out and the runner moves on."""
    t = tool("sleepy", timeout_seconds=0.05, retry={"max_attempts": 1})
    st = (await run(t)).stats("py")
    assert (st.timeouts, st.failures) == (1, 1)


async def test_tool_error_retryable_is_retried_with_the_same_call_id() -> None:
    """A function raising ToolError(retryable=True) is retried; it sees one call id and rising attempts (ctx=)."""
    pyfuncs.SEEN.clear()
    t = tool("flaky", retry=FAST_RETRY)
    runner = ToolRunner({"py": t})
    await runner.start()
    runner.submit("py", {"ok_at": 3}, ctx(7))
    await wait_for(lambda: runner.stats("py").succeeded == 1, within=5)
    await runner.stop(2)
    assert pyfuncs.SEEN == [("rule:7:0", 1), ("rule:7:0", 2), ("rule:7:0", 3)]


async def test_result_is_json_or_a_bounded_repr() -> None:
    """A JSON-serialisable result within max_result_bytes is kept; others become a repr, cut to the cap."""
    assert await (await started("unserialisable")).call({}, ctx()) == "{1, 2, 3}"
    small = await started("huge", max_result_bytes=100)
    assert await small.call({"n": 5}, ctx()) == [0, 1, 2, 3, 4]
    cut = await small.call({"n": 100_000}, ctx())
    assert isinstance(cut, str) and len(cut) <= 100 + 60 and cut.startswith("[0, 1, 2")
    assert bounded_result("x" * 1000, 10) == "'xxxxxxxxx...[cut at 10 of 1002 characters]"
    assert len(bounded_result(set(range(10**6)), 10**9)) < 100  # reprlib bounds the work on huge values


@pytest.mark.parametrize(
    ("function", "reason"),
    [
        ("tests.handlers.no_such_module:f", "cannot import 'tests.handlers.no_such_module'"),
        ("tests.handlers.pyfuncs:missing", "has no attribute 'missing'"),
        ("tests.handlers.pyfuncs:NOT_CALLABLE", "is a int, not a function"),
        ("tests.handlers.pyfuncs_broken:f", "RuntimeError: broken on import"),
    ],
)
async def test_start_fails_for_a_function_that_cannot_be_loaded(function: str, reason: str) -> None:
    """A missing module or attribute, a non-callable, or a module that raises on import → StartupError."""
    t = PythonTool("py", PythonToolConfig(type="python", function=function))
    with pytest.raises(StartupError, match=reason):
        await t.start()


def test_function_reference_is_validated() -> None:
    """`function` must look like package.module:attr."""
    for ref in ("nocolon", "a.b:", ":f", "a b:f", "a:f()"):
        with pytest.raises(ValidationError):
            PythonToolConfig(type="python", function=ref)


def test_spec_example_builds() -> None:
    """The registry spec's example validates and builds a PythonTool (the import happens at start)."""
    config = SPEC.config_model.model_validate(dict(SPEC.example))
    built = SPEC.factory("py", config, BuildContext(ROOT))
    assert isinstance(config, PythonToolConfig) and isinstance(built, PythonTool)
    assert dict(SPEC.summary(config))["function"] == config.function == "myproject.alerts:on_trade"
