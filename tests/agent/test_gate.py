"""The gate before a run is queued: budgets (tokens per hour / per day from the provider's usage, runs
per minute) and dedup per (rule, key). In real daemons against the scripted servers through the
real SDKs, plus unit tests of :class:`handlers.agent.AgentGate`."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from daemon.config import load_config_text
from daemon.supervisor import Daemon
from daemon.telemetry import metrics_registry
from handlers.agent import FORGET_AT, AgentGate, BudgetConfig
from tests.agent import test_loop as harness
from tests.agent.scripted import Reply, ScriptedModel
from tests.agent.test_loop import REGISTRY, Stage, StartStage, config_text, notifications, probe
from tests.servers import FeedServer, wait_for

provider = harness.provider  # the fixtures of the shared harness
model = harness.model
stage = harness.stage


def metric(daemon: Daemon, name: str, **labels: str) -> float:
    """A sample's value from the daemon's /metrics exposition (0 when absent)."""
    for family in text_string_to_metric_families(generate_latest(metrics_registry(daemon)).decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def screened(st: Stage, outcome: str) -> int:
    return st.daemon.runner.stats("analyst").screened_by.get(outcome, 0)


def run_outcomes(st: Stage) -> list[tuple[str | None, Any]]:
    return [(r.outcome, r.key) for r in st.runs()]


# -- budgets -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", ["tokens_per_hour", "tokens_per_day"])
async def test_an_escalation_over_a_token_budget_is_not_sent(
    stage: StartStage, debug_log: io.StringIO, window: str
) -> None:
    """The first run's reported usage (20 + 10) uses the budget up: the next five escalations reach no
    model; each is journaled over_budget (journal row and agent run), counted, its event put in the
    notification queue, and the refusal is logged once for the window."""
    st = await stage(llm={"budget": {window: 30}})
    st.model.script(Reply.text("first", tokens_in=20, tokens_out=10))
    await st.send("BTC", p=1)
    await st.answers(1)
    for p in range(2, 7):
        await st.send(f"K{p}", p=p)
    await wait_for(lambda: screened(st, "over_budget") == 5, what="5 escalations screened")
    assert len(st.model.requests) == 1  # none of them was sent

    await wait_for(lambda: len(st.runs()) == 6, what="6 journaled runs")
    assert run_outcomes(st) == [("answered", "BTC")] + [("over_budget", f"K{p}") for p in range(2, 7)]
    assert all(r.error == window for r in st.runs()[1:])
    await wait_for(lambda: len(st.journal("analyst")) == 6, what="6 journal rows")
    assert [row[0] for row in st.journal("analyst")] == ["succeeded"] + ["over_budget"] * 5

    items = st.daemon.notifications.since(0)
    assert [(i.kind, i.rule, i.key, i.text) for i in items] == [
        ("over_budget", "escalate", f"K{p}", f"BTC at {p}") for p in range(2, 7)
    ]
    assert items[0].fields == {"llm": "analyst", "why": window, "source": "feed", "data": {"s": "K2", "p": 2}}

    d = st.daemon
    assert metric(d, "reflexd_tool_screened_total", tool="analyst", outcome="over_budget") == 5
    assert metric(d, "reflexd_agent_runs_total", tool="analyst", outcome="over_budget") == 5
    assert metric(d, "reflexd_agent_runs_total", tool="analyst", outcome="answered") == 1
    lines = [json.loads(line) for line in debug_log.getvalue().splitlines()]
    refused = [line for line in lines if line["msg"] == "escalation over budget: not sent"]
    assert [(line["tool"], line["budget"]) for line in refused] == [("analyst", window)]


async def test_runs_per_minute(stage: StartStage) -> None:
    st = await stage(llm={"budget": {"runs_per_minute": 2}})
    for key in ("A", "B", "C"):
        await st.send(key, p=1)
    await wait_for(lambda: screened(st, "over_budget") == 1)
    await st.answers(2)
    await wait_for(lambda: len(st.runs()) == 3)
    assert sorted((r.outcome, r.key, r.error) for r in st.runs()) == [
        ("answered", "A", None),
        ("answered", "B", None),
        ("over_budget", "C", "runs_per_minute"),
    ]
    assert len(st.model.requests) == 2


async def test_a_budget_used_up_during_a_run_stops_it_before_the_next_model_call(stage: StartStage) -> None:
    st = await stage(llm={"tools": ["buy"], "budget": {"tokens_per_hour": 20}}, tools={"buy": probe()})
    st.model.script(Reply.tool_calls(("buy", {"symbol": "BTC"}), tokens_in=20, tokens_out=5))
    await st.send(p=1)
    (run,) = await st.ended_runs(1)
    assert run.outcome == "over_budget"
    assert run.error == "budget tokens_per_hour used up during the run"
    assert len(st.model.requests) == 1
    assert len(st.tool("buy").calls) == 1  # made before the budget ran out


async def test_a_server_that_reports_no_usage_is_counted_by_estimate(stage: StartStage) -> None:
    """Usage 0 from the server (some local servers report none) must not make a token budget never bind:
    the run's tokens are estimated from what was sent and received, and the budget stops the next run."""
    st = await stage(llm={"budget": {"tokens_per_hour": 30}}, prompt="BTC at {data.p}: " + "x" * 200)
    st.model.script(Reply.text("An answer of some length to count.", tokens_in=0, tokens_out=0))
    await st.send("A", p=1)
    (run,) = await st.ended_runs(1)
    assert run.outcome == "answered" and run.tokens_in >= 50 and run.tokens_out >= 5, run
    await st.send("B", p=2)
    await wait_for(lambda: screened(st, "over_budget") == 1)
    assert len(st.model.requests) == 1  # the second escalation was not sent


