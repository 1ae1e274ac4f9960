"""Journal, dead-letter queue, idempotency and the circuit breaker, with a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import pytest

from daemon import state
from daemon.errors import StartupError, ToolError
from daemon.state import REDACTED, Journal, StateStore, redact
from handlers.base import CallContext, Tool, ToolConfig
from handlers.runner import ToolRunner
from streams.ack import OffsetTracker
from streams.event import Event
from tests.servers import wait_for

FAST = {"max_attempts": 2, "initial_seconds": 0.01, "max_seconds": 0.02}


class Target(Tool):
    """Fails while ``failing`` is true (retryably unless told otherwise); records what it delivered."""

    type_name: ClassVar[str] = "target"

    def __init__(self, name: str, config: ToolConfig, *, retryable: bool = True) -> None:
        super().__init__(name, config)
        self.failing = True
        self.retryable = retryable
        self.delivered: list[str] = []
        self.calls = 0

    async def call(self, args: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        self.calls += 1
        if self.failing:
            raise ToolError(self.name, "target down", retryable=self.retryable)
        self.delivered.append(ctx.call_id)
        return {"ok": args.get("i")}


class Crash(Tool):
    type_name: ClassVar[str] = "crash"

    def call(self, args: dict[str, Any], ctx: CallContext) -> None:
        raise ZeroDivisionError("a bug in a plain-function tool")


def ctx(key: str, tool: str = "t", event: Event | None = None) -> CallContext:
    return CallContext(tool, "rule", event, key)


async def journaled(tmp_path: Path, *tools: Tool) -> tuple[StateStore, Journal, ToolRunner]:
    store = StateStore(tmp_path / "state.db").open()
    journal = Journal(store, flush_seconds=0.005)
    runner = ToolRunner(
        {t.name: t for t in tools}, journal=journal, secret_args={("rule", "t"): frozenset({"pin"})}
    )
    await journal.start()
    await runner.start()
    return store, journal, runner


async def finish(store: StateStore, journal: Journal, runner: ToolRunner) -> None:
    await runner.stop(5)
    await journal.stop()


def rows(store: StateStore, sql: str) -> list[tuple[Any, ...]]:
    return store.db.execute(sql).fetchall()


async def test_success_is_journaled_with_secrets_redacted(tmp_path: Path) -> None:
    """A call is journaled with key, attempts, outcome and result; secret arguments are redacted."""
    target = Target("t", ToolConfig(type="x", retry=FAST))
    target.failing = False
    store, journal, runner = await journaled(tmp_path, target)
    runner.submit("t", {"i": 1, "token": "s3cr3t", "pin": "1234", "text": "hello"}, ctx("k1"))
    await wait_for(lambda: runner.stats("t").succeeded == 1)
    await finish(store, journal, runner)
    ((key, args, payload, outcome, attempts, result),) = rows(
        store, "SELECT key, args, payload, outcome, attempts, result FROM invocations"
    )
    assert (key, outcome, attempts, result) == ("k1", "succeeded", 1, '{"ok":1}')
    assert "s3cr3t" not in args and "1234" not in args and '"text":"hello"' in args
    assert payload is None  # the unredacted copy only lives while the call runs


async def test_same_key_runs_once_even_across_restarts(tmp_path: Path) -> None:
    """A key that already succeeded is skipped — in the same process and after a restart."""
    target = Target("t", ToolConfig(type="x"))
    target.failing = False
    store, journal, runner = await journaled(tmp_path, target)
    runner.submit("t", {}, ctx("same"))
    runner.submit("t", {}, ctx("same"))
    await wait_for(lambda: runner.stats("t").calls == 2 and runner.stats("t").in_flight == 0)
    await finish(store, journal, runner)
    store.close()
    again = Target("t", ToolConfig(type="x"))
    again.failing = False
    store, journal, runner = await journaled(tmp_path, again)
    runner.submit("t", {}, ctx("same"))
    await wait_for(lambda: runner.stats("t").deduplicated == 1)
    await finish(store, journal, runner)
    assert target.delivered == ["same"] and again.delivered == []


async def test_final_failure_is_dead_lettered_before_the_record_is_released(tmp_path: Path) -> None:
    """After its retries a failing call lands in the DLQ with its event; only then is its record finished."""
    target = Target("t", ToolConfig(type="x", retry=FAST))
    store, journal, runner = await journaled(tmp_path, target)
    tracker = OffsetTracker()
    ack = tracker.received(41)
    event = Event("orders", 1.0, 2.0, "k", {"id": 7}, {"topic": "orders", "offset": 41}, ack=ack)
    runner.submit("t", {"i": 7}, ctx("dl-1", event=event))
    ack.release()  # the dispatcher's hold
    await wait_for(lambda: tracker.committable == 42, within=5)
    (letter,) = store.dead_letters()
    assert (letter.key, letter.tool, letter.attempts, letter.args) == ("dl-1", "t", 2, {"i": 7})
    assert letter.error == "target down" and letter.event is not None and letter.event["data"] == {"id": 7}
    assert "ack" not in letter.event and letter.event["meta"] == {"topic": "orders", "offset": 41}
    await finish(store, journal, runner)
    assert rows(store, "SELECT outcome FROM invocations") == [("dead_lettered",)]


async def test_plain_function_exception_is_journaled_with_traceback(tmp_path: Path) -> None:
    """A bug in a sync tool is propagated from the thread, dead-lettered, and journaled with its traceback."""
    store, journal, runner = await journaled(tmp_path, Crash("c", ToolConfig(type="x")))
    runner.submit("c", {}, ctx("boom", tool="c"))
    await wait_for(lambda: runner.stats("c").dead_lettered == 1)
    await finish(store, journal, runner)
    ((error,),) = rows(store, "SELECT error FROM invocations")
    assert error.startswith("ZeroDivisionError: a bug") and "Traceback" in error and "def call" not in error


async def test_circuit_opens_refuses_fast_and_closes_after_a_probe(tmp_path: Path) -> None:
    """3 failed calls open the circuit; calls are then refused without reaching the tool; a probe closes it."""
    target = Target(
        "t", ToolConfig(type="x", retry={"max_attempts": 1}, circuit={"failures": 3, "open_seconds": 0.2})
    )
    store, journal, runner = await journaled(tmp_path, target)
    for i in range(3):
        runner.submit("t", {}, ctx(f"f{i}"))
    await wait_for(lambda: runner.stats("t").failures == 3)
    assert runner.breaker("t").state == "open" and target.calls == 3
    for i in range(5):
        runner.submit("t", {}, ctx(f"refused{i}"))
    await wait_for(lambda: runner.stats("t").short_circuited == 5)
    assert target.calls == 3  # refused fast: the target saw nothing
    await asyncio.sleep(0.25)
    target.failing = False
    runner.submit("t", {}, ctx("probe"))
    await wait_for(lambda: runner.stats("t").succeeded == 1)
    assert runner.breaker("t").state == "closed"
    await finish(store, journal, runner)
    assert len(store.dead_letters()) == 8


async def test_journal_retention_by_age_and_rows(tmp_path: Path) -> None:
    """prune() drops rows past the age limit and beyond max_rows, oldest first; running rows stay."""
    store = StateStore(tmp_path / "s.db", retention_seconds=100, max_rows=1000).open()
    now = time.time()
    ops = [
        (
            "INSERT INTO invocations (id, key, tool, started, outcome) VALUES (?, ?, 't', ?, ?)",
            (f"i{n}", f"k{n}", now - 150 + n * 0.1, "running" if n == 0 else "succeeded"),
        )
        for n in range(1500)
    ]
    store.write_batch(ops)
    store.prune(now)
    left = rows(store, "SELECT COUNT(*), MIN(started) FROM invocations WHERE outcome = 'succeeded'")[0]
    assert left[0] == 999 and left[1] >= now - 100
    assert rows(store, "SELECT COUNT(*) FROM invocations WHERE outcome = 'running'") == [(1,)]


def test_prune_steps_are_bounded_and_keep_the_row_count(tmp_path: Path) -> None:
    """A pruning step deletes at most `limit` rows and says so; steps repeated reach the same state as one
    big prune; the running row count always equals what the table holds."""
    store = StateStore(tmp_path / "s.db", retention_seconds=100, max_rows=300).open()
    now = time.time()
    store.write_batch(
        [
            (
                "INSERT INTO invocations (id, key, tool, started, outcome) VALUES (?, ?, 't', ?, 'succeeded')",
                (f"i{n}", f"k{n}", now - 200 + n * 0.1),  # the first 1,000 are past the age
            )
            for n in range(2000)
        ]
    )
    assert store.rows == 0  # raw statements are not journal inserts: the count is corrected by a recount
    steps = []
    while (n := store.prune(now, limit=250, recount=not steps)) == 250:
        steps.append(n)
    steps.append(n)
    assert steps == [250] * 6 + [200] and store.rows == 300 and not store.over_limit
    assert rows(store, "SELECT COUNT(*), MIN(started) FROM invocations") == [(300, now - 200 + 1700 * 0.1)]


async def test_journal_prunes_past_max_rows_right_after_a_quiet_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A minute's step that found nothing to drop (a young journal) does not hold back the steps that
    max_rows asks for later."""
    monkeypatch.setattr(state, "PRUNE_INTERVAL_SECONDS", 0.0)  # the first step is due at once
    store = StateStore(tmp_path / "s.db", max_rows=1000).open()
    journal = Journal(store, flush_seconds=0.005)
    await journal.start()
    journal.started(journal.new_id(), "k", "rule", "t", {}, None)
    await wait_for(lambda: journal.written == 1)
    await asyncio.sleep(0.05)  # the due step ran and dropped nothing
    monkeypatch.setattr(state, "PRUNE_INTERVAL_SECONDS", 3600.0)
    for i in range(3000):
        inv = journal.new_id()
        journal.started(inv, f"k{i}", "rule", "t", {}, None)
        journal.ended(inv, f"k{i}", 1, "succeeded", None, None)
    await wait_for(lambda: journal.written == 3001 and store.rows is not None and store.rows <= 1001)
    await journal.stop()


