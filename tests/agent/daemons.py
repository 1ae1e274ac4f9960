"""Real ``reflexd run`` processes for the agent's crash and restart tests: start, kill -9, stop, on one
state file; a configuration where a replay feed escalates to an llm tool served by the scripted
OpenAI server (in the test process); a webhook receiver that holds its answers; readers of the
state file and the tools' outputs."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
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
from aiohttp import web

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

    def __init__(self, folder: Path, config: Path) -> None:
        self.folder = folder
        self.config = config
        self.log = folder / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self, events: str, journal_flush: float | None = None) -> dict[str, str]:
        path = str(ROOT)
        if journal_flush is not None:  # sitecustomize sets the journal's batching interval
            site = self.folder / "site"
            site.mkdir(exist_ok=True)
            (site / "sitecustomize.py").write_text(SLOW_JOURNAL)
            path = f"{site}{os.pathsep}{path}"
        return {
            **os.environ,
            "PYTHONPATH": path,
            "EVENTS": str(self.folder / events),
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
def daemons() -> Iterator[Callable[[Path], Daemon]]:
    """``daemons(config)`` → a :class:`Daemon` handle (in the config's folder); any still running is
    killed after the test."""
    made: list[Daemon] = []

    def make(config: Path) -> Daemon:
        handle = Daemon(config.parent, config)
        made.append(handle)
        return handle

    yield make
    for handle in made:
        handle.cleanup()


def write_config(
    folder: Path, base_url: str, *, tools: dict[str, Any], llm: dict[str, Any] | None = None
) -> Path:
    """A replay feed (``${EVENTS}``) whose rule escalates each event to ``analyst``, which may call
    ``tools`` (name → configuration; ``llm``: more of analyst's keys); a second rule routes its
    answers to routed.jsonl. Written as JSON (YAML reads it)."""
    folder.mkdir(exist_ok=True)
    (folder / "events.jsonl").write_bytes(orjson.dumps({"p": 71234.5}) + b"\n")
    (folder / "empty.jsonl").write_bytes(b"")
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
    path = folder / "reflexd.yaml"
    path.write_text(json.dumps(config, indent=1))
    return path


ALERT = {"alert": {"type": "file", "path": "alerts.jsonl"}}


class Hook:
    """A webhook receiver (aiohttp, 127.0.0.1, port 0) that records each delivery's Idempotency-Key and
    body, and holds every response until :attr:`release` is set (a tool call the test can kill the
    daemon in the middle of: the receiver has it, the daemon has no answer yet)."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, dict[str, Any]]] = []
        self.release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.deliveries.append((request.headers["Idempotency-Key"], await request.json()))
        await self.release.wait()
        return web.json_response({"filled": True})

    async def __aenter__(self) -> Hook:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def tool(self) -> dict[str, Any]:
        """The webhook tool's configuration: one attempt, so only a restart can deliver again."""
        return {
            "type": "webhook",
            "url": self.url,
            "allow_private_networks": True,
            "timeout_seconds": 30,
            "retry": {"max_attempts": 1},
        }


def copy_state(source: Path, target: Path) -> None:
    """The state file as a kill -9 left it (with its WAL), into another folder."""
    for suffix in ("", "-wal"):
        path = source / f"state.db{suffix}"
        if path.exists():
            shutil.copyfile(path, target / path.name)


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
