"""Small functions for the python tool's tests, referenced as ``tests.handlers.pyfuncs:<name>``."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from daemon.errors import ToolError
from handlers.base import CallContext
from streams.event import Event

NOT_CALLABLE = 42
CANCELLED: list[str] = []  # call ids whose coroutine saw CancelledError
SEEN: list[tuple[str, int]] = []  # (call_id, attempt) of every flaky() call


def echo(args: dict[str, Any], event: Event | None) -> dict[str, Any]:
    """Sync: what it was given, and the thread it ran in."""
    return {
        "args": args,
        "key": None if event is None else event.key,
        "thread": threading.current_thread().name,
    }


async def aecho(args: dict[str, Any], event: Event | None) -> dict[str, Any]:
    """Async: what it was given, and the thread it ran in."""
    await asyncio.sleep(0)
    return {
        "args": args,
        "key": None if event is None else event.key,
        "thread": threading.current_thread().name,
    }


def _check_amount(args: dict[str, Any]) -> None:
    raise ValueError(f"bad amount {args.get('amount')!r}")


def boom(args: dict[str, Any], event: Event | None) -> None:
    """Sync: raises from a nested helper (both frames must be in the traceback)."""
    _check_amount(args)


async def slow(args: dict[str, Any], event: Event | None, ctx: CallContext) -> str:
    """Async: sleeps past any test timeout; records the call id if cancelled."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        CANCELLED.append(ctx.call_id)
        raise
    return "finished"


def sleepy(args: dict[str, Any], event: Event | None) -> str:
    """Sync: blocks its thread for args['seconds']."""
    time.sleep(float(args["seconds"]))
    return "woke"


def flaky(args: dict[str, Any], event: Event | None, *, ctx: CallContext) -> int:
    """Sync: asks for a retry until attempt args['ok_at']."""
    SEEN.append((ctx.call_id, ctx.attempt))
    if ctx.attempt < int(args["ok_at"]):
        raise ToolError(ctx.tool, "not yet", retryable=True)
    return ctx.attempt


def unserialisable(args: dict[str, Any], event: Event | None) -> object:
    """Returns something JSON cannot hold."""
    return {1, 2, 3}


def huge(args: dict[str, Any], event: Event | None) -> list[int]:
    """Returns a big JSON-serialisable value."""
    return list(range(int(args["n"])))


def returns_coroutine(args: dict[str, Any], event: Event | None) -> Any:
    """A plain function that hands back a coroutine (awaited by the tool)."""
    return aecho(args, event)


class Handler:
    """A callable object whose __call__ is a coroutine function."""

    async def __call__(self, args: dict[str, Any], event: Event | None) -> str:
        return threading.current_thread().name


handler = Handler()