async def test_journal_prunes_while_it_writes(tmp_path: Path) -> None:
    """Past max_rows the writer prunes between its writes, in steps, without waiting for the minute."""
    store = StateStore(tmp_path / "s.db", max_rows=1000).open()
    journal = Journal(store, flush_seconds=0.005)
    await journal.start()
    event = Event("src", 1.0, 1.0, None, {}, {})
    for batch in range(6):
        for i in range(1000):
            inv = journal.new_id()
            journal.started(inv, f"k{batch}-{i}", "rule", "t", {"i": i}, None)
            journal.ended(inv, f"k{batch}-{i}", 1, "succeeded", None, {"event": event.source})
        want = 1000 * (batch + 1)
        await wait_for(lambda want=want: journal.written == want and not store.over_limit)  # type: ignore[misc]
    await journal.stop()
    (total,) = rows(store, "SELECT COUNT(*) FROM invocations")[0]
    assert total <= 2000 and store.rows == total and journal.dropped == 0


def test_unwritable_state_path_is_a_startup_error(tmp_path: Path) -> None:
    """A state file that cannot be created stops the start with a clear reason (exit code 3 upstream)."""
    from daemon.errors import StartupError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StartupError):
        StateStore(blocker / "state.db").open()


def test_wal_mode_and_private_file(tmp_path: Path) -> None:
    """The state file uses WAL and is readable by its owner only."""
    store = StateStore(tmp_path / "s.db").open()
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (tmp_path / "s.db").stat().st_mode & 0o077 == 0
    store.close()
    assert sqlite3.connect(tmp_path / "s.db").execute("SELECT COUNT(*) FROM dead_letters").fetchone() == (0,)


