"""Test helpers around the emulators: a recording tool type and daemon configurations.

The ``recorder`` tool stores every call with its event and a deep copy of the event's data
taken at call time (so a test can prove that later updates did not change an event it already
handed out).
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import yaml

from daemon.config import AppConfig, load_config_text
from daemon.registry import ComponentSpec, Registry, builtin_registry
from handlers.base import CallContext, Tool, ToolConfig
from streams.event import Event
from tests.exchange.core import ExchangeEmulator

__all__ = [
    "FAST_RECONNECT",
    "Recorded",
    "Recorder",
    "ccxt_source",
    "daemon_config",
    "duplicates",
    "recorder_registry",
]

#: Reconnect at once: for tests that are not about the backoff itself.
FAST_RECONNECT = {"initial_seconds": 0.01, "max_seconds": 0.05, "healthy_after_seconds": 0}


class RecorderConfig(ToolConfig):
    """Records calls (tests)."""


@dataclass(frozen=True)
class Recorded:
    tool: str
    args: dict[str, Any]
    event: Event | None
    data_at_call: Any
    ctx: CallContext


class Recorder(Tool):
    type_name: ClassVar[str] = "recorder"
    config: RecorderConfig

    def __init__(self, name: str, config: RecorderConfig, calls: list[Recorded]) -> None:
        super().__init__(name, config)
        self.calls = calls

    async def call(self, args: dict[str, Any], ctx: CallContext) -> None:
        data = copy.deepcopy(ctx.event.data) if ctx.event is not None else None
        self.calls.append(Recorded(self.name, args, ctx.event, data, ctx))


def recorder_registry(calls: list[Recorded], base: Registry | None = None) -> Registry:
    return (base or builtin_registry()).with_specs(
        ComponentSpec(
            "tool",
            "recorder",
            RecorderConfig,
            lambda name, cfg, ctx: Recorder(name, cfg, calls),
            lambda c: [],
            "Records calls (tests).",
        )
    )


def ccxt_source(emu: ExchangeEmulator, symbols: list[str], **fields: Any) -> dict[str, Any]:
    """A ``type: ccxt`` source section pointed at ``emu``."""
    cfg = emu.ccxt_config()  # type: ignore[attr-defined]
    body: dict[str, Any] = {
        "type": "ccxt",
        "exchange": emu.name,
        "symbols": symbols,
        "urls": cfg["urls"],
        "reconnect": FAST_RECONNECT,
        "stall_timeout_seconds": 5,
    }
    if cfg.get("options"):
        body["options"] = cfg["options"]
    if emu.speed > 1:  # the emulated clock outruns the wall clock by design: no max_future_seconds bound
        body["max_future_seconds"] = None
    body.update(fields)
    return body


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def daemon_config(
    registry: Registry,
    *,
    sources: dict[str, Any],
    tools: dict[str, Any] | None = None,
    rules: dict[str, Any] | None = None,
    http: str | None = None,
    http_token: str | None = None,
    env: dict[str, str] | None = None,
    state_path: str | None = None,
) -> AppConfig:
    """A configuration built as YAML text and validated like a user's file (``state_path``: the
    daemon's state file, else the default one under the working directory)."""
    ops = {"listen": http, **({"token": http_token} if http_token else {})} if http else None
    daemon: dict[str, Any] = {"http": ops, "shutdown_timeout_seconds": 5}
    if state_path is not None:
        daemon["state_path"] = state_path
    doc: dict[str, Any] = {"daemon": daemon, "sources": sources}
    if tools:
        doc["tools"] = tools
    if rules:
        doc["rules"] = rules
    text = yaml.dump(doc, Dumper=_NoAliases, sort_keys=False)
    return load_config_text(text, registry, env=env or {})


def duplicates(ids: list[Any]) -> dict[Any, int]:
    return {k: n for k, n in Counter(ids).items() if n > 1}
