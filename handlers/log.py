"""``log`` tool: one structured log line per call."""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

from pydantic import Field

from daemon.logs import get_logger
from handlers.base import CallContext, Tool, ToolConfig
from streams.component import BuildContext, ComponentSpec

__all__ = ["SPEC", "LogTool", "LogToolConfig"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class LogToolConfig(ToolConfig):
    """Writes each call as a log line."""

    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level of the line.")


class LogTool(Tool):
    type_name: ClassVar[str] = "log"
    description: ClassVar[str] = "Write one structured log line with the arguments."
    args_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"text": {"type": "string", "description": "The message of the line."}},
        "additionalProperties": True,
    }
    config: LogToolConfig

    def __init__(self, name: str, config: LogToolConfig) -> None:
        super().__init__(name, config)
        self._log = get_logger(f"tool.{name}")
        self._level = _LEVELS[config.level]

    async def call(self, args: dict[str, Any], ctx: CallContext) -> None:
        event = ctx.event
        fields: dict[str, Any] = {"tool": self.name, "rule": ctx.rule}
        if event is not None:
            fields["source"] = event.source
            fields["key"] = event.key
            fields["event_ts"] = event.ts
        fields["args"] = args
        text = args.get("text")
        self._log.log(self._level, text if isinstance(text, str) else "rule fired", extra={"fields": fields})


# -- registry entry (daemon/registry.py lists SPEC) ----------------------------------------------------


def _factory(name: str, config: LogToolConfig, ctx: BuildContext) -> LogTool:
    return LogTool(name, config)


def _summary(c: LogToolConfig) -> list[tuple[str, Any]]:
    return [("level", c.level), *LogTool.common_summary(c)]


SPEC = ComponentSpec(
    "tool",
    "log",
    LogToolConfig,
    _factory,
    _summary,
    LogTool.description,
    {"type": "log", "level": "warning"},
)