async def test_journal_health_is_in_metrics_and_status(tmp_path: Path) -> None:
    """The journal's dropped rows and write errors are exported, so a failing disk is visible."""
    from prometheus_client import generate_latest

    from daemon.config import load_config_text
    from daemon.registry import builtin_registry
    from daemon.supervisor import Daemon
    from daemon.telemetry import metrics_registry

    (tmp_path / "e.jsonl").write_text("")
    cfg = load_config_text(
        f"daemon: {{http: null, state_path: {tmp_path / 's.db'}}}\n"
        f"sources: {{s: {{type: replay, path: {tmp_path / 'e.jsonl'}}}}}\n",
        builtin_registry(),
    )
    daemon = Daemon(cfg)
    await daemon.start()
    try:
        assert daemon.journal is not None
        daemon.journal.dropped = 3
        body = generate_latest(metrics_registry(daemon)).decode()
        assert (
            "reflexd_journal_dropped_total 3.0" in body and "reflexd_journal_write_errors_total 0.0" in body
        )
        assert "reflexd_journal_backlog " in body
        assert daemon.status()["journal"] == {"dropped": 3, "write_errors": 0, "backlog": 0}
    finally:
        await daemon.stop()


def test_redact_hides_secret_names_at_any_depth_and_configured_ones() -> None:
    """Secret-looking names (at any depth) and configured secret arguments become ***; the same names again
    (the check is cached by them) with other values are judged the same way; nothing else changes."""
    secrets = frozenset({"pin"})
    plain = {"id": 1, "text": "hello", "n": [1, 2]}
    assert redact(plain, secrets) == plain and redact(plain, secrets) == plain
    for value in ("a", "b"):
        args = {"id": 1, "api_key": value, "pin": value, "headers": {"Authorization": value, "x": value}}
        assert redact(args, secrets) == {
            "id": 1,
            "api_key": REDACTED,
            "pin": REDACTED,
            "headers": {"Authorization": REDACTED, "x": value},
        }
        nested = {"id": 1, "inner": {"password": value}}
        assert redact(nested) == {"id": 1, "inner": {"password": REDACTED}}
        assert nested["inner"]["password"] == value  # the caller's arguments are left as they were
    assert redact({1: "x", "token": "y"}) == {1: "x", "token": REDACTED}  # non-string names are allowed
    assert redact({"h": OrderedDict(password="p")}) == {"h": {"password": REDACTED}}  # dict subclasses too


def test_values_json_cannot_hold_are_journaled_as_text() -> None:
    """A result orjson refuses (an integer beyond 64 bits) is kept as its repr, not an error in the writer."""
    from daemon.state import _dumps

    assert _dumps({"n": 2**70}) == "\"{'n': 1180591620717411303424}\""
    assert _dumps(Event("s", 1.0, 2.0, None, {}, {})) == (
        '{"source":"s","ts":1.0,"received_at":2.0,"key":null,"data":{},"meta":{},"kind":"data"}'
    )


