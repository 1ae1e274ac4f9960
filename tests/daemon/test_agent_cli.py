"""`reflexd agent runs|show` and `reflexd approvals list|approve|reject` as real processes, against the
state file a real daemon wrote (a replay event escalated to a scripted OpenAI-compatible model, through
the real openai SDK), with the daemon still running where a decision must reach it."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon.agent_state import AgentState
from daemon.agent_view import Shown
from daemon.config import load_config, load_config_text
from daemon.registry import builtin_registry
from daemon.supervisor import Daemon
from handlers.agent import NOTIFICATIONS_HEADER
from handlers.agent_store import RunState
from tests.agent.scripted import Reply, ScriptedOpenAI
from tests.conftest import StartDaemon
from tests.servers import wait_for

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk-live-4f2a9c7e1b3d5a8c"  # from ${OPENAI_API_KEY}: a secret the configuration holds
TOKEN = "tok-9e8d7c6b5a"  # the model puts it under a secret-looking name
SECRETS = (API_KEY, TOKEN)


def write_config(folder: Path, base_url: str, *, poll: float = 0.1) -> Path:
    (folder / "events.jsonl").write_text('{"s": "BTC", "p": 65000}\n')
    config = folder / "c.yaml"
    config.write_text(write_config_text(base_url, poll=poll))
    return config


def write_config_text(base_url: str, *, poll: float = 0.1) -> str:
    return textwrap.dedent(
        f"""\
            daemon: {{http: null, state_path: state.db, shutdown_timeout_seconds: 5}}
            agent: {{approvals_poll_seconds: {poll}}}
            sources:
              feed: {{type: replay, path: events.jsonl, speed: 0, key_field: s}}
            tools:
              alert: {{type: file, path: alerts.jsonl}}
              buy: {{type: file, path: buys.jsonl}}
              analyst:
                type: llm
                base_url: {base_url}
                model: scripted-model
                api_key: ${{OPENAI_API_KEY}}
                system: You watch BTC for the desk.
                tools: [alert, buy]
                require_approval: [buy]
            rules:
              big:
                from: feed
                then: [{{tool: analyst, args: {{prompt: "BTC at {{data.p}}"}}}}]
            """
    )


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": API_KEY}


async def reflexd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real command line in a child process (in a thread: the daemon keeps running meanwhile)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "daemon.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
    )


def no_secret(result: subprocess.CompletedProcess[str]) -> None:
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr, secret


@dataclass
class Recorded:
    folder: Path
    config: Path
    daemon: Daemon
    model: ScriptedOpenAI

    @property
    def state(self) -> AgentState:
        assert self.daemon.agent_state is not None
        return self.daemon.agent_state

    def buys(self) -> list[dict[str, Any]]:
        path = self.folder / "buys.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    async def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = await reflexd(*args, "-c", str(self.config), cwd=self.folder)
        no_secret(result)
        return result


@pytest.fixture
async def recorded(tmp_path: Path, run_daemon: StartDaemon) -> AsyncIterator[Recorded]:
    """A daemon that ran one agent run: the model called `alert` (with the configuration's key and a
    token in its arguments) and proposed a `buy`, then answered (quoting the key). It keeps running."""
    async with ScriptedOpenAI() as model:
        model.script(
            Reply.tool_calls(
                ("alert", {"text": f"BTC jumped; my key is {API_KEY}", "api_token": TOKEN}),
                ("buy", {"symbol": "BTC/USDT", "qty": 1}),
                text="A jump: alert the desk, and a buy is worth proposing.\nSecond line.",
                tokens_in=12,
                tokens_out=7,
            ),
            Reply.text(f"I alerted the desk and proposed a buy.\nKey {API_KEY}.", tokens_in=30, tokens_out=9),
        )
        config = write_config(tmp_path, model.base_url)
        cfg = load_config(config, builtin_registry(), env={"OPENAI_API_KEY": API_KEY})
        daemon = await run_daemon(cfg)
        found = Recorded(tmp_path, config, daemon, model)
        await wait_for(
            lambda: [r.outcome for r in found.state.runs()] == ["answered"], 10, what="the run to be answered"
        )
        yield found


async def test_agent_runs_lists_the_run_with_its_numbers_and_no_secret(recorded: Recorded) -> None:
    """`agent runs` shows id, tool, rule, key, outcome, rounds, tokens in/out, latency and the answer's
    first line (its secret as ***); --json has the same fields; --tool filters; --limit bounds."""
    (run,) = recorded.state.runs()
    result = await recorded.cli("agent", "runs")
    assert result.returncode == 0, result.stderr
    line, footer = result.stdout.splitlines()
    assert line.startswith(f"{run.run_id}  20")
    assert "  analyst rule=big key=BTC  answered rounds=2 tokens=42/16 " in line
    assert line.endswith("s  I alerted the desk and proposed a buy.")
    assert footer == "1 run(s)"
    listed = await recorded.cli("agent", "runs", "--json")
    (record,) = [json.loads(text) for text in listed.stdout.splitlines()]
    assert {
        k: record[k] for k in ("id", "tool", "rule", "key", "outcome", "rounds", "tokens_in", "tokens_out")
    } == {
        "id": run.run_id,
        "tool": "analyst",
        "rule": "big",
        "key": "BTC",
        "outcome": "answered",
        "rounds": 2,
        "tokens_in": 42,
        "tokens_out": 16,
    }
    assert record["prompt"] == "BTC at 65000"
    assert record["answer"] == "I alerted the desk and proposed a buy.\nKey ***."
    assert record["latency_seconds"] >= 0 and "messages" not in record
    other = await recorded.cli("agent", "runs", "--tool", "scout")
    assert other.stdout == "0 run(s) of scout\n"
    limited = await recorded.cli("agent", "runs", "--limit", "1")
    assert limited.stdout.splitlines()[-1] == "1 run(s) (the newest; --limit for more)"
    bad = await recorded.cli("agent", "runs", "--limit", "0")
    assert bad.returncode == 1 and "--limit must be at least 1" in bad.stderr


async def test_agent_show_prints_the_whole_conversation_redacted(recorded: Recorded) -> None:
    """`agent show RUN_ID`: prompt, the model's reasoning, each call with its arguments and its result,
    the answer, tokens and the pending approval — the configuration's key and the token as ***."""
    (run,) = recorded.state.runs()
    stored = recorded.state.run(run.run_id)
    assert stored is not None and any(
        API_KEY in (m.get("content") or "") for m in stored.messages
    )  # kept as is
    result = await recorded.cli("agent", "show", run.run_id)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith(f"run {run.run_id}  tool analyst  rule big  key BTC\n")
    assert "outcome answered  rounds 2  tokens 42 in / 16 out" in text
    assert "[1] user: BTC at 65000\n" in text
    assert (
        "[2] assistant: A jump: alert the desk, and a buy is worth proposing.\n      Second line.\n" in text
    )
    assert 'calls alert (call_1) {"text":"BTC jumped; my key is ***","api_token":"***"}' in text
    assert 'calls buy (call_2) {"symbol":"BTC/USDT","qty":1}' in text
    assert '[3] tool alert (call_1): {"outcome":"succeeded"' in text
    assert '[4] tool buy (call_2): {"status":"awaiting_approval","approval":1,' in text
    assert "[5] assistant: I alerted the desk and proposed a buy.\n      Key ***.\n" in text
    assert "answer: I alerted the desk and proposed a buy.\n      Key ***.\n" in text
    assert 'approval 1: buy {"symbol":"BTC/USDT","qty":1} pending' in text
    shown = json.loads((await recorded.cli("agent", "show", run.run_id, "--json")).stdout)
    assert [m["role"] for m in shown["messages"]] == ["user", "assistant", "tool", "tool", "assistant"]
    assert shown["event"]["data"] == {"s": "BTC", "p": 65000}
    assert [a["status"] for a in shown["approvals"]] == ["pending"]
    missing = await recorded.cli("agent", "show", "run-0000")
    assert missing.returncode == 1
    assert missing.stderr == "reflexd agent show: no run 'run-0000' (see `reflexd agent runs`)\n"


