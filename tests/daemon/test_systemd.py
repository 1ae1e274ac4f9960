"""systemd integration: the notify protocol, and the shipped unit's hardening score."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from daemon import systemd
from daemon.config import load_config_text
from daemon.registry import builtin_registry
from daemon.supervisor import Daemon

ROOT = Path(__file__).resolve().parents[2]


def notify_socket(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(5)
    return sock


def test_notify_sends_one_datagram(tmp_path: Path) -> None:
    """notify() sends the message to $NOTIFY_SOCKET and is a no-op without it."""
    with notify_socket(tmp_path) as sock:
        assert systemd.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
        assert sock.recv(100) == b"READY=1"
    assert systemd.notify("READY=1", {}) is False


def test_watchdog_interval_is_half_of_watchdog_sec() -> None:
    """WATCHDOG_USEC is honoured only for this process, at half the period."""
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert systemd.watchdog_interval({}) is None


async def test_daemon_reports_ready_and_stopping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon sends READY=1 once started and STOPPING=1 when it stops."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    cfg = load_config_text(
        f"daemon: {{http: null}}\nsources: {{s: {{type: replay, path: {ROOT / 'data/sample-trades.jsonl'}}}}}\n",
        builtin_registry(),
    )
    with notify_socket(tmp_path) as sock:
        daemon = Daemon(cfg)
        await daemon.start()
        assert sock.recv(200).startswith(b"READY=1\nSTATUS=")
        await daemon.stop()
        assert sock.recv(200) == b"STOPPING=1"


def test_unit_file_is_hardened(tmp_path: Path) -> None:
    """deploy/reflexd@.service (as instance reflexd@main) scores an exposure ≤ 2.0 in systemd-analyze security."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "reflexd@main.service"  # an instance of the template, as systemd would load it
    unit.write_text((ROOT / "deploy" / "reflexd@.service").read_text())
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for reflexd@main.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0 and result.returncode == 0
