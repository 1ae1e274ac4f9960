"""``reflexd replay`` prints rule arguments redacted as the journal stores them.

A real ``reflexd replay`` process (``log_level: debug``) replays three recorded trades through a rule
whose arguments hold a value from ``${VAR}`` (top level and nested) and a secret-named literal
(``api_key``); its whole output, text and JSON lines, stdout and stderr, is searched for them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "env-token-5d0c9a71e3"
NESTED = "env-nested-0a8f44b2"
API_KEY = "literal-api-key-b7e21c"

CONFIG = f"""
daemon: {{log_level: debug, http: null}}
sources:
  trades: {{type: websocket, url: "ws://127.0.0.1:9/x", key_field: s, time_field: T}}
tools:
  hook: {{type: log}}
rules:
  every_trade:
    from: trades
    then:
      - tool: hook
        args:
          token: "${{TOK}}"
          auth: {{scheme: bearer, value: "x-${{NESTED}}"}}
          api_key: "{API_KEY}"
          price: "{{data.p}}"
"""


def replay(tmp_path: Path, fmt: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "config.yaml").write_text(CONFIG)
    trades = tmp_path / "trades.jsonl"
    trades.write_text(
        "".join(
            orjson.dumps({"s": "BTCUSDT", "p": f"{65000 + i}.5", "T": 1768485600000 + i * 1000}).decode() + "\n"
            for i in range(3)
        )
    )
    env = {**os.environ, "TOK": TOKEN, "NESTED": NESTED, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", "replay", "-c", "config.yaml", f"trades={trades}", "--format", fmt],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize("fmt", ["text", "jsonl"])
def test_replay_redacts_env_and_secret_named_arguments(tmp_path: Path, fmt: str) -> None:
    """Arguments from ${VAR} (also nested) and secret-named ones print as *** in text and JSON lines; other arguments print as rendered."""
    done = replay(tmp_path, fmt)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3
    for secret in (TOKEN, NESTED, API_KEY):
        assert secret not in done.stdout and secret not in done.stderr
    if fmt == "jsonl":
        args = [orjson.loads(line)["args"] for line in lines]
    else:
        args = [orjson.loads(line.split("  ", 3)[3]) for line in lines]
    assert args == [
        {"token": "***", "auth": "***", "api_key": "***", "price": f"{65000 + i}.5"} for i in range(3)
    ]