async def test_budgets_survive_a_restart(
    run_daemon: Callable[[Any], Awaitable[Daemon]],
    feed_server: Callable[..., Awaitable[FeedServer]],
    tmp_path: Path,
    provider: str,
    model: ScriptedModel,
) -> None:
    feed = await feed_server()
    text = config_text(
        provider,
        model.base_url,
        feed.url,
        tmp_path,
        llm={"budget": {"tokens_per_day": 30, "runs_per_minute": 5}},
    )
    first = await run_daemon(load_config_text(text, REGISTRY, base_dir=tmp_path))
    await wait_for(lambda: len(feed.connections) == 1)
    model.script(Reply.text("spent", tokens_in=25, tokens_out=5))
    await feed.broadcast(json.dumps({"s": "BTC", "p": 1}))
    await wait_for(lambda: first.runner.stats("analyst").succeeded == 1)
    await first.stop()

    second = await run_daemon(load_config_text(text, REGISTRY, base_dir=tmp_path))
    await wait_for(lambda: len(feed.connections) == 2)
    assert await feed.broadcast(json.dumps({"s": "ETH", "p": 2})) == 1
    await wait_for(lambda: second.runner.stats("analyst").screened == 1)
    assert second.runner.stats("analyst").screened_by == {"over_budget": 1}
    assert len(model.requests) == 1
    assert second.agent_state is not None
    state = second.agent_state
    await wait_for(lambda: len(state.runs()) == 2, what="the screened run journaled")
    assert [(r.outcome, r.error) for r in state.runs()] == [
        ("answered", None),
        ("over_budget", "tokens_per_day"),
    ]


# -- dedup ---------------------------------------------------------------------------------------------


