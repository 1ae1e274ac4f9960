"""What the tool runner needs from a journal, as a protocol the handlers own.

The runner records each call when it is queued and when it ends, skips a call whose idempotency
key already succeeded, and parks a final failure as a dead letter. The daemon's SQLite journal
(``daemon.state.Journal``) is one; the runner never imports it, so ``handlers`` does not depend on
``daemon``. Events are passed in their journaled form (:func:`streams.event.event_record`).

A journal that also records a batching tool's calls together when they end
(:class:`BatchCallJournal`, as the SQLite journal does) lets the runner journal a Kafka record's
call once, with the others of its batch, instead of when it is queued and again when it ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["BatchCallJournal", "CallJournal"]


class CallJournal(Protocol):
    """The journal of tool calls, as the runner writes it."""

    def new_id(self) -> str:
        """A fresh id for one call's journal row."""
        ...

    def succeeded(self, key: str) -> bool:
        """True if a call with this idempotency key already succeeded (it is not run again)."""
        ...

    def started(
        self,
        inv_id: str,
        key: str,
        rule: str | None,
        tool: str,
        args: dict[str, Any],
        event: dict[str, Any] | None,
        secret_args: Iterable[str] = (),
        *,
        resumable: bool = True,
    ) -> None:
        """Record a call as queued (``resumable``: it may be run again after a crash)."""
        ...

    def ended(
        self, inv_id: str, key: str, attempts: int, outcome: str, error: str | None, result: Any
    ) -> None:
        """Record how a call ended: succeeded, failed, dead_lettered or duplicate."""
        ...

    async def dead_letter(
        self,
        key: str,
        rule: str | None,
        tool: str,
        args: dict[str, Any],
        event: dict[str, Any] | None,
        error: str,
        attempts: int,
        secret_args: Iterable[str] = (),
    ) -> None:
        """Durably park a call that failed for good."""
        ...


@runtime_checkable
class BatchCallJournal(CallJournal, Protocol):
    """A journal that records calls that ended together (the runner checks for it once, when built)."""

    def succeeded_any(self, keys: list[str]) -> bool:
        """Whether any of ``keys`` already succeeded (:meth:`succeeded` for many at once)."""
        ...

    def calls_ended(
        self,
        tool: str,
        started: float,
        calls: Sequence[tuple[str, str | None, str, dict[str, Any], frozenset[str], Any, int, Any]],
    ) -> None:
        """Record calls that ended together, each (key, rule, outcome, args, secret argument names,
        event, attempts, result), outcome ``succeeded`` or ``duplicate``."""
        ...

    def calls_succeeded(
        self,
        tool: str,
        started: float,
        rule: str | None,
        secret_args: frozenset[str],
        keys: Sequence[str],
        args: Sequence[dict[str, Any]],
        events: Sequence[Any],
        attempts: Sequence[int],
        results: Sequence[Any],
    ) -> None:
        """:meth:`calls_ended` for calls of one rule that all succeeded, given column by column."""
        ...
