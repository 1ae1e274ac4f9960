"""A run interrupted by kill -9 never repeats an action: real ``reflexd run`` processes on one state file,
a replay source escalating to an llm tool backed by the scripted OpenAI server (in this process).

The model's first reply calls a real tool; the daemon is killed (SIGKILL) when the model receives the
next round's request, restarted on the same state file (reading an empty stream, so only the state
file can bring the run back), and the run goes on from its journaled transcript.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.agent.daemons import (
    ALERT,
    API_KEY,
    Daemon,
    Hook,
    copy_state,
    daemons,
    lines,
    query,
    secret_free,
    tool_results,
    until,
    write_config,
)
from tests.agent.scripted import Reply, ScriptedOpenAI

__all__ = ["daemons"]  # the fixture


@pytest.mark.parametrize("journal_flush", [None, 5.0], ids=["as-shipped", "journal-batch-unwritten"])
async def test_kill_9_after_the_tool_ran_resumes_the_run_and_the_tool_runs_once(
    tmp_path: Path, daemons: Callable[[Path], Daemon], journal_flush: float | None
) -> None:
    """kill -9 once the model was asked for round 2 (round 1's tool ran, its result journaled): the restarted
    daemon resumes the run from the state file, sends round 1's result back, the file tool has run exactly
    once, and the answer event is routed. With the journal's batch still unwritten at the kill, the run
    resumes all the same: its first row waited for the row of the llm call that runs it."""
    async with ScriptedOpenAI(default=None) as model:
        model.script(
            Reply.tool_calls(("alert", {"text": "BTC jumped"})),
            Reply.stall(60),  # round 2 of the first process: killed while it waits
            Reply.text("I alerted the desk.", tokens_in=30, tokens_out=7),
        )
        config = write_config(tmp_path, model.base_url, tools=ALERT)
        daemon = daemons(config)
        started = time.monotonic()
        daemon.start(journal_flush=journal_flush)
        await model.wait_requests(2, timeout=30)
        daemon.kill9()
        killed = time.monotonic()
        assert [a["args"] for a in lines(tmp_path / "alerts.jsonl")] == [{"text": "BTC jumped"}]
        db = tmp_path / "state.db"
        ((run_id, outcome, rounds),) = query(db, "SELECT run_id, outcome, rounds FROM agent_runs")
        assert (outcome, rounds) == (None, 1)
        roles = [
            orjson.loads(m)["role"] for (m,) in query(db, "SELECT message FROM agent_messages ORDER BY seq")
        ]
        assert roles == ["user", "assistant", "tool"]

        daemon.start("empty.jsonl")  # nothing new to read: only the state file brings the run back
        await model.wait_requests(3, timeout=30)
        await until(lambda: len(lines(tmp_path / "routed.jsonl")) == 1, 30, "the routed answer")
        resumed = time.monotonic()
        assert daemon.stop() == 0

    print(f"kill -9 test: first process {killed - started:.2f} s, restart to answer {resumed - killed:.2f} s")
    first, _stalled, third = model.requests
    assert tool_results(first) == []
    (result,) = tool_results(third)
    assert result["tool_call_id"] == "call_1"
    assert json.loads(result["content"]) == {"outcome": "succeeded"}
    assert third["messages"][: len(_stalled["messages"])] == _stalled["messages"]
    assert len(lines(tmp_path / "alerts.jsonl")) == 1  # exactly once in all
    (routed,) = lines(tmp_path / "routed.jsonl")
    assert routed["args"] == {"text": "I alerted the desk.", "run": run_id}
    assert query(db, "SELECT outcome, rounds, tokens_in, tokens_out FROM agent_runs") == [
        ("answered", 2, 40, 12)
    ]
    # the key was used (the model saw it) and never written down
    assert {h["authorization"] for h in model.headers} == {f"Bearer {API_KEY}"}
    secret_free(tmp_path)


async def test_kill_9_while_the_tool_runs_retries_it_only_with_its_key(
    tmp_path: Path, daemons: Callable[[Path], Daemon]
) -> None:
    """kill -9 while the model's webhook call is in flight (the receiver has it; no result in the transcript):
    after the restart the run makes the call again with the same Idempotency-Key (the receiver can tell it
    is the same call), gets its result and answers. If the call's success had reached the journal before
    the kill, the restart does not deliver it again: the model is told it was a duplicate."""
    async with ScriptedOpenAI(default=None) as model, Hook() as hook:
        model.script(
            Reply.tool_calls(("hook", {"side": "buy", "qty": 1})),
            Reply.text("Bought one."),  # the restart that delivers again
            Reply.text("Bought one, I am told."),  # the restart that finds the success journaled
        )
        first = write_config(tmp_path / "a", model.base_url, tools={"hook": hook.tool()})
        second = write_config(tmp_path / "b", model.base_url, tools={"hook": hook.tool()})
        daemon = daemons(first)
        daemon.start()
        await until(lambda: len(hook.deliveries) == 1, 30, "the first delivery")
        db = tmp_path / "a" / "state.db"
        running = "SELECT key FROM invocations WHERE tool = 'hook' AND outcome = 'running'"
        await until(lambda: len(query(db, running)) == 1, 10, "the call's journal row")
        daemon.kill9()
        ((key,),) = query(db, running)
        roles = [
            orjson.loads(m)["role"] for (m,) in query(db, "SELECT message FROM agent_messages ORDER BY seq")
        ]
        assert roles == ["user", "assistant"]  # no result: its outcome is unknown
        copy_state(tmp_path / "a", tmp_path / "b")
        # b: the call's success was journaled, then the kill came before its result reached the transcript
        with sqlite3.connect(tmp_path / "b" / "state.db") as conn:
            conn.execute(
                "UPDATE invocations SET outcome = 'succeeded', ended = started WHERE key = ?", (key,)
            )
        hook.release.set()

        daemon.start("empty.jsonl")
        await until(lambda: len(lines(tmp_path / "a" / "routed.jsonl")) == 1, 30, "a's routed answer")
        assert daemon.stop() == 0
        assert [d[0] for d in hook.deliveries] == [key, key]  # delivered again, with the same key
        assert hook.deliveries[0][1] == hook.deliveries[1][1] == {"side": "buy", "qty": 1}
        (result,) = tool_results(model.requests[1])
        assert json.loads(result["content"])["outcome"] == "succeeded"

        again = daemons(second)
        again.start("empty.jsonl")
        await until(lambda: len(lines(tmp_path / "b" / "routed.jsonl")) == 1, 30, "b's routed answer")
        assert again.stop() == 0
        assert len(hook.deliveries) == 2  # not delivered a third time
        (result,) = tool_results(model.requests[2])
        assert json.loads(result["content"]) == {"outcome": "duplicate"}
    assert [r["args"]["text"] for r in lines(tmp_path / "b" / "routed.jsonl")] == ["Bought one, I am told."]


async def test_a_run_cut_off_after_its_answer_was_journaled_answers_without_asking_again(
    tmp_path: Path, daemons: Callable[[Path], Daemon]
) -> None:
    """The state a kill leaves between the model's answer reaching the transcript and the run's end being
    recorded (made here from a finished run): the restart ends the run with that answer and routes it, and
    the model is not asked again."""
    async with ScriptedOpenAI(default=None) as model:
        model.script(Reply.tool_calls(("alert", {"text": "BTC jumped"})), Reply.text("I alerted the desk."))
        config = write_config(tmp_path, model.base_url, tools=ALERT)
        daemon = daemons(config)
        daemon.start()
        await until(lambda: len(lines(tmp_path / "routed.jsonl")) == 1, 30, "the answer")
        assert daemon.stop() == 0
        db = tmp_path / "state.db"
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE agent_runs SET outcome = NULL, ended = NULL, answer = NULL")
            conn.execute(
                "UPDATE invocations SET outcome = 'running', ended = NULL, payload = args WHERE tool = 'analyst'"
            )
        (tmp_path / "routed.jsonl").unlink()

        daemon.start("empty.jsonl")
        await until(lambda: len(lines(tmp_path / "routed.jsonl")) == 1, 30, "the answer after the restart")
        assert daemon.stop() == 0
    assert len(model.requests) == 2
    assert [r["args"]["text"] for r in lines(tmp_path / "routed.jsonl")] == ["I alerted the desk."]
    assert len(lines(tmp_path / "alerts.jsonl")) == 1
    assert query(db, "SELECT outcome, answer, rounds FROM agent_runs") == [("answered", "I alerted the desk.", 2)]
