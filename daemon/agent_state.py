"""The agent's part of the state database: runs and their conversations, token usage, approvals.

:class:`AgentState` is the :class:`handlers.agent_store.AgentStore` the llm tools write through. It
shares the journal's SQLite file and its one writer thread: durable writes (a run's messages, its
end, a proposal) are awaited on that thread and committed before they return; counting writes
(token usage, runs the gate turned away) join the journal's batches.

The ``reflexd agent`` and ``reflexd approvals`` commands read and decide through the same class,
synchronously, on a store of their own (the daemon may be running: SQLite's WAL lets both work;
an approval decided by the command is picked up by the running daemon within a second).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, TypeVar

from daemon.state import REDACTED, Journal, StateStore, _dumps, _loads
from handlers.agent_store import Approval, RunState

__all__ = ["AgentState", "DecisionError"]

T = TypeVar("T")


_RUN_COLUMNS = (
    "run_id, tool, rule, key, event, prompt, started, ended, outcome, rounds, tokens_in, tokens_out,"
    " answer, error, call_id"
)
_APPROVAL_COLUMNS = (
    "id, run_id, llm, rule, tool, args, key, event, reasoning, status, created, decided_at, decided_by,"
    " note, outcome, result, error"
)
_INSERT_RUN = f"INSERT OR REPLACE INTO agent_runs ({_RUN_COLUMNS}) VALUES ({', '.join('?' * 15)})"
#: A run the gate settled: never in place of a run of the same id (a redelivered record's escalation
#: turned away must not overwrite the run that record started).
_INSERT_SCREENED = (
    f"INSERT INTO agent_runs ({_RUN_COLUMNS}) VALUES ({', '.join('?' * 15)}) ON CONFLICT (run_id) DO NOTHING"
)
_INSERT_USAGE = "INSERT INTO agent_usage (tool, ts, tokens) VALUES (?, ?, ?)"
#: Token usage older than this is dropped (the longest budget window is a day).
USAGE_KEEP_SECONDS = 2 * 86400.0


#: The longest result text an approval keeps (longer: a JSON string of its start, marked).
MAX_RESULT_CHARS = 65536


def _result_text(result: Any) -> str | None:
    """An approved call's result as JSON that reads back: a long one is kept as a JSON string of its
    first :data:`MAX_RESULT_CHARS` characters with a marker (cut JSON text would not parse)."""
    if result is None:
        return None
    text = _dumps(result)
    if len(text) <= MAX_RESULT_CHARS:
        return text
    return _dumps(f"{text[:MAX_RESULT_CHARS]}…[truncated {len(text) - MAX_RESULT_CHARS} characters]")


class DecisionError(Exception):
    """An approval that cannot be decided (unknown id, decided already)."""


def _run_row(run: RunState, secrets: tuple[str, ...] = ()) -> tuple[Any, ...]:
    """The run as a row; ``secrets`` (texts from ``${VAR}``) replaced in its error, which quotes
    whatever a provider answered (an endpoint may echo the key it refused)."""
    error = run.error
    if error is not None:
        for secret in secrets:
            error = error.replace(secret, REDACTED)
    return (
        run.run_id,
        run.tool,
        run.rule,
        _dumps(run.key),
        _dumps(run.event),
        run.prompt,
        run.started,
        run.ended,
        run.outcome,
        run.rounds,
        run.tokens_in,
        run.tokens_out,
        run.answer,
        error,
        run.call_id,
    )


def _run_from(row: tuple[Any, ...]) -> RunState:
    return RunState(
        run_id=row[0],
        tool=row[1],
        rule=row[2],
        key=_loads(row[3]),
        event=_loads(row[4]),
        prompt=row[5] or "",
        started=row[6],
        ended=row[7],
        outcome=row[8],
        rounds=row[9],
        tokens_in=row[10],
        tokens_out=row[11],
        answer=row[12],
        error=row[13],
        call_id=row[14],
    )


def _approval_from(row: tuple[Any, ...]) -> Approval:
    return Approval(
        id=row[0],
        run_id=row[1],
        llm=row[2],
        rule=row[3],
        tool=row[4],
        args=_loads(row[5]) or {},
        key=row[6],
        event=_loads(row[7]),
        reasoning=row[8] or "",
        status=row[9],
        created=row[10],
        decided_at=row[11],
        decided_by=row[12],
        note=row[13],
        outcome=row[14],
        result=_loads(row[15]),
        error=row[16],
    )


class AgentState:
    """Agent runs, usage and approvals in the state file. ``journal``: the daemon's journal, whose
    writer thread the async methods use (None for the command-line tools, which call the sync ones);
    ``secrets``: the configuration's texts from ``${VAR}``, never written in a run's error."""

    def __init__(
        self, store: StateStore, journal: Journal | None = None, secrets: Iterable[str] = ()
    ) -> None:
        self.store = store
        self.journal = journal
        self._secrets = tuple(sorted(secrets, key=len, reverse=True))  # a secret holding another: whole

    # -- the daemon's side (handlers.agent_store.AgentStore) --------------------------------------

    async def _durable(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` on the journal's writer thread, after what the journal holds: a crash never leaves a
        run's row without the journal row of the call that runs it (the restart resumes the run
        through that row), nor a model call's message without its token usage. Once queued, the
        write completes even if the run is cancelled meanwhile (a timeout): the next attempt, which
        reads the run back on the same thread, sees it."""
        journal = self.journal
        if journal is None:
            return fn(*args)
        await journal.flush()
        loop = asyncio.get_running_loop()
        return await asyncio.shield(loop.run_in_executor(journal.executor, functools.partial(fn, *args)))

    async def load_run(self, run_id: str) -> RunState | None:
        return await self._durable(self.run, run_id)

    async def begin_run(self, run: RunState) -> None:
        await self._durable(self._write_run, run, run.messages, 0)

    async def add_messages(self, run: RunState, messages: list[dict[str, Any]]) -> None:
        await self._durable(self._write_run, run, messages, len(run.messages) - len(messages))

    async def end_run(self, run: RunState) -> None:
        await self._durable(self._write_run, run, [], 0)

    def screened(self, run: RunState) -> None:
        if self.journal is not None:
            self.journal.queue(_INSERT_SCREENED, _run_row(run, self._secrets))
        else:
            with self.store.lock:
                self.store.db.execute(_INSERT_SCREENED, _run_row(run, self._secrets))

    def add_usage(self, tool: str, ts: float, tokens: int) -> None:
        if self.journal is not None:
            self.journal.queue(_INSERT_USAGE, (tool, ts, tokens))
        else:
            with self.store.lock:
                self.store.db.execute(_INSERT_USAGE, (tool, ts, tokens))

    def usage_since(self, tool: str, since: float) -> list[tuple[float, int]]:
        with self.store.lock:
            rows = self.store.db.execute(
                "SELECT ts, tokens FROM agent_usage WHERE tool = ? AND ts > ? ORDER BY ts", (tool, since)
            ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def runs_since(self, tool: str, since: float) -> list[float]:
        with self.store.lock:
            rows = self.store.db.execute(
                "SELECT started FROM agent_runs WHERE tool = ? AND started > ?"
                " AND (outcome IS NULL OR outcome NOT IN ('deduplicated', 'over_budget')) ORDER BY started",
                (tool, since),
            ).fetchall()
        return [r[0] for r in rows]

    async def propose(self, approval: Approval) -> int:
        return await self._durable(self._propose, approval)

    def _propose(self, approval: Approval) -> int:
        with self.store.lock:
            db = self.store.db
            found = db.execute("SELECT id FROM approvals WHERE key = ?", (approval.key,)).fetchone()
            if found is not None:
                return int(found[0])
            cur = db.execute(
                "INSERT INTO approvals"
                " (run_id, llm, rule, tool, args, key, event, reasoning, status, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                (
                    approval.run_id,
                    approval.llm,
                    approval.rule,
                    approval.tool,
                    _dumps(approval.args),
                    approval.key,
                    _dumps(approval.event),
                    approval.reasoning,
                    approval.created,
                ),
            )
            return int(cur.lastrowid or 0)

    def _write_run(self, run: RunState, messages: list[dict[str, Any]], first_seq: int) -> None:
        """The run's row and ``messages`` (numbered from ``first_seq``), in one transaction."""
        now = time.time()
        with self.store.lock:
            db = self.store.db
            db.execute("BEGIN")
            try:
                db.execute(_INSERT_RUN, _run_row(run, self._secrets))
                if messages:
                    db.executemany(
                        "INSERT OR REPLACE INTO agent_messages (run_id, seq, at, message)"
                        " VALUES (?, ?, ?, ?)",
                        [(run.run_id, first_seq + i, now, _dumps(m)) for i, m in enumerate(messages)],
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    # -- at start ---------------------------------------------------------------------------------

    def open_runs(self) -> list[RunState]:
        """Runs a previous process left without an outcome (oldest first)."""
        with self.store.lock:
            rows = self.store.db.execute(
                f"SELECT {_RUN_COLUMNS} FROM agent_runs WHERE outcome IS NULL ORDER BY started"
            ).fetchall()
        return [_run_from(r) for r in rows]

    def mark_interrupted(self, run: RunState, reason: str) -> RunState:
        ended = replace(run, outcome="interrupted", error=reason, ended=time.time())
        self._write_run(ended, [], 0)
        return ended

    async def tidy(self, retention_seconds: float) -> None:
        """:meth:`prune` on the writer thread (the running daemon's periodic pruning)."""
        await self._durable(self.prune, retention_seconds)

    def prune(self, retention_seconds: float, now: float | None = None) -> None:
        """Drop usage older than two days, and ended runs (with their messages) and decided approvals
        created before the retention. Open runs and approvals still to be decided or run stay."""
        now = time.time() if now is None else now
        cutoff = now - retention_seconds
        with self.store.lock:
            db = self.store.db
            db.execute("BEGIN")
            try:
                db.execute("DELETE FROM agent_usage WHERE ts < ?", (now - USAGE_KEEP_SECONDS,))
                db.execute(
                    "DELETE FROM agent_messages WHERE run_id IN"
                    " (SELECT run_id FROM agent_runs WHERE outcome IS NOT NULL AND started < ?)",
                    (cutoff,),
                )
                db.execute("DELETE FROM agent_runs WHERE outcome IS NOT NULL AND started < ?", (cutoff,))
                db.execute(
                    "DELETE FROM approvals WHERE status IN ('executed', 'failed', 'rejected')"
                    " AND created < ?",
                    (cutoff,),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    # -- reading (the ``reflexd agent`` command, the ops server) ----------------------------------

    def run(self, run_id: str) -> RunState | None:
        """One run with its messages."""
        with self.store.lock:
            db = self.store.db
            row = db.execute(f"SELECT {_RUN_COLUMNS} FROM agent_runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                return None
            messages = db.execute(
                "SELECT message FROM agent_messages WHERE run_id = ? ORDER BY seq", (run_id,)
            ).fetchall()
        run = _run_from(row)
        run.messages = [_loads(m[0]) for m in messages]
        return run

    def runs(self, *, tool: str | None = None, limit: int = 50) -> list[RunState]:
        """The newest runs (without their messages), newest last."""
        sql = f"SELECT {_RUN_COLUMNS} FROM agent_runs"
        params: list[Any] = []
        if tool:
            sql += " WHERE tool = ?"
            params.append(tool)
        sql += " ORDER BY started DESC LIMIT ?"
        params.append(limit)
        with self.store.lock:
            rows = self.store.db.execute(sql, params).fetchall()
        return [_run_from(r) for r in reversed(rows)]

    # -- approvals --------------------------------------------------------------------------------

    def approvals(self, *, status: str | None = "pending") -> list[Approval]:
        sql = f"SELECT {_APPROVAL_COLUMNS} FROM approvals"
        params: list[Any] = []
        if status:
            sql += " WHERE status = ?"
            params.append(status)
        sql += " ORDER BY id"
        with self.store.lock:
            rows = self.store.db.execute(sql, params).fetchall()
        return [_approval_from(r) for r in rows]

    def approval(self, approval_id: int) -> Approval | None:
        with self.store.lock:
            row = self.store.db.execute(
                f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE id = ?", (approval_id,)
            ).fetchone()
        return None if row is None else _approval_from(row)

    def decide(self, approval_id: int, approve: bool, *, by: str, note: str | None = None) -> Approval:
        """Approve or reject a pending proposal (once: a decided one raises :class:`DecisionError`)."""
        status = "approved" if approve else "rejected"
        with self.store.lock:
            changed = self.store.db.execute(
                "UPDATE approvals SET status = ?, decided_at = ?, decided_by = ?, note = ?"
                " WHERE id = ? AND status = 'pending'",
                (status, time.time(), by, note, approval_id),
            ).rowcount
        found = self.approval(approval_id)
        if found is None:
            raise DecisionError(f"no approval {approval_id}")
        if not changed:
            raise DecisionError(f"approval {approval_id} is {found.status} already")
        return found

    async def take(self, *, after_restart: bool = False) -> list[Approval]:
        """:meth:`take_approved` on the writer thread (the daemon's poll never waits on the event loop
        for the file's lock)."""
        return await self._durable(functools.partial(self.take_approved, after_restart=after_restart))

    def take_approved(self, *, after_restart: bool = False) -> list[Approval]:
        """Approved proposals not yet executed, marked ``executing`` as they are taken; ``after_restart``
        takes those a crash left ``executing`` too (their calls keep their idempotency keys)."""
        statuses = "('approved', 'executing')" if after_restart else "('approved')"
        with self.store.lock:
            db = self.store.db
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = db.execute(
                    f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE status IN {statuses} ORDER BY id"
                ).fetchall()
                db.execute("UPDATE approvals SET status = 'executing' WHERE status = 'approved'")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return [_approval_from(r) for r in rows]

    async def take_rejected(self) -> list[Approval]:
        """Rejected proposals the daemon has not told the model of yet (marked told as they are taken:
        ``outcome`` becomes ``rejected``), on the writer thread."""
        return await self._durable(self._take_rejected)

    def _take_rejected(self) -> list[Approval]:
        with self.store.lock:
            db = self.store.db
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = db.execute(
                    f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE status = 'rejected' AND outcome IS NULL"
                    " ORDER BY id"
                ).fetchall()
                db.execute(
                    "UPDATE approvals SET outcome = 'rejected' WHERE status = 'rejected' AND outcome IS NULL"
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return [_approval_from(r) for r in rows]

    def retry_later(self, approval_id: int) -> None:
        """An approved call that could not be queued (its tool's backlog was full): approved again, so
        the next look at the approvals takes it."""
        with self.store.lock:
            self.store.db.execute(
                "UPDATE approvals SET status = 'approved' WHERE id = ? AND status = 'executing'",
                (approval_id,),
            )

    def executed(self, approval_id: int, outcome: str, result: Any, error: str | None) -> None:
        status = "executed" if outcome in ("succeeded", "duplicate") else "failed"
        with self.store.lock:
            self.store.db.execute(
                "UPDATE approvals SET status = ?, outcome = ?, result = ?, error = ? WHERE id = ?",
                (status, outcome, _result_text(result), error, approval_id),
            )
