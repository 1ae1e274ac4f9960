"""What the agent keeps across a restart of a real ``reflexd run`` (graceful or kill -9), on one state file:
approvals decided while it was down, approvals a crash left executing, budgets, and runs that cannot go on."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.agent_state import AgentState
from daemon.state import StateStore
from handlers.agent import NOTIFICATIONS_HEADER
from handlers.agent_store import Approval
from tests.agent.daemons import (
    ALERT,
    Daemon,
    Hook,
    daemons,
    lines,
    query,
    tool_results,
    until,
    write_config,
)
from tests.agent.scripted import Reply, ScriptedOpenAI

__all__ = ["daemons"]  # the fixture

BUY = {"buy": {"type": "file", "path": "buys.jsonl"}}


def agent_state(db: Path) -> AgentState:
    """The state file as ``reflexd approvals`` opens it (synchronous, beside a daemon or without one)."""
    return AgentState(StateStore(db).open())


def approval_row(db: Path, approval_id: int) -> tuple[Any, ...]:
    ((status, outcome),) = query(db, "SELECT status, outcome FROM approvals WHERE id = ?", approval_id)
    return status, outcome


def edit_config(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config, indent=1))


def notifications_in(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The items of the notification messages a model request carries."""
    found: list[dict[str, Any]] = []
    for message in request["messages"]:
        content = message.get("content")
        if (
            message["role"] == "user"
            and isinstance(content, str)
            and content.startswith(NOTIFICATIONS_HEADER)
        ):
            found.extend(json.loads(content.split("\n", 1)[1]))
    return found


async def test_an_approval_granted_while_the_daemon_is_down_executes_once_after_the_restart(
    tmp_path: Path, daemons: Callable[[Path], Daemon]
) -> None:
    """The model proposes a buy (require_approval) and answers; the daemon stops; a person approves with
    `reflexd approvals approve ID`; the next start executes the buy once; the start after that executes it
    no more."""
    async with ScriptedOpenAI(default=None) as model:
        model.script(
            Reply.tool_calls(("buy", {"qty": 1}), text="A clear dip: buying one."),
            Reply.text("I proposed a buy; it waits for a person."),
        )
        config = write_config(tmp_path, model.base_url, tools=BUY, llm={"require_approval": ["buy"]})
        daemon = daemons(config)
        daemon.start()
        await until(lambda: len(lines(tmp_path / "routed.jsonl")) == 1, 30, "the answer")
        assert daemon.stop() == 0
    (result,) = tool_results(model.requests[1])
    proposed = json.loads(result["content"])
    assert proposed["status"] == "awaiting_approval"
    db = tmp_path / "state.db"
    assert approval_row(db, proposed["approval"]) == ("pending", None)
    assert lines(tmp_path / "buys.jsonl") == []

    decided = daemon.cli("approvals", "approve", str(proposed["approval"]))  # while the daemon is down
    assert decided.returncode == 0, decided.stdout + decided.stderr
    assert approval_row(db, proposed["approval"]) == ("approved", None)
    daemon.start("empty.jsonl")
    await until(lambda: approval_row(db, proposed["approval"])[0] == "executed", 30, "the approved buy")
    assert daemon.stop() == 0
    assert [b["args"] for b in lines(tmp_path / "buys.jsonl")] == [{"qty": 1}]

    # one more start: the executed approval is not taken again. A second approval, decided while down,
    # shows that the start's first look at the approvals has happened.
    state = agent_state(db)
    try:
        second = await state.propose(
            Approval(
                0,
                "run-manual",
                "analyst",
                None,
                "buy",
                {"qty": 2},
                "run-manual:buy:2",
                None,
                "",
                "pending",
                0.0,
            )
        )
        state.decide(second, True, by="test")
    finally:
        state.store.close()
    daemon.start("empty.jsonl")
    await until(lambda: approval_row(db, second)[0] == "executed", 30, "the second approved buy")
    assert daemon.stop() == 0
    assert [b["args"] for b in lines(tmp_path / "buys.jsonl")] == [{"qty": 1}, {"qty": 2}]
    assert approval_row(db, proposed["approval"]) == ("executed", "succeeded")


async def test_an_approval_a_kill_left_executing_runs_again_only_with_its_key(
    tmp_path: Path, daemons: Callable[[Path], Daemon]
) -> None:
    """kill -9 while an approved webhook call is in flight: the restart delivers it again with the same
    Idempotency-Key and records it executed. An approval left executing after its call had succeeded (the
    kill came before the daemon recorded it) is not delivered again: the journal knows its key."""
    async with Hook() as hook:
        config = write_config(
            tmp_path, "http://127.0.0.1:9/v1", tools={"hook": hook.tool()}, llm={"require_approval": ["hook"]}
        )
        db = tmp_path / "state.db"
        state = agent_state(db)
        try:
            key = "run-x:hook:0123456789abcdef"
            approval_id = await state.propose(
                Approval(
                    0,
                    "run-x",
                    "analyst",
                    "big",
                    "hook",
                    {"side": "buy", "qty": 1},
                    key,
                    None,
                    "",
                    "pending",
                    0.0,
                )
            )
            state.decide(approval_id, True, by="test")
        finally:
            state.store.close()
        daemon = daemons(config)
        daemon.start("empty.jsonl")
        await until(lambda: len(hook.deliveries) == 1, 30, "the approved call")
        running = "SELECT COUNT(*) FROM invocations WHERE key = ? AND outcome = 'running'"
        await until(lambda: query(db, running, key) == [(1,)], 10, "the call's journal row")
        daemon.kill9()
        assert approval_row(db, approval_id) == ("executing", None)

        hook.release.set()
        daemon.start("empty.jsonl")
        await until(lambda: approval_row(db, approval_id)[0] == "executed", 30, "the call made again")
        assert daemon.stop() == 0
        assert hook.deliveries == [(key, {"side": "buy", "qty": 1})] * 2
        assert approval_row(db, approval_id) == ("executed", "succeeded")

        # the call succeeded (journaled), then a kill before the approval was marked executed
        with sqlite3.connect(db) as conn:
            conn.execute(
                "UPDATE approvals SET status = 'executing', outcome = NULL WHERE id = ?", (approval_id,)
            )
        daemon.start("empty.jsonl")
        await until(lambda: approval_row(db, approval_id)[0] == "executed", 30, "the approval settled")
        assert daemon.stop() == 0
        assert len(hook.deliveries) == 2
        assert approval_row(db, approval_id) == ("executed", "duplicate")


