"""The replay source: event-time pacing, looping with increasing event time, bad lines counted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson

from streams.backoff import ReconnectConfig
from streams.event import Event
from streams.reconnect import Reconnector
from streams.replay import ReplaySource, ReplaySourceConfig


def write(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows))
    return path


def source(path: Path, **cfg: Any) -> ReplaySource:
    return ReplaySource("rp", ReplaySourceConfig(type="replay", path=str(path), **cfg), path)


async def drain(src: ReplaySource, n: int, timeout: float = 5.0) -> list[Event]:
    task = asyncio.create_task(Reconnector(src, ReconnectConfig()).run())
    got: list[Event] = []
    try:
        async with asyncio.timeout(timeout):
            while len(got) < n:
                got.extend(await src.queue.get_batch())
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return got


async def test_speed_zero_delivers_everything_in_order(tmp_path: Path) -> None:
    """speed 0 releases every line in file order with event time from time_field and key from key_field."""
    rows = [{"T": 1_000_000 + i * 1000, "s": "BTC" if i % 2 else "ETH", "i": i} for i in range(1000)]
    src = source(write(tmp_path / "a.jsonl", rows), speed=0, time_field="T", key_field="s")
    events = await drain(src, 1000)
    assert [e.data["i"] for e in events] == list(range(1000))
    assert events[3].ts == 1003.0 and events[3].key == "BTC"


async def test_pacing_follows_event_time_scaled_by_speed(tmp_path: Path) -> None:
    """Events 1 s apart in event time are released ~0.1 s apart at speed 10."""
    rows = [{"T": 5_000 + i * 1000} for i in range(4)]
    src = source(write(tmp_path / "p.jsonl", rows), speed=10, time_field="T")
    start = time.monotonic()
    events = await drain(src, 4)
    offsets = [e.received_at - events[0].received_at for e in events]
    # released no earlier than scheduled (sleep never returns early); generous upper bound for a busy machine
    assert all(o >= 0.1 * i - 0.005 for i, o in enumerate(offsets)), offsets
    assert time.monotonic() - start < 3


async def test_loop_keeps_event_time_increasing(tmp_path: Path) -> None:
    """With loop: true the file repeats and event time keeps increasing across laps."""
    rows = [{"T": 1000 * i} for i in range(1, 4)]
    src = source(write(tmp_path / "l.jsonl", rows), speed=0, loop=True, time_field="T")
    events = await drain(src, 9)
    ts = [e.ts for e in events[:9]]
    assert ts == sorted(ts) and len(set(ts)) == 9
    assert [e.meta["lap"] for e in events[:9]] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


async def test_bad_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    """Undecodable lines are counted as decode errors; the good lines still arrive."""
    rows: list[Any] = [{"i": 0}, b"{not json", {"i": 1}, b"", {"i": 2}]
    src = source(write(tmp_path / "b.jsonl", rows), speed=0)
    events = await drain(src, 3)
    assert [e.data["i"] for e in events] == [0, 1, 2] and src.stats.decode_errors == 1


async def test_end_of_file_finishes_the_source(tmp_path: Path) -> None:
    """Without loop the source finishes at the end of the file instead of reconnecting."""
    src = source(write(tmp_path / "e.jsonl", [{"i": 0}]), speed=0)
    task = asyncio.create_task(Reconnector(src, ReconnectConfig()).run())
    await asyncio.wait_for(task, 5)
    assert src.stats.state == "finished" and src.stats.attempts == 1


async def test_missing_file_fails_the_source_with_reason(tmp_path: Path) -> None:
    """A missing file stops the source (no retry storm) and says why."""
    src = source(tmp_path / "missing.jsonl")
    await asyncio.wait_for(Reconnector(src, ReconnectConfig()).run(), 5)
    assert src.stats.state == "failed" and "cannot open" in (src.stats.last_error or "")
    assert src.readiness()[0] is False
