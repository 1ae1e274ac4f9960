"""The component registry: ``type:`` name → config model, factory and plan summary.

A :class:`Registry` is a value, not a global that modules mutate on import: the daemon uses
:func:`builtin_registry`, tests and benchmarks build a trimmed or extended one with
:meth:`Registry.with_specs` / :meth:`Registry.without`. A ``type`` of the form
``package.module:attr`` loads a plugin whose ``attr`` is a :class:`ComponentSpec`.
"""

from __future__ import annotations

import builtins
import importlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from handlers.base import Tool, ToolConfig
from streams.base import Source, SourceConfig

__all__ = ["BuildContext", "ComponentSpec", "Kind", "Registry", "builtin_registry"]

Kind = Literal["source", "tool"]


@dataclass(frozen=True)
class BuildContext:
    """What a factory may need besides its own config."""

    base_dir: Path  # folder of the configuration file: relative paths resolve against it
    #: configuration paths (``("sources", name, field, ...)``) whose value came from ``${VAR}``
    secret_paths: frozenset[tuple[str | int, ...]] = frozenset()

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def from_env(self, *path: str | int) -> bool:
        """True if the value at ``path`` (or anything inside it) came from the environment."""
        n = len(path)
        return any(p[:n] == path for p in self.secret_paths)


@dataclass(frozen=True)
class ComponentSpec:
    """Everything the daemon needs to know about one component type."""

    kind: Kind
    type: str
    config_model: builtins.type[BaseModel]
    factory: Callable[[str, Any, BuildContext], Source | Tool]
    #: (field, value) pairs shown by ``reflexd check``; values from the environment are masked.
    summary: Callable[[Any], list[tuple[str, Any]]]
    description: str = ""
    #: A minimal valid configuration (docs, and the registry test that validates every type).
    example: Mapping[str, Any] = field(default_factory=dict)


class Registry:
    """Immutable mapping of (kind, type) to :class:`ComponentSpec`."""

    def __init__(self, specs: Iterable[ComponentSpec] = ()) -> None:
        self._specs: dict[tuple[Kind, str], ComponentSpec] = {}
        for spec in specs:
            key = (spec.kind, spec.type)
            if key in self._specs:
                raise ValueError(f"{spec.kind} type {spec.type!r} registered twice")
            self._specs[key] = spec

    def with_specs(self, *specs: ComponentSpec) -> Registry:
        """A copy with ``specs`` added or replaced."""
        replaced = {(s.kind, s.type) for s in specs}
        return Registry([s for k, s in self._specs.items() if k not in replaced] + list(specs))

    def without(self, kind: Kind, *types: str) -> Registry:
        return Registry([s for (k, t), s in self._specs.items() if not (k == kind and t in types)])

    def types(self, kind: Kind) -> list[str]:
        return sorted(t for (k, t) in self._specs if k == kind)

    def specs(self, kind: Kind) -> list[ComponentSpec]:
        return [self._specs[(kind, t)] for t in self.types(kind)]

    def get(self, kind: Kind, type_name: str) -> ComponentSpec:
        """The spec for ``type_name``; plugins (``module:attr``) are imported. Raises LookupError."""
        spec = self._specs.get((kind, type_name))
        if spec is not None:
            return spec
        if ":" in type_name:
            return _load_plugin(kind, type_name)
        known = ", ".join(self.types(kind)) or "none"
        raise LookupError(
            f"unknown {kind} type {type_name!r} (known: {known}; plugins are written module:attr)"
        )


