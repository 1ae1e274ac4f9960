"""The agent's part of the state file (daemon.agent_state.AgentState) with a real SQLite file: transcripts,
proposals and decisions, what a restart takes back, pruning, the schema migration, file modes, the
ordering and durability of its writes against the journal, and secrets kept out of run rows."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon import state
from daemon.agent_state import USAGE_KEEP_SECONDS, AgentState, DecisionError
from daemon.config import load_config_text
from daemon.errors import StartupError
from daemon.registry import builtin_registry
from daemon.state import Journal, StateStore
from handlers.agent_store import Approval, RunState
from handlers.base import CallContext
from tests.agent.daemons import Hook
from tests.agent.scripted import Reply, ScriptedOpenAI
from tests.conftest import StartDaemon
from tests.servers import wait_for


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentState]:
    """An AgentState on a fresh state file, without a journal (as the command-line tools use it)."""
    store = StateStore(tmp_path / "state.db").open()
    try:
        yield AgentState(store)
    finally:
        store.close()


def new_run(run_id: str = "run-1", *, started: float | None = None, call_id: str = "big:feed:0") -> RunState:
    return RunState(
        run_id,
        "analyst",
        "big",
        "BTC",
        {"source": "feed", "data": {"p": 1}},
        "BTC at 1",
        time.time() if started is None else started,
        [{"role": "user", "content": "BTC at 1"}],
        call_id=call_id,
    )


def proposal(key: str = "run-1:buy:00", args: dict[str, Any] | None = None) -> Approval:
    return Approval(
        0, "run-1", "analyst", "big", "buy", args or {"qty": 1}, key, None, "a dip", "pending", time.time()
    )


MESSAGES: list[dict[str, Any]] = [
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "c1", "name": "buy", "arguments": '{"qty": 1}'}],
    },
    {"role": "tool", "tool_call_id": "c1", "name": "buy", "content": '{"outcome": "succeeded"}'},
    {"role": "user", "content": "Notifications since your last turn (JSON array, oldest first):\n[]"},
    {"role": "assistant", "content": "Bought one — ünïcödé ✓"},
]


async def test_a_transcript_round_trips_in_order(agent: AgentState) -> None:
    """Messages added a few at a time come back in the order they were added, with the run's counters
    and outcome; the list of runs has the newest last and no messages."""
    run = new_run()
    await agent.begin_run(run)
    for chunk in (MESSAGES[:1], MESSAGES[1:3], MESSAGES[3:]):
        run.messages.extend(chunk)
        run.rounds += 1
        run.tokens_in += 10
        await agent.add_messages(run, chunk)
    run.answer, run.outcome, run.ended = MESSAGES[-1]["content"], "answered", time.time()
    await agent.end_run(run)
    later = new_run("run-2", started=run.started + 1, call_id="big:feed:1")
    await agent.begin_run(later)

    back = await agent.load_run("run-1")
    assert back is not None
    assert back.messages == [{"role": "user", "content": "BTC at 1"}, *MESSAGES]
    assert (back.rounds, back.tokens_in, back.outcome, back.answer) == (
        3,
        30,
        "answered",
        "Bought one — ünïcödé ✓",
    )
    assert (back.key, back.event, back.call_id) == ("BTC", {"source": "feed", "data": {"p": 1}}, "big:feed:0")
    assert [r.run_id for r in agent.runs()] == ["run-1", "run-2"]
    assert all(r.messages == [] for r in agent.runs())
    assert [r.run_id for r in agent.open_runs()] == ["run-2"]
    assert await agent.load_run("run-none") is None


async def test_propose_is_idempotent_by_key(agent: AgentState) -> None:
    """The same call proposed again (a resumed run) keeps its one approval; another call gets its own."""
    first = await agent.propose(proposal())
    assert await agent.propose(proposal()) == first
    other = await agent.propose(proposal("run-1:buy:01", {"qty": 2}))
    assert other != first
    assert [(a.id, a.args, a.status) for a in agent.approvals()] == [
        (first, {"qty": 1}, "pending"),
        (other, {"qty": 2}, "pending"),
    ]


async def test_a_proposal_is_decided_once(agent: AgentState) -> None:
    """Approve, then approve or reject again: refused, and the first decision stands; an unknown id is refused."""
    approval_id = await agent.propose(proposal())
    decided = agent.decide(approval_id, True, by="cli:ann", note="ok")
    assert (decided.status, decided.decided_by, decided.note) == ("approved", "cli:ann", "ok")
    with pytest.raises(DecisionError, match="approved already"):
        agent.decide(approval_id, True, by="cli:bob")
    with pytest.raises(DecisionError, match="approved already"):
        agent.decide(approval_id, False, by="cli:bob")
    with pytest.raises(DecisionError, match="no approval 999"):
        agent.decide(999, True, by="cli:bob")
    after = agent.approval(approval_id)
    assert after is not None and (after.status, after.decided_by) == ("approved", "cli:ann")


async def test_take_approved_takes_each_once_and_after_a_restart_those_left_executing(
    agent: AgentState,
) -> None:
    """take_approved hands out approved proposals once (marking them executing); only the first look after
    a restart also takes those still executing (a crash cut them off). Pending, rejected and finished ones
    are never taken; a call whose backlog was full is approved again and taken at the next look."""
    ids = [await agent.propose(proposal(f"run-1:buy:{i}", {"qty": i})) for i in range(5)]
    agent.decide(ids[0], True, by="t")
    agent.decide(ids[1], True, by="t")
    agent.decide(ids[2], False, by="t")
    agent.decide(ids[3], True, by="t")
    assert [a.id for a in agent.take_approved()] == [ids[0], ids[1], ids[3]]
    assert agent.take_approved() == []
    assert {a.status for a in agent.approvals(status=None)} == {"executing", "rejected", "pending"}
    agent.executed(ids[0], "succeeded", {"filled": True}, None)
    agent.executed(ids[1], "dead_lettered", None, "exchange down")
    assert [a.id for a in agent.take_approved(after_restart=True)] == [ids[3]]  # still executing
    agent.retry_later(ids[3])
    assert [a.id for a in await agent.take()] == [ids[3]]
    agent.executed(ids[3], "duplicate", None, None)
    assert agent.take_approved(after_restart=True) == []
    shown = {a.id: (a.status, a.outcome, a.result, a.error) for a in agent.approvals(status=None)}
    assert shown == {
        ids[0]: ("executed", "succeeded", {"filled": True}, None),
        ids[1]: ("failed", "dead_lettered", None, "exchange down"),
        ids[2]: ("rejected", None, None, None),
        ids[3]: ("executed", "duplicate", None, None),
        ids[4]: ("pending", None, None, None),
    }


async def test_a_long_result_of_an_approved_call_reads_back(agent: AgentState) -> None:
    """An approved call whose result is longer than an approval keeps: stored cut, as JSON that still
    reads (cut JSON text made every later listing of the approvals fail)."""
    approval_id = await agent.propose(proposal())
    agent.decide(approval_id, True, by="t")
    agent.take_approved()
    agent.executed(approval_id, "succeeded", {"rows": ["x" * 100] * 1000}, None)
    (done,) = agent.approvals(status=None)
    assert isinstance(done.result, str) and done.result.startswith('{"rows":["xxx')
    assert done.result.endswith("characters]") and len(done.result) < 66_000


async def test_prune_drops_what_is_past_the_retention_and_keeps_the_rest(agent: AgentState) -> None:
    """Ended runs (with their messages) and decided approvals older than the retention go; open runs,
    recent runs and undecided approvals stay; token usage is kept two days."""
    now = time.time()
    old, recent, still_open = (
        new_run("old", started=now - 100),
        new_run("new", started=now - 10),
        new_run("open", started=now - 100),
    )
    for run in (old, recent, still_open):
        await agent.begin_run(run)
    for run in (old, recent):
        run.outcome = "answered"
        await agent.end_run(run)
    ids = [await agent.propose(proposal(f"k{i}")) for i in range(3)]
    agent.decide(ids[0], False, by="t")
    agent.decide(ids[1], True, by="t")
    agent.store.db.execute("UPDATE approvals SET created = ?", (now - 100,))
    agent.add_usage("analyst", now - USAGE_KEEP_SECONDS - 1, 500)
    agent.add_usage("analyst", now - 100, 50)

    agent.prune(50, now=now)
    assert sorted(r.run_id for r in agent.runs()) == ["new", "open"]
    assert agent.store.db.execute(
        "SELECT DISTINCT run_id FROM agent_messages ORDER BY run_id"
    ).fetchall() == [("new",), ("open",)]
    assert [(a.id, a.status) for a in agent.approvals(status=None)] == [
        (ids[1], "approved"),
        (ids[2], "pending"),
    ]
    assert agent.usage_since("analyst", 0) == [(now - 100, 50)]


async def test_a_screened_escalation_never_replaces_a_run(agent: AgentState) -> None:
    """The gate turning away an escalation whose run already exists (a redelivered record) records nothing
    over it: the run keeps its outcome and counters."""
    run = new_run()
    await agent.begin_run(run)
    run.rounds, run.outcome, run.answer = 2, "answered", "done"
    await agent.end_run(run)
    agent.screened(
        RunState(run.run_id, "analyst", "big", "BTC", None, "BTC at 1", time.time(), outcome="deduplicated")
    )
    agent.screened(
        RunState("run-9", "analyst", "big", "BTC", None, "BTC at 2", time.time(), outcome="over_budget")
    )
    kept = agent.run(run.run_id)
    assert kept is not None and (kept.outcome, kept.rounds, kept.answer) == ("answered", 2, "done")
    assert [r.outcome for r in agent.runs()] == ["answered", "over_budget"]


# -- the file: schema, migration, modes ------------------------------------------------------------------

V1_SCHEMA = """
CREATE TABLE invocations (
    id TEXT PRIMARY KEY, key TEXT NOT NULL, rule TEXT, tool TEXT NOT NULL, args TEXT, payload TEXT,
    event TEXT, started REAL NOT NULL, ended REAL, attempts INTEGER NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL, error TEXT, result TEXT
);
CREATE INDEX invocations_started ON invocations (started);
CREATE INDEX invocations_running ON invocations (started) WHERE outcome = 'running';
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, rule TEXT, tool TEXT NOT NULL, args TEXT,
    event TEXT, error TEXT, attempts INTEGER NOT NULL, failed_at REAL NOT NULL, replayed_at REAL,
    replay_outcome TEXT, redacted TEXT
);
CREATE INDEX dead_letters_tool ON dead_letters (tool, replayed_at);
INSERT INTO invocations (id, key, rule, tool, started, ended, attempts, outcome)
    VALUES ('i1', 'r:e:0', 'r', 't', strftime('%s', 'now'), strftime('%s', 'now'), 1, 'succeeded');
