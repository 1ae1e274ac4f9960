"""Embedded state in SQLite (WAL): the invocation journal and the dead-letter queue.

- **Journal**: one row per tool invocation — idempotency key, rule, tool, rendered arguments
  (secrets redacted), the event, start and end, attempts, outcome, error (with traceback) and
  result. Rows are written in batches by one background thread, never on the per-event path;
  retention is bounded by age and by row count.
- **Dead-letter queue**: invocations that failed for good, with the event and the error. Writes
  are durable before they return (a Kafka record may be committed once its call is here).
  Arguments are redacted as they are written, as in the journal (secret-looking names, and
  the names the caller says came from ``${VAR}``); the letter keeps the names it redacted, and
  ``reflexd dlq replay`` renders those again from the stored event and the rule's current
  templates. Letters written before schema 1 hold their arguments as they were (``redacted``
  is NULL).
- **Schema version** in ``PRAGMA user_version`` (:data:`SCHEMA_VERSION`); an older file is
  migrated when it is opened, a newer one refused.
- **Recovery**: an invocation still marked ``running`` when the process died is handed back at
  the next start (:meth:`StateStore.take_unfinished`) and retried with the same idempotency key.
- **Idempotency**: keys that succeeded within the retention are remembered, so a call whose key
  already succeeded (a redelivered Kafka record, a DLQ replay) is skipped.
- **Batch rows**: the calls of a Kafka record taken together by a batching tool that ended alike
  (succeeded, or skipped as duplicates) are one row (:meth:`Journal.calls_ended`;
  :meth:`Journal.calls_succeeded` takes a batch that succeeded whole column by column): its ``args``
  is a JSON array (where a call's own row holds a JSON object) holding the calls' fields
  (:data:`BATCH_ENTRY`) column by column, a value shared by them all once (schema 4; a file of
  schema 3 holds one entry per call instead, still read); :func:`batch_calls` expands it. Such a
  row never runs and keeps no payload (the record is delivered again after a crash); ``key`` is its
  first call's key.

The store is used from the event loop through :class:`Journal` (batched, async) and directly,
synchronously, by the ``reflexd dlq`` commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from daemon.errors import StartupError
from daemon.logs import RateLimitedLog, get_logger, scrub_secrets
from streams.event import READABLE_FIELDS, Event

__all__ = [
    "SCHEMA_VERSION",
    "BatchCall",
    "DeadLetter",
    "Journal",
    "StateStore",
    "Unfinished",
    "batch_calls",
    "redact",
    "redact_names",
]

log = get_logger("state")

SCHEMA = """
CREATE TABLE IF NOT EXISTS invocations (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    rule TEXT,
    tool TEXT NOT NULL,
    args TEXT,
    payload TEXT,
    event TEXT,
    started REAL NOT NULL,
    ended REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL,
    error TEXT,
    result TEXT
);
DROP INDEX IF EXISTS invocations_key;
CREATE INDEX IF NOT EXISTS invocations_started ON invocations (started);
CREATE INDEX IF NOT EXISTS invocations_running ON invocations (started) WHERE outcome = 'running';
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    rule TEXT,
    tool TEXT NOT NULL,
    args TEXT,
    event TEXT,
    error TEXT,
    attempts INTEGER NOT NULL,
    failed_at REAL NOT NULL,
    replayed_at REAL,
    replay_outcome TEXT,
    redacted TEXT
);
CREATE INDEX IF NOT EXISTS dead_letters_tool ON dead_letters (tool, replayed_at);
"""

#: The agent's tables (``daemon.agent_state``): runs, their messages, token usage, approvals.
AGENT_SCHEMA = """
CREATE TABLE IF NOT EXISTS agent_runs (
    run_id TEXT PRIMARY KEY,
    tool TEXT NOT NULL,
    rule TEXT,
    key TEXT,
    event TEXT,
    prompt TEXT,
    started REAL NOT NULL,
    ended REAL,
    outcome TEXT,
    rounds INTEGER NOT NULL DEFAULT 0,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    answer TEXT,
    error TEXT,
    call_id TEXT
);
CREATE INDEX IF NOT EXISTS agent_runs_started ON agent_runs (tool, started);
CREATE INDEX IF NOT EXISTS agent_runs_open ON agent_runs (started) WHERE outcome IS NULL;
CREATE TABLE IF NOT EXISTS agent_messages (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS agent_usage (
    tool TEXT NOT NULL,
    ts REAL NOT NULL,
    tokens INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS agent_usage_ts ON agent_usage (tool, ts);
CREATE TABLE IF NOT EXISTS approvals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    llm TEXT NOT NULL,
    rule TEXT,
    tool TEXT NOT NULL,
    args TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,
    event TEXT,
    reasoning TEXT,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    decided_at REAL,
    decided_by TEXT,
    note TEXT,
    outcome TEXT,
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals (status, id);
"""

_INSERT_HEAD = (
    "INSERT OR REPLACE INTO invocations"
    " (id, key, rule, tool, args, payload, event, started, ended, attempts, outcome, error, result) VALUES "
)
#: ``args`` may come as UTF-8 bytes (a batch row's, see :func:`_batch_text`): stored as text all the same
_INSERT_ROW = "(?, ?, ?, ?, CAST(? AS TEXT), ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_COLUMNS = 13
_INSERT = _INSERT_HEAD + _INSERT_ROW
#: Journal rows per INSERT statement (fewer if SQLite allows fewer variables). The sqlite3 module
#: releases the GIL for every step of a statement, and the writer thread then waits up to a
#: switch interval (5 ms) to get it back from a busy event loop: with one row per statement a
#: batch of 30,000 rows took seconds and the journal fell behind at 30,000 calls/s.
INSERT_ROWS_PER_STATEMENT = 2048
#: Journal rows one pruning step deletes at least (if there are as many to drop) and at most
#: (a step deletes twice what was written since the last one, to keep pace, within that range).
PRUNE_STEP_ROWS = 20_000
PRUNE_STEP_MAX_ROWS = 200_000
#: How often the journal drops rows past the retention age (and counts its rows again).
PRUNE_INTERVAL_SECONDS = 60.0
_UPDATE = (
    "UPDATE invocations SET ended = ?, attempts = ?, outcome = ?, error = ?, result = ?, payload = NULL"
    " WHERE id = ?"
)
#: The page size of a new state file (SQLite's default is 4096). A batch row of a Kafka tool's calls is
#: tens of kB: with 4 kB pages the writer thread spent most of its time in the kernel, writing each
#: page of the row to the WAL as a frame of its own and again at the checkpoint (~1 µs per call,
#: ~0.4 µs with 16 kB pages, in bench/kafka_pipeline.py's journal). A file keeps the size it was
#: made with (changing it needs a VACUUM outside WAL mode).
PAGE_BYTES = 16384
#: How long the journal may hold back the row of a running call whose record its source delivers
#: again after a crash (written once it ends, or as running past this age; see ``Journal._flush``).
HOLD_RUNNING_SECONDS = 1.0
#: The longest result text a journal row keeps.
RESULT_CHARS = 65536

#: The layout ``open`` leaves the file in (``PRAGMA user_version``); see :func:`_migrate`.
#: 1: ``dead_letters.redacted`` — arguments are stored redacted, with the names redacted.
#: 2: the agent's tables (:data:`AGENT_SCHEMA`), created by the schema script.
#: 3: batch rows in ``invocations`` (``args`` a JSON array of the calls, see :data:`BATCH_ENTRY`); no
#:    table changes, but a reflexd that knows only 2 would read such a row as one call (and
#:    remember only one of its keys), so it refuses the file.
#: 4: batch rows column by column (``[{"each": {field: [value per call]}, "same": {field: value}}]``,
#:    see :func:`_batch_text`); no table changes, but a reflexd that knows only 3 cannot read such a
#:    row's calls, so it refuses the file. Rows of one entry per call (schema 3) are still read.
SCHEMA_VERSION = 4

REDACTED = "***"
_SECRET_NAMES = ("password", "passwd", "secret", "token", "authorization", "api_key", "apikey", "private_key")


def _plain(value: Any) -> Any:
    """What orjson cannot serialise: named tuples as objects, anything else as its repr."""
    if isinstance(value, Event):  # its readable fields (the ack is a transport handle)
        return dict(zip(READABLE_FIELDS, value, strict=False))
    if isinstance(value, tuple) and hasattr(type(value), "_fields"):
        return value._asdict()  # type: ignore[attr-defined]
    return repr(value)


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value, default=_plain, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # e.g. an integer beyond 64 bits: keep the whole value as text
        return orjson.dumps(repr(value)).decode()


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


@functools.lru_cache(maxsize=4096)
def _secret_looking(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in _SECRET_NAMES)


@functools.lru_cache(maxsize=4096)
def _names_to_hide(names: tuple[Any, ...], explicit: frozenset[str]) -> bool:
    return any(name in explicit or (isinstance(name, str) and _secret_looking(name)) for name in names)


def _result_text(result: Any) -> str | None:
    return None if result is None else _dumps(result)[:RESULT_CHARS]


def redact(args: dict[str, Any], secret_names: Iterable[str] = ()) -> dict[str, Any]:
    """``args`` with secret-looking or configured-secret values replaced by ``***`` (a copy; ``args``
    itself when there is nothing to hide, so do not change the result)."""
    explicit = secret_names if isinstance(secret_names, frozenset) else frozenset(secret_names)
    if not _hides(args, explicit):
        return args
    out: dict[str, Any] = {}
    for name, value in args.items():
        if name in explicit or (isinstance(name, str) and _secret_looking(name)):
            out[name] = REDACTED
        elif isinstance(value, dict):
            out[name] = redact(value)
        else:
            out[name] = value
    return out


def _hides(args: dict[str, Any], explicit: frozenset[str]) -> bool:
    """Whether :func:`redact` changes ``args``: a name to hide in it, or in a dict in it (at any depth);
    read only, no copy."""
    # the argument names of one rule's call are the same every time: the check is cached by them
    if _names_to_hide(tuple(args), explicit):
        return True
    for value in args.values():  # a loop, not any(<generator>): ~0.2 µs less per call
        if isinstance(value, dict) and _hides(value, _NOTHING):
            break
    else:
        return False
    return True


_NOTHING: frozenset[str] = frozenset()


@functools.lru_cache(maxsize=1024)
def _any_name_to_hide(names: frozenset[Any], explicit: frozenset[str]) -> bool:
    return any(name in explicit or (isinstance(name, str) and _secret_looking(name)) for name in names)


def _any_hidden(calls_args: Sequence[dict[str, Any]], explicit: frozenset[str]) -> bool:
    """Whether :func:`redact` would change any of ``calls_args`` (or cannot tell cheaply: a dict in
    them, which :func:`_hides` looks into), checked for them all at once: the names they use, then
    the types of their values, without Python code per call."""
    if _any_name_to_hide(frozenset().union(*calls_args), explicit):
        return True
    types = set(map(type, itertools.chain.from_iterable(map(dict.values, calls_args))))
    return any(issubclass(kind, dict) for kind in types)


def _shown_args_json(calls_args: Sequence[dict[str, Any]], explicit: frozenset[str]) -> bytes | bool:
    """:func:`_any_hidden`, and when nothing is hidden the arguments dumped (a JSON array, one object
    per call) if that is how they tell it: the names first, then the dump, in which a dict value
    always shows as ``":{`` (a string may hold that too: then the types decide). ~10 times cheaper
    than the types of the values of a Kafka tool's batch, which are cold by then. True: something
    to hide; False: nothing, but no dump (a name that is not a string, a value orjson cannot dump
    as it is)."""
    if _any_name_to_hide(frozenset().union(*calls_args), explicit):
        return True
    try:
        dumped = orjson.dumps(calls_args, default=_plain)
    except TypeError:
        return _any_hidden(calls_args, explicit)
    if b'":{' not in dumped:
        return dumped
    return _any_hidden(calls_args, explicit) or False


def redact_names(args: dict[str, Any], secret_names: Iterable[str] = ()) -> tuple[dict[str, Any], list[str]]:
    """:func:`redact` and the top-level names whose values it changed (a dict value counts when
    something inside it was hidden)."""
    shown = redact(args, secret_names)
    if shown is args:
        return args, []
    # a dict value is copied when it holds dicts, hidden or not: compare it too
    return shown, [name for name, value in shown.items() if value is not args[name] and value != args[name]]


#: One call's entry in a batch row's ``args`` array: its key, its arguments (redacted), where its
#: event came from (the fields of ``event_record(event, data=False)``), its attempts and result.
BATCH_ENTRY = (
    "key",
    "args",
    "source",
    "ts",
    "received_at",
    "event_key",
    "meta",
    "kind",
    "attempts",
    "result",
)
_EVENT_FIELDS = ("source", "ts", "received_at", "key", "meta", "kind")
#: The event's fields of a batch entry, by their index in an :class:`Event` (``data`` and ``ack`` left out).
_EVENT_INDEXES = tuple(Event._fields.index(name) for name in _EVENT_FIELDS)


@dataclass(frozen=True)
class BatchCall:
    """One call of a batch row, as its own row would have held it."""

    key: str
    args: Any
    event: dict[str, Any] | None
    attempts: int
    result: Any


#: SQL: the number of calls a row of ``invocations`` stands for (1 for a call's own row, a batch
#: row's calls in either layout) — for counting calls in a state file without expanding its rows
ROW_CALLS_SQL = (
    "CASE WHEN substr(args, 1, 2) = '[{' THEN json_array_length(args, '$[0].each.key')"
    " WHEN substr(args, 1, 1) = '[' THEN json_array_length(args) ELSE 1 END"
)


def batch_calls(args_text: str | None) -> list[BatchCall] | None:
    """The calls of a batch row, from its ``args``; None for the row of one call (a JSON object)."""
    if not args_text or args_text[0] != "[":
        return None
    doc = orjson.loads(args_text)
    entries: Iterable[Sequence[Any]] = doc
    if doc and isinstance(doc[0], dict):  # column by column (schema 4, see _batch_text)
        each, same = doc[0]["each"], doc[0]["same"]
        n = len(each["key"])
        entries = zip(
            *(each[name] if name in each else itertools.repeat(same[name], n) for name in BATCH_ENTRY),
            strict=True,
        )
    out: list[BatchCall] = []
    for entry in entries:
        key, args, source, *where, attempts, result = entry
        event = None if source is None else dict(zip(_EVENT_FIELDS, (source, *where), strict=True))
        out.append(BatchCall(key, args, event, attempts, result))
    return out


def _batch_text(columns: Sequence[Sequence[Any]], args_json: bytes | None = None) -> str | bytes:
    """A batch row's ``args`` from its calls' fields (``columns``: one sequence per field of
    :data:`BATCH_ENTRY`, in that order, a value per call): ``[{"each": ..., "same": ...}]``, a field
    whose value is one and the same object for every call (the rule's source, the kind, a producer
    batch's result, the attempts) once in ``same``, the others (the keys always) as lists in ``each``;
    one dump of it all. UTF-8 bytes, not decoded (tens of kB): the INSERT stores them as text
    (``CAST(? AS TEXT)``). If that cannot be dumped, one entry per call (schema 3's layout, each
    dumped on its own). ``args_json``: the arguments' column as its dump would be (written as it is)."""
    each: dict[str, Any] = {}
    same: dict[str, Any] = {}
    is_ = operator.is_
    for name, column in zip(BATCH_ENTRY, columns, strict=True):
        first = column[0]
        # the same object each time (not only equal: 1 == 1.0 == True would be written alike)
        if name != "key" and all(map(is_, column, itertools.repeat(first))):
            same[name] = first
        elif name == "args" and args_json is not None:
            each[name] = orjson.Fragment(args_json)
        else:
            each[name] = column
    doc = [{"each": each, "same": same}]
    try:  # without OPT_NON_STR_KEYS first: ~40 % faster, and string keys are the rule
        return orjson.dumps(doc, default=_plain)
    except TypeError:
        pass
    try:
        return orjson.dumps(doc, default=_plain, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return "[" + ",".join(_entry_text(entry) for entry in zip(*columns, strict=True)) + "]"


def _entry_text(entry: tuple[Any, ...]) -> str:
    try:
        return orjson.dumps(entry, default=_plain, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # e.g. an integer beyond 64 bits: that value as its repr
        return orjson.dumps([repr(value) if i in (1, 9) else value for i, value in enumerate(entry)]).decode()


def _owner_only(path: Path) -> None:
    """The state file and its ``-wal`` / ``-shm`` readable by their owner only. The file is created
    here, before SQLite creates it with the umask's mode: SQLite gives the ``-wal`` and ``-shm`` it
    creates the database file's mode, and the WAL holds the newest runs, prompts and results."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):  # not there, or not ours to change
            os.chmod(f"{path}{suffix}", 0o600)


def _refuse_newer(db: sqlite3.Connection, path: Path) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StartupError(
            "state",
            f"{path} has schema {version}, written by a newer reflexd (this one knows {SCHEMA_VERSION})",
        )


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a file written by an older reflexd to :data:`SCHEMA_VERSION` (in one transaction; the
    schema script has created what is missing, tables and indexes; a newer file was refused before)."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(dead_letters)")}
        if "redacted" not in columns:  # 0 → 1; letters already there keep their arguments as they were
            db.execute("ALTER TABLE dead_letters ADD COLUMN redacted TEXT")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


@dataclass(frozen=True)
class DeadLetter:
    id: int
    key: str
    rule: str | None
    tool: str
    args: dict[str, Any]  # as stored: redacted (unless ``redacted`` is None)
    event: dict[str, Any] | None
    error: str | None
    attempts: int
    failed_at: float
    replayed_at: float | None
    replay_outcome: str | None
    redacted: tuple[str, ...] | None = ()  # argument names hidden when written; None: stored in clear


_DEAD_LETTER_COLUMNS = (
    "id, key, rule, tool, args, event, error, attempts, failed_at, replayed_at, replay_outcome, redacted"
)


@dataclass(frozen=True)
class Unfinished:
    id: str
    key: str
    rule: str | None
    tool: str
    args: dict[str, Any]
    event: dict[str, Any] | None
    attempts: int


class StateStore:
    """The SQLite file. One connection per store; calls are serialised by a lock."""

    def __init__(
        self, path: Path, *, retention_seconds: float = 7 * 86400, max_rows: int = 1_000_000
    ) -> None:
        self.path = path
        self.retention_seconds = retention_seconds
        self.max_rows = max_rows
        self.lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._rows_per_insert: int | None = None
        self.rows: int | None = None  # journal rows: counted at open and by each prune, kept up by writes
        self._since_prune = 0  # journal rows inserted since the last pruning step
        self.more_to_prune = False  # the last pruning step was full

    def open(self) -> StateStore:
        db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _owner_only(self.path)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            _refuse_newer(db, self.path)  # before anything below writes to a file this one cannot read
            db.execute(f"PRAGMA page_size = {PAGE_BYTES}")  # a new file only (an existing one keeps its own)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA + AGENT_SCHEMA)
            _migrate(db)
        except BaseException as exc:
            if db is not None:
                db.close()
            if isinstance(exc, sqlite3.Error | OSError):
                raise StartupError("state", f"cannot open {self.path}: {exc}") from exc
            raise
        self._db = db
        self.rows = db.execute("SELECT COUNT(*) FROM invocations").fetchone()[0]
        return self

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("state store is not open")
        return self._db

    # -- journal (called from the journal's writer thread) -----------------------------------

    def write_batch(self, ops: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Run the statements in order, in one transaction; runs of the same statement in one call,
        journal inserts many rows per statement."""
        with self.lock:
            db = self.db
            db.execute("BEGIN")
            try:
                inserted = 0
                for sql, group in itertools.groupby(ops, key=operator.itemgetter(0)):
                    rows = [params for _, params in group]
                    if sql == _INSERT:
                        self._insert_rows(db, rows)
                        inserted += len(rows)
                    else:
                        db.executemany(sql, rows)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._since_prune += inserted
            if self.rows is not None:
                self.rows += inserted

    def _insert_rows(self, db: sqlite3.Connection, rows: list[Sequence[Any]]) -> None:
        """Insert in statements of a power-of-two number of rows (a full size, then the binary
        decomposition of the rest): few GIL hand-overs, and only a dozen statement shapes in the
        sqlite3 statement cache (each size prepared is kept; any size would fill it with large
        statements)."""
        per = self._rows_per_insert
        if per is None:
            variables = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            fits = max(1, min(INSERT_ROWS_PER_STATEMENT, variables // _INSERT_COLUMNS))
            per = self._rows_per_insert = 1 << (fits.bit_length() - 1)
        chain = itertools.chain.from_iterable
        start, left = 0, len(rows)
        while left:
            size = per if left >= per else 1 << (left.bit_length() - 1)
            sql = _INSERT_HEAD + ", ".join([_INSERT_ROW] * size)
            db.execute(sql, list(chain(rows[start : start + size])))
            start += size
            left -= size

    @property
    def over_limit(self) -> bool:
        """More journal rows than ``max_rows`` (by the running count: cheap, read from any thread)."""
        return self.rows is not None and self.rows > self.max_rows

    def prune(self, now: float | None = None, limit: int = PRUNE_STEP_ROWS, recount: bool = True) -> int:
        """One pruning step: drop journal rows past the retention age, then beyond ``max_rows``,
        oldest first, at most ``limit`` in all — raised to twice the rows inserted since the last
        step, to keep pace, but never above ``PRUNE_STEP_MAX_ROWS``, so that the journal's writes
        never wait long behind a prune. Rows still running stay. Returns how many went;
        :attr:`more_to_prune` says whether the step was full. ``recount`` counts the rows again
        (the running count drifts if another process writes the same file)."""
        cutoff = (now or time.time()) - self.retention_seconds
        with self.lock:
            # never less than twice what was written since the last step: under a steady load the
            # steps keep up with the writes (and take about as long as those writes took)
            limit = min(max(limit, 2 * self._since_prune), PRUNE_STEP_MAX_ROWS)
            self._since_prune = 0
            db = self.db
            db.execute("BEGIN")
            try:
                n = db.execute(
                    "DELETE FROM invocations WHERE rowid IN (SELECT rowid FROM invocations"
                    " WHERE started < ? AND outcome != 'running' ORDER BY started LIMIT ?)",
                    (cutoff, limit),
                ).rowcount
                if recount or self.rows is None:
                    self.rows = db.execute("SELECT COUNT(*) FROM invocations").fetchone()[0]
                else:
                    self.rows -= n
                excess = self.rows - self.max_rows
                if excess > 0 and n < limit:
                    over = db.execute(
                        "DELETE FROM invocations WHERE rowid IN (SELECT rowid FROM invocations"
                        " WHERE outcome != 'running' ORDER BY started LIMIT ?)",
                        (min(excess, limit - n),),
                    ).rowcount
                    n += over
                    self.rows -= over
                db.execute("COMMIT")
                self.more_to_prune = n >= limit
            except BaseException:
                self.rows = None  # unknown now: counted again at the next step
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")  # SQLite may have rolled back already
                raise
        return n

    def succeeded_keys(self, limit: int) -> list[str]:
        """Keys that succeeded within the retention, newest last (to seed the dedupe memory); a
        batch row's keys count as ended when it did."""
        cutoff = time.time() - self.retention_seconds
        with self.lock:
            db = self.db
            rows = db.execute(
                "SELECT key, MAX(ended) AS e FROM invocations WHERE outcome = 'succeeded'"
                " AND started >= ? AND COALESCE(substr(args, 1, 1), '') != '['"
                " GROUP BY key ORDER BY e DESC LIMIT ?",
                (cutoff, limit),
            ).fetchall()
            found: dict[str, float] = {}
            batches = db.execute(
                "SELECT args, ended FROM invocations WHERE outcome = 'succeeded' AND started >= ?"
                " AND substr(args, 1, 1) = '[' ORDER BY ended DESC",
                (cutoff,),
            )
            for args, ended in batches:  # newest first, until there are enough
                for call in batch_calls(args) or ():
                    if found.get(call.key, -1.0) < ended:
                        found[call.key] = ended
                if len(found) >= limit:
                    break
        for key, ended in rows:
            if found.get(key, -1.0) < ended:
                found[key] = ended
        newest = sorted(found.items(), key=operator.itemgetter(1))[-limit:] if limit > 0 else []
        return [key for key, _ in newest]

    def take_unfinished(self) -> list[Unfinished]:
        """Invocations a previous process left ``running``; marked ``interrupted`` as they are taken."""
        with self.lock:
            db = self.db
            rows = db.execute(
                "SELECT id, key, rule, tool, payload, event, attempts FROM invocations"
                " WHERE outcome = 'running' ORDER BY started"
            ).fetchall()
            db.execute(
                "UPDATE invocations SET outcome = 'interrupted', ended = ?, payload = NULL"
                " WHERE outcome = 'running'",
                (time.time(),),
            )
        # rows without a payload belong to records their source delivers again (Kafka)
        return [Unfinished(r[0], r[1], r[2], r[3], _loads(r[4]), _loads(r[5]), r[6]) for r in rows if r[4]]

    # -- dead letters ------------------------------------------------------------------------

    def add_dead_letter(
        self,
        key: str,
        rule: str | None,
        tool: str,
        args: dict[str, Any],
        event: dict[str, Any] | None,
        error: str,
        attempts: int,
        secret_args: Iterable[str] = (),
    ) -> int:
        """Park a failed call; ``args`` are stored redacted (``secret_args`` and secret-looking
        names), with the names that were."""
        shown, hidden = redact_names(args, secret_args)
        error = scrub_secrets(error)
        with self.lock:
            cur = self.db.execute(
                "INSERT INTO dead_letters"
                " (key, rule, tool, args, event, error, attempts, failed_at, redacted)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, rule, tool, _dumps(shown), _dumps(event), error, attempts, time.time(), _dumps(hidden)),
            )
            return int(cur.lastrowid or 0)

    def dead_letters(self, *, tool: str | None = None, include_replayed: bool = False) -> list[DeadLetter]:
        sql = f"SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letters WHERE 1=1"
        params: list[Any] = []
        if tool:
            sql += " AND tool = ?"
            params.append(tool)
        if not include_replayed:
            sql += " AND (replayed_at IS NULL OR replay_outcome != 'succeeded')"
        sql += " ORDER BY id"
        with self.lock:
            rows = self.db.execute(sql, params).fetchall()
        return [
            DeadLetter(
                r[0],
                r[1],
                r[2],
                r[3],
                _loads(r[4]) or {},
                _loads(r[5]),
                r[6],
                r[7],
                r[8],
                r[9],
                r[10],
                None if r[11] is None else tuple(_loads(r[11])),
            )
            for r in rows
        ]

    def dead_letter_count(self) -> int:
        """How many letters :meth:`dead_letters` lists (not replayed successfully): the DLQ's size."""
        with self.lock:
            row = self.db.execute(
                "SELECT COUNT(*) FROM dead_letters WHERE replayed_at IS NULL OR replay_outcome != 'succeeded'"
            ).fetchone()
        return int(row[0])

    def mark_replayed(self, dead_letter_id: int, outcome: str) -> None:
        with self.lock:
            self.db.execute(
                "UPDATE dead_letters SET replayed_at = ?, replay_outcome = ? WHERE id = ?",
                (time.time(), outcome, dead_letter_id),
            )

    def purge_dead_letters(self, *, tool: str | None = None, up_to: int | None = None) -> int:
        """Delete the entries (of ``tool``; with IDs up to ``up_to``); how many went."""
        sql = "DELETE FROM dead_letters WHERE 1=1"
        params: list[Any] = []
        if tool:
            sql += " AND tool = ?"
            params.append(tool)
        if up_to is not None:
            sql += " AND id <= ?"
            params.append(up_to)
        with self.lock:
            return self.db.execute(sql, params).rowcount


#: A call started: the first columns of its row, (id, key, rule, tool, args, payload, event, started),
#: text and numbers only. Tuples of those are untracked by the cyclic garbage collector once it has
#: seen them: thousands buffered for ``flush_seconds`` cost it nothing (rows held as lists, or
#: tuples holding dicts, cost as much again as writing them, in collections of the whole heap).
_Started = tuple[str, str, "str | None", str, str, "str | None", str, float]
#: How a call ended: the last columns of its row, (ended, attempts, outcome, error, result).
_Ended = tuple[float, int, str, "str | None", "str | None"]
_RUNNING: tuple[None, int, str, None, None] = (None, 0, "running", None, None)  # a row still running


def _journal_rows(started: list[_Started], ended: dict[str, _Ended]) -> list[tuple[str, Sequence[Any]]]:
    """The statements for calls started and ended since the last batch: an INSERT per call started
    (with its final state if it also ended, without its payload; ``ended`` loses those), an UPDATE
    per other call ended."""
    out: list[tuple[str, Sequence[Any]]] = []
    append = out.append
    pop = ended.pop
    for row in started:
        end = pop(row[0], None)
        if end is None:
            append((_INSERT, row + _RUNNING))
        elif row[5] is None:
            append((_INSERT, row + end))
        else:  # ended already: no payload kept
            inv_id, key, rule, tool, args, _, event, at = row
            append((_INSERT, (inv_id, key, rule, tool, args, None, event, at, *end)))
    for inv_id, (ended_at, attempts, outcome, error, result) in ended.items():
        append((_UPDATE, (ended_at, attempts, outcome, error, result, inv_id)))
    return out


class Journal:
    """The runner's view of the store: batched journal writes, durable dead letters, dedupe memory."""

    def __init__(
        self,
        store: StateStore,
        *,
        flush_seconds: float = 0.05,
        max_buffered: int = 100_000,
        remember_keys: int = 100_000,
    ) -> None:
        self.store = store
        self.flush_seconds = flush_seconds
        self.max_buffered = max_buffered
        self.remember_keys = remember_keys
        self._ops: list[tuple[str, Sequence[Any]]] = []  # other statements (the agent's), in order
        #: calls started since the last batch, as :meth:`started` got them (rows are built by the writer)
        self._started: list[_Started] = []
        #: calls ended since the last batch, by journal id (merged into their row if it is in the batch)
        self._ended: dict[str, _Ended] = {}
        #: rows of calls ended together (:meth:`calls_ended`), complete; and how many calls they hold
        self._batches: list[tuple[Any, ...]] = []
        self._batched_calls = 0
        #: keys that succeeded, in two generations of up to ``remember_keys`` each (see :meth:`_remember`)
        self._recent: set[str] = set()
        self._older: set[str] = set()
        #: the one thread that writes the file (the agent's durable writes use it too)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reflexd-state")
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._counter = 0
        self._prefix = f"{os.getpid():x}-{int(time.time() * 1000):x}"
        self.dropped = 0  # journal rows dropped because the disk could not keep up
        self.write_errors = 0  # batches that failed to write
        self.written = 0  # statements (one journal row each) written to the file
        self._error_log = RateLimitedLog(log, "journal write failed", interval=30.0)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for key in await loop.run_in_executor(self.executor, self.store.succeeded_keys, self.remember_keys):
            self._remember(key)
        self._task = asyncio.create_task(self._writer(), name="reflexd:journal")

    @property
    def running(self) -> bool:
        return self._task is not None

    @property
    def backlog(self) -> int:
        """Calls started, calls ended and statements buffered for the writer (a call started and
        ended in the same batch counts twice and is written as one row; a batch being written is no
        longer counted)."""
        return len(self._started) + len(self._ended) + len(self._ops) + self._batched_calls

    async def stop(self) -> None:
        """Write what is buffered and stop the writer (never cancelled mid-batch: a batch queued
        in the executor and then cancelled would be lost)."""
        task, self._task = self._task, None
        self._closing = True
        self._wake.set()
        if task is not None:
            await task
        await self._flush()
        self.executor.shutdown(wait=True)

    async def flush(self) -> None:
        """Write what is buffered now. A durable write that must not get ahead of the rows queued
        before it (an agent run's first row, after the row of the call that runs it) awaits this
        first: the one writer thread takes the two in that order. The rows taken are written even if
        the caller is cancelled meanwhile."""
        await asyncio.shield(self._flush())

    # -- hot-ish path (once per tool invocation, never per event) ----------------------------

    def new_id(self) -> str:
        """Ids of one process sort in the order they were made (padded: SQLite appends them to the
        primary key's index instead of inserting them all over it)."""
        self._counter += 1
        return f"{self._prefix}-{self._counter:08x}"

    def succeeded(self, key: str) -> bool:
        return key in self._recent or key in self._older

    def succeeded_any(self, keys: list[str]) -> bool:
        """Whether any of ``keys`` succeeded (:meth:`succeeded` for many keys, in one set test each)."""
        return not (self._recent.isdisjoint(keys) and self._older.isdisjoint(keys))

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
        """Record an invocation as running. ``payload`` keeps the real arguments until it ends, so
        an invocation interrupted by a crash can be retried at the next start (unless it is not
        ``resumable``: a Kafka record is delivered again instead); ``args`` is redacted.

        What is kept until the next batch is a tuple of texts (see :data:`_Started`); the writer thread
        makes the row of it."""
        started = self._started
        if len(started) + len(self._ops) + self._batched_calls >= self.max_buffered:
            self.dropped += 1
            return
        shown = redact(args, secret_args)
        shown_text = _dumps(shown)
        payload = None
        if resumable:
            payload = shown_text if shown is args else _dumps(args)  # nothing hidden: one dump
        started.append((inv_id, key, rule, tool, shown_text, payload, _dumps(event), time.time()))
        if len(started) == 1:
            self._wake.set()

    def ended(
        self, inv_id: str, key: str, attempts: int, outcome: str, error: str | None, result: Any
    ) -> None:
        """Record how an invocation ended (merged into its row if that is not written yet)."""
        if error is not None:  # a failure's text may quote a secret argument (stderr, a response body)
            error = scrub_secrets(error)
        if outcome == "succeeded":
            self._remember(key)
        ended = self._ended
        if len(ended) >= self.max_buffered:
            self.dropped += 1
            return
        ended[inv_id] = (time.time(), attempts, outcome, error, _result_text(result))
        if len(ended) == 1:
            self._wake.set()

    def _remember(self, key: str) -> None:
        """Remember a key that succeeded: the newest ``remember_keys`` keys at least, twice as many at
        most. Two sets, no order kept: when the recent one is full it becomes the older one, and the
        keys of the older one are forgotten (no per-key bookkeeping; a key that succeeds again is
        added to the recent one)."""
        recent = self._recent
        recent.add(key)
        if len(recent) >= self.remember_keys:
            self._older, self._recent = recent, set()

    def _remember_all(self, keys: Iterable[str]) -> None:
        recent = self._recent
        recent.update(keys)
        if len(recent) >= self.remember_keys:
            self._older, self._recent = recent, set()

    def calls_ended(
        self,
        tool: str,
        started: float,
        calls: Sequence[tuple[str, str | None, str, dict[str, Any], frozenset[str], Any, int, Any]],
    ) -> None:
        """Record calls that ended together, each (key, rule, outcome, args, secret argument names,
        event, attempts, result), outcome ``succeeded`` or ``duplicate``: one row per rule and outcome
        (see :func:`batch_calls`), for calls their source delivers again after a crash (nothing to
        resume: no payload, no row while they run). ``event`` is an :class:`Event` or None."""
        if not calls or self._buffer_full(len(calls), lambda: [c[0] for c in calls if c[2] == "succeeded"]):
            return
        now = time.time()
        wake = not self._batches
        if not self._calls_ended_alike(tool, started, now, calls):
            self._calls_ended_apart(tool, started, now, calls)
        if wake:
            self._wake.set()

    def _buffer_full(self, n: int, succeeded: Callable[[], Iterable[str]]) -> bool:
        """Whether the writer's buffer has no room for the rows of ``n`` more calls: then they are
        counted as dropped and the keys of those that succeeded (``succeeded()``) remembered, as
        :meth:`ended` does."""
        if self._batched_calls + len(self._started) + len(self._ops) < self.max_buffered:
            return False
        self._remember_all(succeeded())
        self.dropped += n
        return True

    def _calls_ended_alike(
        self,
        tool: str,
        started: float,
        now: float,
        calls: Sequence[tuple[str, str | None, str, dict[str, Any], frozenset[str], Any, int, Any]],
    ) -> bool:
        """:meth:`calls_ended` when the calls have one rule, outcome and secret names, an event each,
        and nothing to hide (the common case: a Kafka tool's batch): their row built column by column,
        with no Python code per call; False (nothing done) otherwise."""
        keys, rules, outcomes, args, secrets, events, attempts, results = zip(*calls, strict=True)
        n = len(keys)
        rule, outcome, hide = rules[0], outcomes[0], secrets[0]
        if rules.count(rule) != n or outcomes.count(outcome) != n or secrets.count(hide) != n:
            return False
        return self._columns_row(
            tool, started, now, rule, outcome, hide, keys, args, events, attempts, results
        )

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
        """:meth:`calls_ended` for calls of one rule that all succeeded, given column by column (a
        sequence of a value per call each; ``secret_args``: the rule's secret argument names): the
        same rows, without a tuple per call to build and take apart (a Kafka tool's batch, as the
        runner has it)."""
        if not keys or self._buffer_full(len(keys), lambda: keys):
            return
        now = time.time()
        wake = not self._batches
        if not self._columns_row(
            tool, started, now, rule, "succeeded", secret_args, keys, args, events, attempts, results
        ):
            n = len(keys)
            calls = list(
                zip(
                    keys,
                    [rule] * n,
                    ["succeeded"] * n,
                    args,
                    [secret_args] * n,
                    events,
                    attempts,
                    results,
                    strict=True,
                )
            )
            self._calls_ended_apart(tool, started, now, calls)
        if wake:
            self._wake.set()

    def _columns_row(
        self,
        tool: str,
        started: float,
        now: float,
        rule: str | None,
        outcome: str,
        hide: frozenset[str],
        keys: Sequence[str],
        args: Sequence[dict[str, Any]],
        events: Sequence[Any],
        attempts: Sequence[int],
        results: Sequence[Any],
    ) -> bool:
        """The row of calls of one rule and outcome with one set of secret names, column by column
        (:meth:`_calls_ended_alike`); False (nothing done) if a call has no event or something is to
        hide."""
        if None in events:
            return False
        dumped = _shown_args_json(args, hide)
        if dumped is True:
            return False
        fields = list(zip(*events, strict=True))  # the events' fields, one tuple each
        where = [fields[i] for i in _EVENT_INDEXES]
        if outcome == "succeeded":
            self._remember_all(keys)
        columns = (keys, args, *where, attempts, results)
        self._batch_row(tool, started, now, rule, outcome, columns, max(attempts), dumped or None)
        return True

    def _calls_ended_apart(
        self,
        tool: str,
        started: float,
        now: float,
        calls: Sequence[tuple[str, str | None, str, dict[str, Any], frozenset[str], Any, int, Any]],
    ) -> None:
        """:meth:`calls_ended` call by call: grouped by rule and outcome, each call's arguments redacted."""
        groups: dict[tuple[str | None, str], list[tuple[Any, ...]]] = {}
        succeeded: list[str] = []
        last_rule: str | None = None
        last_outcome = ""
        entries: list[tuple[Any, ...]] = []
        for key, rule, outcome, args, secrets, event, attempts, result in calls:
            if rule != last_rule or outcome != last_outcome:  # the calls of a batch are mostly alike
                entries = groups.setdefault((rule, outcome), [])
                last_rule, last_outcome = rule, outcome
            shown = redact(args, secrets) if _hides(args, secrets) else args  # no call when nothing to hide
            if event is None:
                entries.append((key, shown, None, None, None, None, None, None, attempts, result))
            else:  # unpacked: an attribute of a named tuple is a descriptor call
                source, ts, received_at, event_key, _, meta, kind, _ = event
                entries.append((key, shown, source, ts, received_at, event_key, meta, kind, attempts, result))
            if outcome == "succeeded":
                succeeded.append(key)
        if succeeded:
            self._remember_all(succeeded)
        for (rule, outcome), entries in groups.items():
            columns = list(zip(*entries, strict=True))
            self._batch_row(tool, started, now, rule, outcome, columns, max(columns[8]))

    def _batch_row(
        self,
        tool: str,
        started: float,
        now: float,
        rule: str | None,
        outcome: str,
        columns: Sequence[Sequence[Any]],
        attempts: int,
        args_json: bytes | None = None,
    ) -> None:
        """Buffer the row of calls ended alike (``columns``: the fields of :data:`BATCH_ENTRY`, a
        sequence of a value per call each; ``args_json``: their arguments' column dumped already)."""
        keys = columns[0]
        self._batches.append(
            (
                self.new_id(),
                keys[0],
                rule,
                tool,
                _batch_text(columns, args_json),
                None,
                None,
                started,
                now,
                attempts,
                outcome,
                None,
                None,
            )
        )
        self._batched_calls += len(keys)

    def queue(self, sql: str, params: Sequence[Any]) -> bool:
        """Buffer one statement for the writer; False (counted) when the buffer is full."""
        if len(self._ops) >= self.max_buffered:
            self.dropped += 1
            return False
        self._ops.append((sql, params))
        if len(self._ops) == 1:
            self._wake.set()
        return True

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
        """Durably park a failed invocation (awaited: a Kafka record may be committed right after);
        its arguments are stored redacted, as in the journal (``secret_args``: names from ``${VAR}``)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self.executor,
            self.store.add_dead_letter,
            key,
            rule,
            tool,
            args,
            event,
            error,
            attempts,
            secret_args,
        )

    # -- writer ------------------------------------------------------------------------------

    async def _writer(self) -> None:
        """Write what was buffered, every ``flush_seconds`` while calls come in. Between writes, prune
        in bounded steps: past the retention age every minute (and on, step by step, while a step
        came back full), beyond ``max_rows`` whenever the running count is over it."""
        last_prune = time.monotonic()
        more = False  # the last step was full: there may be more to drop
        stuck = False  # the last step dropped nothing (only running rows left): wait until due
        loop = asyncio.get_running_loop()
        store = self.store
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            if not self._closing:
                await asyncio.sleep(self.flush_seconds)  # gather a batch
            await self._flush(everything=self._closing)
            due = time.monotonic() - last_prune >= PRUNE_INTERVAL_SECONDS
            if not (due or more or (store.over_limit and not stuck)):
                continue
            if due:
                last_prune = time.monotonic()
            try:
                pruned = await loop.run_in_executor(
                    self.executor, functools.partial(store.prune, recount=due)
                )
            except sqlite3.Error as exc:
                self._error_log.hit(error=f"prune: {exc}", rows=0)
                more, stuck = False, True
                continue
            more = store.more_to_prune
            stuck = pruned == 0 and store.over_limit  # over max_rows, but every row left is running
            if more or (pruned and store.over_limit):
                self._wake.set()  # go on at the next turn, even if no call comes in

    async def _flush(self, everything: bool = True) -> None:
        """Write what is buffered; unless ``everything``, the calls of records their source delivers
        again after a crash (no payload) that are still running and started less than
        :data:`HOLD_RUNNING_SECONDS` ago wait for the next batch: they are written once, ended,
        instead of inserted running and then updated (a Kafka tool's calls end within milliseconds,
        but a batch's last ones straddle it)."""
        started, self._started = self._started, []
        ended, self._ended = self._ended, {}
        if not everything and started:
            recent = time.time() - HOLD_RUNNING_SECONDS
            now: list[_Started] = []
            held: list[_Started] = []
            for row in started:  # row[5]: its payload, row[7]: when it started (see _Started)
                (held if row[5] is None and row[7] > recent and row[0] not in ended else now).append(row)
            if held:
                started, self._started = now, held
                self._wake.set()  # written at a later turn even if no call comes in
        ops, self._ops = self._ops, []
        batches, self._batches = self._batches, []
        self._batched_calls = 0
        if not (started or ended or ops or batches):
            return
        try:
            written = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._write, started, ended, ops, batches
            )
        except sqlite3.Error as exc:
            self.write_errors += 1
            self._error_log.hit(error=str(exc), rows=len(started) + len(ended) + len(ops) + len(batches))
        else:
            self.written += written

    def _write(
        self,
        started: list[_Started],
        ended: dict[str, _Ended],
        ops: list[tuple[str, Sequence[Any]]],
        batches: list[tuple[Any, ...]],
    ) -> int:
        """On the writer thread: the batch's journal rows (a call that also ended in it is one row
        with its final state), the rows of calls ended together, the ends of calls written earlier,
        then the other statements, in one transaction; how many statements that was."""
        batch = _journal_rows(started, ended)
        if batches:
            batch[:0] = [(_INSERT, row) for row in batches]
        batch += ops
        self.store.write_batch(batch)
        return len(batch)
