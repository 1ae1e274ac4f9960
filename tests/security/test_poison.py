"""One bad event must not poison a rule: a time in the wrong unit, a key that is a list, live and on replay.

A real websockets server feeds a real daemon; ``reflexd replay`` runs as a process. The rule under test
has a sliding time window, so it owns an event clock: before the event-time bound, one trade whose time
was sent in microseconds moved its watermark ~56,000 years ahead and every later trade was late.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import generate_latest

from daemon.config import load_config_text
from daemon.registry import builtin_registry
from daemon.telemetry import metrics_registry
from tests.conftest import StartDaemon, StartServer
from tests.servers import Plan, wait_for

ROOT = Path(__file__).resolve().parents[2]

#: 5 good trades, one with its time in µs, 20 good trades: 26 messages, 25 sane ones.
GOOD_BEFORE, GOOD_AFTER = 5, 20


def trade(i: int, t: int, s: Any = "BTCUSDT") -> dict[str, Any]:
    return {"e": "trade", "s": s, "p": f"{65000 + i}.5", "q": "0.01", "T": t, "i": i}


def poisoned_trades(base_ms: int) -> list[dict[str, Any]]:
    """Good trades 10 ms apart from ``base_ms``, with one trade whose ``T`` is in µs in the middle."""
    rows = [trade(i, base_ms + 10 * i) for i in range(GOOD_BEFORE)]
    rows.append(trade(-1, (base_ms + 10 * GOOD_BEFORE) * 1000))  # the producer's bug: µs, not ms
    rows += [trade(GOOD_BEFORE + i, base_ms + 10 * (GOOD_BEFORE + i)) for i in range(GOOD_AFTER)]
    return rows


def config(source: str, *, rule_extra: str = "") -> str:
    """A daemon with one source ``feed``, a counting tool, and a rule with a 60 s sliding window."""
    return f"""
daemon: {{http: null, shutdown_timeout_seconds: 5}}
sources:
  feed: {source}
tools:
  count: {{type: "tests.plugins:COUNTER"}}
rules:
  trades:
    from: feed
    steps:
      - window: {{seconds: 60, aggregates: {{n: "count()"}}}}
    then: [{{tool: count, args: {{i: "{{data.i}}"}}}}]
    {rule_extra}
"""


class Records(logging.Handler):
    """Every record of the ``reflexd`` loggers (attached directly: the daemon may have stopped propagation)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Records:
        logger = logging.getLogger("reflexd")
        self._level = logger.level
        logger.addHandler(self)
        logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("reflexd")
        logger.removeHandler(self)
        logger.setLevel(self._level)


def metric(daemon: Any, line_start: str) -> float:
    text = generate_latest(metrics_registry(daemon)).decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    assert len(values) == 1, (line_start, text)
    return values[0]


async def test_a_trade_timed_in_microseconds_does_not_poison_a_live_rule(
    feed_server: StartServer, run_daemon: StartDaemon
) -> None:
    """Live websocket: the µs trade is counted as future and dropped; all 20 later trades reach the tool."""
    base = int(time.time() * 1000) - 60_000  # a minute ago: sane against the wall clock
    rows = poisoned_trades(base)
    server = await feed_server(Plan(frames=[orjson.dumps(r).decode() for r in rows]))
    source = f'{{type: websocket, url: "{server.url}", key_field: s, time_field: T}}'
    daemon = await run_daemon(load_config_text(config(source), builtin_registry(), env={}))
    feed = daemon.sources["feed"]
    await wait_for(lambda: feed.stats.received == len(rows), what="every frame received")
    await daemon.stop()  # drains the queue and the tool's backlog

    tool: Any = daemon.tools["count"]
    rule = daemon.rules["trades"].stats
    assert tool.count == GOOD_BEFORE + GOOD_AFTER
    assert (rule.seen, rule.late, rule.fired) == (25, 0, 25)
    assert feed.stats.as_dict()["future"] == 1
    assert metric(daemon, 'reflexd_events_dropped_total{reason="future_time",source="feed"}') == 1


async def test_list_keys_are_counted_without_tracebacks_and_later_trades_fire(
    feed_server: StartServer, run_daemon: StartDaemon
) -> None:
    """200 frames whose key field holds a list are decode errors (one logged sample, no traceback); the next
    good trades of the same feed still fire a per-key rule."""
    base = int(time.time() * 1000) - 60_000
    rows = [trade(i, base + i, s=[1, 2]) for i in range(200)] + [
        trade(200 + i, base + 200 + i) for i in range(3)
    ]
    server = await feed_server(Plan(frames=[orjson.dumps(r).decode() for r in rows]))
    source = f'{{type: websocket, url: "{server.url}", key_field: s, time_field: T}}'
    text = config(source, rule_extra="cooldown_seconds: 0.000001")
    with Records() as logs:
        daemon = await run_daemon(load_config_text(text, builtin_registry(), env={}))
        feed = daemon.sources["feed"]
        await wait_for(lambda: feed.stats.received == len(rows), what="every frame received")
        await daemon.stop()

    tool: Any = daemon.tools["count"]
    assert tool.count == 3
    assert feed.stats.decode_errors == 200 and daemon.rules["trades"].stats.errors == 0
    assert not [r for r in logs.records if r.exc_info]
    samples = [r for r in logs.records if r.levelno >= logging.WARNING]
    assert 1 <= len(samples) <= 3, [r.getMessage() for r in samples]
    assert "[1,2]" in str(getattr(samples[0], "fields", {}))  # the sample shows what was wrong


async def test_the_replay_source_bounds_event_time_by_its_own_progress(
    run_daemon: StartDaemon, tmp_path: Path
) -> None:
    """Replay source (times years in the past, read as fast as possible): the µs line is dropped and counted;
    a later gap of an hour in the recording costs one event, not the rest of the file."""
    base = (
        1_700_000_000_000  # 2023: far behind the wall clock, so only the recording's own progress can judge
    )
    rows = poisoned_trades(base)
    later = base + 3_600_000
    rows += [trade(100 + i, later + 10 * i) for i in range(10)]  # the recorder was down for an hour
    path = tmp_path / "trades.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    source = f'{{type: replay, path: "{path}", key_field: s, time_field: T, speed: 0}}'
    daemon = await run_daemon(load_config_text(config(source), builtin_registry(), env={}))
    feed = daemon.sources["feed"]
    await wait_for(lambda: feed.stats.state in ("finished", "failed"), what="the file replayed")
    await daemon.stop()

    tool: Any = daemon.tools["count"]
    assert feed.stats.as_dict()["future"] == 2  # the µs line and the first line after the gap
    assert tool.count == GOOD_BEFORE + GOOD_AFTER + 9
    assert daemon.rules["trades"].stats.late == 0


def test_reflexd_replay_drops_the_microsecond_trade_and_fires_for_the_rest(tmp_path: Path) -> None:
    """`reflexd replay` of the same raw trades: 25 calls (one per sane trade), the µs one reported as dropped."""
    rows = poisoned_trades(1_768_485_600_000)
    data = tmp_path / "trades.jsonl"
    data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config('{type: websocket, url: "ws://127.0.0.1:9/ws", key_field: s, time_field: T}'))
    result = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "replay", "-c", str(cfg), f"feed={data}", "--format", "jsonl"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    fired = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [f["args"]["i"] for f in fired] == [
        *range(GOOD_BEFORE),
        *range(GOOD_BEFORE, GOOD_BEFORE + GOOD_AFTER),
    ]
    err = result.stderr.decode()
    assert "1 event(s) dropped: event time more than max_future_seconds ahead" in err, err
    assert "late 0" in err and "Traceback" not in err
