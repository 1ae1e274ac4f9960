"""Rule state across restarts of a real `reflexd run` process: a cooldown that fired stays in force after
SIGTERM and after kill -9 (up to the last checkpoint), a changed rule starts fresh, `reflexd state clear`
discards it.

Each run replays a one-event file (a replay session's events are new events to the journal, so its
idempotency memory does not hide a second fire: only the rule's own state can). A second rule without a
cooldown writes every event it sees, so a test knows the run's event has been through the rules.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson

from tests.daemon.test_run import read_log_until

ROOT = Path(__file__).resolve().parents[2]


def write_config(
    tmp_path: Path, *, checkpoint: float = 10.0, cooldown: float = 300.0, journal: bool = True
) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"""\
daemon: {{http: null, checkpoint_seconds: {checkpoint}, journal: {{enabled: {str(journal).lower()}}}}}
sources:
  trades: {{type: replay, path: trades.jsonl, speed: 0, key_field: s, time_field: T, time_unit: ms}}
tools:
  buys: {{type: file, path: var/buys.jsonl}}
  seen: {{type: file, path: var/seen.jsonl}}
rules:
  dip:
    from: trades
    where: "float(data.p) < 100"
    cooldown_seconds: {cooldown}
    then: [{{tool: buys, args: {{symbol: "{{key}}", p: "{{data.p}}"}}}}]
  every:
    from: trades
    then: [{{tool: seen, args: {{p: "{{data.p}}"}}}}]
"""
    )
    return path


def feed(tmp_path: Path, price: float, at: float) -> None:
    """The next run's one event: BTC at ``price``, event time ``at`` (epoch seconds)."""
    line = {"s": "BTC", "p": str(price), "T": int(at * 1000)}
    (tmp_path / "trades.jsonl").write_bytes(orjson.dumps(line) + b"\n")


def lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def start(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "run", "-c", str(config)],
        cwd=config.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_until(predicate: object, timeout: float = 15.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def run_one(tmp_path: Path, config: Path, seen_before: int, *, how: str = "term") -> list[dict[str, object]]:
    """Start, wait until the run's event went through the rules, stop (SIGTERM, or kill -9); the log."""
    proc = start(config)
    try:
        logs = read_log_until(proc, "ready", timeout=20)
        wait_until(lambda: len(lines(tmp_path / "var" / "seen.jsonl")) > seen_before)
        if how == "kill":
            # the calls made are journaled as ended first: a call whose end the journal has not
            # written yet is resumed at the next start (at-least-once), which would be a second
            # fire that the rule's state is not what lost
            wait_until(
                lambda: calls_settled(
                    tmp_path,
                    len(lines(tmp_path / "var" / "seen.jsonl")) + len(lines(tmp_path / "var" / "buys.jsonl")),
                )
            )
            proc.kill()
            proc.wait(timeout=20)
        else:
            time.sleep(0.2)  # the dip rule saw the event too (same dispatch)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        assert proc.stderr is not None
        logs += [orjson.loads(line) for line in proc.stderr.read().splitlines() if line.startswith(b"{")]
        return logs
    finally:
        proc.kill()
        proc.wait()


def calls_settled(tmp_path: Path, made: int) -> bool:
    """The journal holds at least ``made`` calls and none of them is still running."""
    db = tmp_path / "var" / "reflexd.db"
    if not db.exists():
        return False
    with sqlite3.connect(db) as conn:
        try:
            done, running = conn.execute(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE outcome = 'running') FROM invocations"
            ).fetchone()
        except sqlite3.OperationalError:
            return False
    return bool(done >= made and running == 0)


def saved_keys(tmp_path: Path) -> int:
    """Keys of the dip rule's last checkpoint in the state file (0 if none yet)."""
    db = tmp_path / "var" / "reflexd.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            row = conn.execute("SELECT keys FROM rule_state WHERE rule = 'dip'").fetchone()
        except sqlite3.OperationalError:
            return 0
    return int(row[0]) if row else 0