async def test_an_approval_from_the_command_line_runs_once_in_the_running_daemon(recorded: Recorded) -> None:
    """`approvals list` shows the proposal; `approve` makes the running daemon call `buy` once; a second
    approve, or a reject, is refused with exit 1 and the call is not made again."""
    listed = await recorded.cli("approvals", "list")
    assert listed.returncode == 0, listed.stderr
    row, footer = listed.stdout.splitlines()
    assert row.startswith('     1 analyst → buy {"symbol":"BTC/USDT","qty":1}  run=run-')
    assert " rule=big age=" in row and row.endswith("A jump: alert the desk, and a buy is worth proposing.")
    assert footer == "1 pending approval(s)"
    (record,) = [
        json.loads(line) for line in (await recorded.cli("approvals", "list", "--json")).stdout.splitlines()
    ]
    assert (
        record["id"] == 1
        and record["llm"] == "analyst"
        and record["tool"] == "buy"
        and record["status"] == "pending"
    )
    assert recorded.buys() == []

    approved = await recorded.cli("approvals", "approve", "1", "--note", "looks right")
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.startswith(
        'approved 1: buy {"symbol":"BTC/USDT","qty":1}; the running daemon makes'
    )
    await wait_for(lambda: len(recorded.buys()) == 1, 10, what="the approved buy")
    await wait_for(lambda: recorded.state.approval(1).status == "executed", 10)  # type: ignore[union-attr]
    decided = recorded.state.approval(1)
    assert (
        decided is not None
        and decided.decided_by == f"cli:{getpass.getuser()}"
        and decided.note == "looks right"
    )

    again = await recorded.cli("approvals", "approve", "1")
    assert again.returncode == 1
    assert again.stderr.startswith(
        f"reflexd approvals approve: approval 1 is executed already by cli:{getpass.getuser()} at "
    )
    rejected = await recorded.cli("approvals", "reject", "1")
    assert rejected.returncode == 1 and "is executed already" in rejected.stderr
    unknown = await recorded.cli("approvals", "approve", "7")
    assert unknown.returncode == 1
    assert unknown.stderr == "reflexd approvals approve: no approval 7 (see `reflexd approvals list --all`)\n"
    recorded.daemon.approvals_wake.set()  # a poll after the refused decisions: nothing more is taken
    await asyncio.sleep(3 * recorded.daemon.config.agent.approvals_poll_seconds)
    assert len(recorded.buys()) == 1
    assert (await recorded.cli("approvals", "list")).stdout == "0 pending approval(s)\n"
    everything = (await recorded.cli("approvals", "list", "--all")).stdout.splitlines()
    assert everything[0].startswith("     1 executed  analyst → buy ")
    assert f" by=cli:{getpass.getuser()} outcome=succeeded" in everything[0]


