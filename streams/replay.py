"""``replay`` source: a recorded JSON Lines file, paced by event time.

Each line is one message. With ``time_field`` set, messages are released at their
event-time spacing divided by ``speed`` (``speed: 0`` releases them as fast as the queue
takes them). ``loop: true`` starts over at the end, shifting event times forward so they
keep increasing. Relative paths are resolved against the configuration file's folder.

A line whose key field holds a list or an object is a decode error. There is no wall clock to
judge event times by (a recording is of the past, and replays as fast as it is read), so
``max_future_seconds`` is applied against the recording's own progress
(:class:`~streams.decode.ProgressBound`), as ``reflexd replay`` does.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import IO, Any, ClassVar

from pydantic import Field

from daemon.errors import EndOfStream, NotConnected
from daemon.logs import RateLimitedLog, get_logger
from streams.base import Source, SourceConfig
from streams.component import BuildContext, ComponentSpec, PreflightContext, Problem
from streams.decode import BadKey, BadTime, DecodeFields, NotJson, ProgressBound, make_decoder
from streams.event import new_event
from streams.queue import WhenFull

__all__ = ["SPEC", "ReplaySource", "ReplaySourceConfig"]

log = get_logger("source.replay")


class ReplaySourceConfig(DecodeFields, SourceConfig):
    """A recorded stream, one JSON message per line."""

    path: str = Field(description="JSONL file; relative to the configuration file's folder.")
    speed: float = Field(1.0, ge=0, description="Event-time speed-up; 0 = as fast as possible.")
    loop: bool = Field(False, description="Start again at the end of the file.")

    def replay_file(self) -> str | None:
        return self.path


class ReplaySource(Source):
    type_name: ClassVar[str] = "replay"
    emits_gaps: ClassVar[bool] = False
    default_when_full: ClassVar[WhenFull] = "block"
    config: ReplaySourceConfig

    def __init__(self, name: str, config: ReplaySourceConfig, path: Path) -> None:
        super().__init__(name, config)
        self.path = path
        self._file: IO[bytes] | None = None
        self._bad_line_log = RateLimitedLog(log, "undecodable line skipped", interval=10.0)
        self.laps = 0
        #: names this replay session: events of a later run are new events, not duplicates of this one
        self.run_id = f"{time.time_ns() // 1_000_000:x}"

    async def connect(self) -> None:
        try:
            self._file = self.path.open("rb")
        except OSError as exc:
            raise NotConnected(
                self.name, f"cannot open {self.path}: {exc.strerror}", retryable=False
            ) from exc

    async def read(self) -> None:
        f = self._file
        assert f is not None
        cfg = self.config
        name = self.name
        stats = self.stats
        queue = self.queue
        decode = make_decoder(name, cfg.key_field, cfg.time_field, cfg.time_unit)
        clock = time.time
        speed = cfg.speed
        keep = cfg.compiled_where()
        bound = ProgressBound(cfg.max_future_seconds)  # one per session: a reconnect reads the file anew
        offset = 0.0  # added to event times on later laps
        wall0 = 0.0
        ts0: float | None = None
        while True:
            first_ts: float | None = None
            last_ts: float | None = None
            count = 0
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                stats.received += 1
                try:
                    key, t, data = decode(line)
                except NotJson:
                    self._bad_line(lineno, line)
                    continue
                except (BadKey, BadTime) as exc:
                    self._bad_line(lineno, line, exc.problem)
                    continue
                now = clock()
                if keep is not None and not self.admit(
                    keep, new_event(name, now if t is None else t, now, key, data, {})
                ):
                    continue
                ts = now
                if t is not None:
                    ts = t + offset
                    if not bound.admit(ts):
                        self.drop_future(ts, bound.newest, line)
                        continue
                    if first_ts is None:
                        first_ts = ts
                    last_ts = ts
                    if speed > 0:
                        if ts0 is None:
                            ts0, wall0 = ts, time.monotonic()
                        delay = wall0 + (ts - ts0) / speed - time.monotonic()
                        if delay > 0.001:
                            await asyncio.sleep(delay)
                            now = clock()
                count += 1
                meta = {"line": lineno, "lap": self.laps, "run": self.run_id}
                await queue.put(new_event(name, ts, now, key, data, meta))
                stats.last_event_at = now
                if count % 256 == 0:
                    await asyncio.sleep(0)  # let the rules run when the queue never fills
            if not cfg.loop:
                raise EndOfStream(name, f"end of {self.path}")
            if count == 0:
                raise NotConnected(name, f"{self.path} has no events to loop over", retryable=False)
            self.laps += 1
            if first_ts is not None and last_ts is not None:
                span = last_ts - first_ts
                offset += span + (span / max(count - 1, 1) if span > 0 else 1.0)
            f.seek(0)

    def _bad_line(self, lineno: int, line: bytes, reason: str | None = None) -> None:
        self.stats.decode_errors += 1
        fields: dict[str, object] = {"source": self.name, "line": lineno}
        if reason is not None:
            fields["reason"] = reason
        self._bad_line_log.hit(**fields, sample=line[:200].decode("utf-8", "replace"))

    async def close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.close()


# -- registry entry (daemon/registry.py lists SPEC) ----------------------------------------------------


def _factory(name: str, config: ReplaySourceConfig, ctx: BuildContext) -> ReplaySource:
    return ReplaySource(name, config, ctx.resolve(config.path))


def _preflight(config: ReplaySourceConfig, ctx: PreflightContext) -> list[Problem]:
    """The file must be there and readable (``connect()`` fails for good otherwise)."""
    path = ctx.resolve(config.path)
    if not path.exists():
        return [Problem(("path",), f"{path}: no such file")]
    if not path.is_file():
        return [Problem(("path",), f"{path} is not a file")]
    if not os.access(path, os.R_OK):
        return [Problem(("path",), f"{path} is not readable")]
    return []


def _summary(c: ReplaySourceConfig) -> list[tuple[str, Any]]:
    return [("path", c.path), ("speed", c.speed), ("loop", c.loop), ("queue", ReplaySource.queue_summary(c))]


SPEC = ComponentSpec(
    "source",
    "replay",
    ReplaySourceConfig,
    _factory,
    _summary,
    "A recorded JSON Lines stream, paced by event time.",
    {"type": "replay", "path": "data/sample-trades.jsonl", "time_field": "T", "speed": 1, "loop": True},
    preflight=_preflight,
)
