"""Dead-letter queue and crash recovery with reflexd as a real process (journal in SQLite)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]


def setup(tmp_path: Path, events: int, retry: str) -> tuple[Path, Path, Path]:
    """A config: a replay file (from $EVENTS) fires one `gate` call per line; the gate tool fails
    retryably until the gate file exists, then appends each delivered call id to out.txt."""
    (tmp_path / "events.jsonl").write_bytes(b"".join(orjson.dumps({"id": i}) + b"\n" for i in range(events)))
    (tmp_path / "empty.jsonl").write_bytes(b"")
    config = tmp_path / "c.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            daemon: {{http: null, state_path: state.db, shutdown_timeout_seconds: 5}}
            sources:
              feed: {{type: replay, path: "${{EVENTS}}", speed: 0}}
            tools:
              deliver:
                type: "tests.plugins:GATE"
                gate: {tmp_path / "gate"}
                out: {tmp_path / "out.txt"}
                concurrency: 8
                retry: {retry}
                circuit: {{failures: 0}}
            rules:
              each: {{from: feed, then: [{{tool: deliver, args: {{id: "{{data.id}}"}}}}]}}
            """
        )
    )
    return config, tmp_path / "gate", tmp_path / "out.txt"


def env(events: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "EVENTS": str(events)}


def reflexd(*args: str, events: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env=env(events),
    )


def spawn(config: Path, events: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "run", "-c", str(config)], cwd=ROOT, env=env(events),
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )


def poll(predicate: object, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def count(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=10) as conn:
        try:
            return int(conn.execute(sql).fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def delivered(out: Path) -> list[str]:
    return out.read_text().splitlines() if out.exists() else []


def test_permanent_failure_is_dead_lettered_and_replay_delivers_exactly_once(tmp_path: Path) -> None:
    """A target that keeps failing: every call lands in the DLQ; after it recovers `dlq replay` delivers each once."""
    config, gate, out = setup(tmp_path, 5, "{max_attempts: 2, initial_seconds: 0.01, max_seconds: 0.02}")
    events = tmp_path / "events.jsonl"
    proc = spawn(config, events, tmp_path / "daemon.log")
    try:
        poll(lambda: count(tmp_path / "state.db", "SELECT COUNT(*) FROM dead_letters") == 5, 30, "5 dead letters")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    listed = reflexd("dlq", "list", "-c", str(config), events=events)
    assert listed.returncode == 0 and "5 dead-lettered invocation(s)" in listed.stdout and "gate closed" in listed.stdout
    failed = reflexd("dlq", "replay", "--all", "-c", str(config), events=events)
    assert failed.returncode == 1 and delivered(out) == []  # still down: entries stay, marked failed
    gate.write_text("open")
    replayed = reflexd("dlq", "replay", "--all", "-c", str(config), events=events)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert sorted(line.split("\t")[1] for line in delivered(out)) == ["0", "1", "2", "3", "4"]
    again = reflexd("dlq", "replay", "--all", "-c", str(config), events=events)
    assert again.returncode == 0 and "replayed 0" in again.stdout
    assert len(delivered(out)) == 5  # exactly once
    assert "0 dead-lettered invocation(s)" in reflexd("dlq", "list", "-c", str(config), events=events).stdout
    everything = reflexd("dlq", "list", "--all", "--json", "-c", str(config), events=events).stdout.splitlines()
    assert [orjson.loads(line)["replay_outcome"] for line in everything] == ["succeeded"] * 5
    purged = reflexd("dlq", "purge", "--yes", "-c", str(config), events=events)
    assert "purged 5" in purged.stdout


def test_kill_9_during_retries_resumes_the_calls_at_start(tmp_path: Path) -> None:
    """kill -9 while calls are retrying: at the next start they are retried (same key) and all delivered once."""
    config, gate, out = setup(tmp_path, 20, "{max_attempts: 100, initial_seconds: 0.2, max_seconds: 0.3}")
    db = tmp_path / "state.db"
    log = tmp_path / "daemon.log"
    proc = spawn(config, tmp_path / "events.jsonl", log)
    try:
        poll(lambda: count(db, "SELECT COUNT(*) FROM invocations WHERE outcome = 'running'") == 20, 30, "20 running")
        time.sleep(0.5)  # mid-retries
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert delivered(out) == []
    gate.write_text("open")
    # the restarted daemon reads an empty stream: only the journal can bring the calls back
    proc = spawn(config, tmp_path / "empty.jsonl", log)
    try:
        poll(lambda: len(delivered(out)) >= 20, 30, "20 deliveries")
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    ids = sorted(int(line.split("\t")[1]) for line in delivered(out))
    assert ids == list(range(20))  # none lost, none twice
    assert b'"resuming interrupted tool calls"' in log.read_bytes()
    assert count(db, "SELECT COUNT(*) FROM dead_letters") == 0
    assert count(db, "SELECT COUNT(*) FROM invocations WHERE outcome = 'interrupted'") == 20