def test_a_cooldown_that_fired_holds_across_a_sigterm_restart(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    now = time.time()
    feed(tmp_path, 90, now)
    run_one(tmp_path, config, 0)
    assert len(lines(tmp_path / "var" / "buys.jsonl")) == 1
    feed(tmp_path, 80, now + 5)  # a new dip, 5 s later: within the 300 s cooldown
    logs = run_one(tmp_path, config, 1)
    assert len(lines(tmp_path / "var" / "seen.jsonl")) == 2  # the second event was read...
    assert len(lines(tmp_path / "var" / "buys.jsonl")) == 1  # ...and the cooldown muted it
    restored = [r for r in logs if r.get("msg") == "rule state restored"]
    assert restored and restored[0]["rules"] == 2 and restored[0]["keys"] == 1
    # past the cooldown (in event time) it fires again
    feed(tmp_path, 70, now + 400)
    run_one(tmp_path, config, 2)
    assert len(lines(tmp_path / "var" / "buys.jsonl")) == 2


def test_with_the_journal_off_the_state_is_still_kept(tmp_path: Path) -> None:
    """The rule state has the state file to itself (and a writer thread of its own)."""
    config = write_config(tmp_path, journal=False)
    now = time.time()
    feed(tmp_path, 90, now)
    run_one(tmp_path, config, 0)
    feed(tmp_path, 80, now + 5)
    run_one(tmp_path, config, 1)
    assert len(lines(tmp_path / "var" / "buys.jsonl")) == 1


def test_kill_9_loses_at_most_what_changed_since_the_last_checkpoint(tmp_path: Path) -> None:
    now = time.time()
    # checkpoints every 0.2 s: once one holds the fire, kill -9 loses nothing of it
    config = write_config(tmp_path, checkpoint=0.2)
    feed(tmp_path, 90, now)
    proc = start(config)
    try:
        read_log_until(proc, "ready", timeout=20)
        wait_until(lambda: saved_keys(tmp_path) == 1)
        proc.kill()
        proc.wait(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    feed(tmp_path, 80, now + 5)
    run_one(tmp_path, config, 1, how="kill")
    assert len(lines(tmp_path / "var" / "buys.jsonl")) == 1
    # checkpoints every hour: a kill -9 right after the fire loses it (the interval's worth), so the
    # next run fires again. The loss is bounded by the checkpoint, not hidden by anything else.
    other = tmp_path / "other"
    other.mkdir()
    config = write_config(other, checkpoint=3600)
    feed(other, 90, now)
    run_one(other, config, 0, how="kill")
    feed(other, 80, now + 5)
    run_one(other, config, 1, how="kill")
    assert len(lines(other / "var" / "buys.jsonl")) == 2


def test_a_changed_rule_starts_fresh_and_says_so(tmp_path: Path) -> None:
    now = time.time()
    feed(tmp_path, 90, now)
    run_one(tmp_path, write_config(tmp_path), 0)
    feed(tmp_path, 80, now + 5)
    logs = run_one(tmp_path, write_config(tmp_path, cooldown=301), 1)  # the dip rule changed
    assert len(lines(tmp_path / "var" / "buys.jsonl")) == 2
    fresh = [r for r in logs if r.get("msg") == "rule changed since its state was saved; it starts fresh"]
    assert [r["rule"] for r in fresh] == ["dip"]
    restored = [r for r in logs if r.get("msg") == "rule state restored"]
    assert restored and restored[0]["rules"] == 1  # the unchanged `every` rule resumed


def test_state_clear_discards_a_rules_state(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    now = time.time()
    feed(tmp_path, 90, now)
    run_one(tmp_path, config, 0)
    listed = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "state", "list", "-c", str(config)],
        capture_output=True,
        cwd=tmp_path,
        timeout=30,
    )
    assert listed.returncode == 0, listed.stderr
    assert b"dip" in listed.stdout and b"every" in listed.stdout
    cleared = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "state", "clear", "dip", "-c", str(config)],
        capture_output=True,
        cwd=tmp_path,
        timeout=30,
    )
    assert cleared.returncode == 0, cleared.stderr
    assert b"1" in cleared.stdout
    feed(tmp_path, 80, now + 5)
    run_one(tmp_path, config, 1)
    assert len(lines(tmp_path / "var" / "buys.jsonl")) == 2  # the cooldown was discarded: it fires
    assert os.path.exists(tmp_path / "var" / "reflexd.db")
