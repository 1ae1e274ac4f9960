"""A run interrupted by kill -9 never repeats an action: real ``reflexd run`` processes on one state file,
a replay source escalating to an llm tool backed by the scripted OpenAI server (in this process).

The model's first reply calls a real tool; the daemon is killed (SIGKILL) when the model receives the
next round's request, restarted on the same state file (reading an empty stream, so only the state
file can bring the run back), and the run goes on from its journaled transcript.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.agent.scripted import Reply, ScriptedOpenAI

ROOT = Path(__file__).resolve().parents[2]
#: The key the configuration reads from ${OPENAI_API_KEY}: it must never reach the state file or the log.
API_KEY = "sk-crash-test-4f1d9c2b7a"


#: A sitecustomize for the child: the journal gathers its batches this long (the interval is not
#: configurable), so that "killed before the batch was written" is certain, not a race.
SLOW_JOURNAL = """\
import os
import daemon.state
daemon.state.Journal.__init__.__kwdefaults__["flush_seconds"] = float(os.environ["REFLEXD_TEST_JOURNAL_FLUSH"])
"""


class Daemon:
    """``reflexd run -c CONFIG`` as a child process; ``EVENTS`` picks the replay file."""

    def __init__(self, tmp_path: Path, config: Path) -> None:
        self.tmp_path = tmp_path
        self.config = config
        self.log = tmp_path / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self, events: str, journal_flush: float | None = None) -> dict[str, str]:
        path = str(ROOT)
        if journal_flush is not None:  # sitecustomize sets the journal's batching interval
            site = self.tmp_path / "site"
            site.mkdir(exist_ok=True)
            (site / "sitecustomize.py").write_text(SLOW_JOURNAL)
            path = f"{site}{os.pathsep}{path}"
        return {
            **os.environ,
            "PYTHONPATH": path,
            "EVENTS": str(self.tmp_path / events),
            "OPENAI_API_KEY": API_KEY,
            "REFLEXD_TEST_JOURNAL_FLUSH": str(journal_flush),
        }

    def start(self, events: str = "events.jsonl", *, journal_flush: float | None = None) -> None:
        """Start the daemon on ``events``; ``journal_flush``: seconds the journal gathers a batch
        (0.05 as shipped)."""
        assert self.proc is None or self.proc.poll() is not None
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon.cli", "run", "-c", str(self.config)],
                cwd=ROOT,
                env=self.env(events, journal_flush),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL

    def stop(self) -> int:
        """SIGTERM, then the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "daemon.cli", *args, "-c", str(self.config)],
            cwd=ROOT,
            env=self.env("empty.jsonl"),
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[[Path], Daemon]]:
    """``daemons(config)`` → a :class:`Daemon` handle; any still running is killed after the test."""
    made: list[Daemon] = []

    def make(config: Path) -> Daemon:
        handle = Daemon(tmp_path, config)
        made.append(handle)
        return handle

    yield make
    for handle in made:
        handle.cleanup()


def write_config(
    tmp_path: Path, base_url: str, *, tools: dict[str, Any], llm: dict[str, Any] | None = None
) -> Path:
    """A replay feed (``${EVENTS}``) whose rule escalates each event to ``analyst``, which may call
    ``tools`` (name → configuration; ``llm``: more of analyst's keys); a second rule routes its
    answers to routed.jsonl. Written as JSON (YAML reads it)."""
    (tmp_path / "events.jsonl").write_bytes(orjson.dumps({"p": 71234.5}) + b"\n")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    analyst = {
        "type": "llm",
        "base_url": base_url,
        "model": "scripted",
        "api_key": "${OPENAI_API_KEY}",
        "system": "You watch BTC for the desk.",
        "tools": list(tools),
        "retry": {"max_attempts": 3, "initial_seconds": 0.05, "max_seconds": 0.1},
        **(llm or {}),
    }
    config = {
        "daemon": {"http": None, "state_path": "state.db", "shutdown_timeout_seconds": 5},
        "agent": {"approvals_poll_seconds": 0.1},
        "sources": {"feed": {"type": "replay", "path": "${EVENTS}", "speed": 0}},
        "tools": {"analyst": analyst, **tools, "routed": {"type": "file", "path": "routed.jsonl"}},
        "rules": {
            "big": {"from": "feed", "then": [{"tool": "analyst", "args": {"prompt": "BTC at {data.p}"}}]},
            "answers": {
                "from": "analyst",
                "then": [{"tool": "routed", "args": {"text": "{data.text}", "run": "{data.run}"}}],
            },
        },
    }
    path = tmp_path / "reflexd.yaml"
    path.write_text(json.dumps(config, indent=1))
    return path


ALERT = {"alert": {"type": "file", "path": "alerts.jsonl"}}


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db, timeout=10) as conn:
        return conn.execute(sql, params).fetchall()


async def until(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


def tool_results(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in request["messages"] if m["role"] == "tool"]


def secret_free(tmp_path: Path) -> None:
    """The api key appears in no file the daemon wrote: state file (and its WAL), log, outputs."""
    for path in tmp_path.iterdir():
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path.name


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
        roles = [orjson.loads(m)["role"] for (m,) in query(db, "SELECT message FROM agent_messages ORDER BY seq")]
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
    assert query(db, "SELECT outcome, rounds, tokens_in, tokens_out FROM agent_runs") == [("answered", 2, 40, 12)]
    # the key was used (the model saw it) and never written down
    assert {h["authorization"] for h in model.headers} == {f"Bearer {API_KEY}"}
    secret_free(tmp_path)
