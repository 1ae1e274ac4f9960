"""The agent loop's deterministic behaviour, in real daemons talking to the scripted protocol servers
through the real openai and anthropic SDKs: a full round, max_rounds, invalid arguments and unknown
tools, approvals, background tools, result caps and tools that raise.

The harness here (:func:`stage`, :class:`Stage`, the ``probe`` tool type, the request readers) is
shared by the other agent test modules (test_providers, test_gate, test_notifications).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import Field

from daemon.agent_state import AgentState, DecisionError
from daemon.config import load_config_text
from daemon.errors import ToolError
from daemon.registry import builtin_registry
from daemon.supervisor import Daemon
from handlers.agent import NOTIFICATIONS_HEADER, TRUNCATED
from handlers.agent_store import RunState
from handlers.base import CallContext, Tool, ToolConfig
from streams.component import ComponentSpec
from tests.agent.scripted import Reply, ScriptedAnthropic, ScriptedModel, ScriptedOpenAI
from tests.servers import FeedServer, wait_for

PROVIDERS = ("openai", "anthropic")
SYSTEM = "You watch BTC for the desk."

# -- a tool type whose behaviour the test sets: strict schema, a result of a given size, failures -----


class ProbeToolConfig(ToolConfig):
    """Records its calls; returns ``{"echo": args, "blob": "x" * result_chars}``; ``fail`` raises that
    text (``retryable`` as a ToolError); ``sleep_seconds`` before answering; ``hold``: each call waits
    until the test sets ``tool.release``."""

    result_chars: int = Field(0, ge=0)
    fail: str | None = None
    retryable: bool = False
    sleep_seconds: float = Field(0.0, ge=0)
    hold: bool = False


class ProbeTool(Tool):
    type_name: ClassVar[str] = "probe"
    description: ClassVar[str] = "Buy a symbol (test probe)."
    args_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "symbol": {"type": "string", "description": "What to buy."},
            "qty": {"type": "number", "minimum": 0, "description": "How much."},
        },
        "required": ["symbol"],
        "additionalProperties": False,
    }
    config: ProbeToolConfig

    def __init__(self, name: str, config: ProbeToolConfig) -> None:
        super().__init__(name, config)
        self.calls: list[tuple[dict[str, Any], CallContext]] = []
        self.finished = 0
        self.release = asyncio.Event()

    async def call(self, args: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        self.calls.append((args, ctx))
        cfg = self.config
        if cfg.sleep_seconds:
            await asyncio.sleep(cfg.sleep_seconds)
        if cfg.hold:
            await self.release.wait()
        if cfg.fail is not None:
            if cfg.retryable:
                raise ToolError(self.name, cfg.fail, retryable=True)
            raise RuntimeError(cfg.fail)
        self.finished += 1
        return {"echo": args, "blob": "x" * cfg.result_chars}


PROBE = ComponentSpec(
    "tool",
    "probe",
    ProbeToolConfig,
    lambda name, cfg, ctx: ProbeTool(name, cfg),
    lambda c: [],
    ProbeTool.description,
    {"type": "probe"},
)

REGISTRY = builtin_registry().with_specs(PROBE)


# -- the stage: a daemon with a WebSocket feed, a scripted model and the llm tool ``analyst`` -------


def scripted(provider: str) -> ScriptedModel:
    return ScriptedOpenAI() if provider == "openai" else ScriptedAnthropic()


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def model(provider: str) -> AsyncIterator[ScriptedModel]:
    async with scripted(provider) as server:
        yield server


@dataclass
class Stage:
    daemon: Daemon
    model: ScriptedModel
    feed: FeedServer
    folder: Path
    provider: str
    sent: int = field(default=0)

    async def send(self, key: str = "BTC", **data: Any) -> None:
        """One event from the feed (``data.s`` is its key)."""
        self.sent += 1
        assert await self.feed.broadcast(json.dumps({"s": key, **data})) == 1

    def lines(self, tool: str) -> list[dict[str, Any]]:
        """What the file tool ``tool`` wrote."""
        path = self.folder / f"{tool}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    async def answers(self, n: int, within: float = 5.0) -> list[dict[str, Any]]:
        """Wait for ``n`` answers routed by the rule ``answers`` (file tool ``routed``)."""
        await wait_for(lambda: len(self.lines("routed")) >= n, within, what=lambda: f"{n} routed answers")
        return self.lines("routed")

    @property
    def state(self) -> AgentState:
        assert self.daemon.agent_state is not None
        return self.daemon.agent_state

    def runs(self) -> list[RunState]:
        return self.state.runs(tool="analyst")

    async def ended_runs(self, n: int, within: float = 5.0) -> list[RunState]:
        def ended() -> bool:
            return len([r for r in self.runs() if r.outcome is not None]) >= n

        await wait_for(ended, within, what=lambda: f"{n} ended runs, have {self.runs()}")
        return self.runs()

    def tool(self, name: str) -> ProbeTool:
        found = self.daemon.tools[name]
        assert isinstance(found, ProbeTool)
        return found

    def journal(self, tool: str) -> list[tuple[Any, ...]]:
        """(outcome, rule, key) of the journal's rows of ``tool``, oldest first."""
        assert self.daemon.store is not None
        with self.daemon.store.lock:
            return self.daemon.store.db.execute(
                "SELECT outcome, rule, key FROM invocations WHERE tool = ? ORDER BY started", (tool,)
            ).fetchall()