async def test_a_repeat_while_a_run_is_pending_joins_the_notifications_of_its_next_model_call(
    stage: StartStage,
) -> None:
    """While the run for (escalate, BTC) is going, a repeat starts no run: the model sees it in the
    request of the run's next model call (a notification message with the item). After the run, a
    repeat within dedup_seconds is deduplicated too and reaches the next run; another key is not."""
    st = await stage(llm={"tools": ["buy"], "dedup_seconds": 300}, tools={"buy": probe(hold=True)})
    st.model.script(Reply.tool_calls(("buy", {"symbol": "BTC"})), Reply.text("BTC done"))
    await st.send("BTC", p=1)
    await wait_for(lambda: len(st.tool("buy").calls) == 1, what="the held buy")
    await st.send("BTC", p=2)
    await wait_for(lambda: screened(st, "deduplicated") == 1)
    assert len(st.model.requests) == 1
    st.tool("buy").release.set()
    await st.answers(1)

    first, second = st.model.requests
    assert notifications(st.provider, first) == []
    ((item,),) = notifications(st.provider, second)
    assert (item["kind"], item["rule"], item["key"], item["text"]) == (
        "deduplicated",
        "escalate",
        "BTC",
        "BTC at 2",
    )
    assert item["fields"]["data"] == {"s": "BTC", "p": 2}
    assert item["fields"]["why"] == "a run for this rule and key is still going"
    assert item["seq"] == 1

    # the run ended: a repeat within the window is deduplicated; another key starts a run and sees it
    await st.send("BTC", p=3)
    await wait_for(lambda: screened(st, "deduplicated") == 2)
    st.model.script(Reply.text("ETH done"))
    await st.send("ETH", p=4)
    await st.answers(2)
    third = st.model.requests[2]
    assert user_prompt(st, third) == "BTC at 4"
    ((item,),) = notifications(st.provider, third)
    assert (item["kind"], item["key"], item["text"]) == ("deduplicated", "BTC", "BTC at 3")
    assert item["fields"]["why"].startswith("a run for this rule and key started ")
    await wait_for(lambda: len(st.runs()) == 4)
    assert sorted(run_outcomes(st), key=str) == [
        ("answered", "BTC"),
        ("answered", "ETH"),
        ("deduplicated", "BTC"),
        ("deduplicated", "BTC"),
    ]
    assert metric(st.daemon, "reflexd_agent_runs_total", tool="analyst", outcome="deduplicated") == 2


def user_prompt(st: Stage, request: dict[str, Any]) -> str:
    return harness.user_texts(st.provider, request)[0]


async def test_a_run_waiting_for_its_retry_is_still_pending(stage: StartStage) -> None:
    """A run whose model call failed and waits for the runner's retry is still going: a repeat of its
    (rule, key) is deduplicated even once dedup_seconds has passed."""
    st = await stage(llm={"dedup_seconds": 0.001, "retry": {"initial_seconds": 0.5}})
    st.model.script(Reply.error(500), Reply.text("after the retry"))
    await st.send("BTC", p=1)
    await wait_for(lambda: st.daemon.runner.stats("analyst").retries == 1, what="the retry's wait")
    await st.send("BTC", p=2)
    await st.answers(1)
    assert screened(st, "deduplicated") == 1
    assert len(st.model.requests) == 2


async def test_after_the_window_a_repeat_starts_a_new_run(stage: StartStage) -> None:
    st = await stage(llm={"dedup_seconds": 0.2})
    await st.send("BTC", p=1)
    await st.answers(1)
    await asyncio.sleep(0.25)
    await st.send("BTC", p=2)
    await st.answers(2)
    assert screened(st, "deduplicated") == 0


# -- AgentGate, alone ----------------------------------------------------------------------------------


def test_gate_dedup_per_rule_and_key() -> None:
    gate = AgentGate(BudgetConfig(), dedup_seconds=10, pending_seconds=100)
    assert gate.screen("r", "BTC", 0.0) is None
    assert gate.screen("r", "BTC", 1.0) == ("deduplicated", "a run for this rule and key is still going")
    assert gate.screen("r", "ETH", 1.0) is None  # another key
    assert gate.screen("other", "BTC", 1.0) is None  # another rule
    gate.ended("r", "BTC")
    assert gate.screen("r", "BTC", 5.0) == ("deduplicated", "a run for this rule and key started 5 s ago")
    assert gate.screen("r", "BTC", 10.5) is None  # the window passed
    assert gate.screen("r", "BTC", 200.0) is None  # pending for longer than pending_seconds: taken as gone
    assert (gate.admitted, gate.deduplicated) == (5, 2)


