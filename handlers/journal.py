"""What the tool runner needs from a journal, as a protocol the handlers own.

The runner records each call when it is queued and when it ends, skips a call whose idempotency
key already succeeded, and parks a final failure as a dead letter. The daemon's SQLite journal
(``daemon.state.Journal``) is one; the runner never imports it, so ``handlers`` does not depend on
``daemon``. Events are passed in their journaled form (:func:`streams.event.event_record`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

__all__ = ["CallJournal"]


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