def config_text(
    provider: str,
    base_url: str,
    feed_url: str,
    folder: Path,
    *,
    llm: dict[str, Any] | None = None,
    tools: dict[str, Any] | None = None,
    rules: dict[str, Any] | None = None,
    agent: dict[str, Any] | None = None,
    prompt: str = "BTC at {data.p}",
    journal: bool = True,
) -> str:
    analyst = {
        "type": "llm",
        "provider": provider,
        "base_url": base_url,
        "model": "scripted-model",
        "system": SYSTEM,
        "tools": [],
        "retry": {"initial_seconds": 0.05},
        **(llm or {}),
    }
    config: dict[str, Any] = {
        "daemon": {"http": None, "state_path": str(folder / "state.db"), "journal": {"enabled": journal}},
        "sources": {"feed": {"type": "websocket", "url": feed_url, "key_field": "s"}},
        "tools": {
            "routed": {"type": "file", "path": str(folder / "routed.jsonl")},
            "analyst": analyst,
            **(tools or {}),
        },
        "rules": {
            "escalate": {"from": ["feed"], "then": [{"tool": "analyst", "args": {"prompt": prompt}}]},
            "answers": {
                "from": ["analyst"],
                "then": [{"tool": "routed", "args": {"text": "{data.text}", "run": "{data.run}"}}],
            },
            **(rules or {}),
        },
    }
    if agent is not None:
        config["agent"] = agent
    return json.dumps(config)  # JSON is YAML


StartStage = Callable[..., Awaitable[Stage]]


@pytest.fixture
def stage(
    run_daemon: Callable[[Any], Awaitable[Daemon]],
    feed_server: Callable[..., Awaitable[FeedServer]],
    tmp_path: Path,
    provider: str,
    model: ScriptedModel,
) -> StartStage:
    """``await stage(llm={...}, tools={...}, rules={...}, env={...})`` → a started :class:`Stage`."""

    async def start(env: dict[str, str] | None = None, **kwargs: Any) -> Stage:
        feed = await feed_server()
        text = config_text(provider, model.base_url, feed.url, tmp_path, **kwargs)
        daemon = await run_daemon(load_config_text(text, REGISTRY, base_dir=tmp_path, env=env))
        await wait_for(lambda: len(feed.connections) == 1, what="the daemon's feed connection")
        return Stage(daemon, model, feed, tmp_path, provider)

    return start


# -- reading what the scripted server received, whatever the protocol --------------------------------


def tool_choice(provider: str, request: dict[str, Any]) -> str | None:
    """auto | required | none, as the request asked (None: not sent)."""
    choice = request.get("tool_choice")
    if provider == "openai" or choice is None:
        return choice
    return {"auto": "auto", "any": "required", "none": "none"}[choice["type"]]