def test_gate_without_dedup_admits_every_repeat() -> None:
    gate = AgentGate(BudgetConfig(), dedup_seconds=0, pending_seconds=100)
    assert [gate.screen("r", "BTC", 0.0) for _ in range(3)] == [None, None, None]


def test_gate_budget_windows_slide() -> None:
    gate = AgentGate(BudgetConfig(tokens_per_hour=100, runs_per_minute=2), dedup_seconds=0, pending_seconds=1)
    assert gate.screen("r", 1, 0.0) is None
    gate.spent(1.0, 60)
    assert gate.screen("r", 2, 2.0) is None
    assert gate.screen("r", 3, 3.0) == ("over_budget", "runs_per_minute")
    assert gate.screen("r", 4, 61.0) is None  # the first run left the minute
    gate.spent(62.0, 40)  # 100 in the hour
    assert gate.exceeded(63.0) == "tokens_per_hour"
    assert gate.screen("r", 5, 130.0) == ("over_budget", "tokens_per_hour")
    assert gate.exceeded(3601.5) is None  # the 60 left the hour; 40 remain
    assert gate.over_budget == 2


def test_gate_loads_what_an_earlier_process_spent() -> None:
    gate = AgentGate(BudgetConfig(tokens_per_day=50, runs_per_minute=1), dedup_seconds=0, pending_seconds=1)
    gate.load([(1000.0, 30), (2000.0, 20)], [2000.0])
    assert gate.screen("r", 1, 2010.0) == ("over_budget", "tokens_per_day")
    gate2 = AgentGate(BudgetConfig(runs_per_minute=1), dedup_seconds=0, pending_seconds=1)
    gate2.load([], [2000.0])
    assert gate2.screen("r", 1, 2030.0) == ("over_budget", "runs_per_minute")
    assert gate2.screen("r", 1, 2061.0) is None


def test_gate_memory_stays_bounded_by_the_keys_in_their_window() -> None:
    """Entries past their window are dropped in passes whose threshold doubles with what is kept, so a
    window full of distinct keys costs O(1) per escalation (not a pass over every key each time)."""
    gate = AgentGate(BudgetConfig(), dedup_seconds=10, pending_seconds=20)
    for i in range(3 * FORGET_AT):
        assert gate.screen("r", i, 0.0) is None
        gate.ended("r", i)
    assert gate.screen("r", 0, 5.0) == ("deduplicated", "a run for this rule and key started 5 s ago")
    for i in range(3 * FORGET_AT):
        assert gate.screen("r", ("later", i), 100.0) is None
    assert len(gate._last) == 3 * FORGET_AT  # the first keys' entries went, the later ones are kept


async def test_a_big_event_joins_the_notifications_with_its_fields_capped(stage: StartStage) -> None:
    """A deduplicated escalation's item carries the event's data: a big event is cut to max_result_chars
    in the model's message (with the marker), so a storm of them cannot blow the model's context."""
    st = await stage(
        llm={"tools": ["buy"], "dedup_seconds": 300, "max_result_chars": 300}, tools={"buy": probe(hold=True)}
    )
    st.model.script(Reply.tool_calls(("buy", {"symbol": "BTC"})), Reply.text("done"))
    await st.send("BTC", p=1)
    await wait_for(lambda: len(st.tool("buy").calls) == 1, what="the held buy")
    await st.send("BTC", p=2, book="x" * 5000)
    await wait_for(lambda: screened(st, "deduplicated") == 1)
    st.tool("buy").release.set()
    await st.answers(1)
    ((item,),) = notifications(st.provider, st.model.requests[1])
    assert item["text"] == "BTC at 2"
    fields = item["fields"]
    assert (fields["llm"], fields["source"]) == ("analyst", "feed")
    assert isinstance(fields["data"], str) and len(fields["data"]) < 340
    assert fields["data"].startswith('{"s":"BTC","p":2,"book":"xxx') and "…[truncated " in fields["data"]