async def test_dead_letter_is_stored_redacted_with_the_names_it_hid(tmp_path: Path) -> None:
    """A dead letter's arguments are redacted as they are written (configured and secret-looking names, at
    any depth), and the letter keeps which top-level names were hidden; other values are kept as they were."""
    target = Target("t", ToolConfig(type="x", retry={"max_attempts": 1}))
    store, journal, runner = await journaled(tmp_path, target)
    args = {
        "text": "hello",
        "pin": "1234",
        "token": "s3cr3t",
        "inner": {"password": "pw-9", "n": 1},
        "deep": {"x": {}},
    }
    runner.submit("t", args, ctx("dl-redacted"))
    await wait_for(lambda: runner.stats("t").dead_lettered == 1)
    await finish(store, journal, runner)
    ((stored,),) = rows(store, "SELECT args FROM dead_letters")
    assert not any(secret in stored for secret in ("1234", "s3cr3t", "pw-9"))
    (letter,) = store.dead_letters()
    assert letter.args == {
        "text": "hello",
        "pin": REDACTED,
        "token": REDACTED,
        "inner": {"password": REDACTED, "n": 1},
        "deep": {"x": {}},
    }
    assert letter.redacted == ("pin", "token", "inner")
    assert args["pin"] == "1234"  # the call's own arguments are not changed


OLD_SCHEMA = """
CREATE TABLE invocations (
    id TEXT PRIMARY KEY, key TEXT NOT NULL, rule TEXT, tool TEXT NOT NULL, args TEXT, payload TEXT,
    event TEXT, started REAL NOT NULL, ended REAL, attempts INTEGER NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL, error TEXT, result TEXT
);
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, rule TEXT, tool TEXT NOT NULL, args TEXT,
    event TEXT, error TEXT, attempts INTEGER NOT NULL, failed_at REAL NOT NULL, replayed_at REAL,
    replay_outcome TEXT
);
INSERT INTO dead_letters (key, rule, tool, args, event, error, attempts, failed_at)
    VALUES ('r:e:0', 'r', 't', '{"pin":"1234","id":7}', NULL, 'target down', 3, 1700000000.0);
"""


def test_state_file_of_schema_0_is_migrated_and_keeps_its_letters(tmp_path: Path) -> None:
    """A state file written before dead letters were redacted (schema 0) opens, is migrated to the current
    schema, keeps its letters (marked as stored in clear) and takes new, redacted ones."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.executescript(OLD_SCHEMA)
    store = StateStore(path).open()
    try:
        assert store.db.execute("PRAGMA user_version").fetchone() == (state.SCHEMA_VERSION,)
        (legacy,) = store.dead_letters()
        assert (legacy.key, legacy.args, legacy.redacted) == ("r:e:0", {"pin": "1234", "id": 7}, None)
        store.add_dead_letter("r:e2:0", "r", "t", {"pin": "5678", "id": 8}, None, "down", 1, {"pin"})
        new = store.dead_letters()[1]
        assert (new.args, new.redacted) == ({"pin": REDACTED, "id": 8}, ("pin",))
    finally:
        store.close()
    again = StateStore(path).open()  # a second open finds nothing to migrate
    try:
        assert len(again.dead_letters()) == 2
    finally:
        again.close()


def test_state_file_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    """A state file whose schema is newer than this reflexd knows is a startup error, not silently misread."""
    path = tmp_path / "new.db"
    with sqlite3.connect(path) as newer:
        newer.execute(f"PRAGMA user_version = {state.SCHEMA_VERSION + 1}")
    with pytest.raises(StartupError, match="newer reflexd"):
        StateStore(path).open()


async def test_a_redelivered_records_call_is_written_once_ended_or_running_after_the_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call without a payload (its record comes again after a crash) is held back while it runs, so it
    is written once, ended, instead of inserted and then updated; past HOLD_RUNNING_SECONDS, or when the
    journal is flushed, it is written running. A call with a payload is written running at once."""
    store = StateStore(tmp_path / "s.db").open()
    journal = Journal(store, flush_seconds=0.005)
    await journal.start()
    updates: list[int] = []
    write_batch = store.write_batch

    def counting(ops: Any) -> None:
        updates.append(sum(1 for sql, _ in ops if sql.startswith("UPDATE")))
        write_batch(ops)

    monkeypatch.setattr(store, "write_batch", counting)
    redelivered = journal.new_id()
    journal.started(redelivered, "k1", "rule", "t", {"i": 1}, None, resumable=False)
    resumable = journal.new_id()
    journal.started(resumable, "k2", "rule", "t", {"i": 2}, None)
    await wait_for(lambda: journal.written == 1)
    await asyncio.sleep(0.05)  # several turns of the writer
    assert rows(store, "SELECT key, outcome FROM invocations") == [("k2", "running")]
    journal.ended(redelivered, "k1", 1, "succeeded", None, {"offset": 7})
    await wait_for(lambda: journal.written == 2)
    assert rows(store, "SELECT key, outcome, payload, result FROM invocations ORDER BY key") == [
        ("k1", "succeeded", None, '{"offset":7}'),
        ("k2", "running", '{"i":2}', None),
    ]
    assert sum(updates) == 0
    flushed = journal.new_id()
    journal.started(flushed, "k3", "rule", "t", {"i": 3}, None, resumable=False)
    await journal.flush()  # what the agent's durable writes wait for: everything buffered
    assert rows(store, "SELECT outcome FROM invocations WHERE key = 'k3'") == [("running",)]
    monkeypatch.setattr(state, "HOLD_RUNNING_SECONDS", 0.0)
    journal.started(journal.new_id(), "k4", "rule", "t", {"i": 4}, None, resumable=False)
    await wait_for(lambda: journal.written == 4)
    assert rows(store, "SELECT outcome FROM invocations WHERE key = 'k4'") == [("running",)]
    await journal.stop()
    store.close()