def tools_seen(provider: str, request: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Tool name → (description, parameters schema) as the model was offered them."""
    tools = request.get("tools") or []
    if provider == "openai":
        return {
            t["function"]["name"]: (t["function"]["description"], t["function"]["parameters"]) for t in tools
        }
    return {t["name"]: (t["description"], t["input_schema"]) for t in tools}


def user_texts(provider: str, request: dict[str, Any]) -> list[str]:
    """The text of every user message (Anthropic: every text block of a user turn), in order."""
    texts = []
    for m in request["messages"]:
        if m["role"] != "user":
            continue
        if isinstance(m["content"], str):
            texts.append(m["content"])
        else:
            texts.extend(b["text"] for b in m["content"] if b["type"] == "text")
    return texts


def tool_results(provider: str, request: dict[str, Any]) -> list[tuple[str, str]]:
    """(tool call id, content) of every tool result sent back, in order."""
    out = []
    for m in request["messages"]:
        if provider == "openai" and m["role"] == "tool":
            out.append((m["tool_call_id"], m["content"]))
        elif provider == "anthropic" and m["role"] == "user" and isinstance(m["content"], list):
            out.extend((b["tool_use_id"], b["content"]) for b in m["content"] if b["type"] == "tool_result")
    return out


def results_json(provider: str, request: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(content) for _, content in tool_results(provider, request)]


def notifications(provider: str, request: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The notification messages of a request, each as its JSON array of items."""
    found = []
    for text in user_texts(provider, request):
        if text.startswith(NOTIFICATIONS_HEADER):
            found.append(json.loads(text[len(NOTIFICATIONS_HEADER) :]))
    return found


def probe(**cfg: Any) -> dict[str, Any]:
    return {"type": "probe", **cfg}


# -- 1. a full round -----------------------------------------------------------------------------------


async def test_full_round_rule_model_tool_answer_routed(stage: StartStage) -> None:
    """A rule escalates; the model's call goes through the runner to a real file tool; its answer is an
    event the rule ``answers`` (from: [analyst]) routes. The wire carries the system prompt, the
    tool's own schema, the assistant's call echoed back (OpenAI: content "") and the result as JSON."""
    st = await stage(
        llm={"tools": ["alert"]},
        tools={"alert": {"type": "file", "path": "alert.jsonl", "description": "Alert the desk."}},
    )
    st.model.script(
        Reply.tool_calls(("alert", {"text": "BTC jumped"}), tokens_in=11, tokens_out=7),
        Reply.text("I alerted the desk.", tokens_in=13, tokens_out=3),
    )
    await st.send(p=101)
    answers = await st.answers(1)
    assert [(a["source"], a["rule"], a["key"], a["args"]["text"]) for a in answers] == [
        ("analyst", "answers", "BTC", "I alerted the desk.")
    ]
    alerts = st.lines("alert")
    assert [(a["rule"], a["source"], a["key"], a["args"]) for a in alerts] == [
        ("escalate", "feed", "BTC", {"text": "BTC jumped"})
    ]

    first, second = st.model.requests
    schema = st.daemon.tools["alert"].schema()
    for request in (first, second):
        assert tools_seen(st.provider, request) == {"alert": ("Alert the desk.", schema["parameters"])}
        assert tool_choice(st.provider, request) == "auto"
        assert request["model"] == "scripted-model"
    if st.provider == "openai":
        assert first["messages"] == [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "BTC at 101"},
        ]
        assert second["messages"][2:] == [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "alert", "arguments": json.dumps({"text": "BTC jumped"})},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"outcome":"succeeded"}'},
        ]
    else:
        assert first["system"] == SYSTEM
        assert first["messages"] == [{"role": "user", "content": [{"type": "text", "text": "BTC at 101"}]}]
        assert second["messages"][1:] == [
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "call_1", "name": "alert", "input": {"text": "BTC jumped"}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": '{"outcome":"succeeded"}'}
                ],
            },
        ]
    (run,) = await st.ended_runs(1)
    assert (run.outcome, run.rounds, run.tokens_in, run.tokens_out, run.answer) == (
        "answered",
        2,
        24,
        10,
        "I alerted the desk.",
    )
    assert answers[0]["args"]["run"] == run.run_id
    assert (run.rule, run.key) == ("escalate", "BTC")


