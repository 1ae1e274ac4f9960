"""``python`` tool: call a Python function, ``package.module:function``, with the arguments and the event.

The function is imported when the tool starts (a missing module or attribute, or something
that is not callable, is a :class:`~daemon.errors.StartupError`). It is called as::

    fn(args: dict[str, Any], event: Event | None) -> Any
    fn(args, event, ctx=ctx)   # if it has a parameter named ``ctx`` (a CallContext: call_id, attempt, ...)

``event`` is ``None`` when the caller is not a rule (a language model, a replay of the
dead-letter queue without its event). ``ctx.call_id`` is the idempotency key, the same on
every retry.

- A coroutine function (``async def``) is awaited on the daemon's loop. When the call runs
  past the tool's ``timeout_seconds`` the runner cancels it: the coroutine sees
  ``CancelledError`` at its current ``await``.
- A plain function runs in this tool's own thread pool (``concurrency`` threads), so it may
  block. Its exception propagates unchanged, with its ``__traceback__`` (the function's own
  frames included) and a note naming the tool, so the runner and the journal record it. A
  thread cannot be interrupted: past the timeout the call is counted as timed out, but the
  function keeps its thread until it returns.
- Raise :class:`~daemon.errors.ToolError` with ``retryable=True`` to ask for a retry; any
  other exception fails the call for good (it is a bug, retrying will not help).

The return value is the call's result: returned as is when it is JSON-serialisable (orjson)
and at most ``max_result_bytes`` long as JSON, otherwise a bounded ``repr`` of it, cut to
``max_result_bytes`` characters.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import reprlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import orjson
from pydantic import Field, field_validator

from daemon.errors import StartupError
from handlers.base import CallContext, Tool, ToolConfig
from streams.component import (
    BuildContext,
    ComponentSpec,
    ImportStringError,
    import_from_string,
    is_import_string,
)

__all__ = ["SPEC", "PythonTool", "PythonToolConfig", "bounded_result", "load_function"]

class PythonToolConfig(ToolConfig):
    """Calls a Python function."""

    function: str = Field(
        description="`package.module:function` (an attribute path after the colon), called as "
        "fn(args, event); coroutine functions are awaited, plain ones run in a thread pool.",
    )
    max_result_bytes: int = Field(
        65_536, ge=0, le=16 * 1024 * 1024, description="Largest result kept; a bigger one becomes a cut repr."
    )

    @field_validator("function")
    @classmethod
    def _check_function(cls, ref: str) -> str:
        if not is_import_string(ref):
            raise ValueError(f"{ref!r} must look like package.module:function")
        return ref


def load_function(ref: str) -> Callable[..., Any]:
    """Import ``package.module:attr.path`` and return the callable; ``LookupError`` says what is wrong
    (:class:`~streams.component.ImportStringError` when it cannot be imported)."""
    obj = import_from_string(ref)
    if not callable(obj):
        raise LookupError(f"{ref} is a {type(obj).__name__}, not a function")
    return obj  # type: ignore[no-any-return]


def _load_failure(ref: str, exc: LookupError) -> str:
    """Why :func:`load_function` failed, as :meth:`PythonTool.start` reports it."""
    cause = exc.__cause__
    if isinstance(exc, ImportStringError) and exc.stage == "import" and cause is not None:
        if isinstance(cause, ImportError):
            return f"cannot import {exc.module!r}: {cause}"
        return f"importing {ref} failed: {type(cause).__name__}: {cause}"  # the module's own code raised
    return str(exc)


def _is_async(fn: Callable[..., Any]) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


def _wants_ctx(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("ctx")
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


_repr = reprlib.Repr()
_repr.maxlevel = 4
_repr.maxstring = 4_096
_repr.maxother = 4_096
_repr.maxlong = 4_096


def bounded_result(value: Any, max_bytes: int) -> Any:
    """``value`` if it is JSON-serialisable within ``max_bytes``, else a bounded repr of it."""
    try:
        size = len(orjson.dumps(value))
    except (TypeError, orjson.JSONEncodeError):
        size = -1
    if 0 <= size <= max_bytes:
        return value
    text = _repr.repr(value)
    if len(text) > max_bytes:
        return text[:max_bytes] + f"...[cut at {max_bytes} of {len(text)} characters]"
    return text


class PythonTool(Tool):
    type_name: ClassVar[str] = "python"
    description: ClassVar[str] = "Call a Python function with the arguments and the event."
    args_schema: ClassVar[dict[str, Any]] = {"type": "object", "additionalProperties": True}
    config: PythonToolConfig

    def __init__(self, name: str, config: PythonToolConfig) -> None:
        super().__init__(name, config)
        self.function: Callable[..., Any] | None = None  # imported at start
        self._async = False
        self._ctx = False
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        try:
            fn = load_function(self.config.function)
        except LookupError as exc:
            raise StartupError(f"tool {self.name}", _load_failure(self.config.function, exc)) from exc
        self.function = fn
        self._async = _is_async(fn)
        self._ctx = _wants_ctx(fn)
        if not self._async:
            self._executor = ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix=f"reflexd-python-{self.name}"
            )

    async def call(self, args: dict[str, Any], ctx: CallContext) -> Any:
        fn = self.function
        if fn is None:
            raise RuntimeError(f"tool {self.name} is not started")
        call = (
            functools.partial(fn, args, ctx.event, ctx=ctx)
            if self._ctx
            else functools.partial(fn, args, ctx.event)
        )
        try:
            if self._async:
                value = await call()
            else:
                loop = asyncio.get_running_loop()
                value = await loop.run_in_executor(self._executor, call)
                if inspect.isawaitable(value):  # a plain function that returned a coroutine
                    value = await value
        except Exception as exc:
            exc.add_note(f"in python tool {self.name!r} calling {self.config.function}")
            raise
        return bounded_result(value, self.config.max_result_bytes)

    async def stop(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


# -- registry entry (daemon/registry.py lists SPEC) ----------------------------------------------------


def _summary(c: PythonToolConfig) -> list[tuple[str, Any]]:
    return [("function", c.function), *PythonTool.common_summary(c)]


def _factory(name: str, config: PythonToolConfig, ctx: BuildContext) -> Tool:
    return PythonTool(name, config)


SPEC = ComponentSpec(
    "tool",
    "python",
    PythonToolConfig,
    _factory,
    _summary,
    "Call a Python function (package.module:function) with the arguments and the event; coroutine "
    "functions are awaited, plain ones run in a thread pool.",
    {"type": "python", "function": "myproject.alerts:on_trade", "timeout_seconds": 5},
)
