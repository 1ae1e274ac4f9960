"""Approvals and agent runs on the ops HTTP server, over real TCP against a running Daemon whose model
(a scripted OpenAI-compatible server, through the real openai SDK) proposed a `buy` that needs a
person's approval.

Deciding is state-changing: no token (or a wrong one, or a foreign Origin) is refused and nothing is
executed; the right token executes the call once, at once (the approvals poll is set to a minute, so
only the wake-up can explain a prompt call); deciding again is 409 and executes nothing more; a
foreign Host is 421. What is served is redacted as `reflexd agent` prints it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from daemon.agent_state import AgentState
from daemon.config import load_config_text
from daemon.registry import builtin_registry
from daemon.supervisor import Daemon
from tests.agent.scripted import Reply, ScriptedOpenAI
from tests.conftest import StartDaemon
from tests.servers import wait_for

TOKEN = "ops-token-7a1c9e3b5d2f4a6c8e0b"
API_KEY = "sk-live-0d9c8b7a6f5e4d3c"
ARG_TOKEN = "tok-1f2e3d4c5b"
GOOD = {"Authorization": f"Bearer {TOKEN}"}


def config_text(folder: Path, base_url: str, *, token: bool = True) -> str:
    (folder / "events.jsonl").write_text('{"s": "BTC", "p": 65000}\n')
    http: dict[str, Any] = {"listen": "127.0.0.1:0"}
    if token:
        http["token"] = "${REFLEXD_OPS_TOKEN}"
    doc = {
        "daemon": {"http": http, "state_path": str(folder / "state.db"), "shutdown_timeout_seconds": 5},
        "agent": {"approvals_poll_seconds": 60},  # only a wake-up makes an approved call at once
        "sources": {
            "feed": {"type": "replay", "path": str(folder / "events.jsonl"), "speed": 0, "key_field": "s"}
        },
        "tools": {
            "alert": {"type": "file", "path": str(folder / "alerts.jsonl")},
            "buy": {"type": "file", "path": str(folder / "buys.jsonl")},
            "analyst": {
                "type": "llm",
                "base_url": base_url,
                "model": "scripted-model",
                "api_key": "${OPENAI_API_KEY}",
                "tools": ["alert", "buy"],
                "require_approval": ["buy"],
            },
        },
        "rules": {
            "big": {"from": "feed", "then": [{"tool": "analyst", "args": {"prompt": "BTC at {data.p}"}}]}
        },
    }
    return yaml.safe_dump(doc)


@dataclass
class Stage:
    daemon: Daemon
    folder: Path
    http: aiohttp.ClientSession

    @property
    def base(self) -> str:
        assert self.daemon.http is not None
        return f"http://127.0.0.1:{self.daemon.http.port}"

    @property
    def state(self) -> AgentState:
        assert self.daemon.agent_state is not None
        return self.daemon.agent_state

    def buys(self) -> list[dict[str, Any]]:
        path = self.folder / "buys.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    async def post(self, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> tuple[int, Any]:
        async with self.http.post(self.base + path, headers=headers or {}, **kwargs) as r:
            return r.status, await r.json()

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.http.get(self.base + path, headers=headers or {}) as r:
            return r.status, await r.json()

    async def no_call(self) -> None:
        """The proposal is still pending and `buy` was never called, also after the approvals task ran."""
        self.daemon.approvals_wake.set()
        await asyncio.sleep(0.3)
        approval = self.state.approval(1)
        assert approval is not None and approval.status == "pending"
        assert self.buys() == []


async def start(run_daemon: StartDaemon, folder: Path, *, token: bool = True) -> AsyncIterator[Stage]:
    async with ScriptedOpenAI() as model:
        model.script(
            Reply.tool_calls(
                ("alert", {"text": f"BTC jumped ({API_KEY})", "api_token": ARG_TOKEN}),
                ("buy", {"symbol": "BTC/USDT", "qty": 1, "api_token": ARG_TOKEN}),
                text=f"Worth a buy. {API_KEY}",
            ),
            Reply.text("Proposed a buy."),
        )
        env = {"REFLEXD_OPS_TOKEN": TOKEN, "OPENAI_API_KEY": API_KEY}
        cfg = load_config_text(config_text(folder, model.base_url, token=token), builtin_registry(), env=env)
        daemon = await run_daemon(cfg)
        assert daemon.agent_state is not None
        state = daemon.agent_state
        await wait_for(lambda: [a.status for a in state.approvals()] == ["pending"], 10, what="the proposal")
        async with aiohttp.ClientSession() as http:
            yield Stage(daemon, folder, http)


@pytest.fixture
async def stage(run_daemon: StartDaemon, tmp_path: Path) -> AsyncIterator[Stage]:
    async for found in start(run_daemon, tmp_path):
        yield found


async def test_deciding_without_the_token_is_refused_and_executes_nothing(stage: Stage) -> None:
    """No token, a wrong token, another scheme, a foreign Origin: 401/403, the proposal stays pending."""
    for path in ("/approvals/1/approve", "/approvals/1/reject"):
        assert (await stage.post(path))[0] == 401
        assert (await stage.post(path, {"Authorization": "Bearer wrong-token-000000000"}))[0] == 401
        assert (await stage.post(path, {"Authorization": f"Basic {TOKEN}"}))[0] == 401
        assert (await stage.post(path, {**GOOD, "Origin": "https://attacker.example"}))[0] == 403
    await stage.no_call()


async def test_with_the_token_the_approved_call_runs_once_and_a_second_decision_is_409(stage: Stage) -> None:
    """Approve with the token: 200, the daemon calls `buy` once at once (woken; its poll is a minute);
    approving or rejecting again is 409 and calls nothing more; an unknown id is 404."""
    status, answer = await stage.post("/approvals/1/approve", GOOD, json={"note": "go"})
    assert status == 200, answer
    body = answer["approval"]
    assert (
        body["status"] == "approved"
        and body["note"] == "go"
        and body["decided_by"].startswith("http:127.0.0.1")
    )
    await wait_for(lambda: len(stage.buys()) == 1, 10, what="the approved buy")
    await wait_for(lambda: stage.state.approval(1).status == "executed", 10)  # type: ignore[union-attr]
    # the tool got the real value
    assert [line["args"] for line in stage.buys()] == [
        {"symbol": "BTC/USDT", "qty": 1, "api_token": ARG_TOKEN}
    ]

    status, body = await stage.post("/approvals/1/approve", GOOD)
    assert status == 409 and body["error"] == "approval 1 is executed already"
    assert body["approval"]["outcome"] == "succeeded"
    assert (await stage.post("/approvals/1/reject", GOOD))[0] == 409
    assert (await stage.post("/approvals/99/approve", GOOD)) == (404, {"error": "no approval 99"})
    assert (await stage.post("/approvals/x/approve", GOOD))[0] == 404
    stage.daemon.approvals_wake.set()
    await asyncio.sleep(0.3)
    assert len(stage.buys()) == 1


async def test_a_rejection_over_http_is_kept_and_nothing_runs(stage: Stage) -> None:
    """Reject with the token: 200, rejected with its note; the call is never made."""
    status, body = await stage.post("/approvals/1/reject", GOOD, json={"note": "no"})
    assert status == 200 and body["approval"]["status"] == "rejected" and body["approval"]["note"] == "no"
    stage.daemon.approvals_wake.set()
    await asyncio.sleep(0.3)
    assert stage.buys() == []
    assert (await stage.get("/approvals"))[1] == {"approvals": []}
    assert [a["status"] for a in (await stage.get("/approvals?all=1"))[1]["approvals"]] == ["rejected"]


async def test_a_foreign_host_is_421_for_reading_and_deciding(stage: Stage) -> None:
    """DNS rebinding: a Host naming another site gets 421 on every approvals and runs endpoint."""
    foreign = {"Host": "rebind.attacker.example"}
    for path in ("/approvals", "/agent/runs"):
        assert (await stage.get(path, foreign))[0] == 421
    assert (await stage.post("/approvals/1/approve", {**GOOD, **foreign}))[0] == 421
    await stage.no_call()


async def test_approvals_and_runs_are_served_redacted(stage: Stage) -> None:
    """GET /approvals and /agent/runs(/{id}) hide the configuration's key and secret-looking arguments."""
    async with stage.http.get(stage.base + "/approvals") as r:
        assert r.status == 200
        raw = await r.text()
    (approval,) = json.loads(raw)["approvals"]
    assert approval["tool"] == "buy" and approval["args"] == {
        "symbol": "BTC/USDT",
        "qty": 1,
        "api_token": "***",
    }
    assert approval["reasoning"] == "Worth a buy. ***"
    async def answered() -> bool:  # the proposal is stored in round 1; the run answers in round 2
        runs = (await stage.get("/agent/runs"))[1]["runs"]
        return len(runs) == 1 and runs[0]["outcome"] == "answered"

    await wait_for(answered, what="the run's answer")
    (run,) = (await stage.get("/agent/runs"))[1]["runs"]
    assert run["outcome"] == "answered" and run["rounds"] == 2 and "messages" not in run
    async with stage.http.get(stage.base + f"/agent/runs/{run['id']}") as r:
        whole = await r.text()
    assert [m["role"] for m in json.loads(whole)["messages"]] == [
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
    ]
    for text in (raw, whole):
        assert API_KEY not in text and ARG_TOKEN not in text
    assert (await stage.get("/agent/runs/run-0"))[0] == 404
    assert (await stage.get("/agent/runs?limit=0"))[0] == 400


async def test_without_a_configured_token_deciding_is_off(run_daemon: StartDaemon, tmp_path: Path) -> None:
    """No daemon.http.token: deciding answers 403 even with a bearer header; reading still works."""
    async for stage in start(run_daemon, tmp_path, token=False):
        status, body = await stage.post("/approvals/1/approve", GOOD)
        assert status == 403 and "set daemon.http.token" in body["error"]
        assert (await stage.get("/approvals"))[0] == 200
        await stage.no_call()