async def test_a_tool_result_is_json_text_with_the_result(stage: StartStage) -> None:
    """What a tool returns reaches the model as ``{"outcome": "succeeded", "result": ...}`` JSON text."""
    st = await stage(llm={"tools": ["buy"]}, tools={"buy": probe()})
    st.model.script(Reply.tool_calls(("buy", {"symbol": "BTC", "qty": 0.5})), Reply.text("bought"))
    await st.send(p=1)
    await st.answers(1)
    assert results_json(st.provider, st.model.requests[1]) == [
        {"outcome": "succeeded", "result": {"echo": {"symbol": "BTC", "qty": 0.5}, "blob": ""}}
    ]
    ((args, ctx),) = st.tool("buy").calls
    assert args == {"symbol": "BTC", "qty": 0.5}
    assert ctx.rule == "escalate" and ctx.event is not None and ctx.event.key == "BTC"
    assert ctx.call_id.startswith(st.runs()[0].run_id + ":buy:")  # the idempotency key: run, tool, args


# -- 2. max_rounds -------------------------------------------------------------------------------------


async def test_max_rounds_ends_the_run_after_exactly_max_rounds_model_calls(stage: StartStage) -> None:
    """A model that always asks for tools: max_rounds model calls, the last with tool_choice none; the
    calls of that last round are not made; the run ends max_rounds and no answer is routed."""
    st = await stage(llm={"tools": ["buy"], "max_rounds": 3}, tools={"buy": probe()})
    st.model.script(*(Reply.tool_calls(("buy", {"symbol": "BTC", "qty": n})) for n in (1, 2, 3)))
    st.model.default = Reply.tool_calls(("buy", {"symbol": "BTC", "qty": 99}))
    await st.send(p=1)
    (run,) = await st.ended_runs(1)
    assert (run.outcome, run.rounds) == ("max_rounds", 3)
    assert len(st.model.requests) == 3
    assert [tool_choice(st.provider, r) for r in st.model.requests] == ["auto", "auto", "none"]
    assert [args["qty"] for args, _ in st.tool("buy").calls] == [1, 2]  # not the third round's
    last = st.state.run(run.run_id)
    assert last is not None and last.messages[-1]["role"] == "tool"
    assert json.loads(last.messages[-1]["content"]) == {"error": "not run: max_rounds reached"}
    assert st.lines("routed") == []
    llm = st.daemon.tools["analyst"]
    await wait_for(lambda: llm.outcomes == {"max_rounds": 1}, what="the run counted")  # type: ignore[attr-defined]


async def test_first_tool_choice_required_only_on_the_first_call(stage: StartStage) -> None:
    st = await stage(llm={"tools": ["buy"], "first_tool_choice": "required"}, tools={"buy": probe()})
    st.model.script(Reply.tool_calls(("buy", {"symbol": "BTC"})), Reply.text("done"))
    await st.send(p=1)
    await st.answers(1)
    assert [tool_choice(st.provider, r) for r in st.model.requests] == ["required", "auto"]


# -- 3. invalid arguments and unknown tools ------------------------------------------------------------


async def test_invalid_arguments_and_unknown_tools_go_back_to_the_model(stage: StartStage) -> None:
    """Schema-invalid, not JSON, a JSON array, an unknown tool: the tool is never called, the model gets
    an error result naming the problem and the run goes on. HTML-escaped JSON (llama.cpp echoes it so)
    is read after unescaping. (Anthropic's tool_use input is always an object: the scripted server
    wraps a raw string as {"_raw": ...}, which the schema refuses.)"""
    st = await stage(llm={"tools": ["buy"]}, tools={"buy": probe()})
    st.model.script(
        Reply.tool_calls(
            ("buy", {"qty": 1}),
            ("buy", '{"symbol": "BT'),
            ("buy", "[1, 2]"),
            ("sell", {"symbol": "BTC"}),
            ("buy", "{&quot;symbol&quot;: &quot;ETH&quot;}"),
            ("buy", {"symbol": "BTC", "qty": -1}),
        ),
        Reply.text("I could not buy."),
    )
    await st.send(p=1)
    answers = await st.answers(1)
    assert answers[0]["args"]["text"] == "I could not buy."
    results = results_json(st.provider, st.model.requests[1])
    errors = [r.get("error", "") for r in results]
    assert len(results) == 6
    assert errors[0] == "invalid arguments: 'symbol' is a required property"
    assert errors[3] == "unknown tool 'sell'; you may call: buy"
    assert errors[5] == "invalid arguments: qty: -1 is less than the minimum of 0"
    if st.provider == "openai":
        assert errors[1].startswith("arguments are not valid JSON")
        assert errors[2] == "arguments must be a JSON object, not an array"
        assert results[4] == {"outcome": "succeeded", "result": {"echo": {"symbol": "ETH"}, "blob": ""}}
        assert [args for args, _ in st.tool("buy").calls] == [{"symbol": "ETH"}]
    else:
        for error in (errors[1], errors[2], errors[4]):
            assert error.startswith("invalid arguments: ") and "'_raw'" in error, error
        assert st.tool("buy").calls == []
    (run,) = await st.ended_runs(1)
    assert run.outcome == "answered"


