"""``reflexd journal`` as a process, over a state file a real daemon wrote: filters, redaction, ``-f``."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.config import load_config
from daemon.journal_cli import parse_since
from daemon.registry import builtin_registry
from daemon.supervisor import Daemon
from tests.conftest import StartDaemon
from tests.servers import wait_for

ROOT = Path(__file__).resolve().parents[2]
CANARY = "hook-canary-9d1c3f7a2b"


def write_config(tmp_path: Path) -> Path:
    """Every event is copied by `copy` to a file tool with an argument from ${HOOK_TOKEN} (redacted because
    it came from the environment, not because of its name); the event with id 1 also makes `fail` call a
    program that exits 3 (one attempt: dead-lettered)."""
    config = tmp_path / "c.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            daemon: {{http: null, state_path: state.db, shutdown_timeout_seconds: 5}}
            sources:
              feed: {{type: replay, path: "${{EVENTS}}", speed: 0}}
            tools:
              out: {{type: file, path: out.jsonl}}
              bad:
                type: exec
                argv: ["{sys.executable}", "-c", "import sys; sys.exit(3)"]
                retry: {{max_attempts: 1}}
            rules:
              copy:
                from: feed
                then: [{{tool: out, args: {{id: "{{data.id}}", note: "${{HOOK_TOKEN}}"}}}}]
              fail:
                from: feed
                where: data.id == 1
                then: [{{tool: bad, args: {{id: "{{data.id}}"}}}}]
            """
        )
    )
    return config


def events(tmp_path: Path, name: str, ids: range) -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join(orjson.dumps({"id": i, "secret_note": CANARY}) + b"\n" for i in ids))
    return path


def env(events_file: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "EVENTS": str(events_file), "HOOK_TOKEN": CANARY}


async def run_until_journaled(run_daemon: StartDaemon, config: Path, events_file: Path, calls: int) -> Daemon:
    """A real daemon over ``events_file`` until ``calls`` tool calls ended and are in the file."""
    daemon = await run_daemon(load_config(config, builtin_registry(), env(events_file)))

    def ended() -> int:
        return sum(stats.calls - stats.in_flight for _tool, stats, _w in daemon.runner.lanes().values())

    await wait_for(lambda: ended() >= calls, within=20, what=f"{calls} tool calls ended")
    assert daemon.journal is not None
    await daemon.journal.flush()
    return daemon


