"""Provider failures through the real SDKs (scripted OpenAI and Anthropic servers): 429 with
Retry-After, 500, a reply stalled past request_timeout_seconds and a malformed JSON body are retried
through the runner's retry policy, and the retry RESUMES the run (the tool call of the round before
is not made again); after the last attempt the run ends failed and the llm call is dead-lettered;
401 is not retried."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from daemon.agent_state import AgentState
from daemon.state import StateStore
from tests.agent import test_loop as harness
from tests.agent.scripted import Reply, ScriptedAnthropic, ScriptedModel, ScriptedOpenAI
from tests.agent.test_loop import Stage, StartStage, probe, results_json
from tests.servers import wait_for

provider = harness.provider  # the fixtures of the shared harness
stage = harness.stage


@dataclass(eq=False)
class TimedOpenAI(ScriptedOpenAI):
    """Also records when each request arrived (monotonic); ``same_id`` gives every tool call that id
    (some OpenAI-compatible servers number the calls of each reply from 0)."""

    arrivals: list[float] = field(default_factory=list, init=False)
    same_id: str | None = field(default=None, init=False)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.arrivals.append(time.monotonic())
        return await super()._handle(request)

    def _next_call_id(self) -> str:
        return self.same_id or super()._next_call_id()


@dataclass(eq=False)
class TimedAnthropic(ScriptedAnthropic):
    arrivals: list[float] = field(default_factory=list, init=False)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.arrivals.append(time.monotonic())
        return await super()._handle(request)


@pytest.fixture
async def model(provider: str) -> AsyncIterator[ScriptedModel]:  # replaces the harness's: timed servers
    async with TimedOpenAI() if provider == "openai" else TimedAnthropic() as server:
        yield server


def arrivals(st: Stage) -> list[float]:
    assert isinstance(st.model, TimedOpenAI | TimedAnthropic)
    return st.model.arrivals


def llm_journal(st: Stage) -> list[tuple[str, int, str | None]]:
    """(outcome, attempts, error) of the llm tool's calls in the journal."""
    assert st.daemon.store is not None
    with st.daemon.store.lock:
        rows = st.daemon.store.db.execute(
            "SELECT outcome, attempts, error FROM invocations WHERE tool = 'analyst' ORDER BY started"
        ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


FAILURES = {
    "429": Reply.error(429, retry_after=0.5),
    "500": Reply.error(500),
    "stall": Reply.stall(30),
    "malformed": Reply.malformed(),
}


@pytest.mark.parametrize("failure", list(FAILURES))
async def test_a_retryable_failure_is_retried_and_the_run_resumes(stage: StartStage, failure: str) -> None:
    st = await stage(
        llm={"tools": ["buy"], "request_timeout_seconds": 0.3, "retry": {"initial_seconds": 0.05}},
        tools={"buy": probe()},
    )
    st.model.script(
        Reply.tool_calls(("buy", {"symbol": "BTC"}), tokens_in=10, tokens_out=5),
        FAILURES[failure],
        Reply.text("bought once", tokens_in=20, tokens_out=5),
    )
    await st.send(p=1)
    answers = await st.answers(1)
    assert [a["args"]["text"] for a in answers] == ["bought once"]
    assert len(st.tool("buy").calls) == 1  # round 1's call is not made again by the retry
    first, failed, retried = st.model.requests
    assert retried["messages"] == failed["messages"]  # the second attempt goes on from the journal
    assert results_json(st.provider, retried) == [
        {"outcome": "succeeded", "result": {"echo": {"symbol": "BTC"}, "blob": ""}}
    ]
    assert len(retried["messages"]) > len(first["messages"])
    if failure == "429":  # the runner waited at least Retry-After (0.5 s) before the retry
        times = arrivals(st)
        assert times[2] - times[1] >= 0.5
    (run,) = await st.ended_runs(1)
    assert (run.outcome, run.rounds, run.tokens_in, run.tokens_out) == ("answered", 2, 30, 10)
    await wait_for(lambda: llm_journal(st) == [("succeeded", 2, None)], what="the journal")


@pytest.mark.parametrize("failure", ["500", "malformed"])
async def test_after_the_last_attempt_the_run_fails_and_the_call_is_dead_lettered(
    stage: StartStage, failure: str
) -> None:
    st = await stage(
        llm={"tools": ["buy"], "retry": {"max_attempts": 2, "initial_seconds": 0.05}},
        tools={"buy": probe()},
    )
    st.model.script(Reply.tool_calls(("buy", {"symbol": "BTC"})), FAILURES[failure], FAILURES[failure])
    await st.send(p=1)
    (run,) = await st.ended_runs(1)
    assert run.outcome == "failed" and run.error is not None
    assert len(st.model.requests) == 3
    assert len(st.tool("buy").calls) == 1
    await wait_for(lambda: llm_journal(st) == [("dead_lettered", 2, run.error)], what="the journal")
    assert st.daemon.store is not None
    (letter,) = st.daemon.store.dead_letters(tool="analyst")
    assert (letter.rule, letter.attempts, letter.error) == ("escalate", 2, run.error)
    assert st.lines("routed") == []
    assert st.daemon.tools["analyst"].outcomes == {"failed": 1}  # type: ignore[attr-defined]


async def test_401_is_not_retried(stage: StartStage) -> None:
    st = await stage(llm={"tools": ["buy"]}, tools={"buy": probe()})
    st.model.script(Reply.error(401))
    await st.send(p=1)
    (run,) = await st.ended_runs(1)
    assert run.outcome == "failed"
    assert run.error is not None and "HTTP 401" in run.error and "check api_key" in run.error
    await wait_for(lambda: [row[:2] for row in llm_journal(st)] == [("dead_lettered", 1)], what="the journal")
    assert len(st.model.requests) == 1


async def test_a_run_past_timeout_seconds_is_retried_then_ends_failed(stage: StartStage) -> None:
    """The whole run's limit (timeout_seconds, per attempt): the attempt that runs past it is retried like a
    provider failure, resuming the run; past the last attempt the run ends failed (not left open) and
    the call is dead-lettered."""
    st = await stage(
        llm={
            "tools": ["buy"],
            "timeout_seconds": 0.5,
            "request_timeout_seconds": 60,
            "retry": {"max_attempts": 2, "initial_seconds": 0.05},
        },
        tools={"buy": probe()},
    )
    st.model.script(Reply.tool_calls(("buy", {"symbol": "BTC"})), Reply.stall(30), Reply.stall(30))
    await st.send(p=1)
    (run,) = await st.ended_runs(1)
    assert run.outcome == "failed"
    assert run.error is not None and "timeout_seconds" in run.error
    _, stalled, retried = st.model.requests
    assert retried["messages"] == stalled["messages"]  # resumed, round 1's call not made again
    assert len(st.tool("buy").calls) == 1
    await wait_for(lambda: [row[0] for row in llm_journal(st)] == ["dead_lettered"], what="the journal")


async def test_an_empty_answer_is_never_sent_back_as_an_empty_text_block(stage: StartStage) -> None:
    """A model that answers nothing while a background result is still to come gets one more round;
    its empty answer stays in the conversation, but the Messages API refuses an empty text block: the
    Anthropic client leaves that turn out (OpenAI takes content "")."""
    st = await stage(
        llm={"tools": ["backtest"], "background_tools": ["backtest"]},
        tools={"backtest": probe(sleep_seconds=0.05)},
    )
    st.model.script(Reply.tool_calls(("backtest", {"symbol": "BTC"})), Reply.text(""), Reply.text("final"))
    await st.send(p=1)
    answers = await st.answers(1)
    assert [a["args"]["text"] for a in answers] == ["final"]
    last = st.model.requests[2]
    if st.provider == "anthropic":
        blocks = [b for m in last["messages"] if isinstance(m["content"], list) for b in m["content"]]
        assert all(b["text"] for b in blocks if b["type"] == "text")
        roles = [m["role"] for m in last["messages"]]
        assert all(a != b for a, b in itertools.pairwise(roles))  # turns still alternate
    else:
        assert last["messages"][-2] == {"role": "assistant", "content": ""}


def test_anthropic_wire_messages_merge_user_turns_and_skip_empty_assistant_turns() -> None:
    from handlers.models import AnthropicClient

    wire = AnthropicClient.wire_messages(
        [
            {"role": "user", "content": "prompt"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "name": "t", "arguments": "{"}]},
            {"role": "tool", "tool_call_id": "c1", "name": "t", "content": '{"error": "x"}'},
            {"role": "user", "content": "notes"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "more notes"},
        ]
    )
    assert wire == [
        {"role": "user", "content": [{"type": "text", "text": "prompt"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "t", "input": {}}]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": '{"error": "x"}'},
                {"type": "text", "text": "notes"},
                {"type": "text", "text": "more notes"},
            ],
        },
    ]


