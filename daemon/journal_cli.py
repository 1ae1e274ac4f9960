"""``reflexd journal``: the recent tool invocations from the state file, and ``-f`` to follow it.

It reads what the running daemon writes (SQLite WAL lets a second process read while the daemon
writes), so it needs no ops endpoint and no token. Arguments are printed as the journal stores
them, already redacted when written (secret-looking names and arguments from ``${VAR}``); what is
printed also passes through :class:`daemon.agent_view.Shown`, as ``reflexd agent`` does: a
``${VAR}`` value that reached an event, an error or a result is shown as ``***`` too.

``-f`` polls the file (every ``--interval`` seconds, like ``tail -f``): a row is printed when it
appears, and a row first printed as ``running`` is printed again when it ends. Ctrl-C ends it
with exit 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import signal
import sqlite3
import sys
import time
from collections.abc import Iterable
from typing import Any

import orjson

from daemon.agent_view import Shown
from daemon.config import AppConfig
from daemon.errors import StartupError
from daemon.state import StateStore, batch_calls

__all__ = ["add_journal_parser", "parse_since", "run_journal"]

FOLLOW_BUSY_MS = 1000  # how long a read of `journal -f` waits for a lock before the next poll

EXIT_OK, EXIT_ERROR = 0, 1

_COLUMNS = "rowid, id, key, rule, tool, args, event, started, ended, attempts, outcome, error, result"
#: ``--outcome failed``: every call that failed for good, whether the dead-letter queue kept it or not
_OUTCOME_ALIASES = {"failed": ("failed", "dead_lettered")}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def add_journal_parser(journal: argparse.ArgumentParser) -> None:
    journal.add_argument(
        "--rule", action="append", metavar="R", help="only invocations of this rule (repeatable)"
    )
    journal.add_argument("--tool", action="append", metavar="T", help="only calls of this tool (repeatable)")
    journal.add_argument(
        "--since",
        metavar="WHEN",
        help="only invocations started since then: a duration back from now (30s, 10m, 2h, 1d) or an "
        "ISO-8601 time with a zone (2026-01-31T12:00:00Z)",
    )
    journal.add_argument(
        "--outcome",
        action="append",
        metavar="O",
        help="only this outcome (repeatable): succeeded, failed (failed for good, dead-lettered or not), "
        "dead_lettered, duplicate, interrupted, running, cancelled",
    )
    journal.add_argument(
        "-n", "--limit", type=int, default=50, metavar="N", help="the N most recent (default 50; 0: all)"
    )
    journal.add_argument("--json", action="store_true", help="one JSON object per line, with the event")
    journal.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing invocations as they are written (Ctrl-C ends)",
    )
    journal.add_argument(
        "--interval", type=float, default=0.5, metavar="S", help="how often -f reads the file (default 0.5 s)"
    )


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: epoch seconds, from a duration back from ``now`` or an ISO-8601 time with a zone."""
    match = _DURATION.match(text)
    if match:
        return (time.time() if now is None else now) - float(match[1]) * _UNITS[match[2] or "s"]
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected a duration (30s, 10m, 2h, 1d) or an ISO-8601 time "
            "(2026-01-31T12:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"--since {text!r}: say which zone the time is in (append Z for UTC, or +02:00)")
    return moment.timestamp()


class _Query:
    """The filters as SQL, and the rows they select."""

    def __init__(self, args: argparse.Namespace, since: float | None) -> None:
        where: list[str] = []
        params: list[Any] = []

        def any_of(column: str, values: Iterable[str]) -> None:
            values = list(dict.fromkeys(values))
            where.append(f"{column} IN ({', '.join('?' * len(values))})")
            params.extend(values)

        if args.rule:
            any_of("rule", args.rule)
        if args.tool:
            any_of("tool", args.tool)
        if args.outcome:
            any_of("outcome", (o for given in args.outcome for o in _OUTCOME_ALIASES.get(given, (given,))))
        if since is not None:
            where.append("started >= ?")
            params.append(since)
        self.where = where
        self.params = params

    def rows(
        self, store: StateStore, extra: str = "", extra_params: Iterable[Any] = (), limit: int = 0
    ) -> list[Any]:
        where = [*self.where, extra] if extra else self.where
        sql = f"SELECT {_COLUMNS} FROM invocations"
        if where:
            sql += " WHERE " + " AND ".join(where)
        params = [*self.params, *extra_params]
        if limit:  # the most recent `limit`, printed oldest first
            sql = f"SELECT * FROM ({sql} ORDER BY started DESC, rowid DESC LIMIT ?) ORDER BY started, rowid"
            params.append(limit)
        else:
            sql += " ORDER BY started, rowid"
        with store.lock:
            rows = store.db.execute(sql, params).fetchall()
        if any(r[5] and r[5][0] == "[" for r in rows):
            rows = list(_expand(rows))
            if limit:
                rows = rows[-limit:]
        return rows


def _expand(rows: list[Any]) -> Iterable[Any]:
    """Rows as one per call: a batch row (calls that ended alike together) as its calls', their ids
    the row's with ``/`` and the call's place in it; their values already decoded."""
    for row in rows:
        calls = batch_calls(row[5])
        if calls is None:
            yield row
            continue
        rowid, inv_id, _key, rule, tool, _args, _event, started, ended, _attempts, outcome, error, _ = row
        for i, call in enumerate(calls):
            yield (
                rowid,
                f"{inv_id}/{i}",
                call.key,
                rule,
                tool,
                call.args,
                call.event,
                started,
                ended,
                call.attempts,
                outcome,
                error,
                call.result,
            )


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _loads(text: Any) -> Any:
    if not isinstance(text, str):  # None, or a batch row's call, decoded already
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


