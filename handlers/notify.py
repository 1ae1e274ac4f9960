"""``notify`` tool: put a short line in the notification queue, for the model's next call. No model call.

A rule that sees something the model should know, but that is not worth a run of its own, calls
it: ``then: [{tool: note, args: {text: "BTC at {data.p}", fields: {p: "{data.p}"}}}]``. The item
carries the rule and the event's key, so repeats of the same (rule, key) coalesce while unread
(``agent.notifications.coalesce``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from handlers.base import CallContext, Tool, ToolConfig, ToolHost
from handlers.notifications import NotificationQueue
from streams.component import BuildContext, ComponentSpec

__all__ = ["SPEC", "NotifyTool", "NotifyToolConfig"]


class NotifyToolConfig(ToolConfig):
    """Adds an item to the notification queue an llm tool drains before each model call."""

    max_text_chars: int = Field(500, ge=10, le=100_000, description="Longer texts are cut to this length.")


class NotifyTool(Tool):
    type_name: ClassVar[str] = "notify"
    description: ClassVar[str] = "Tell the model something at its next call (no model call now)."
    args_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "text": {"type": "string", "description": "One short line."},
            "fields": {"type": "object", "description": "Values that go with it."},
        },
        "required": ["text"],
        "additionalProperties": False,
    }
    config: NotifyToolConfig

    def __init__(self, name: str, config: NotifyToolConfig) -> None:
        super().__init__(name, config)
        self._queue: NotificationQueue | None = None

    def attach(self, host: ToolHost) -> None:
        self._queue = host.notifications

    async def call(self, args: dict[str, Any], ctx: CallContext) -> dict[str, int]:
        if self._queue is None:
            raise RuntimeError(f"notify tool {self.name} has no notification queue (not attached)")
        text = str(args.get("text", ""))
        limit = self.config.max_text_chars
        if len(text) > limit:
            text = text[:limit] + "…"
        fields = args.get("fields")
        event = ctx.event
        seq = self._queue.put(
            "notify",
            text,
            fields if isinstance(fields, dict) else None,
            rule=ctx.rule,
            key=event.key if event is not None else None,
        )
        return {"seq": seq}


# -- registry entry (daemon/registry.py lists SPEC) ----------------------------------------------------


def _factory(name: str, config: NotifyToolConfig, ctx: BuildContext) -> NotifyTool:
    return NotifyTool(name, config)


def _summary(c: NotifyToolConfig) -> list[tuple[str, Any]]:
    return [("max_text_chars", c.max_text_chars), *NotifyTool.common_summary(c)]


SPEC = ComponentSpec(
    "tool", "notify", NotifyToolConfig, _factory, _summary, NotifyTool.description, {"type": "notify"}
)