@pytest.mark.parametrize("provider", ["openai"])  # the Messages API's ids are unique
async def test_tool_call_ids_repeated_across_rounds_are_each_answered(stage: StartStage) -> None:
    """A server that numbers each reply's calls from 0 repeats ids across rounds: every round's call is
    still made and answered (a call is answered by the tool messages after its own assistant turn)."""
    st = await stage(llm={"tools": ["buy"]}, tools={"buy": probe()})
    assert isinstance(st.model, TimedOpenAI)
    st.model.same_id = "call_0"
    st.model.script(
        Reply.tool_calls(("buy", {"symbol": "BTC"})),
        Reply.tool_calls(("buy", {"symbol": "ETH"})),
        Reply.text("bought both"),
    )
    await st.send(p=1)
    await st.answers(1)
    assert [args["symbol"] for args, _ in st.tool("buy").calls] == ["BTC", "ETH"]
    roles = [m["role"] for m in st.model.requests[2]["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool"]


@pytest.mark.parametrize("status", [401, 500])
async def test_the_api_key_is_never_in_an_error_the_daemon_keeps_or_logs(
    stage: StartStage, debug_log: io.StringIO, status: int
) -> None:
    """An endpoint that echoes the key in its error body (a misconfigured proxy): the run's error, the
    dead letter and the log lines (a 500's is logged with its traceback) show *** instead."""
    key = "sk-test-4f9a1c0e7d2b"
    st = await stage(
        llm={"api_key": "${ANALYST_KEY}", "retry": {"max_attempts": 1}}, env={"ANALYST_KEY": key}
    )
    st.model.script(Reply.error(status, body={"error": {"message": f"invalid key {key}", "type": "auth"}}))
    await st.send(p=1)
    (run,) = await st.ended_runs(1)
    assert run.error is not None and "invalid key ***" in run.error
    await wait_for(lambda: [row[0] for row in llm_journal(st)] == ["dead_lettered"], what="the journal")
    assert st.daemon.store is not None
    (letter,) = st.daemon.store.dead_letters(tool="analyst")
    assert key not in (letter.error or "") and key not in json.dumps(
        st.state.run(run.run_id).__dict__, default=str
    )
    assert "invalid key ***" in debug_log.getvalue()
    assert key not in debug_log.getvalue()
    assert key in st.model.headers[0].get("authorization", "") + st.model.headers[0].get("x-api-key", "")


async def test_with_the_journal_off_a_retry_still_resumes_the_run(stage: StartStage) -> None:
    """No state file to resume from: the run kept in memory between attempts is, so the retry does not
    make round 1's call again."""
    st = await stage(llm={"tools": ["buy"]}, tools={"buy": probe()}, journal=False)
    assert st.daemon.agent_state is None
    st.model.script(Reply.tool_calls(("buy", {"symbol": "BTC"})), Reply.error(500), Reply.text("bought once"))
    await st.send(p=1)
    answers = await st.answers(1)
    assert [a["args"]["text"] for a in answers] == ["bought once"]
    assert len(st.tool("buy").calls) == 1
    _, failed, retried = st.model.requests
    assert retried["messages"] == failed["messages"]


async def test_a_dead_lettered_run_replayed_from_the_dlq_resumes_and_answers(stage: StartStage) -> None:
    """``reflexd dlq replay`` of an llm call that failed for good: the run picks up where it stopped (the
    model is asked again with the journaled conversation; the tool call it made before is not made
    again) and ends answered."""
    llm = {"tools": ["alert"], "retry": {"max_attempts": 1}}
    tools = {"alert": {"type": "file", "path": "alert.jsonl"}}
    st = await stage(llm=llm, tools=tools)
    st.model.script(Reply.tool_calls(("alert", {"text": "BTC jumped"})), Reply.error(500))
    await st.send(p=1)
    (run,) = await st.ended_runs(1)
    assert run.outcome == "failed"
    await wait_for(lambda: [row[0] for row in llm_journal(st)] == ["dead_lettered"], what="the journal")
    await st.daemon.stop()

    config = st.folder / "config.yaml"
    config.write_text(
        harness.config_text(st.provider, st.model.base_url, st.feed.url, st.folder, llm=llm, tools=tools)
    )
    st.model.script(Reply.text("replayed answer"))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon.cli",
        "dlq",
        "replay",
        "--all",
        "-c",
        str(config),
        cwd=Path(__file__).parents[2],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out = (await process.communicate())[0].decode()
    assert process.returncode == 0, out
    assert "analyst: delivered" in out and "replayed 1: 1 ok, 0 failed" in out
    _, failed, replayed = st.model.requests
    assert replayed["messages"] == failed["messages"]
    assert len(st.lines("alert")) == 1
    store = StateStore(st.folder / "state.db").open()
    try:
        again = AgentState(store).run(run.run_id)
    finally:
        store.close()
    assert again is not None and (again.outcome, again.answer, again.error) == (
        "answered",
        "replayed answer",
        None,
    )