def journal(config: Path, events_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return reflexd(events_file, "journal", "-c", str(config), *args)


def reflexd(events_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env(events_file),
    )


def json_lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [orjson.loads(line) for line in result.stdout.splitlines()]


async def test_journal_lists_filters_and_redacts_what_a_daemon_wrote(
    tmp_path: Path, run_daemon: StartDaemon
) -> None:
    config = write_config(tmp_path)
    feed = events(tmp_path, "a.jsonl", range(5))
    await run_until_journaled(run_daemon, config, feed, calls=6)  # 5 copies + 1 failing call

    everything = journal(config, feed)
    assert everything.returncode == 0, everything.stderr
    lines = everything.stdout.splitlines()
    assert len(lines) == 6 and "6 invocation(s)" in everything.stderr
    assert sum(" succeeded " in line for line in lines) == 5
    (failed,) = [line for line in lines if "dead_lettered" in line]
    assert "tool=" not in failed and " bad rule=fail attempts=1 " in failed and "exit" in failed.lower()

    rows = json_lines(journal(config, feed, "--json"))
    assert len(rows) == 6
    copies = [r for r in rows if r["rule"] == "copy"]
    assert {r["args"]["note"] for r in copies} == {"***"}  # from ${HOOK_TOKEN}: stored redacted
    assert sorted(r["args"]["id"] for r in copies) == [0, 1, 2, 3, 4]
    assert all(r["event"]["data"]["secret_note"] == "***" for r in rows)  # the event's ${VAR} text too
    assert all(r["started"].endswith("Z") and r["duration_seconds"] >= 0 for r in rows)
    for result in (
        everything,
        journal(config, feed, "--json"),
        journal(config, feed, "--json", "--tool", "out"),
    ):
        assert CANARY not in result.stdout + result.stderr

    assert [r["tool"] for r in json_lines(journal(config, feed, "--json", "--tool", "bad"))] == ["bad"]
    (only_failed,) = json_lines(journal(config, feed, "--json", "--outcome", "failed"))
    assert (only_failed["rule"], only_failed["outcome"]) == ("fail", "dead_lettered")
    assert len(json_lines(journal(config, feed, "--json", "--rule", "copy"))) == 5
    assert len(json_lines(journal(config, feed, "--json", "--rule", "copy", "--rule", "fail"))) == 6
    assert len(json_lines(journal(config, feed, "--json", "--since", "1h"))) == 6
    assert json_lines(journal(config, feed, "--json", "--since", "2999-01-01T00:00:00Z")) == []
    assert len(json_lines(journal(config, feed, "--json", "-n", "2"))) == 2

    # the failed call is shown as the dead-letter queue shows it
    dlq = reflexd(feed, "dlq", "list", "--json", "-c", str(config))
    (letter,) = json_lines(dlq)
    assert (letter["key"], letter["args"]) == (only_failed["key"], only_failed["args"])

    bad = journal(config, feed, "--since", "yesterday")
    assert bad.returncode == 1 and "--since 'yesterday'" in bad.stderr


def test_since_takes_durations_and_zoned_times() -> None:
    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("2h", now=10000.0) == 2800.0
    assert parse_since("30", now=100.0) == 70.0
    assert parse_since("1970-01-01T00:01:00Z") == 60.0
    with pytest.raises(ValueError, match="zone"):
        parse_since("2026-01-01T00:00:00")


def follow(config: Path, events_file: Path, *, sigint_ignored: bool = False) -> subprocess.Popen[str]:
    """``reflexd journal -f``; ``sigint_ignored``: started as a non-interactive shell starts a background
    job (SIGINT ignored, which Python keeps: it then installs no KeyboardInterrupt handler)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daemon.cli",
            "journal",
            "-c",
            str(config),
            "-f",
            "--json",
            "--interval",
            "0.1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(events_file),
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None,
    )


class Lines:
    """A child's stdout, line by line, read by a thread (so the test's loop never blocks on it)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=lambda: [self.lines.put(line) for line in stdout], daemon=True).start()

    def drain(self) -> list[str]:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return self.seen


async def test_follow_prints_a_row_written_after_it_started_and_stops_cleanly_on_ctrl_c(
    tmp_path: Path, run_daemon: StartDaemon
) -> None:
    config = write_config(tmp_path)
    first = events(tmp_path, "a.jsonl", range(10, 13))
    daemon = await run_until_journaled(run_daemon, config, first, calls=3)
    await daemon.stop()

    proc = follow(config, first)
    try:
        out = Lines(proc)
        await wait_for(lambda: len(out.drain()) >= 3, within=20, what="the three earlier rows")
        assert {orjson.loads(line)["args"]["id"] for line in out.drain()} == {10, 11, 12}

        # a second daemon writes new rows while `journal -f` runs: they appear
        later = events(tmp_path, "b.jsonl", range(20, 22))
        await run_until_journaled(run_daemon, config, later, calls=2)

        def ids() -> set[int]:
            return {orjson.loads(line)["args"]["id"] for line in out.drain()}

        await wait_for(lambda: {20, 21} <= ids(), within=10, what="the rows written after -f started")
        assert all(orjson.loads(line)["outcome"] in ("running", "succeeded") for line in out.drain())
        assert proc.poll() is None  # still following
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "Traceback" not in err and CANARY not in "".join(out.drain())


def catches_sigint(pid: int) -> bool:
    """The process has a handler for SIGINT (``SigCgt`` in ``/proc/<pid>/status``, Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    return False


async def test_follow_stops_on_sigint_even_when_started_with_sigint_ignored(tmp_path: Path) -> None:
    """Waiting for a daemon's first state file, as a script's `reflexd journal -f &` would: SIGINT ends it."""
    config = write_config(tmp_path)
    proc = follow(config, events(tmp_path, "a.jsonl", range(1)), sigint_ignored=True)
    try:
        await wait_for(lambda: catches_sigint(proc.pid), within=20, what="journal -f handling SIGINT")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