INSERT INTO dead_letters (key, rule, tool, args, event, error, attempts, failed_at, redacted)
    VALUES ('r:e:1', 'r', 't', '{"id":7}', NULL, 'target down', 3, 1700000000.0, '[]');
PRAGMA user_version = 1;
"""


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


async def test_a_schema_1_file_is_migrated_to_2_with_the_agent_tables_beside_the_journal(
    tmp_path: Path,
) -> None:
    """A file written before the agent (schema 1) opens as the current schema: its journal and letters
    are kept, the agent's tables are created in the same file and work."""
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as old:
        old.executescript(V1_SCHEMA)
    assert "agent_runs" not in tables(path)
    store = StateStore(path).open()
    try:
        assert store.db.execute("PRAGMA user_version").fetchone() == (state.SCHEMA_VERSION,) == (4,)
        assert store.succeeded_keys(10) == ["r:e:0"]
        assert [d.key for d in store.dead_letters()] == ["r:e:1"]
        agent = AgentState(store)
        await agent.begin_run(new_run())
        assert await agent.propose(proposal()) == 1
    finally:
        store.close()
    assert {
        "invocations",
        "dead_letters",
        "agent_runs",
        "agent_messages",
        "agent_usage",
        "approvals",
    } <= tables(path)
    again = StateStore(path).open()  # nothing left to migrate; the run is there
    try:
        loaded = AgentState(again).run("run-1")
        assert loaded is not None and loaded.messages == [{"role": "user", "content": "BTC at 1"}]
    finally:
        again.close()