async def test_budgets_survive_a_kill_9(tmp_path: Path, daemons: Callable[[Path], Daemon]) -> None:
    """Tokens used before a kill -9 count against tokens_per_hour after the restart, and runs against
    runs_per_minute: the next escalations are over_budget and reach no model (with the journal's batch
    unwritten at the kill: the usage was written with the model's message)."""
    async with ScriptedOpenAI(default=Reply.text("noted", tokens_in=90, tokens_out=20)) as model:
        config = write_config(tmp_path, model.base_url, tools=ALERT, llm={"budget": {"tokens_per_hour": 100}})

        def add_scout(c: dict[str, Any]) -> None:
            c["tools"]["scout"] = {
                **c["tools"]["analyst"],
                "budget": {"runs_per_minute": 1, "tokens_per_hour": 10**6},
            }
            c["rules"]["big"]["then"].append({"tool": "scout", "args": {"prompt": "Look at {data.p}"}})
            c["rules"]["answers"]["from"] = ["analyst", "scout"]

        edit_config(config, add_scout)
        daemon = daemons(config)
        daemon.start(journal_flush=5.0)
        await until(lambda: len(lines(tmp_path / "routed.jsonl")) == 2, 30, "both answers")
        daemon.kill9()
        assert len(model.requests) == 2

        daemon.start()  # the same file again: a new replay session, new escalations
        over = "SELECT tool, error FROM agent_runs WHERE outcome = 'over_budget' ORDER BY tool"
        await until(lambda: len(query(tmp_path / "state.db", over)) == 2, 30, "two escalations over budget")
        assert daemon.stop() == 0
    assert query(tmp_path / "state.db", over) == [
        ("analyst", "tokens_per_hour"),
        ("scout", "runs_per_minute"),
    ]
    assert len(model.requests) == 2  # no model call after the restart
    assert len(lines(tmp_path / "routed.jsonl")) == 2


@pytest.mark.parametrize("how", ["llm tool removed", "call row lost"])
async def test_a_run_that_cannot_resume_is_interrupted_and_its_prompt_notified(
    tmp_path: Path, daemons: Callable[[Path], Daemon], how: str
) -> None:
    """A run open at a kill -9 whose llm call is not resumed at the next start (its tool is gone from the
    configuration, or the journal lost the call's row) is marked interrupted, and its prompt reaches the
    next run's first model request as an ``interrupted`` notification. Its tool call is not made again."""
    async with ScriptedOpenAI(default=None) as model:
        model.script(Reply.tool_calls(("alert", {"text": "BTC jumped"})), Reply.stall(60))
        config = write_config(tmp_path, model.base_url, tools=ALERT)
        daemon = daemons(config)
        daemon.start()
        await model.wait_requests(2, timeout=30)
        daemon.kill9()
        db = tmp_path / "state.db"
        ((run_id, prompt),) = query(db, "SELECT run_id, prompt FROM agent_runs WHERE outcome IS NULL")
        reader = "analyst"
        if how == "llm tool removed":
            reader = "scout"

            def rename(c: dict[str, Any]) -> None:
                c["tools"]["scout"] = c["tools"].pop("analyst")
                c["rules"]["big"]["then"][0]["tool"] = "scout"
                c["rules"]["answers"]["from"] = "scout"

            edit_config(config, rename)
        else:
            with sqlite3.connect(db) as conn:
                assert conn.execute("DELETE FROM invocations WHERE tool = 'analyst'").rowcount == 1

        model.script(Reply.text("Seen."))
        daemon.start()  # a new escalation: its run's first request carries the notification
        await until(lambda: len(lines(tmp_path / "routed.jsonl")) == 1, 30, "the new run's answer")
        assert daemon.stop() == 0
    assert len(model.requests) == 3
    (note,) = [n for n in notifications_in(model.requests[2]) if n["kind"] == "interrupted"]
    assert note["text"] == prompt == "BTC at 71234.5"
    assert note["fields"]["run"] == run_id and note["rule"] == "big"
    assert query(db, "SELECT outcome FROM agent_runs WHERE run_id = ?", run_id) == [("interrupted",)]
    assert len(lines(tmp_path / "alerts.jsonl")) == 1
    ((tool,),) = query(db, "SELECT tool FROM agent_runs WHERE outcome = 'answered'")
    assert tool == reader
