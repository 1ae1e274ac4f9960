"""``python`` tool: call a Python function, ``package.module:function``, with the arguments and the event.

The function is imported when the tool starts (a missing module or attribute, or something
that is not callable, is a :class:`~daemon.errors.StartupError`); the configuration file's folder
is on the import path, after the installed packages. It is called as::

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
import json
import os
import reprlib
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import orjson
from pydantic import Field, field_validator

from daemon.errors import StartupError
from handlers.base import CallContext, Tool, ToolConfig
from streams.component import (
    BuildContext,
    ComponentSpec,
    ImportStringError,
    PreflightContext,
    Problem,
    import_from_string,
    is_import_string,
)

__all__ = [
    "IMPORT_CHECK_SECONDS",
    "SPEC",
    "PythonTool",
    "PythonToolConfig",
    "bounded_result",
    "import_problem",
    "load_function",
]

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


def load_function(ref: str, import_dir: Path | None = None) -> Callable[..., Any]:
    """Import ``package.module:attr.path`` and return the callable; ``LookupError`` says what is wrong
    (:class:`~streams.component.ImportStringError` when it cannot be imported).

    ``import_dir`` (the configuration file's folder) is added at the end of ``sys.path`` first, so a
    module next to the configuration imports without PYTHONPATH; an installed module of the same
    name comes first."""
    if import_dir is not None:
        folder = str(import_dir.resolve())
        if folder not in sys.path:
            sys.path.append(folder)
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

    def __init__(self, name: str, config: PythonToolConfig, import_dir: Path | None = None) -> None:
        super().__init__(name, config)
        self.import_dir = import_dir  # the configuration file's folder: its modules import
        self.function: Callable[..., Any] | None = None  # imported at start
        self._async = False
        self._ctx = False
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        try:
            fn = load_function(self.config.function, self.import_dir)
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
    return PythonTool(name, config, ctx.base_dir)


IMPORT_CHECK_SECONDS = 15.0
"""How long ``reflexd check`` lets one function's import take (in its own process)."""

# Runs in a child interpreter: the parent's sys.path, then load_function as start() calls it. What the
# user's module prints goes to stderr; the one JSON line on the original stdout is the verdict.
_IMPORT_CHECK = """
import json, os, sys
from pathlib import Path
verdict = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.path[:] = json.loads(sys.argv[2])
from handlers.python import _load_failure, load_function
try:
    load_function(sys.argv[1], Path(sys.argv[3]) if sys.argv[3] else None)
    why = None
except LookupError as exc:
    why = _load_failure(sys.argv[1], exc)
verdict.write(json.dumps(why) + "\\n")
verdict.flush()
os._exit(0)
"""


def import_problem(
    ref: str, import_dir: Path | None = None, timeout: float = IMPORT_CHECK_SECONDS
) -> str | None:
    """Why ``ref`` would not load at start (:meth:`PythonTool.start`), found by importing it in a
    child process (its code never runs in this one), within ``timeout`` seconds; None if it loads."""
    folder = str(import_dir) if import_dir is not None else ""
    argv = [sys.executable, "-I", "-c", _IMPORT_CHECK, ref, json.dumps(sys.path), folder]
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, env=dict(os.environ)
        )
    except subprocess.TimeoutExpired:
        return f"importing {ref} took more than {timeout:g} s (stopped)"
    except OSError as exc:
        return f"cannot run {sys.executable} to import {ref}: {exc.strerror}"
    lines = done.stdout.decode("utf-8", "replace").splitlines()
    if done.returncode == 0 and lines:
        try:
            why = json.loads(lines[-1])
        except ValueError:
            pass
        else:
            return why if isinstance(why, str) or why is None else str(why)
    tail = done.stderr.decode("utf-8", "replace").strip().splitlines()
    last = f": {tail[-1][:200]}" if tail else ""
    return f"importing {ref} ended the process (exit code {done.returncode}){last}"


def _preflight(config: PythonToolConfig, ctx: PreflightContext) -> list[Problem]:
    """Import the function as ``start()`` will, in a child process; offline-safe (the module's
    import-time code runs there; reflexd itself sends nothing)."""
    problem = import_problem(config.function, ctx.build.base_dir)
    return [Problem(("function",), problem)] if problem else []


SPEC = ComponentSpec(
    "tool",
    "python",
    PythonToolConfig,
    _factory,
    _summary,
    "Call a Python function (package.module:function) with the arguments and the event; coroutine "
    "functions are awaited, plain ones run in a thread pool.",
    {"type": "python", "function": "myproject.alerts:on_trade", "timeout_seconds": 5},
    preflight=_preflight,
)