def test_a_newer_file_is_refused_before_anything_is_written_to_it(tmp_path: Path) -> None:
    """A file of a newer schema is refused and left as it was: no tables of this version added to it."""
    path = tmp_path / "newer.db"
    with sqlite3.connect(path) as newer:
        newer.execute("CREATE TABLE future (x)")
        newer.execute(f"PRAGMA user_version = {state.SCHEMA_VERSION + 1}")
    with pytest.raises(StartupError, match="newer reflexd"):
        StateStore(path).open()
    assert tables(path) == {"future"}


def modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}


def test_the_state_file_its_wal_and_shm_are_owner_only(tmp_path: Path) -> None:
    """The state file, and the -wal and -shm SQLite makes beside it (the WAL holds the newest transcripts),
    are readable by their owner only, whatever the umask; an old -wal readable by others is made private."""
    folder = tmp_path / "fresh"
    store = StateStore(folder / "state.db").open()
    AgentState(store).add_usage("analyst", time.time(), 1)  # a write: the WAL has content
    try:
        assert modes(folder) == {"state.db": 0o600, "state.db-wal": 0o600, "state.db-shm": 0o600}
    finally:
        store.close()
    # a file left by an older reflexd while it ran (its WAL made with the umask's mode)
    old = tmp_path / "old"
    old.mkdir()
    with sqlite3.connect(old / "state.db") as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    (old / "state.db-wal").write_bytes(b"")
    (old / "state.db-wal").chmod(0o644)
    (old / "state.db").chmod(0o644)
    store = StateStore(old / "state.db").open()
    try:
        assert all(mode == 0o600 for mode in modes(old).values()), modes(old)
    finally:
        store.close()