_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def _load_plugin(kind: Kind, ref: str) -> ComponentSpec:
    """Import ``package.module:attr``; any failure (import errors, errors raised while the module
    runs, a missing attribute) is a LookupError whose message says why."""
    module_name, _, attr = ref.partition(":")
    if not _DOTTED.fullmatch(module_name) or not _DOTTED.fullmatch(attr):
        raise LookupError(
            f"plugin type {ref!r} must look like package.module:attr (absolute dotted names of letters, "
            "digits and '_')"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a plugin's own code runs here: whatever it raises is a config error
        why = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, whatever the message holds
        raise LookupError(f"cannot import plugin module {module_name!r}: {why}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except Exception as exc:  # AttributeError, or whatever a module __getattr__ raises
            raise LookupError(f"plugin module {module_name!r} has no attribute {attr!r}") from exc
    if not isinstance(obj, ComponentSpec):
        raise LookupError(f"plugin {ref!r} is not a reflexd ComponentSpec")
    if obj.kind != kind:
        raise LookupError(f"plugin {ref!r} is a {obj.kind}, not a {kind}")
    return obj


def _queue(cfg: SourceConfig, default: str) -> str:
    return f"{cfg.queue.max_events}/{cfg.queue.when_full or default}"


def _tool_common(cfg: ToolConfig, tool_class: builtins.type[Tool]) -> list[tuple[str, Any]]:
    concurrency = cfg.concurrency
    if "concurrency" not in cfg.model_fields_set and tool_class.default_concurrency is not None:
        concurrency = tool_class.default_concurrency
    return [("concurrency", concurrency), ("timeout_seconds", cfg.timeout_seconds)]


def builtin_registry() -> Registry:
    """The component types that ship with reflexd, registered explicitly."""
    from handlers.ccxt_order import CcxtOrderTool, CcxtOrderToolConfig  # ccxt itself: imported when live
    from handlers.exec import SPEC as EXEC
    from handlers.file import FileTool, FileToolConfig
    from handlers.kafka import KafkaTool, KafkaToolConfig
    from handlers.log import LogTool, LogToolConfig
    from handlers.python import SPEC as PYTHON
    from handlers.webhook import SPEC as WEBHOOK
    from streams.ccxt import CcxtSource, CcxtSourceConfig  # ccxt itself: imported when a source is built
    from streams.kafka import KafkaSource, KafkaSourceConfig
    from streams.replay import ReplaySource, ReplaySourceConfig
    from streams.websocket import WebSocketSource, WebSocketSourceConfig

    def websocket_summary(c: WebSocketSourceConfig) -> list[tuple[str, Any]]:
        return [
            ("url", c.url),
            ("subscribe", len(c.subscribe)),
            ("headers", sorted(c.headers)),
            ("idle_timeout_seconds", c.idle_timeout_seconds),
            ("queue", _queue(c, WebSocketSource.default_when_full)),
        ]

    def kafka_summary(c: KafkaSourceConfig) -> list[tuple[str, Any]]:
        return [
            ("bootstrap_servers", c.bootstrap_servers),
            ("topics" if c.topics else "pattern", c.topics or c.pattern),
            ("group_id", c.group_id),
            ("value_format", c.value_format),
            ("dead_letter_topic", c.dead_letter_topic),
            ("queue", _queue(c, "block")),
        ]

    def replay_summary(c: ReplaySourceConfig) -> list[tuple[str, Any]]:
        return [("path", c.path), ("speed", c.speed), ("loop", c.loop), ("queue", _queue(c, "block"))]

    def ccxt_order_factory(name: str, cfg: CcxtOrderToolConfig, ctx: BuildContext) -> Tool:
        path = ctx.resolve(cfg.kill_switch_path) if cfg.kill_switch_path else None
        return CcxtOrderTool(name, cfg, path)

    def ccxt_order_summary(c: CcxtOrderToolConfig) -> list[tuple[str, Any]]:
        return [
            ("exchange", c.exchange),
            ("mode", "DRY RUN" if c.dry_run else "LIVE"),
            ("allowed_symbols", c.allowed_symbols),
            ("max_notional", c.max_notional),
            ("max_orders", f"{c.max_orders}/{c.window_seconds:g}s"),
            ("kill_switch_path", c.kill_switch_path),
            *_tool_common(c, CcxtOrderTool),
        ]

    def ccxt_summary(c: CcxtSourceConfig) -> list[tuple[str, Any]]:
        return [
            ("exchange", c.exchange),
            ("channel", c.channel if c.channel != "ohlcv" else f"ohlcv {c.timeframe}"),
            ("symbols", c.symbols),
            ("mode", c.mode),
            ("credentials", "from environment" if c.credentials else "none"),
            ("queue", _queue(c, "drop_oldest")),
        ]

    return Registry(
        [
            ComponentSpec(
                "source",
                "websocket",
                WebSocketSourceConfig,
                lambda name, cfg, ctx: WebSocketSource(
                    name, cfg, secret_subscribe=ctx.from_env("sources", name, "subscribe")
                ),
                websocket_summary,
                "A WebSocket feed.",
                {
                    "type": "websocket",
                    "url": "wss://stream.binance.com:9443/ws",
                    "subscribe": [{"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}],
                    "key_field": "s",
                    "time_field": "T",
                },
            ),
            ComponentSpec(
                "source",
                "replay",
                ReplaySourceConfig,
                lambda name, cfg, ctx: ReplaySource(name, cfg, ctx.resolve(cfg.path)),
                replay_summary,
                "A recorded JSON Lines stream, paced by event time.",
                {
                    "type": "replay",
                    "path": "data/sample-trades.jsonl",
                    "time_field": "T",
                    "speed": 1,
                    "loop": True,
                },
            ),
            ComponentSpec(
                "source",
                "kafka",
                KafkaSourceConfig,
                lambda name, cfg, ctx: KafkaSource(name, cfg),
                kafka_summary,
                "Kafka topics in a consumer group, at least once.",
                {
                    "type": "kafka",
                    "bootstrap_servers": "localhost:9092",
                    "topics": ["orders"],
                    "group_id": "reflexd",
                    "dead_letter_topic": "orders.dlq",
                },
            ),
            ComponentSpec(
                "tool",
                "kafka",
                KafkaToolConfig,
                lambda name, cfg, ctx: KafkaTool(name, cfg),
                lambda c: [
                    ("bootstrap_servers", c.bootstrap_servers),
                    ("topic", c.topic),
                    *_tool_common(c, KafkaTool),
                ],
                KafkaTool.description,
                {"type": "kafka", "bootstrap_servers": "localhost:9092", "topic": "alerts", "key": "{key}"},
            ),
            ComponentSpec(
                "source",
                "ccxt",
                CcxtSourceConfig,
                lambda name, cfg, ctx: CcxtSource(name, cfg),
                ccxt_summary,
                "Exchange market data through ccxt: trades, ticker, order book or candles, "
                "over WebSocket (ccxt.pro) or REST polling.",
                {
                    "type": "ccxt",
                    "exchange": "binance",
                    "channel": "trades",
                    "symbols": ["BTC/USDT", "ETH/USDT"],
                    "stall_timeout_seconds": 30,
                },
            ),
            ComponentSpec(
                "tool",
                "ccxt_order",
                CcxtOrderToolConfig,
                ccxt_order_factory,
                ccxt_order_summary,
                "Market and limit orders through ccxt, guarded (allowed symbols, max notional, max orders "
                "per window, kill switch), idempotent (clientOrderId), dry-run by default.",
                {
                    "type": "ccxt_order",
                    "exchange": "binance",
                    "allowed_symbols": ["BTC/USDT"],
                    "max_notional": 500,
                    "max_orders": 5,
                    "window_seconds": 60,
                    "kill_switch_path": "var/kill-switch",
                },
            ),
            ComponentSpec(
                "tool",
                "log",
                LogToolConfig,
                lambda name, cfg, ctx: LogTool(name, cfg),
                lambda c: [("level", c.level), *_tool_common(c, LogTool)],
                LogTool.description,
                {"type": "log", "level": "warning"},
            ),
            ComponentSpec(
                "tool",
                "file",
                FileToolConfig,
                lambda name, cfg, ctx: FileTool(name, cfg, ctx.resolve(cfg.path)),
                lambda c: [("path", c.path), *_tool_common(c, FileTool)],
                FileTool.description,
                {"type": "file", "path": "var/alerts.jsonl"},
            ),
            WEBHOOK,
            EXEC,
            PYTHON,
        ]
    )
