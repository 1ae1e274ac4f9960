"""A third-party-style source type, ``lines``, added from outside the package.

This file is all a new source type takes: its config model, its runtime (``connect`` /
``read`` / ``close``; the engine owns reconnecting) and its ``SPEC``. A configuration uses it
as ``type: tests.plugins_source:LINES``, or as ``type: lines`` with a registry value that lists
it (``builtin_registry().with_specs(LINES)``); the contract suite (tests/test_contract.py) runs
it like the built-in types.

``lines`` reads newline-delimited JSON from a TCP peer: one event per line, now as its time,
``key_field`` as its key. Its queue blocks by default: a full queue stops the reading, and TCP
flow control then holds the peer back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, ClassVar

import orjson
from pydantic import Field

from daemon.errors import NotConnected
from daemon.logs import RateLimitedLog, get_logger
from streams.base import Source, SourceConfig
from streams.component import BuildContext, ComponentSpec
from streams.decode import KEY_TYPES, key_problem
from streams.event import Event
from streams.queue import WhenFull

__all__ = ["LINES", "LinesSource", "LinesSourceConfig"]

log = get_logger("source.lines")


class LinesSourceConfig(SourceConfig):
    """Newline-delimited JSON from a TCP peer."""

    host: str = Field("127.0.0.1", description="Peer host.")
    port: int = Field(ge=1, le=65535, description="Peer port.")
    key_field: str | None = Field(None, description="Field of a JSON line used as the event key.")
    connect_timeout_seconds: float = Field(5.0, gt=0, description="Budget for connecting.")
    max_line_bytes: int = Field(1 << 20, ge=64, description="A longer line ends the session.")


class LinesSource(Source):
    type_name: ClassVar[str] = "lines"
    default_when_full: ClassVar[WhenFull] = "block"
    config: LinesSourceConfig

    def __init__(self, name: str, config: LinesSourceConfig) -> None:
        super().__init__(name, config)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._bad_line_log = RateLimitedLog(log, "undecodable line dropped", interval=10.0)

    async def connect(self) -> None:
        cfg = self.config
        try:
            async with asyncio.timeout(cfg.connect_timeout_seconds):
                self._reader, self._writer = await asyncio.open_connection(
                    cfg.host, cfg.port, limit=cfg.max_line_bytes
                )
        except (OSError, TimeoutError) as exc:
            self.stats.count_error("connect")
            raise NotConnected(self.name, f"cannot connect: {type(exc).__name__}: {exc}") from exc

    async def read(self) -> None:
        reader = self._reader
        assert reader is not None
        stats = self.stats
        key_field = self.config.key_field
        while True:
            try:
                line = await reader.readline()
            except (OSError, ValueError) as exc:  # ValueError: a line above max_line_bytes
                raise NotConnected(self.name, f"read failed: {type(exc).__name__}") from exc
            if not line:
                raise NotConnected(self.name, "closed by peer")
            now = time.time()
            stats.received += 1
            try:
                data: Any = orjson.loads(line)
            except orjson.JSONDecodeError:
                self._bad_line(line)
                continue
            key = data.get(key_field) if key_field is not None and type(data) is dict else None
            if type(key) not in KEY_TYPES:
                self._bad_line(line, key_problem(key))
                continue
            await self.queue.put(Event(self.name, now, now, key, data, {"seq": stats.received}))
            stats.last_event_at = now

    def _bad_line(self, line: bytes, reason: str | None = None) -> None:
        self.stats.decode_errors += 1
        self._bad_line_log.hit(source=self.name, reason=reason, sample=line[:200].decode("utf-8", "replace"))

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        self._reader = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _factory(name: str, config: LinesSourceConfig, ctx: BuildContext) -> LinesSource:
    return LinesSource(name, config)


def _summary(c: LinesSourceConfig) -> list[tuple[str, Any]]:
    return [("peer", f"{c.host}:{c.port}"), ("key_field", c.key_field), ("queue", LinesSource.queue_summary(c))]


LINES = ComponentSpec(
    "source",
    "lines",
    LinesSourceConfig,
    _factory,
    _summary,
    "Newline-delimited JSON from a TCP peer (a test plugin).",
    {"type": "lines", "port": 7000, "key_field": "s"},
)
