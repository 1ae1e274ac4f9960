"""`reflexd run` as a real process: fires from the shipped sample, stops cleanly on signals, exit codes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]


def shipped_config(tmp_path: Path, listen: str = "127.0.0.1:0") -> Path:
    """The shipped config.yaml, with its paths pointed into tmp_path and the ops port made free."""
    text = (ROOT / "config.yaml").read_text()
    text = text.replace("path: data/sample-trades.jsonl", f"path: {ROOT / 'data' / 'sample-trades.jsonl'}")
    default_listen = 'listen: "${REFLEXD_HTTP_LISTEN:-127.0.0.1:9108}"'
    assert default_listen in text
    text = text.replace(default_listen, f'listen: "{listen}"')
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def start(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "run", "-c", str(config)],
        cwd=config.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def read_log_until(proc: subprocess.Popen[bytes], want: str, timeout: float) -> list[dict[str, object]]:
    assert proc.stderr is not None
    seen: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stderr.fileno(), False)
    buf = b""
    while time.monotonic() < deadline:
        chunk = proc.stderr.read()
        if chunk:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                rec = orjson.loads(line)
                seen.append(rec)
                if rec.get("msg") == want or want in str(rec.get("msg")):
                    return seen
        elif proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{want!r} not logged within {timeout}s; saw {[r.get('msg') for r in seen]}")


def test_default_config_fires_within_10s_and_sigterm_exits_0(tmp_path: Path) -> None:
    """The shipped config fires a rule from the replay sample within 10 s; SIGTERM then exits 0 in budget."""
    proc = start(shipped_config(tmp_path))
    try:
        started = time.monotonic()
        logs = read_log_until(proc, "big trade", timeout=10)
        assert time.monotonic() - started < 10
        assert any(r.get("msg") == "ready" for r in logs)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.wait()
    alerts = [orjson.loads(line) for line in (tmp_path / "var" / "alerts.jsonl").read_bytes().splitlines()]
    assert alerts and alerts[0]["args"]["symbol"] == "BTCUSDT"


def test_sigint_stops_gracefully(tmp_path: Path) -> None:
    """One SIGINT stops the daemon gracefully with exit code 0."""
    proc = start(shipped_config(tmp_path))
    try:
        read_log_until(proc, "ready", timeout=10)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert proc.stderr is not None
        assert b"stopped" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_port_in_use_is_a_startup_failure(tmp_path: Path) -> None:
    """An ops port that cannot be bound exits with code 3 (startup failure), not a traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = start(shipped_config(tmp_path, listen=f"127.0.0.1:{port}"))
        try:
            assert proc.wait(timeout=20) == 3
            assert proc.stderr is not None
            err = proc.stderr.read()
        finally:
            proc.kill()
            proc.wait()
    assert b"startup failed" in err and b"Traceback" not in err


def test_config_error_exits_2(tmp_path: Path) -> None:
    """`reflexd run` with an invalid configuration exits 2 before starting anything."""
    path = tmp_path / "bad.yaml"
    path.write_text("sources: {s: {type: replay}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "run", "-c", str(path)], capture_output=True, timeout=30
    )
    assert result.returncode == 2 and b"sources.s.path: required" in result.stderr


def slow_tool_config(tmp_path: Path, shutdown_seconds: float) -> Path:
    """Every sample trade fires a tool that sleeps 10 s, so stopping has real work to wait for."""
    path = tmp_path / "slow.yaml"
    path.write_text(
        f"""\
daemon: {{http: null, shutdown_timeout_seconds: {shutdown_seconds}}}
sources:
  trades: {{type: replay, path: {ROOT / "data" / "sample-trades.jsonl"}, speed: 0}}
tools:
  slow: {{type: "tests.plugins:SLEEPER", seconds: 10, concurrency: 2, timeout_seconds: 60}}
rules:
  every: {{from: trades, then: [{{tool: slow}}]}}
"""
    )
    return path


def start_with_tests_importable(config: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "run", "-c", str(config)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def test_shutdown_budget_cancels_and_names_what_was_cut(tmp_path: Path) -> None:
    """When tools cannot finish within shutdown_timeout_seconds, they are cancelled, named, and exit is 0."""
    proc = start_with_tests_importable(slow_tool_config(tmp_path, shutdown_seconds=1))
    try:
        read_log_until(proc, "ready", timeout=15)
        time.sleep(0.2)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        took = time.monotonic() - sent
        assert proc.stderr is not None
        tail = [orjson.loads(line) for line in proc.stderr.read().splitlines()]
    finally:
        proc.kill()
        proc.wait()
    (overrun,) = [r for r in tail if r.get("msg") == "shutdown budget exceeded"]
    assert any(str(c).startswith("tool slow (") for c in overrun["cancelled"])  # type: ignore[union-attr]
    assert took < 10  # well before the 10 s tool calls could have finished on their own


def test_second_sigint_forces_the_stop(tmp_path: Path) -> None:
    """A second SIGINT abandons a graceful stop that is still waiting, with exit code 1."""
    proc = start_with_tests_importable(slow_tool_config(tmp_path, shutdown_seconds=60))
    try:
        read_log_until(proc, "ready", timeout=15)
        proc.send_signal(signal.SIGINT)
        read_log_until(proc, "stopping", timeout=10)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 1
        assert proc.stderr is not None
        rest = proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert b"forced stop" in rest
