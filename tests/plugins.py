"""A third-party-style component, loaded by the registry as ``type: tests.plugins:COUNTER``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field

from daemon.errors import ToolError
from daemon.registry import ComponentSpec
from handlers.base import CallContext, Tool, ToolConfig


class CounterToolConfig(ToolConfig):
    """Counts its calls."""

    step: int = Field(1, ge=1)


class CounterTool(Tool):
    type_name: ClassVar[str] = "counter"
    description: ClassVar[str] = "Count calls."

    def __init__(self, name: str, config: CounterToolConfig) -> None:
        super().__init__(name, config)
        self.step = config.step
        self.count = 0

    async def call(self, args: dict[str, Any], ctx: CallContext) -> None:
        self.count += self.step


COUNTER = ComponentSpec(
    "tool",
    "counter",
    CounterToolConfig,
    lambda name, cfg, ctx: CounterTool(name, cfg),
    lambda c: [("step", c.step)],
    "Count calls.",
    {"type": "counter"},
)
NOT_A_SPEC = object()


class SleeperToolConfig(ToolConfig):
    """Sleeps on every call (slow-tool and shutdown tests)."""

    seconds: float = Field(1.0, ge=0)


class SleeperTool(Tool):
    type_name: ClassVar[str] = "sleeper"
    description: ClassVar[str] = "Sleep."

    def __init__(self, name: str, config: SleeperToolConfig) -> None:
        super().__init__(name, config)
        self.seconds = config.seconds

    async def call(self, args: dict[str, Any], ctx: CallContext) -> None:
        await asyncio.sleep(self.seconds)


SLEEPER = ComponentSpec(
    "tool",
    "sleeper",
    SleeperToolConfig,
    lambda name, cfg, ctx: SleeperTool(name, cfg),
    lambda c: [("seconds", c.seconds)],
    "Sleep.",
    {"type": "sleeper"},
)


class GateToolConfig(ToolConfig):
    """Fails (retryably) while the file `gate` does not exist; then appends each call id to `out`
    (``out_format: json``: a JSON line ``{"key": call id, "args": arguments}``)."""

    gate: str
    out: str
    out_format: Literal["id", "json"] = "id"


class GateTool(Tool):
    type_name: ClassVar[str] = "gate"
    description: ClassVar[str] = "Deliver to a file once a gate file exists."

    def __init__(self, name: str, config: GateToolConfig) -> None:
        super().__init__(name, config)
        self.gate = Path(config.gate)
        self.out = Path(config.out)
        self.out_format = config.out_format

    async def call(self, args: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        if not self.gate.exists():
            raise ToolError(self.name, "gate closed", retryable=True)
        if self.out_format == "json":
            line = orjson.dumps({"key": ctx.call_id, "args": args}).decode()
        else:
            line = f"{ctx.call_id}\t{args.get('id')}"
        with self.out.open("a") as f:
            f.write(line + "\n")
        return {"delivered": ctx.call_id}


GATE = ComponentSpec(
    "tool",
    "gate",
    GateToolConfig,
    lambda name, cfg, ctx: GateTool(name, cfg),
    lambda c: [("gate", c.gate)],
    "Deliver to a file once a gate file exists.",
    {"type": "gate", "gate": "/tmp/gate", "out": "/tmp/out"},
)
