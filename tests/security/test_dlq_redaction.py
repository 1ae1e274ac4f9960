"""Dead letters are redacted when they are written, not by what the configuration says when they are
read: renaming a rule never prints its secrets, and `dlq replay` renders the hidden arguments again
from the stored event and the rule's current templates (or refuses, when it cannot)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.cli import main
from daemon.config import load_config_text
from daemon.dlq import restore_args
from daemon.registry import builtin_registry
from daemon.state import REDACTED, DeadLetter
from streams.event import Event, event_record

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "tok-5f0c8a2e9d1b47c3"  # a canary: it must never be read back from a dead letter
ROTATED = "tok-rotated-77d1e0"


RULE = """\
  {name}:
    from: feed
    then:
      - tool: deliver
        args: {{n: "{{data.id}}", target: "${{DLQ_TOKEN}}", api_key: "key-{{data.id}}"}}
"""


def write_config(tmp_path: Path, rule: str) -> Path:
    config = tmp_path / "c.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            daemon: {{http: null, state_path: state.db, shutdown_timeout_seconds: 5}}
            sources:
              feed: {{type: replay, path: events.jsonl, speed: 0}}
            tools:
              deliver:
                type: "tests.plugins:GATE"
                out_format: json
                gate: {tmp_path / "gate"}
                out: {tmp_path / "out.jsonl"}
                retry: {{max_attempts: 1}}
                circuit: {{failures: 0}}
            rules:
            """
        )
        + RULE.format(name=rule)
    )
    return config


def reflexd(*args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), "DLQ_TOKEN": token},
    )


def stored(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db, timeout=10) as conn:
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:  # not created yet
            return []


def dead_letter_everything(tmp_path: Path) -> Path:
    """Run the daemon over two events whose calls all fail: two dead letters."""
    (tmp_path / "events.jsonl").write_bytes(b'{"id": 0}\n{"id": 1}\n')
    config = write_config(tmp_path, "alert")
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "run", "-c", str(config)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "DLQ_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while stored(tmp_path / "state.db", "SELECT id FROM dead_letters") != [(1,), (2,)]:
            assert time.monotonic() < deadline, "no two dead letters within 60 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return config


def test_renamed_rule_neither_leaks_nor_replays_a_guess_and_a_restored_one_replays_current_values(
    tmp_path: Path,
) -> None:
    """Dead letters hold no secret; after a rule rename `dlq list --json` still hides them and `dlq replay`
    refuses (exit 1, entries stay); with the rule back, replay sends the hidden arguments rendered from the
    stored event and the current config (a rotated ${VAR} goes out with its new value)."""
    config = dead_letter_everything(tmp_path)
    db = tmp_path / "state.db"
    letters = stored(db, "SELECT args, redacted FROM dead_letters ORDER BY id")
    assert len(letters) == 2 and not any(TOKEN in args or "key-" in args for args, _ in letters)
    assert all(orjson.loads(redacted) == ["target", "api_key"] for _, redacted in letters)

    config.write_text(config.read_text().replace("  alert:", "  alert_v2:"))  # the rule is renamed
    listed = reflexd("dlq", "list", "--json", "-c", str(config))
    assert listed.returncode == 0 and TOKEN not in listed.stdout and "key-" not in listed.stdout
    first = orjson.loads(listed.stdout.splitlines()[0])
    assert first["args"] == {"n": 0, "target": REDACTED, "api_key": REDACTED}  # `{data.id}` keeps the int
    refused = reflexd("dlq", "replay", "--all", "-c", str(config))
    assert refused.returncode == 1
    assert "entry 1 not replayed" in refused.stderr and "rule 'alert' is no longer configured" in refused.stderr
    assert not (tmp_path / "out.jsonl").exists()
    assert "2 dead-lettered invocation(s)" in reflexd("dlq", "list", "-c", str(config)).stdout

    config.write_text(config.read_text().replace("  alert_v2:", "  alert:"))
    (tmp_path / "gate").write_text("open")
    replayed = reflexd("dlq", "replay", "--all", "-c", str(config), token=ROTATED)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    sent = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert sorted((s["args"]["n"], s["args"]["target"], s["args"]["api_key"]) for s in sent) == [
        (0, ROTATED, "key-0"),
        (1, ROTATED, "key-1"),
    ]
    journal = stored(db, "SELECT args FROM invocations")
    assert journal and not any(ROTATED in args or TOKEN in args for (args,) in journal)