async def test_a_rejected_proposal_is_never_made(recorded: Recorded) -> None:
    """`reject ID --note` marks it rejected with the note; the daemon does not call the tool."""
    rejected = await recorded.cli("approvals", "reject", "1", "--note", "not today")
    assert rejected.returncode == 0, rejected.stderr
    assert rejected.stdout == 'rejected 1: buy {"symbol":"BTC/USDT","qty":1} is not made\n'
    recorded.daemon.approvals_wake.set()
    await asyncio.sleep(3 * recorded.daemon.config.agent.approvals_poll_seconds)
    assert recorded.buys() == []
    (record,) = [
        json.loads(x)
        for x in (await recorded.cli("approvals", "list", "--all", "--json")).stdout.splitlines()
    ]
    assert record["status"] == "rejected" and record["note"] == "not today"
    assert record["outcome"] == "rejected"  # the daemon told the model (a notification), once


async def test_commands_without_a_state_file_say_so_and_create_nothing(tmp_path: Path) -> None:
    """Before any run: listing says there is no state (exit 0), asking for a run or a decision exits 1;
    the state file is not created. With the journal off the commands say nothing is recorded."""
    config = write_config(tmp_path, "http://127.0.0.1:9/v1")
    expectations = [
        (("agent", "runs"), 0),
        (("agent", "show", "run-1"), 1),
        (("approvals", "list"), 0),
        (("approvals", "approve", "1"), 1),
        (("approvals", "reject", "1"), 1),
    ]
    for args, code in expectations:
        result = await reflexd(*args, "-c", str(config), cwd=tmp_path)
        assert result.returncode == code, (args, result.stderr)
        verb = args[0]
        assert (
            result.stderr
            == f"reflexd {verb}: no state at {tmp_path / 'state.db'} (nothing was recorded yet)\n"
        )
    assert not (tmp_path / "state.db").exists()
    config.write_text(
        config.read_text().replace("shutdown_timeout_seconds: 5}", "journal: {enabled: false}}")
    )
    off = await reflexd("approvals", "list", "-c", str(config), cwd=tmp_path)
    assert off.returncode == 0 and "the journal is off (daemon.journal.enabled: false)" in off.stderr