class _Printer:
    def __init__(self, config: AppConfig, as_json: bool) -> None:
        self.shown = Shown(config)
        self.as_json = as_json

    def record(self, row: Any) -> dict[str, Any]:
        _rowid, inv_id, key, rule, tool, args, event, started, ended, attempts, outcome, error, result = row
        shown_args = _loads(args)
        return {
            "id": inv_id,
            "key": key,
            "rule": rule,
            "tool": tool,
            "args": self.shown.args(tool, shown_args) if isinstance(shown_args, dict) else shown_args,
            "started": _when(started),
            "ended": _when(ended),
            "duration_seconds": None if ended is None else round(ended - started, 6),
            "attempts": attempts,
            "outcome": outcome,
            "error": None if error is None else self.shown.text(error),
            "result": self.shown.value(_loads(result)),
            "event": self.shown.value(_loads(event)),
        }

    def line(self, row: Any) -> str:
        r = self.record(row)
        if self.as_json:
            return orjson.dumps(r, default=repr).decode()
        took = "-" if r["duration_seconds"] is None else f"{r['duration_seconds'] * 1000:.0f}ms"
        args = orjson.dumps(r["args"], default=repr).decode()
        if len(args) > 120:
            args = args[:117] + "..."
        error = (r["error"] or "").strip().splitlines()
        tail = f"  {error[-1][:120]}" if error else ""  # a traceback's last line says what was raised
        return (
            f"{r['started']} {r['outcome']:<13} {r['tool']} rule={r['rule']} attempts={r['attempts']} "
            f"{took} {args}{tail}"
        )


def run_journal(config: AppConfig, args: argparse.Namespace) -> int:
    if args.limit < 0 or args.interval <= 0:
        print("reflexd journal: --limit must be >= 0 and --interval > 0", file=sys.stderr)
        return EXIT_ERROR
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(f"reflexd journal: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if not config.daemon.journal.enabled:
        print("reflexd journal: the journal is off (daemon.journal.enabled: false)", file=sys.stderr)
    path = config.build_context().resolve(config.daemon.state_path)
    if not path.exists() and not args.follow:
        print(f"reflexd journal: no state at {path} (no tool was ever called)", file=sys.stderr)
        return EXIT_OK
    query = _Query(args, since)
    printer = _Printer(config, args.json)
    store: StateStore | None = None
    if args.follow:
        # Ctrl-C / SIGINT ends it even when started from a shell that ignores SIGINT in its background
        # jobs (a script's `reflexd journal -f &`): Python then installs no KeyboardInterrupt handler
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while store is None:  # -f on a daemon not started yet: wait for its file
            if path.exists():
                store = StateStore(path).open()
            else:
                time.sleep(args.interval)
        rows = query.rows(store, limit=args.limit)
        _write(printer.line(r) for r in rows)
        if not args.follow:
            if not args.json:
                print(f"{len(rows)} invocation(s)", file=sys.stderr)
            return EXIT_OK
        # following: a read that waits for a lock gives up after 1 s and is tried at the next poll, so
        # Ctrl-C (seen only between SQLite calls) never waits out the store's 30 s busy timeout
        store.db.execute(f"PRAGMA busy_timeout = {FOLLOW_BUSY_MS}")
        _follow(store, query, printer, rows, args.interval)
    except StartupError as exc:  # unreadable, or written by a newer reflexd
        print(f"reflexd journal: {exc.reason}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if store is not None:
            store.close()
    return EXIT_OK


def _write(lines: Iterable[str]) -> None:
    out = sys.stdout
    for line in lines:
        out.write(line + "\n")
    out.flush()


def _follow(store: StateStore, query: _Query, printer: _Printer, shown: list[Any], interval: float) -> None:
    """Print rows written after ``shown`` until Ctrl-C: new rows (by rowid: an invocation whose row
    was flushed with its final state is one new row) and the end of rows printed as running."""
    last = max((r[0] for r in shown), default=0)
    if not shown:  # nothing matched: start after what the file holds now
        with store.lock:
            last = store.db.execute("SELECT COALESCE(MAX(rowid), 0) FROM invocations").fetchone()[0]
    running = {r[1] for r in shown if r[10] == "running"}
    while True:
        time.sleep(interval)
        try:
            new = query.rows(store, "rowid > ?", (last,))
            ended: list[Any] = []
            if running:
                marks = ", ".join("?" * len(running))
                ended = query.rows(store, f"id IN ({marks}) AND outcome != 'running'", running)
        except sqlite3.OperationalError:  # the daemon holds the write lock past the busy timeout: next time
            continue
        for row in ended:
            running.discard(row[1])
        fresh = [r for r in new if r[1] not in {e[1] for e in ended}]
        for row in fresh:
            last = max(last, row[0])
            if row[10] == "running":
                running.add(row[1])
        _write(printer.line(r) for r in sorted([*ended, *fresh], key=lambda r: (r[7], r[0])))
