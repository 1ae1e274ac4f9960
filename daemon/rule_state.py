"""Rule state across restarts: checkpoints of every rule's per-key state in the state file.

Every ``daemon.checkpoint_seconds`` (and once more at a graceful stop, after the queues have
drained through the rules) each rule's state is snapshotted on the event loop — the snapshot
is the copy, serialised before the rule sees another event — and written by the state writer
thread (the journal's, or this module's own when the journal is off) in one transaction: one
row per rule, with the rule's fingerprint. At start, before any event reaches a rule, the rows
are read back: a rule whose fingerprint matches resumes, a changed one starts fresh (logged),
and rows of rules no longer configured are dropped at the next checkpoint. A process killed
with ``kill -9`` loses at most the state changes of the last interval.

``reflexd state list`` shows the rows, ``reflexd state clear [RULE]`` deletes them (with the
daemon stopped: a running one writes its state again at the next checkpoint and at its stop).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from daemon.errors import StartupError
from daemon.logs import RateLimitedLog, get_logger
from daemon.state import StateStore
from streams.rules.checkpoint import load_snapshot
from streams.rules.pipeline import Rule

__all__ = [
    "TABLE",
    "RuleCheckpoints",
    "SavedState",
    "add_state_parser",
    "clear_rule_state",
    "list_rule_state",
    "run_state",
]

log = get_logger("state")

TABLE = """
CREATE TABLE IF NOT EXISTS rule_state (
    rule TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    saved_at REAL NOT NULL,
    keys INTEGER NOT NULL,
    state BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class SavedState:
    rule: str
    fingerprint: str
    saved_at: float  # wall-clock time of the checkpoint
    keys: int
    size: int  # bytes


def _ensure(store: StateStore) -> None:
    with store.lock:
        store.db.executescript(TABLE)


def _write(store: StateStore, rows: list[tuple[str, str, float, int, bytes]]) -> None:
    """Replace every rule's row with ``rows`` (rules not in them are gone), in one transaction."""
    with store.lock:
        db = store.db
        db.execute("BEGIN")
        try:
            db.execute("DELETE FROM rule_state")
            db.executemany(
                "INSERT INTO rule_state (rule, fingerprint, saved_at, keys, state) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def _read(store: StateStore) -> dict[str, tuple[str, float, bytes]]:
    with store.lock:
        rows = store.db.execute("SELECT rule, fingerprint, saved_at, state FROM rule_state").fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def list_rule_state(store: StateStore) -> list[SavedState]:
    """The saved rows, by rule name (``reflexd state list``)."""
    _ensure(store)
    with store.lock:
        rows = store.db.execute(
            "SELECT rule, fingerprint, saved_at, keys, length(state) FROM rule_state ORDER BY rule"
        ).fetchall()
    return [SavedState(*row) for row in rows]


def clear_rule_state(store: StateStore, rule: str | None = None) -> int:
    """Delete the saved state of ``rule`` (of every rule: None); how many rows went."""
    _ensure(store)
    with store.lock:
        if rule is None:
            return int(store.db.execute("DELETE FROM rule_state").rowcount)
        return int(store.db.execute("DELETE FROM rule_state WHERE rule = ?", (rule,)).rowcount)


class RuleCheckpoints:
    """Restores the rules' state at start and checkpoints it periodically and at the stop.

    ``executor`` is the one thread that writes ``store`` (the journal's); without one, the
    store is this object's own (opened by :meth:`restore`, closed by :meth:`close`) and so is
    the thread.
    """

    def __init__(
        self, store: StateStore, interval: float, executor: ThreadPoolExecutor | None = None
    ) -> None:
        self.store = store
        self.interval = interval
        self._own = executor is None
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="reflexd-rule-state")
        self._task: asyncio.Task[None] | None = None
        self.restored = False  # restore() ran: from then on the rules' state is theirs to save
        self._writing: asyncio.Future[None] | None = None
        self.saved = 0  # checkpoints written
        self.failed = 0  # checkpoints that could not be written
        self.last_keys = 0
        self.last_bytes = 0
        self.last_snapshot_seconds = 0.0  # time on the event loop taking the last one
        self._error_log = RateLimitedLog(log, "rule state checkpoint failed", interval=60.0)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def restore(self, rules: dict[str, Rule]) -> None:
        """Give each rule the state saved for it, if its definition is unchanged (before it sees events)."""
        if self._own:
            await self._run(self.store.open)
        await self._run(_ensure, self.store)
        started = time.perf_counter()
        saved = await self._run(_read, self.store)
        resumed = keys = 0
        for name, rule in rules.items():
            row = saved.get(name)
            if row is None:
                continue
            fp, saved_at, blob = row
            fields: dict[str, Any] = {"rule": name, "saved_at": saved_at}
            if fp != rule.fingerprint:
                log.info("rule changed since its state was saved; it starts fresh", extra={"fields": fields})
                continue
            try:
                snapshot = load_snapshot(blob)
                rule.restore(snapshot)
            except Exception as exc:
                fields["error"] = f"{type(exc).__name__}: {exc}"
                log.warning("rule state could not be read; the rule starts fresh", extra={"fields": fields})
                continue
            resumed += 1
            keys += snapshot.keys
            if snapshot.lost:
                fields["steps"] = snapshot.lost
                log.warning(
                    "rule resumed, but these steps keep no state and start empty", extra={"fields": fields}
                )
        self.restored = True
        if saved:
            log.info(
                "rule state restored",
                extra={
                    "fields": {
                        "rules": resumed,
                        "saved": len(saved),
                        "keys": keys,
                        "seconds": round(time.perf_counter() - started, 3),
                    }
                },
            )

    def start(self, rules: dict[str, Rule]) -> None:
        """Checkpoint every :attr:`interval` seconds from now on."""
        if self.interval > 0:
            self._task = asyncio.create_task(self._periodic(rules), name="reflexd:rule-state")

    async def _periodic(self, rules: dict[str, Rule]) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.checkpoint(rules)

    async def checkpoint(self, rules: dict[str, Rule]) -> None:
        """Snapshot every rule now, on the loop, and write them on the writer thread."""
        taken = time.perf_counter()
        rows: list[tuple[str, str, float, int, bytes]] = []
        now = time.time()
        keys = size = 0
        for name, rule in rules.items():
            try:
                snapshot = rule.snapshot()
                blob = snapshot.dumps()
            except Exception as exc:
                self._error_log.hit(rule=name, error=f"{type(exc).__name__}: {exc}")
                continue
            rows.append((name, snapshot.fingerprint, now, snapshot.keys, blob))
            keys += snapshot.keys
            size += len(blob)
        self.last_snapshot_seconds = time.perf_counter() - taken
        try:
            await asyncio.shield(self._write(rows))
        except Exception as exc:
            self.failed += 1
            self._error_log.hit(error=f"{type(exc).__name__}: {exc}")
            return
        self.saved += 1
        self.last_keys, self.last_bytes = keys, size

    async def _write(self, rows: list[tuple[str, str, float, int, bytes]]) -> None:
        previous = self._writing
        if previous is not None and not previous.done():  # one write at a time, in order
            await asyncio.wait([previous])
        self._writing = asyncio.ensure_future(self._run(_write, self.store, rows))
        await self._writing

    async def stop(self, rules: dict[str, Rule]) -> None:
        """Stop the periodic checkpoints, take the last one (the queues have drained through the
        rules; not if the start never got to :meth:`restore`: that would erase what was saved) and
        release what is this object's own."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        try:
            if self.restored:
                await self.checkpoint(rules)
                log.info(
                    "rule state saved",
                    extra={"fields": {"rules": len(rules), "keys": self.last_keys, "bytes": self.last_bytes}},
                )
        finally:
            writing = self._writing
            if writing is not None and not writing.done():
                await asyncio.wait([writing])
            if self._own:
                self.executor.shutdown(wait=True)
                self.store.close()


# -- reflexd state -----------------------------------------------------------------------------


def add_state_parser(state: argparse.ArgumentParser) -> None:
    verbs = state.add_subparsers(dest="state_verb", required=True, metavar="ACTION")
    listing = verbs.add_parser("list", help="the rules' saved state: fingerprint, when saved, keys, size")
    clear = verbs.add_parser(
        "clear",
        help="discard the saved state of RULE (of every rule without one): it starts empty at the next "
        "start; run it with the daemon stopped (a running one saves its state again)",
    )
    clear.add_argument("rule", nargs="?", metavar="RULE", help="a rule's name (default: every rule)")
    for action in (listing, clear):
        action.add_argument("-c", "--config", default=argparse.SUPPRESS, help="configuration file")


def run_state(path: Path, args: argparse.Namespace) -> int:
    """``reflexd state list|clear`` on the state file at ``path``; the exit code."""
    if not path.exists():
        print(f"reflexd: no state at {path} (no rule state was ever saved)", file=sys.stderr)
        return 0
    try:
        store = StateStore(path).open()
    except StartupError as exc:  # unreadable, or written by a newer reflexd
        print(f"reflexd state: {exc.reason}", file=sys.stderr)
        return 1
    try:
        if args.state_verb == "clear":
            gone = clear_rule_state(store, args.rule)
            which = f"rule {args.rule}" if args.rule else "every rule"
            print(f"discarded the saved state of {which}: {gone} row(s)")
            return 0
        for saved in list_rule_state(store):
            when = datetime.fromtimestamp(saved.saved_at, UTC).isoformat(timespec="seconds")
            print(f"{saved.rule}\t{saved.fingerprint[:12]}\t{when}\t{saved.keys} keys\t{saved.size} bytes")
        return 0
    finally:
        store.close()
