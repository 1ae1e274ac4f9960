"""Third-party-style tool types, loaded by the registry as ``type: tests.plugins:COUNTER`` (or listed in a
registry value: ``builtin_registry().with_specs(COUNTER)``); each is its config model, its class and its
``SPEC``. The contract suite (tests/test_contract.py) runs every spec of this module.

The source plugin is tests/plugins_source.py; the rule step plugin tests/plugins_step.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field

from daemon.errors import ToolError
from handlers.base import CallContext, Tool, ToolConfig
from streams.component import ComponentSpec


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
        self.done = 0  # calls that slept their time

    async def call(self, args: dict[str, Any], ctx: CallContext) -> None:
        await asyncio.sleep(self.seconds)
        self.done += 1


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


class HaltSwitch:
    """The haltable tool's kill switch (handlers.base.KillSwitchControl), in memory."""

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason

    def engage(self, reason: str) -> None:
        self.reason = reason

    def release(self) -> None:
        self.reason = None

    def state(self) -> dict[str, Any]:
        return {"engaged": self.reason is not None, "reason": self.reason}


class HaltableToolConfig(ToolConfig):
    """Counts its calls; refuses them while its kill switch is engaged."""

    start_engaged: bool = False


class HaltableTool(Tool):
    """Any tool type can expose a kill switch: the ops server's /kill-switch drives it without knowing the type."""

    type_name: ClassVar[str] = "haltable"
    description: ClassVar[str] = "Count calls unless halted."

    def __init__(self, name: str, config: HaltableToolConfig) -> None:
        super().__init__(name, config)
        self.kill_switch: HaltSwitch = HaltSwitch("engaged at start" if config.start_engaged else None)
        self.count = 0

    async def call(self, args: dict[str, Any], ctx: CallContext) -> None:
        reason = self.kill_switch.reason
        if reason is not None:
            raise ToolError(self.name, f"halted by its kill switch: {reason}")
        self.count += 1


HALTABLE = ComponentSpec(
    "tool",
    "haltable",
    HaltableToolConfig,
    lambda name, cfg, ctx: HaltableTool(name, cfg),
    lambda c: [("start_engaged", c.start_engaged)],
    "Count calls unless halted.",
    {"type": "haltable"},
)
