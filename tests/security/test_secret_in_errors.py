"""A tool's failure that quotes a secret (a program printing its ${VAR} argument on stderr, an
endpoint echoing a key) never puts it in the daemon's log, the journal or the dead-letter queue: the
texts that came from the environment are *** in every log line and every stored error."""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


async def test_a_failure_quoting_a_secret_is_stored_and_logged_without_it(tmp_path: Path) -> None:
    secret = f"cnry{secrets.token_hex(12)}"
    recording = tmp_path / "in.jsonl"
    recording.write_text('{"p": 1}\n')
    config = tmp_path / "reflexd.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            daemon: {{http: null, state_path: state.db, log_format: json, log_level: debug}}
            sources:
              feed: {{type: replay, path: "{recording}"}}
            tools:
              leaky:
                type: exec
                argv: ["{sys.executable}", "-c", "import sys; print('auth failed for', sys.argv[1], file=sys.stderr); sys.exit(1)", "${{LEAKY_KEY}}"]
                retry: {{max_attempts: 1}}
            rules:
              r: {{from: feed, then: [{{tool: leaky}}]}}
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LEAKY_KEY": secret}
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon.cli", "run", "-c", str(config), cwd=tmp_path, env=env, stdout=out, stderr=out
        )
        try:
            for _ in range(300):  # the call fails and is dead-lettered
                await asyncio.sleep(0.05)
                try:
                    with sqlite3.connect(tmp_path / "state.db") as db:
                        if db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]:
                            break
                except sqlite3.OperationalError:  # not created yet
                    continue
            else:
                raise AssertionError("no dead letter: " + log.read_text())
        finally:
            proc.terminate()
            await proc.wait()
    text = log.read_text()
    assert "auth failed for ***" in text, text  # the failure is logged, its secret hidden
    with sqlite3.connect(tmp_path / "state.db") as db:
        (error,) = db.execute("SELECT error FROM dead_letters").fetchone()
        journal = [e for (e,) in db.execute("SELECT error FROM invocations WHERE error IS NOT NULL")]
    assert "auth failed for ***" in error and journal and all("***" in e for e in journal)
    stored = b"".join(p.read_bytes() for p in sorted(tmp_path.iterdir()) if p.name.startswith("state.db"))  # noqa: ASYNC240
    assert secret.encode() not in stored
    assert secret not in text
