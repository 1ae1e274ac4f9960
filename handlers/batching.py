"""The runner's batching mode: a tool with ``batch_limit`` > 0 is handed several calls at once.

The one-call path (``handlers/runner.py``) awaits ``tool.call(args, ctx)`` for one call per
attempt. A batching tool (the kafka tool: one produce request for many records) instead gets up
to ``batch`` queued calls per attempt from each of a few workers (:func:`lane_shape`), starts
them all with :meth:`~handlers.base.Tool.start_calls` and hands back one future per call;
:class:`BatchAttempt` collects those futures in call order, as ``(result, None)`` or
``(None, error)`` — the same per-call outcomes the one-call path gives.

What happens next is not this module's business: the runner judges each outcome (success,
retry, final failure), retries, journals, dead-letters and releases acknowledgements in one
place for both modes, and one timeout covers each attempt of a batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from daemon.errors import ToolError
from handlers.base import CallContext, Tool

__all__ = ["BatchAttempt", "Outcome", "lane_shape"]

#: One call's outcome of one attempt: ``(result, None)`` or ``(None, error)``.
Outcome = tuple[Any, BaseException | None]


def lane_shape(tool: Tool) -> tuple[int, int]:
    """``(workers, batch size)`` of ``tool``'s lane; batch size 0 = the one-call path.

    A batching tool gets few workers, each handing up to ``batch`` calls to the tool at once,
    so that no more than ``concurrency`` calls run at once in all.
    """
    concurrency = tool.concurrency
    limit = tool.batch_limit
    if limit <= 0:
        return concurrency, 0
    if type(tool).start_calls is Tool.start_calls:
        raise TypeError(f"tool type {type(tool).__name__} sets batch_limit but has no start_calls")
    workers = -(-concurrency // limit)
    return workers, concurrency // workers


def _ignore_outcome(fut: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a call future nobody waits for any more (no 'never retrieved' log)."""
    if not fut.cancelled():
        fut.exception()


class BatchAttempt:
    """One attempt of a batch of calls: started together by the tool, collected in call order."""

    __slots__ = ("calls", "futures", "token", "tool")

    def __init__(self, tool: Tool, calls: Sequence[tuple[dict[str, Any], CallContext]]) -> None:
        self.tool = tool
        self.calls = calls
        self.futures: list[asyncio.Future[Any]] = []
        self.token: Any = None

    async def run(self, outcomes: list[Outcome], task: asyncio.Task[Any]) -> None:
        """Start the calls and append each one's outcome to ``outcomes`` in call order.

        ``task`` is the attempt's task: a cancellation of it (the attempt's timer, or shutdown)
        ends the wait; it never cancels a call's future, which other calls of the batch may share
        (the wait goes through a shield). Raising fails the calls still without an outcome.
        """
        futures, self.token = await self.tool.start_calls(self.calls)
        self.futures = futures
        if len(futures) != len(self.calls):
            raise RuntimeError(f"start_calls gave {len(futures)} futures for {len(self.calls)} calls")
        last: asyncio.Future[Any] | None = None
        success: Outcome | None = None  # the outcome of ``last`` if it succeeded
        for fut in futures:
            if fut is last and success is not None:  # calls sharing one future (one producer batch)
                outcomes.append(success)
                continue
            last, success = fut, None
            if not fut.done():
                try:
                    await asyncio.shield(fut)
                except asyncio.CancelledError:
                    if task.cancelling():
                        raise  # the attempt's timer, or shutdown
                except Exception:
                    pass  # judged just below
            if not fut.cancelled() and fut.exception() is None:  # the common case: no coroutine
                success = (fut.result(), None)
                outcomes.append(success)
            else:
                outcomes.append(await self._outcome(fut))

    async def ended_in_time(self, k: int) -> Outcome | None:
        """Call ``k``'s outcome if its future had ended when the attempt was cut off (collected
        late), else None (it timed out)."""
        futures = self.futures
        if k < len(futures) and futures[k].done():
            return await self._outcome(futures[k])
        return None

    def abandon(self, collected: int) -> None:
        """After the attempt: nobody waits any more for the futures past ``collected`` or still
        running; retrieve their outcomes when they come (no 'exception never retrieved')."""
        for k, left in enumerate(self.futures):
            if k >= collected or not left.done():
                left.add_done_callback(_ignore_outcome)

    async def _outcome(self, fut: asyncio.Future[Any]) -> Outcome:
        """A resolved future as an outcome; a failed one with the error as the tool judges it."""
        if fut.cancelled():
            return None, ToolError(self.tool.name, "call cancelled by the tool", retryable=True)
        exc = fut.exception()
        if exc is None:
            return fut.result(), None
        try:
            return None, await self.tool.call_failed(exc, self.token)
        except Exception as judging:  # the judgement itself failed: a bug, never retried
            return None, judging