async def test_a_batching_tools_record_calls_are_one_row_per_batch_listed_call_by_call(
    tmp_path: Path,
) -> None:
    """The calls of Kafka records a batching tool ran together and that ended alike are one row (per rule
    and outcome), redacted, without payload; ``reflexd journal`` lists them call by call with their key,
    arguments, event and result; a failed one has its own row with its error; their keys are remembered
    after a restart (the calls are skipped as duplicates, journaled too); nothing runs twice."""
    from argparse import Namespace

    from daemon.journal_cli import _Query
    from tests.handlers.test_batching import BatchTool

    def decide(args: dict[str, Any], c: CallContext) -> Any:
        return ToolError("b", "refused", retryable=False) if args["i"] == 3 else {"n": args["i"]}

    def start(store: StateStore) -> tuple[Journal, ToolRunner, BatchTool]:
        tool = BatchTool(ToolConfig(type="x", concurrency=8), limit=8, decide=decide)
        journal = Journal(store, flush_seconds=0.005)
        runner = ToolRunner({"b": tool}, journal=journal, secret_args={("rule", "b"): frozenset({"pin"})})
        return journal, runner, tool

    async def submit_all(runner: ToolRunner, tracker: OffsetTracker) -> None:
        for i in range(6):
            ack = tracker.received(i)
            meta = {"topic": "in", "partition": 0, "offset": i}
            event = Event("src", float(i), float(i), f"k{i}", {"i": i}, meta, ack=ack)
            assert runner.submit(
                "b", {"i": i, "pin": "1234", "token": "s3cr3t"}, CallContext("b", "rule", event, f"key{i}")
            )
            ack.release()

    store = StateStore(tmp_path / "state.db").open()
    journal, runner, _ = start(store)
    await journal.start()
    await runner.start()
    tracker = OffsetTracker()
    await submit_all(runner, tracker)
    await wait_for(lambda: tracker.committable == 6)
    await runner.stop(5)
    await journal.stop()
    stored = rows(store, "SELECT args, payload, outcome, error FROM invocations ORDER BY started, rowid")
    assert len(stored) < 6  # at least two calls in one row
    assert rows(store, "SELECT DISTINCT typeof(args) FROM invocations") == [("text",)]  # not the bytes dumped
    assert all(payload is None for _, payload, _, _ in stored)
    assert not any("1234" in args or "s3cr3t" in args for args, *_ in stored)
    listed = _Query(Namespace(rule=None, tool=None, outcome=None), None).rows(store)
    by_key = {row[2]: row for row in listed}
    assert sorted(by_key) == [f"key{i}" for i in range(6)] and len(listed) == 6
    for i in (0, 1, 2, 4, 5):
        _, _, _, rule, name, args, event, _, ended, attempts, outcome, error, result = by_key[f"key{i}"]
        assert (rule, name, outcome, attempts, error, result, ended is not None) == (
            "rule",
            "b",
            "succeeded",
            1,
            None,
            {"n": i},
            True,
        )
        assert args == {"i": i, "pin": REDACTED, "token": REDACTED}
        assert event == {
            "source": "src",
            "ts": float(i),
            "received_at": float(i),
            "key": f"k{i}",
            "meta": {"topic": "in", "partition": 0, "offset": i},
            "kind": "data",
        }
    failed = by_key["key3"]
    assert (failed[10], failed[11]) == ("dead_lettered", "refused")
    assert len(store.dead_letters()) == 1
    assert _Query(Namespace(rule=None, tool=None, outcome=None), None).rows(store, limit=2) == listed[-2:]

    journal, runner, again = start(store)  # a restart: the keys that succeeded are remembered
    await journal.start()
    await runner.start()
    tracker = OffsetTracker()
    await submit_all(runner, tracker)
    await wait_for(lambda: tracker.committable == 6)
    await runner.stop(5)
    await journal.stop()
    assert runner.stats("b").deduplicated == 5
    assert [i for batch in again.batches for i, _ in batch] == [3]  # only the one that failed runs again
    listed = _Query(Namespace(rule=None, tool=None, outcome=["duplicate"]), None).rows(store)
    assert sorted(row[2] for row in listed) == [f"key{i}" for i in (0, 1, 2, 4, 5)]
    store.close()