# -- 10. result caps and tools that raise --------------------------------------------------------------


async def test_results_are_capped_with_a_visible_marker_and_a_raising_tool_is_an_error_result(
    stage: StartStage,
) -> None:
    st = await stage(
        llm={"tools": ["buy", "broken"], "max_result_chars": 200},
        tools={"buy": probe(result_chars=1000), "broken": probe(fail="exchange said no")},
    )
    st.model.script(
        Reply.tool_calls(("buy", {"symbol": "BTC"}), ("broken", {"symbol": "BTC"})),
        Reply.text("partly done"),
    )
    await st.send(p=1)
    await st.answers(1)
    (capped, failed) = tool_results(st.provider, st.model.requests[1])
    full = json.dumps(
        {"outcome": "succeeded", "result": {"echo": {"symbol": "BTC"}, "blob": "x" * 1000}},
        separators=(",", ":"),
    )
    assert capped[1] == full[:200] + TRUNCATED.format(n=len(full) - 200)
    assert json.loads(failed[1]) == {"outcome": "dead_lettered", "error": "RuntimeError: exchange said no"}
    assert len(st.tool("broken").calls) == 1
    (run,) = await st.ended_runs(1)
    assert run.outcome == "answered"
    assert st.daemon.store is not None
    assert [d.tool for d in st.daemon.store.dead_letters()] == ["broken"]  # like any failed tool call


# -- 8. approvals --------------------------------------------------------------------------------------


async def test_approval_executes_once_through_the_runner_and_rejection_executes_nothing(
    stage: StartStage,
) -> None:
    st = await stage(
        llm={"tools": ["buy"], "require_approval": ["buy"]},
        tools={"buy": probe()},
        agent={"approvals_poll_seconds": 30},  # only the wake below runs the approvals
    )
    st.model.script(
        Reply.tool_calls(
            ("buy", {"symbol": "BTC", "qty": 1}), ("buy", {"symbol": "ETH", "qty": 2}), text="BTC dipped 3%"
        ),
        Reply.text("Proposed two buys."),
    )
    await st.send(p=1)
    await st.answers(1)
    (run,) = st.runs()
    btc, eth = st.state.approvals()
    for approval, args in ((btc, {"symbol": "BTC", "qty": 1}), (eth, {"symbol": "ETH", "qty": 2})):
        assert (approval.tool, approval.args, approval.run_id, approval.reasoning, approval.status) == (
            "buy",
            args,
            run.run_id,
            "BTC dipped 3%",
            "pending",
        )
        assert (approval.llm, approval.rule) == ("analyst", "escalate")
    results = results_json(st.provider, st.model.requests[1])
    assert [(r["status"], r["approval"]) for r in results] == [
        ("awaiting_approval", btc.id),
        ("awaiting_approval", eth.id),
    ]
    assert st.tool("buy").calls == []  # proposed, not run

    st.state.decide(eth.id, False, by="test")
    st.state.decide(btc.id, True, by="test")
    st.daemon.approvals_wake.set()
    await wait_for(lambda: (a := st.state.approval(btc.id)) is not None and a.status == "executed")
    assert [(args, ctx.call_id) for args, ctx in st.tool("buy").calls] == [(btc.args, btc.key)]
    with pytest.raises(DecisionError):
        st.state.decide(btc.id, True, by="test")
    eth_now = st.state.approval(eth.id)
    assert eth_now is not None and eth_now.status == "rejected"

    # even if the row were approved again, the idempotency key keeps the buy from running twice
    assert st.daemon.store is not None
    with st.daemon.store.lock:
        st.daemon.store.db.execute("UPDATE approvals SET status = 'approved' WHERE id = ?", (btc.id,))
    st.daemon.approvals_wake.set()
    await wait_for(lambda: (a := st.state.approval(btc.id)) is not None and a.outcome == "duplicate")
    assert len(st.tool("buy").calls) == 1

    # the outcome reaches the model at its next call
    st.model.script(Reply.text("noted"))
    await st.send(p=2)
    await st.answers(2)
    (items,) = notifications(st.provider, st.model.requests[2])
    approvals = [i for i in items if i["kind"] == "approval"]
    assert sorted((i["fields"]["approval"], i["text"]) for i in approvals) == sorted([
        (btc.id, f"approved call {btc.id} of buy: succeeded"),
        (btc.id, f"approved call {btc.id} of buy: duplicate"),
        (eth.id, f"proposed call {eth.id} of buy was rejected by a person; it was not made"),
    ])  # the rejection too: the model learns its proposal will not happen
    assert sum(i["fields"]["approval"] == eth.id for i in approvals) == 1  # told once
    (done,) = [i for i in approvals if i["text"].endswith("succeeded")]
    assert json.loads(done["fields"]["result"])["echo"] == btc.args  # JSON text, as every result it reads


