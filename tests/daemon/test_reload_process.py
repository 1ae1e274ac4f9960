"""SIGHUP and `reflexd reload` against a real `reflexd run` process: a reload, never a death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from tests.daemon.test_run import read_log_until

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample-trades.jsonl"


def config_text(tmp: Path, where: str = "float(data.q) > 1") -> str:
    return f"""daemon:
  http: {{listen: "127.0.0.1:0"}}
  state_path: {tmp / "state.db"}
  pid_file: {tmp / "reflexd.pid"}
  shutdown_timeout_seconds: 5
sources:
  trades:
    type: replay
    path: {SAMPLE}
    time_field: T
    key_field: s
    speed: 1
    loop: true
tools:
  out: {{type: file, path: {tmp / "out.jsonl"}}}
rules:
  big:
    from: trades
    where: "{where}"
    then: [{{tool: out, args: {{p: "{{data.p}}"}}}}]
  all:
    from: trades
    then: [{{tool: out, args: {{q: "{{data.q}}"}}}}]
"""


def start(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "run", "-c", str(config)],
        cwd=config.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def catches_sighup(pid: int) -> bool:
    """True once the process has a handler for SIGHUP (bit 0 of SigCgt in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    return False


def status(port: int) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
        return orjson.loads(response.read())


def test_sighup_during_startup_never_kills_and_becomes_one_reload(tmp_path: Path) -> None:
    """SIGHUP every few milliseconds from the moment the process catches it (the interpreter's own
    start, before daemon.cli is imported, is the only window left: measured and printed) through the
    whole start and after: the daemon starts, stays up, and reloads once it runs."""
    path = tmp_path / "config.yaml"
    path.write_text(config_text(tmp_path))
    began = time.monotonic()
    proc = start(path)
    try:
        while not catches_sighup(proc.pid):
            assert proc.poll() is None, "exited before it caught SIGHUP"
            assert time.monotonic() - began < 20, "SIGHUP is never caught"
            time.sleep(0.0005)
        print(f"SIGHUP caught {1000 * (time.monotonic() - began):.0f} ms after exec")
        sent = 0
        ready_seen = False
        deadline = time.monotonic() + 20
        logs: list[dict[str, Any]] = []
        assert proc.stderr is not None
        os.set_blocking(proc.stderr.fileno(), False)
        buf = b""
        while time.monotonic() < deadline:
            proc.send_signal(signal.SIGHUP)
            sent += 1
            time.sleep(0.005)
            chunk = proc.stderr.read() or b""
            buf += chunk
            *lines, buf = buf.split(b"\n")
            logs += [orjson.loads(line) for line in lines]
            if any(r.get("msg") == "ready" for r in logs):
                ready_seen = True
            if ready_seen and any(str(r.get("msg")).startswith(("reload", "reloaded")) for r in logs):
                break
            assert proc.poll() is None, f"died after {sent} SIGHUPs: {[r.get('msg') for r in logs]}"
        assert ready_seen, [r.get("msg") for r in logs]
        assert any(r.get("msg") == "SIGHUP received while starting; reloading once running" for r in logs)
        time.sleep(0.3)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.wait()
    assert not (tmp_path / "reflexd.pid").exists()  # removed at exit


def test_sighup_and_reflexd_reload_while_running(tmp_path: Path) -> None:
    """While running: SIGHUP on an unchanged file reloads nothing; `reflexd reload` after one rule
    changed restarts that rule only; an invalid file is refused by `reflexd reload` (exit 2, file:line,
    no signal) and, sent by SIGHUP anyway, keeps the daemon on the old configuration, as /status says."""
    path = tmp_path / "config.yaml"
    path.write_text(config_text(tmp_path))
    proc = start(path)
    try:
        logs = read_log_until(proc, "ready", timeout=20)
        port = int(str(next(r for r in logs if r.get("msg") == "ready")["http"]).rsplit(":", 1)[1])
        assert int((tmp_path / "reflexd.pid").read_text()) == proc.pid

        proc.send_signal(signal.SIGHUP)
        logs = read_log_until(proc, "reload: nothing changed", timeout=20)
        done = next(r for r in logs if r.get("msg") == "reload: nothing changed")
        assert done["rules_kept"] == 2 and done["sources_kept"] == 1

        path.write_text(config_text(tmp_path, where="float(data.q) > 2"))
        reload = subprocess.run(
            [sys.executable, "-m", "daemon.cli", "reload", "-c", str(path)], capture_output=True, timeout=30
        )
        assert reload.returncode == 0, reload.stderr
        assert f"process {proc.pid}".encode() in reload.stdout
        logs = read_log_until(proc, "reloaded", timeout=20)
        done = next(r for r in logs if r.get("msg") == "reloaded")
        assert done["rules_changed"] == ["big"] and done["rules_kept"] == 1 and done["sources_kept"] == 1
        before = status(port)
        assert before["config"]["reloads"] == {"applied": 1, "unchanged": 1, "failed": 0}

        good = path.read_text()
        path.write_text(good.replace("tool: out,", "tool: missing,", 1))
        reload = subprocess.run(
            [sys.executable, "-m", "daemon.cli", "reload", "-c", str(path)], capture_output=True, timeout=30
        )
        assert reload.returncode == 2 and f"{path}:".encode() in reload.stderr and b"missing" in reload.stderr
        proc.send_signal(signal.SIGHUP)
        read_log_until(proc, "reload failed; still running the previous configuration", timeout=20)
        after = status(port)
        assert after["config"]["hash"] == before["config"]["hash"]
        assert after["config"]["last_reload"]["result"] == "failed"
        assert "missing" in after["config"]["last_reload"]["errors"][0]
        deadline = time.monotonic() + 15  # still running: the replay (real time) goes on reaching the rule
        while status(port)["rules"]["big"]["seen"] <= before["rules"]["big"]["seen"]:
            assert time.monotonic() < deadline, "the old configuration stopped reading after a failed reload"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.wait()


def test_other_verbs_still_end_on_sighup(tmp_path: Path) -> None:
    """Only `run` takes SIGHUP as a reload: a long `reflexd record` ends on it, as any command does when
    its terminal closes."""
    path = tmp_path / "config.yaml"
    path.write_text(config_text(tmp_path))
    out = tmp_path / "rec.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daemon.cli",
            "record",
            "-c",
            str(path),
            "trades",
            "--out",
            str(out),
            "--duration",
            "30",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not (out.exists() and out.stat().st_size > 0):
            assert proc.poll() is None and time.monotonic() < deadline, "the recording never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=10) == -signal.SIGHUP
    finally:
        proc.kill()
        proc.wait()