async def test_the_dedupe_memory_keeps_the_newest_keys(tmp_path: Path) -> None:
    """The newest ``remember_keys`` succeeded keys are remembered (twice as many at most), a key that succeeds
    again is newest; older ones are forgotten."""
    store = StateStore(tmp_path / "s.db").open()
    journal = Journal(store, flush_seconds=0.005, remember_keys=16)
    await journal.start()
    for i in range(16):
        journal.ended(journal.new_id(), f"k{i}", 1, "succeeded", None, None)
    journal.ended(journal.new_id(), "k0", 1, "succeeded", None, None)  # k0 is the newest now
    for i in range(16, 48):
        journal.ended(journal.new_id(), f"k{i}", 1, "succeeded", None, None)
        order = [f"k{j}" for j in range(1, 16)] + ["k0"] + [f"k{j}" for j in range(16, i + 1)]
        remembered = [k for k in order if journal.succeeded(k)]
        assert 16 <= len(remembered) <= 32 and remembered == order[-len(remembered) :]
    newest = [f"k{j}" for j in range(32, 48)]
    assert (
        all(journal.succeeded(k) for k in newest)
        and not journal.succeeded("k0")
        and not journal.succeeded("k1")
    )
    older, recent = sorted(journal._older)[0], sorted(journal._recent)[0]  # one key of each generation
    assert journal.succeeded_any(["k0", older]) and journal.succeeded_any(["k1", recent])
    assert not journal.succeeded_any(["k0", "k1", "nope"]) and not journal.succeeded_any([])
    await journal.stop()
    store.close()


def _batch_rows(journal: Journal, calls: list[tuple[Any, ...]], *, alike: bool) -> list[tuple[Any, ...]]:
    """The batch rows ``calls_ended`` buffers for ``calls``, built column by column (``alike``, when it
    takes them so) or call by call; without their ids (fresh each time)."""
    journal._batches = []
    if alike:
        journal.calls_ended("t", 1.0, calls)
    else:
        journal._calls_ended_apart("t", 1.0, 2.0, calls)
    return [row[1:8] + row[9:] for row in journal._batches]


class OffsetAndTime(NamedTuple):
    offset: int
    at: float


SHAPES = [
    "alike",
    "two rules",
    "two outcomes",
    "secret name",
    "configured secret",
    "nested",
    "no event",
    "int key",
    "numbers",
    "brace in a string",
    "named tuple",
]


