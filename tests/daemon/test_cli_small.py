"""Small CLI behaviours, with reflexd as a real process: output into a closed pipe, `dlq replay` of
an unknown id, `dlq purge` confirmation."""

from __future__ import annotations

import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from daemon.state import StateStore

ROOT = Path(__file__).resolve().parents[2]
EXIT_BROKEN_PIPE = 128 + 13  # 128 + SIGPIPE, as a shell reports a process a closed pipe stopped


def config_with_letters(tmp_path: Path, letters: int) -> Path:
    """A config whose state file holds ``letters`` dead-lettered calls of tool `note`."""
    (tmp_path / "empty.jsonl").write_bytes(b"")
    config = tmp_path / "c.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            daemon: {http: null, state_path: state.db}
            sources:
              feed: {type: replay, path: empty.jsonl}
            tools:
              note: {type: log}
            rules:
              each: {from: feed, then: [{tool: note, args: {id: "{data.id}"}}]}
            """
        )
    )
    store = StateStore(tmp_path / "state.db").open()
    try:
        for i in range(letters):
            store.add_dead_letter(f"each:{i}:0", "each", "note", {"id": str(i)}, None, "target down", 3)
    finally:
        store.close()
    return config


def reflexd(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        cwd=ROOT,
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def pending(tmp_path: Path) -> int:
    store = StateStore(tmp_path / "state.db").open()
    try:
        return len(store.dead_letters(include_replayed=True))
    finally:
        store.close()


@pytest.mark.parametrize("json", [False, True], ids=["text", "json"])
def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path, json: bool) -> None:
    """`reflexd dlq list | head -1`: the reader leaving ends reflexd with 141 and nothing on stderr (no traceback)."""
    config = config_with_letters(tmp_path, 5000)  # far more than a pipe buffer holds: writes must fail
    writer = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "dlq", "list", *(["--json"] if json else []), "-c", str(config)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert writer.stdout is not None and writer.stderr is not None
    head = subprocess.Popen(["head", "-1"], stdin=writer.stdout, stdout=subprocess.PIPE)
    writer.stdout.close()  # head holds the only reading end now
    first, _ = head.communicate(timeout=60)
    stderr = writer.stderr.read()
    assert writer.wait(timeout=60) == EXIT_BROKEN_PIPE, stderr
    assert stderr == b""
    assert first.count(b"\n") == 1


def test_dlq_replay_of_an_unknown_id_is_an_error(tmp_path: Path) -> None:
    """`dlq replay 999` when there is no entry 999 says so and exits 1; nothing else is replayed."""
    config = config_with_letters(tmp_path, 2)
    result = reflexd("dlq", "replay", "1", "999", "-c", str(config))
    assert result.returncode == 1
    assert "no dead-lettered invocation with ID 999" in result.stderr
    assert "replayed" not in result.stdout  # the known entry 1 was not run either: fix the command first
    listed = reflexd("dlq", "list", "--all", "--json", "-c", str(config))
    assert '"replay_outcome":null' in listed.stdout and "succeeded" not in listed.stdout


def test_dlq_purge_without_a_terminal_needs_yes(tmp_path: Path) -> None:
    """Without a terminal, `dlq purge` refuses (exit 1, nothing deleted) unless given --yes."""
    config = config_with_letters(tmp_path, 3)
    refused = reflexd("dlq", "purge", "-c", str(config))
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert pending(tmp_path) == 3
    purged = reflexd("dlq", "purge", "--yes", "-c", str(config))
    assert purged.returncode == 0 and "purged 3" in purged.stdout
    assert pending(tmp_path) == 0


@pytest.mark.parametrize(("answer", "left"), [(b"n\n", 3), (b"y\n", 0)], ids=["no", "yes"])
def test_dlq_purge_on_a_terminal_asks_first(tmp_path: Path, answer: bytes, left: int) -> None:
    """On a terminal `dlq purge` asks, naming how many entries would go; only a yes deletes them."""
    config = config_with_letters(tmp_path, 3)
    controller, terminal = os.openpty()
    try:
        os.write(controller, answer)
        result = reflexd("dlq", "purge", "-c", str(config), stdin=terminal)
    finally:
        os.close(controller)
        os.close(terminal)
    assert "delete 3 dead-lettered invocation(s)" in result.stderr
    assert pending(tmp_path) == left
    assert result.returncode == (0 if left == 0 else 1)


def hanging_webhook_config(tmp_path: Path, port: int, shutdown_seconds: float) -> Path:
    """Two events, each firing a webhook call to 127.0.0.1:``port``."""
    (tmp_path / "two.jsonl").write_bytes(b'{"id": 1}\n{"id": 2}\n')
    config = tmp_path / "hook.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            daemon: {{http: null, state_path: state.db, shutdown_timeout_seconds: {shutdown_seconds}}}
            sources:
              feed: {{type: replay, path: two.jsonl, speed: 0}}
            tools:
              hook:
                type: webhook
                url: "http://127.0.0.1:{port}/hook"
                allow_private_networks: true
                timeout_seconds: 120
            rules:
              each: {{from: feed, then: [{{tool: hook, args: {{id: "{{data.id}}"}}}}]}}
            """
        )
    )
    return config


def read_until(proc: subprocess.Popen[bytes], marker: bytes, within: float) -> bytes:
    """Read the process's stderr until it holds ``marker``; what was read."""
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + within
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stderr], [], [], left)[0]:
            raise AssertionError(f"{marker!r} not logged within {within}s: {seen!r}")
        chunk = os.read(proc.stderr.fileno(), 65536)  # unbuffered: communicate() reads the rest
        if not chunk:
            raise AssertionError(f"exited before logging {marker!r}: {seen!r}")
        seen += chunk
    return seen


@pytest.mark.parametrize("how", ["second-sigint", "budget-spent"])
def test_a_stop_that_abandons_calls_still_closes_the_http_session(tmp_path: Path, how: str) -> None:
    """A forced stop (second SIGINT) or a spent shutdown budget, while webhook calls hang on their target,
    still closes the tool's aiohttp session: no "Unclosed client session" / "Unclosed connector" on stderr."""
    target = socket.create_server(("127.0.0.1", 0))  # accepts, reads nothing, never answers
    target.settimeout(30)
    held: list[socket.socket] = []
    config = hanging_webhook_config(tmp_path, target.getsockname()[1], 60 if how == "second-sigint" else 0.5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "run", "-c", str(config)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        held.append(target.accept()[0])  # a call is in flight: its request waits for an answer
        head = b""
        if how == "second-sigint":
            proc.send_signal(signal.SIGINT)
            head = read_until(proc, b'"stopping"', within=30)  # waiting for the hanging calls now
            proc.send_signal(signal.SIGINT)
            expected = 1
        else:
            proc.send_signal(signal.SIGTERM)
            expected = 0
        _, rest = proc.communicate(timeout=30)
        stderr = head + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for conn in held:
            conn.close()
        target.close()
    assert proc.returncode == expected, stderr
    assert (b"forced stop" if how == "second-sigint" else b"shutdown budget exceeded") in stderr
    assert b"Unclosed" not in stderr, stderr.decode(errors="replace")


def test_dlq_on_a_state_file_of_a_newer_schema_says_so(tmp_path: Path) -> None:
    """`reflexd dlq list` on a state file written by a newer reflexd exits 1 with the reason, no traceback."""
    config = config_with_letters(tmp_path, 1)
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute("PRAGMA user_version = 999")
    result = reflexd("dlq", "list", "-c", str(config))
    assert result.returncode == 1 and "newer reflexd" in result.stderr and "Traceback" not in result.stderr