# -- against the journal: order and durability -------------------------------------------------------------


async def test_a_runs_first_row_is_written_after_the_journal_rows_queued_before_it(tmp_path: Path) -> None:
    """The llm call's journal row (queued when the call was accepted, written in the journal's next batch)
    is in the file as soon as its run's first row is: a crash between them would leave a run that no call
    resumes. The journal here writes no batch of its own, so only that ordering writes the row; so is a
    model call's token usage with its message."""
    store = StateStore(tmp_path / "state.db").open()
    journal = Journal(store)  # not started: no batches but the ones the agent's writes ask for
    try:
        journal.started(journal.new_id(), "big:feed:0", "big", "analyst", {"prompt": "BTC at 1"}, None)
        agent = AgentState(store, journal)
        await agent.begin_run(new_run())
        agent.add_usage("analyst", time.time(), 42)
        run = new_run()
        run.messages.append(MESSAGES[-1])
        await agent.add_messages(run, MESSAGES[-1:])
        with sqlite3.connect(tmp_path / "state.db") as reader:  # what another process (a restart) sees
            assert reader.execute("SELECT key, outcome FROM invocations").fetchall() == [
                ("big:feed:0", "running")
            ]
            assert reader.execute("SELECT tokens FROM agent_usage").fetchall() == [(42,)]
            assert reader.execute("SELECT COUNT(*) FROM agent_messages").fetchone() == (2,)
    finally:
        await journal.stop()
        store.close()


async def test_a_durable_write_completes_when_its_run_is_cancelled(tmp_path: Path) -> None:
    """A run cancelled (its attempt timed out) while its message waits for the writer thread: the message
    is written all the same, so the next attempt, reading the run back, sees what the model was told."""
    store = StateStore(tmp_path / "state.db").open()
    journal = Journal(store)
    await journal.start()
    agent = AgentState(store, journal)
    try:
        run = new_run()
        await agent.begin_run(run)
        busy = threading.Event()
        blocker = journal.executor.submit(busy.wait, 10)  # the writer thread is busy with a batch
        run.messages.append(MESSAGES[-1])
        write = asyncio.create_task(agent.add_messages(run, MESSAGES[-1:]))
        await asyncio.sleep(0.1)  # queued behind the batch
        write.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await write  # cancelled while the batch still holds the thread
        busy.set()
        blocker.result(timeout=10)
        loaded = await agent.load_run(run.run_id)  # the next attempt
        assert loaded is not None and loaded.messages[-1] == MESSAGES[-1]
    finally:
        await journal.stop()
        store.close()


# -- in a daemon -------------------------------------------------------------------------------------------

KEY = "sk-test-7e1f0c4b9a2d"


async def test_a_provider_echoing_the_api_key_never_puts_it_in_the_run(
    tmp_path: Path, run_daemon: StartDaemon
) -> None:
    """An endpoint that refuses the key and quotes it back (some proxies do): the run fails, its row says why
    with the key as ***; no run row or message holds the key."""
    (tmp_path / "events.jsonl").write_text('{"p": 1}\n')
    async with ScriptedOpenAI(default=None) as model:
        refused = {
            "error": {"message": f"Incorrect API key provided: {KEY}", "type": "invalid_request_error"}
        }
        model.script(Reply.error(401, body=refused))
        text = f"""
daemon: {{http: null, state_path: state.db}}
sources: {{feed: {{type: replay, path: events.jsonl, speed: 0}}}}
tools:
  analyst: {{type: llm, base_url: "{model.base_url}", model: m, api_key: "${{OPENAI_API_KEY}}"}}
rules:
  big: {{from: feed, then: [{{tool: analyst, args: {{prompt: "BTC at {{data.p}}"}}}}]}}
"""
        config = load_config_text(text, builtin_registry(), base_dir=tmp_path, env={"OPENAI_API_KEY": KEY})
        daemon = await run_daemon(config)
        assert daemon.agent_state is not None
        agent = daemon.agent_state
        await wait_for(lambda: any(r.outcome == "failed" for r in agent.runs()), 10, what="the failed run")
        assert model.headers[0]["authorization"] == f"Bearer {KEY}"
        (run,) = agent.runs()
        assert run.error is not None and "Incorrect API key provided: ***" in run.error
        rows = agent.store.db.execute("SELECT * FROM agent_runs").fetchall()
        rows += agent.store.db.execute("SELECT * FROM agent_messages").fetchall()
        assert rows and KEY not in repr(rows)