@pytest.mark.parametrize("shape", SHAPES)
def test_calls_ended_alike_build_the_same_rows_as_call_by_call(shape: str) -> None:
    """The row of a batch of calls built column by column (one rule, outcome and set of secret names,
    nothing to hide) is the row the call-by-call path builds; any other batch takes that path:
    arguments redacted, one row per rule and outcome."""
    meta = {"topic": "in", "partition": 1}

    def call(i: int) -> tuple[Any, ...]:
        args: dict[Any, Any] = {"id": str(i), "p": "1.5"}
        rule, outcome, secrets = "r", "succeeded", frozenset[str]()
        where = {**meta, "offset": i}
        event: Event | None = Event("src", 10.0 + i, 11.0 + i, f"k{i}", {"i": i}, where, "data")
        if shape == "two rules" and i % 2:
            rule = "r2"
        if shape == "two outcomes" and i == 3:
            outcome = "duplicate"
        if shape == "secret name" and i == 2:
            args["api_token"] = "s3cr3t"
        if shape == "configured secret":
            secrets = frozenset({"p"})
        if shape == "nested" and i == 1:
            args["inner"] = {"password": "s3cr3t", "x": 1}
        if shape == "no event" and i == 4:
            event = None
        if shape == "int key":
            args[7] = "seven"
        if shape == "numbers":  # values that are not strings, none of them a dict: nothing to hide
            args.update(n=i, f=1.5, none=None, items=[1, "two"])
        if shape == "brace in a string":  # looks like a dict value in the dump: the types tell it is not
            args["text"] = '{"a":{"password": 1}}'
        if shape == "named tuple":  # dumped as an object, but not a dict: nothing to hide
            args["at"] = OffsetAndTime(i, 2.5)
        return (f"key{i}", rule, outcome, args, secrets, event, 1 + i % 2, {"partition": 0, "offset": i // 2})

    calls = [call(i) for i in range(6)]
    journal = Journal(StateStore(Path("unused.db")))
    built = _batch_rows(journal, calls, alike=True)
    assert built == _batch_rows(journal, calls, alike=False)
    assert all(b"s3cr3t" not in row[3] for row in built)
    expanded = [call for row in built for call in state.batch_calls(row[3].decode()) or ()]
    assert sorted(call.key for call in expanded) == [f"key{i}" for i in range(6)]
    assert len(built) == {"two rules": 2, "two outcomes": 2}.get(shape, 1)
    if shape == "alike":
        assert expanded[5] == state.BatchCall(
            "key5",
            {"id": "5", "p": "1.5"},
            {"source": "src", "ts": 15.0, "received_at": 16.0, "key": "k5",
             "meta": {"topic": "in", "partition": 1, "offset": 5}, "kind": "data"},
            2,
            {"partition": 0, "offset": 2},
        )  # fmt: skip
    journal._batches = []
    assert journal._calls_ended_alike("t", 1.0, 2.0, calls) == (
        shape in ("alike", "int key", "numbers", "brace in a string", "named tuple")
    )
    journal.executor.shutdown()


@pytest.mark.parametrize("shape", [shape for shape in SHAPES if shape not in ("two rules", "two outcomes")])
def test_calls_succeeded_build_the_rows_calls_ended_builds(shape: str) -> None:
    """The calls of one rule that all succeeded, given to ``calls_succeeded`` column by column, make the
    rows ``calls_ended`` makes of them (column by column, or call by call when something is to hide or a
    call has no event), and their keys are remembered."""
    secrets = frozenset({"p"}) if shape == "configured secret" else frozenset[str]()

    def call(i: int) -> tuple[Any, ...]:
        args: dict[Any, Any] = {"id": str(i), "p": "1.5"}
        event: Event | None = Event("src", 10.0 + i, 11.0 + i, None, {"i": i}, {"offset": i}, "data")
        if shape == "secret name" and i == 2:
            args["api_token"] = "s3cr3t"
        if shape == "nested" and i == 1:
            args["inner"] = {"password": "s3cr3t", "x": 1}
        if shape == "no event" and i == 4:
            event = None
        if shape == "int key":
            args[7] = "seven"
        if shape == "numbers":
            args.update(n=i, f=1.5, none=None, items=[1, "two"])
        if shape == "brace in a string":
            args["text"] = '{"a":{"password": 1}}'
        if shape == "named tuple":
            args["at"] = OffsetAndTime(i, 2.5)
        return (f"key{i}", "r", "succeeded", args, secrets, event, 1 + i % 2, {"partition": 0})

    calls = [call(i) for i in range(6)]
    journal = Journal(StateStore(Path("unused.db")))
    expected = _batch_rows(journal, calls, alike=True)
    journal._batches, journal._batched_calls, journal._recent = [], 0, set()
    keys, _, _, args, _, events, attempts, results = (list(column) for column in zip(*calls, strict=True))
    journal.calls_succeeded("t", 1.0, "r", secrets, keys, args, events, attempts, results)
    assert [row[1:8] + row[9:] for row in journal._batches] == expected
    assert journal._batched_calls == 6 and all(journal.succeeded(f"key{i}") for i in range(6))
    journal.executor.shutdown()


@pytest.mark.parametrize("way", ["calls_ended", "calls_succeeded"])
def test_batch_calls_beyond_the_writers_buffer_are_dropped_counted_and_their_keys_still_remembered(
    way: str,
) -> None:
    """With the writer's buffer full, a batch's calls get no row: they are counted as ``dropped``, and
    the keys of those that succeeded are remembered all the same (a redelivery is still skipped), as
    for a call's own row."""
    journal = Journal(StateStore(Path("unused.db")), max_buffered=3)
    event = Event("src", 1.0, 1.0, None, {}, {}, "data")

    def calls(first: int, outcome: str = "succeeded") -> list[tuple[Any, ...]]:
        return [
            (f"k{i}", "r", outcome, {"i": i}, frozenset[str](), event, 1, None)
            for i in range(first, first + 3)
        ]

    journal.calls_ended("t", 1.0, calls(0))  # room when it came: now full
    assert journal._batched_calls == 3 and journal.dropped == 0
    if way == "calls_ended":
        journal.calls_ended("t", 1.0, calls(3) + calls(6, "duplicate"))
    else:
        more = calls(3)
        keys, _, _, args, _, events, attempts, results = (list(c) for c in zip(*more, strict=True))
        journal.calls_succeeded("t", 1.0, "r", frozenset(), keys, args, events, attempts, results)
    assert journal._batched_calls == 3 and len(journal._batches) == 1
    assert journal.dropped == (6 if way == "calls_ended" else 3)
    assert all(journal.succeeded(f"k{i}") for i in range(6))
    assert not any(journal.succeeded(f"k{i}") for i in range(6, 9))
    journal.executor.shutdown()


def test_a_new_state_file_has_large_pages_and_an_older_one_keeps_its_own(tmp_path: Path) -> None:
    """A new file is made with :data:`state.PAGE_BYTES` pages (a batch row spans fewer WAL frames); a file
    made before keeps its page size and opens as before (in WAL mode, its rows readable)."""
    store = StateStore(tmp_path / "new.db").open()
    assert store.db.execute("PRAGMA page_size").fetchone() == (state.PAGE_BYTES,) != (4096,)
    store.close()
    with sqlite3.connect(tmp_path / "old.db") as old:
        old.execute("CREATE TABLE older (x)")
    store = StateStore(tmp_path / "old.db").open()
    assert store.db.execute("PRAGMA page_size").fetchone() == (4096,)
    assert store.db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    store.close()


def _schema3_text(calls: list[tuple[Any, ...]]) -> str:
    """A batch row's ``args`` as schema 3 wrote it: one entry per call (key, args, the event's fields, attempts,
    result)."""
    entries = []
    for key, _rule, _outcome, args, _secrets, event, attempts, result in calls:
        where = (
            [None] * 6
            if event is None
            else [event.source, event.ts, event.received_at, event.key, event.meta, event.kind]
        )
        entries.append([key, args, *where, attempts, result])
    return state.orjson.dumps(entries).decode()


@pytest.mark.parametrize("shape", ["kafka", "mixed", "one call", "equal not same"])
def test_a_batch_row_column_by_column_expands_to_the_calls_of_one_entry_each(shape: str) -> None:
    """A batch row of schema 4 (the calls' fields column by column, a value shared by every call once) expands
    to exactly the calls a row of schema 3 (one entry per call) holding them expands to; a value shared only
    by equality (1, 1.0, True) is kept per call, as it was."""
    shared_result = {"partition": 0, "base_offset": 40}

    def call(i: int) -> tuple[Any, ...]:
        event: Event | None = Event(
            "src", 10.5 + i, 11.25 + i, None, {"i": i}, {"topic": "in", "offset": i}, "data"
        )
        result: Any = shared_result
        attempts = 1
        if shape == "mixed":
            event = None if i == 2 else event._replace(key=f"k{i}", kind="data" if i % 2 else "other")
            result, attempts = {"n": i}, 1 + i % 3
        if shape == "equal not same":
            result = [1, 1.0, True, 1][i % 4]
        return (
            f"key{i}",
            "r",
            "succeeded",
            {"id": str(i), "p": "1.5"},
            frozenset[str](),
            event,
            attempts,
            result,
        )

    calls = [call(i) for i in range(1 if shape == "one call" else 7)]
    journal = Journal(StateStore(Path("unused.db")))
    built = _batch_rows(journal, calls, alike=shape != "mixed")
    journal.executor.shutdown()
    assert len(built) == 1
    text = built[0][3].decode()
    assert text.startswith('[{"each":')
    layout = state.orjson.loads(text)[0]
    if shape == "kafka":  # what every call shares is stored once
        assert layout["same"] == {"source": "src", "event_key": None, "kind": "data", "attempts": 1,
                                  "result": shared_result}  # fmt: skip
        assert sorted(layout["each"]) == ["args", "key", "meta", "received_at", "ts"]
    if shape == "equal not same":
        assert layout["each"]["result"] == [1, 1.0, True, 1, 1, 1.0, True]
    expanded = state.batch_calls(text)
    assert expanded is not None and expanded == state.batch_calls(_schema3_text(calls))
    assert [call.key for call in expanded] == [c[0] for c in calls]
    if shape == "equal not same":
        assert [type(call.result) for call in expanded[:3]] == [int, float, bool]


async def test_a_schema_3_file_is_read_migrated_and_its_batch_rows_still_expand(tmp_path: Path) -> None:
    """A state file of schema 3 (batch rows of one entry per call) opens as schema 4; its batch rows' keys are
    remembered as succeeded and the journal lists their calls, next to the rows written in the new layout."""
    from argparse import Namespace

    from daemon.journal_cli import _Query

    path = tmp_path / "s.db"
    store = StateStore(path).open()
    now = time.time()
    old_calls = [
        (
            f"old{i}",
            "r",
            "succeeded",
            {"id": i},
            frozenset[str](),
            Event("src", 1.0, 2.0, None, {}, {"o": i}, "data"),
            1,
            None,
        )
        for i in range(3)
    ]
    store.db.execute(
        "INSERT INTO invocations (id, key, rule, tool, args, started, ended, attempts, outcome)"
        " VALUES ('old-1', 'old0', 'r', 't', ?, ?, ?, 1, 'succeeded')",
        (_schema3_text(old_calls), now, now),
    )
    store.db.execute("PRAGMA user_version = 3")
    store.db.commit()
    store.close()
    store = StateStore(path).open()
    assert store.db.execute("PRAGMA user_version").fetchone() == (4,)
    journal = Journal(store, flush_seconds=0.005)
    await journal.start()
    assert journal.succeeded_any(["old2"]) and not journal.succeeded_any(["new0"])
    new_calls = [
        (f"new{i}", "r", "succeeded", {"id": i}, frozenset[str](), None, 1, {"n": i}) for i in range(2)
    ]
    journal.calls_ended("t", now, new_calls)
    await journal.stop()
    listed = _Query(Namespace(rule=None, tool=None, outcome=None), None).rows(store)
    assert [(row[2], row[5], row[12]) for row in listed] == [
        ("old0", {"id": 0}, None), ("old1", {"id": 1}, None), ("old2", {"id": 2}, None),
        ("new0", {"id": 0}, {"n": 0}), ("new1", {"id": 1}, {"n": 1}),
    ]  # fmt: skip
    assert listed[1][6] == {
        "source": "src",
        "ts": 1.0,
        "received_at": 2.0,
        "key": None,
        "meta": {"o": 1},
        "kind": "data",
    }
    assert sorted(store.succeeded_keys(10)) == ["new0", "new1", "old0", "old1", "old2"]
    store.close()