# -- 9. background tools -------------------------------------------------------------------------------


async def test_background_call_returns_at_once_and_its_result_earns_one_more_round(stage: StartStage) -> None:
    st = await stage(
        llm={"tools": ["backtest"], "background_tools": ["backtest"]},
        tools={"backtest": probe(sleep_seconds=0.3)},
    )
    st.model.script(
        Reply.tool_calls(("backtest", {"symbol": "BTC"})),
        Reply.text("A backtest is running."),
        Reply.text("The backtest says hold."),
    )
    await st.send(p=1)
    answers = await st.answers(1)
    assert [a["args"]["text"] for a in answers] == ["The backtest says hold."]
    _, second_round, third_round = st.model.requests
    (started,) = results_json(st.provider, second_round)
    assert started["status"] == "started"
    assert notifications(st.provider, second_round) == []  # it had not ended yet
    (items,) = notifications(st.provider, third_round)
    (item,) = items
    assert item["kind"] == "background" and item["fields"]["id"] == started["id"]
    assert json.loads(item["fields"]["content"]) == {
        "outcome": "succeeded",
        "result": {"echo": {"symbol": "BTC"}, "blob": ""},
    }
    assert st.tool("backtest").finished == 1
    (run,) = await st.ended_runs(1)
    assert (run.outcome, run.rounds) == ("answered", 3)


async def test_background_wait_is_bounded_by_the_tool_timeout(stage: StartStage) -> None:
    st = await stage(
        llm={"tools": ["backtest"], "background_tools": ["backtest"]},
        tools={"backtest": probe(sleep_seconds=60, timeout_seconds=0.2, retry={"max_attempts": 1})},
    )
    st.model.script(
        Reply.tool_calls(("backtest", {"symbol": "BTC"})),
        Reply.text("A backtest is running."),
        Reply.text("The backtest did not finish."),
    )
    await st.send(p=1)
    answers = await st.answers(1)
    assert [a["args"]["text"] for a in answers] == ["The backtest did not finish."]
    (items,) = notifications(st.provider, st.model.requests[2])
    assert [(i["kind"], json.loads(i["fields"]["content"])["outcome"]) for i in items] == [
        ("background", "dead_lettered")
    ]
    assert st.tool("backtest").finished == 0