async def test_an_approved_call_its_tool_cannot_take_yet_runs_when_there_is_room(
    tmp_path: Path, run_daemon: StartDaemon
) -> None:
    """An approval whose tool's backlog is full when the daemon takes it is not lost as failed: it stays
    approved, and runs once when the backlog has room again."""
    (tmp_path / "empty.jsonl").write_text("")
    async with Hook() as hook:
        text = f"""
daemon: {{http: null, state_path: state.db}}
agent: {{approvals_poll_seconds: 0.05}}
sources: {{feed: {{type: replay, path: empty.jsonl, speed: 0}}}}
tools:
  analyst: {{type: llm, base_url: "http://127.0.0.1:9/v1", model: m, tools: [hook], require_approval: [hook]}}
  hook: {{type: webhook, url: "{hook.url}", allow_private_networks: true, concurrency: 1, max_pending: 1,
          timeout_seconds: 60, retry: {{max_attempts: 1}}}}
rules:
  big: {{from: feed, then: [{{tool: analyst, args: {{prompt: "x"}}}}]}}
"""
        config = load_config_text(text, builtin_registry(), base_dir=tmp_path)
        daemon = await run_daemon(config)
        accepted = 0

        def fill() -> int:
            n = 0
            while daemon.runner.submit(
                "hook", {"n": n}, CallContext("hook", "fill", None, f"fill:{accepted + n}")
            ):
                n += 1
            return n

        accepted += fill()
        await wait_for(lambda: len(hook.deliveries) == 1, 10, what="the first call held by the receiver")
        accepted += fill()  # the worker is held: the backlog stays full
        assert daemon.agent_state is not None
        agent = daemon.agent_state
        approval_id = await agent.propose(replace(proposal("run-1:hook:00", {"side": "buy"}), tool="hook"))
        agent.decide(approval_id, True, by="test")
        daemon.approvals_wake.set()
        await wait_for(lambda: daemon.runner.stats("hook").rejected >= 2, 10, what="the approval refused")
        found = agent.approval(approval_id)
        assert found is not None and found.status in ("approved", "executing")
        hook.release.set()
        await wait_for(
            lambda: getattr(agent.approval(approval_id), "status", None) == "executed", 30, what="the run"
        )
        assert [body for key, body in hook.deliveries if key == "run-1:hook:00"] == [{"side": "buy"}]
        assert len(hook.deliveries) == accepted + 1


async def test_an_approval_that_cannot_start_is_failed_and_the_others_run(
    tmp_path: Path, run_daemon: StartDaemon
) -> None:
    """An approved proposal the daemon cannot turn into a call (its stored event does not read back) is
    recorded failed; the approvals taken with it still run, each once."""
    (tmp_path / "empty.jsonl").write_text("")
    text = """
daemon: {http: null, state_path: state.db}
agent: {approvals_poll_seconds: 0.05}
sources: {feed: {type: replay, path: empty.jsonl, speed: 0}}
tools:
  analyst: {type: llm, base_url: "http://127.0.0.1:9/v1", model: m, tools: [buy], require_approval: [buy]}
  buy: {type: file, path: buys.jsonl}
rules:
  big: {from: feed, then: [{tool: analyst, args: {prompt: "x"}}]}
"""
    store = StateStore(tmp_path / "state.db").open()
    try:
        agent = AgentState(store)
        bad = await agent.propose(replace(proposal("k-bad"), event={"source": "feed", "ts": "yesterday"}))
        good = await agent.propose(proposal("k-good", {"qty": 2}))
        agent.decide(bad, True, by="t")
        agent.decide(good, True, by="t")
    finally:
        store.close()
    daemon = await run_daemon(load_config_text(text, builtin_registry(), base_dir=tmp_path))
    assert daemon.agent_state is not None
    agent = daemon.agent_state
    await wait_for(lambda: {a.status for a in agent.approvals(status=None)} == {"failed", "executed"}, 10)
    failed = agent.approval(bad)
    assert failed is not None and failed.error is not None and "could not start" in failed.error
    await asyncio.sleep(0.2)  # a few more looks at the approvals: none takes anything again
    assert [orjson.loads(line)["args"] for line in (tmp_path / "buys.jsonl").read_bytes().splitlines()] == [
        {"qty": 2}
    ]