def letter(args: dict[str, Any], redacted: tuple[str, ...] | None, key: str = "r:src:0", rule: str = "r") -> DeadLetter:
    event = event_record(Event("src", 1.0, 1.0, "k", {"id": 7, "secret": "from-event"}, {}))
    return DeadLetter(1, key, rule, "t", args, event, "down", 1, 1.0, None, None, redacted)


def test_restore_args_renders_only_the_hidden_arguments_from_the_current_rule() -> None:
    """Hidden arguments come from the current template of the same call (found by the key's call index)
    rendered on the stored event; shown ones are kept as stored; a missing rule or argument is a reason."""
    config = load_config_text(
        textwrap.dedent(
            """\
            sources: {src: {type: replay, path: x.jsonl}}
            tools: {t: {type: log}}
            rules:
              r:
                from: src
                then:
                  - {tool: t, args: {n: "{data.id}", password: "first-{data.secret}"}}
                  - {tool: t, args: {n: "{data.id}", password: "second-{data.secret}", pin: "${PIN}"}}
            """
        ),
        builtin_registry(),
        env={"PIN": "4321"},
    )
    stored_args = {"n": "7", "password": REDACTED, "pin": REDACTED}
    assert restore_args(config, letter(stored_args, ("password", "pin"), key="r:src:1")) == {
        "n": "7",
        "password": "second-from-event",
        "pin": "4321",
    }
    assert restore_args(config, letter({"n": "7", "password": REDACTED}, ("password",))) == {
        "n": "7",
        "password": "first-from-event",
    }
    kept = {"n": "stored"}
    assert restore_args(config, letter(kept, ())) is kept  # nothing hidden: as stored
    assert restore_args(config, letter({"pin": "1"}, None)) == {"pin": "1"}  # stored in clear (schema 0)
    gone = restore_args(config, letter(stored_args, ("password",), rule="renamed"))
    assert isinstance(gone, str) and "no longer configured" in gone
    missing = restore_args(config, letter({"pin": REDACTED}, ("pin",), key="r:src:0"))
    assert isinstance(missing, str) and "pin" in missing


def test_letters_stored_in_clear_before_schema_1_are_listed_redacted_by_tool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A letter written in clear by an older reflexd, of a rule since renamed, is listed with the arguments
    any current rule fills from ${VAR} for that tool hidden, and secret-looking names hidden."""
    (tmp_path / "events.jsonl").write_bytes(b"")
    config = write_config(tmp_path, "renamed")
    with sqlite3.connect(tmp_path / "state.db") as old:  # the dead_letters table of schema 0
        old.executescript(
            """
            CREATE TABLE dead_letters (
                id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, rule TEXT, tool TEXT NOT NULL,
                args TEXT, event TEXT, error TEXT, attempts INTEGER NOT NULL, failed_at REAL NOT NULL,
                replayed_at REAL, replay_outcome TEXT
            );
            """
        )
        old.execute(
            "INSERT INTO dead_letters (key, rule, tool, args, error, attempts, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ("alert:e:0", "alert", "deliver", orjson.dumps({"n": "0", "target": TOKEN, "token": "t-1"}).decode(),
             "down", 1, 1.0),
        )
    monkeypatch.setenv("DLQ_TOKEN", TOKEN)
    assert main(["dlq", "list", "--json", "-c", str(config)], builtin_registry()) == 0
    (line,) = capsys.readouterr().out.splitlines()
    record = orjson.loads(line)
    assert record["args"] == {"n": "0", "target": REDACTED, "token": REDACTED} and record["redacted"] is None