async def test_a_background_result_another_run_drained_still_reaches_its_own_run(stage: StartStage) -> None:
    """Two runs of one llm tool share the notification queue: run B's model call drains run A's
    background result first; A's extra round still carries it (A keeps its own results)."""
    st = await stage(
        llm={"tools": ["backtest"], "background_tools": ["backtest"]},
        tools={"backtest": probe(sleep_seconds=0.05)},
    )
    st.model.script(
        Reply.tool_calls(("backtest", {"symbol": "BTC"})),  # A, round 1
        Reply.stall(30),  # A, round 2: held until released below, then answers "late"
        Reply.text("B saw A's backtest."),  # B, round 1
        Reply.text("A read its backtest."),  # A, round 3
    )
    await st.send("BTC", p=1)
    await st.model.wait_requests(2)
    await wait_for(lambda: st.tool("backtest").finished == 1 and st.daemon.notifications.last_seq == 1)
    await st.send("ETH", p=2)
    await st.answers(1)  # B drained the queue and answered
    assert [i["kind"] for i in notifications(st.provider, st.model.requests[2])[0]] == ["background"]
    st.model._closing.set()  # release A's stalled round 2
    answers = await st.answers(2)
    assert [a["args"]["text"] for a in answers] == ["B saw A's backtest.", "A read its backtest."]
    (items,) = notifications(st.provider, st.model.requests[3])
    assert [(i["kind"], i["fields"]["tool"]) for i in items] == [("background", "backtest")]


async def test_the_same_call_twice_in_a_run_is_made_once_and_its_repeat_gets_the_first_result(
    stage: StartStage,
) -> None:
    """The idempotency key is (run, tool, arguments): a model that asks for the same call again in one run
    does not make it twice; it is told so and gets the first call's result."""
    st = await stage(llm={"tools": ["look"]}, tools={"look": probe()})
    st.model.script(
        Reply.tool_calls(("look", {"symbol": "BTC"})),
        Reply.tool_calls(("look", {"symbol": "BTC"}), ("look", {"symbol": "ETH"})),
        Reply.text("looked"),
    )
    await st.send(p=1)
    await st.answers(1)
    assert [args for args, _ in st.tool("look").calls] == [{"symbol": "BTC"}, {"symbol": "ETH"}]
    again, other = results_json(st.provider, st.model.requests[2])[1:]
    assert again == {
        "outcome": "duplicate",
        "note": "the same call was made earlier in this run: not made again; this is its result",
        "result": {"echo": {"symbol": "BTC"}, "blob": ""},
    }
    assert other["outcome"] == "succeeded"


async def test_a_big_background_result_is_capped_once(stage: StartStage) -> None:
    st = await stage(
        llm={"tools": ["backtest"], "background_tools": ["backtest"], "max_result_chars": 200},
        tools={"backtest": probe(result_chars=1000)},
    )
    st.model.script(Reply.tool_calls(("backtest", {"symbol": "BTC"})), Reply.text("hm"), Reply.text("done"))
    await st.send(p=1)
    await st.answers(1)
    items = [i for m in notifications(st.provider, st.model.requests[-1]) for i in m]
    (content,) = [i["fields"]["content"] for i in items if i["kind"] == "background"]
    full = json.dumps(
        {"outcome": "succeeded", "result": {"echo": {"symbol": "BTC"}, "blob": "x" * 1000}},
        separators=(",", ":"),
    )
    assert content == full[:200] + TRUNCATED.format(n=len(full) - 200)


async def test_a_background_call_started_by_an_earlier_attempt_is_reported_lost(stage: StartStage) -> None:
    """A retry (or a restart) resumes the run without the background calls the earlier attempt started:
    their results will never reach this run, so the model is told, once, instead of waiting for them."""
    st = await stage(
        llm={"tools": ["backtest"], "background_tools": ["backtest"]},
        tools={"backtest": probe(sleep_seconds=1.5)},
    )
    st.model.script(
        Reply.tool_calls(("backtest", {"symbol": "BTC"})),
        Reply.error(500),  # attempt 1 fails after the backtest started; attempt 2 resumes the run
        Reply.text("The backtest result is lost; no view."),
    )
    await st.send(p=1)
    answers = await st.answers(1)
    assert [a["args"]["text"] for a in answers] == ["The backtest result is lost; no view."]
    _first, failed, resumed = st.model.requests
    (started,) = results_json(st.provider, failed)
    assert started["status"] == "started"
    (items,) = notifications(st.provider, resumed)
    (item,) = items
    assert item["kind"] == "background" and item["fields"] == {"tool": "backtest", "id": started["id"]}
    assert "lost" in item["text"]
    (run,) = await st.ended_runs(1)
    assert run.outcome == "answered"
    full = st.state.run(run.run_id)
    assert full is not None
    assert sum("is lost" in m["content"] for m in full.messages if m["role"] == "user") == 1  # told once
