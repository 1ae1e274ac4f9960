"""``file`` tool: append one JSON line per call to a file.

Lines are written with a single ``write`` on an ``O_APPEND`` descriptor, so concurrent
calls never interleave within a line. The write runs in the runner's thread pool (a slow
disk must not stall the event loop). Relative paths are resolved against the configuration
file's folder; parent folders are created.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, ClassVar

import orjson
from pydantic import Field

from daemon.errors import StartupError
from handlers.base import CallContext, Tool, ToolConfig
from streams.component import BuildContext, ComponentSpec, PreflightContext, Problem, writable_file_problem

__all__ = ["SPEC", "FileTool", "FileToolConfig"]


class FileToolConfig(ToolConfig):
    """Appends JSON lines to a file."""

    path: str = Field(description="File to append to; relative to the configuration file's folder.")
    fsync: bool = Field(False, description="fsync after every line (durable, slower).")


class FileTool(Tool):
    type_name: ClassVar[str] = "file"
    description: ClassVar[str] = "Append the arguments as one JSON line to a file."
    args_schema: ClassVar[dict[str, Any]] = {"type": "object", "additionalProperties": True}
    default_concurrency: ClassVar[int | None] = 1
    config: FileToolConfig

    def __init__(self, name: str, config: FileToolConfig, path: Path) -> None:
        super().__init__(name, config)
        self.path = path
        self._fd: int | None = None

    async def start(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise StartupError(f"tool {self.name}", f"cannot open {self.path}: {exc.strerror}") from exc

    def call(self, args: dict[str, Any], ctx: CallContext) -> None:
        fd = self._fd
        if fd is None:
            raise RuntimeError(f"tool {self.name} is not started")
        record: dict[str, Any] = {"ts": round(time.time(), 6), "tool": self.name, "rule": ctx.rule}
        event = ctx.event
        if event is not None:
            record["source"] = event.source
            record["key"] = event.key
            record["event_ts"] = event.ts
        record["args"] = args
        line = orjson.dumps(record, default=str, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE)
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
        if self.config.fsync:
            os.fsync(fd)

    async def stop(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


# -- registry entry (daemon/registry.py lists SPEC) ----------------------------------------------------


def _factory(name: str, config: FileToolConfig, ctx: BuildContext) -> FileTool:
    return FileTool(name, config, ctx.resolve(config.path))


def _preflight(config: FileToolConfig, ctx: PreflightContext) -> list[Problem]:
    """``start()`` creates the folders and opens the file for appending: both must be possible."""
    problem = writable_file_problem(ctx.resolve(config.path))
    return [Problem(("path",), problem)] if problem else []


def _summary(c: FileToolConfig) -> list[tuple[str, Any]]:
    return [("path", c.path), *FileTool.common_summary(c)]


SPEC = ComponentSpec(
    "tool",
    "file",
    FileToolConfig,
    _factory,
    _summary,
    FileTool.description,
    {"type": "file", "path": "var/alerts.jsonl"},
    preflight=_preflight,
)