async def test_usage_errors_exit_2(tmp_path: Path) -> None:
    """A missing action or a non-numeric approval id is a usage error (exit 2), like every verb's."""
    config = write_config(tmp_path, "http://127.0.0.1:9/v1")
    for args in (("agent",), ("approvals",), ("approvals", "approve", "one"), ("agent", "show")):
        result = await reflexd(*args, "-c", str(config), cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("usage: reflexd ")


def test_shown_hides_prompts_from_the_environment_secret_names_at_any_depth_and_secret_texts() -> None:
    """What every agent surface prints: a prompt a rule fills from ${VAR} is *** whole (also as the
    first message), argument names a rule fills from ${VAR} for a tool are hidden in the model's calls of
    it, secret-looking names are hidden inside lists and notifications, and secret texts everywhere."""
    text = (
        write_config_text("http://127.0.0.1:9/v1").replace(
            '{prompt: "BTC at {data.p}"}', '{prompt: "${DESK_PROMPT}"}'
        )
        + "  page:\n    from: feed\n    then: [{tool: alert, args: {channel: '${CHANNEL}', text: hi}}]\n"
    )
    env = {"OPENAI_API_KEY": API_KEY, "DESK_PROMPT": "watch BTC closely", "CHANNEL": "#desk"}
    config = load_config_text(text, builtin_registry(), env=env)
    shown = Shown(config)
    run = RunState("run-1", "analyst", "big", "BTC", None, "watch BTC closely", 0.0)
    run.messages = [
        {"role": "user", "content": "watch BTC closely"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c1", "name": "alert", "arguments": '{"channel": "#ops", "text": "x"}'}],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "alert", "content": '{"result": [{"password": "p"}]}'},
        {
            "role": "user",
            "content": f'{NOTIFICATIONS_HEADER}\n[{{"fields": {{"args": {{"token": "t"}}}}, "text": "{API_KEY}"}}]',
        },
    ]
    record = shown.run(run, messages=True)
    assert record["prompt"] == "***"
    user, assistant, tool, notes = record["messages"]
    assert user["content"] == "***"
    assert assistant["tool_calls"][0]["arguments"] == '{"channel":"***","text":"x"}'
    assert tool["content"] == '{"result":[{"password":"***"}]}'
    assert notes["content"] == NOTIFICATIONS_HEADER + '\n[{"fields":{"args":{"token":"***"}},"text":"***"}]'


async def test_replay_shows_the_prompts_and_calls_no_model(tmp_path: Path) -> None:
    """`reflexd replay` reports each escalation with its prompt, says once which tools the model could
    call and that rules reading its answers see none; the model's port receives no connection at all."""
    connections = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    listener = await asyncio.start_server(count, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        config = write_config(tmp_path, f"http://127.0.0.1:{port}/v1")
        text = config.read_text().replace("from: feed\n", "from: feed\n    where: data.p > 100\n")
        text = text.replace("key_field: s}", "key_field: s, time_field: T}")
        answers = "  answers:\n    from: analyst\n    then: [{tool: alert, args: {text: '{data.text}'}}]\n"
        config.write_text(text + answers)
        raw = [{"s": "BTC", "p": p, "T": 1000 * i} for i, p in enumerate((50, 150, 250), 1)]
        (tmp_path / "raw.jsonl").write_text("".join(json.dumps(line) + "\n" for line in raw))
        result = await reflexd("replay", "-c", str(config), "feed=raw.jsonl", cwd=tmp_path)
    finally:
        listener.close()
        await listener.wait_closed()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        '1970-01-01T00:00:02.000Z  big  analyst  {"prompt":"BTC at 150"}',
        '1970-01-01T00:00:03.000Z  big  analyst  {"prompt":"BTC at 250"}',
    ]
    err = result.stderr.splitlines()
    unfed = "  rule answers: seen 0, fired 0, errors 0, late 0, suppressed 0 (reads the answers of analyst: "
    assert unfed + "none in a replay)" in err
    assert (
        "  llm tool analyst: 2 prompt(s) shown as its calls, none sent (dry run: no model is called); model "
        "scripted-model, system prompt 'You watch BTC for the desk.', the model could call: alert, "
        "buy (needs approval)"
    ) in err
    assert sum("reads the answers" in line for line in err) == 1
    no_secret(result)
    assert connections == 0
