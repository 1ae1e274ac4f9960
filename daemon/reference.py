"""Generated documentation: the component reference (``docs/components.md``), from the registered
config models, and the metrics table of ``docs/operations.md``, from the declared metrics.

``python -m daemon.reference > docs/components.md`` and ``python -m daemon.reference --metrics
docs/operations.md`` (both: ``make docs``) rewrite them; tests fail when the committed text is stale.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from daemon.config import AgentConfig, DaemonConfig
from daemon.http import HTTP_METRICS
from daemon.registry import Kind, Registry, builtin_registry
from daemon.telemetry import DAEMON_METRICS
from handlers.base import ToolConfig
from streams.base import SourceConfig
from streams.metrics import MetricSpec
from streams.rules.pipeline import ToolCallConfig, rule_config_model

__all__ = ["METRICS_BEGIN", "METRICS_END", "render_metrics", "render_reference", "with_metrics_table"]


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (Union, UnionType):
        return " or ".join(dict.fromkeys(_type_name(a) for a in args))
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, SecretStr):
        return "string (secret)"
    named = {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation)
    return named or str(getattr(annotation, "__name__", annotation))


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The configuration models an annotation admits (``X``, ``X | None``, ``Annotated[X, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) in (Annotated, Union, UnionType):
        return [model for arg in get_args(annotation) for model in _models(arg)]
    return []


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "**required**"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return "see below"
    return f"`{yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}`"


def _fields(model: type[BaseModel], skip: frozenset[str] = frozenset(), path: str = "") -> list[str]:
    """The table of ``model``'s keys, then one table per key whose value is itself a mapping (named by
    its dotted path, nested ones after it): every "see below" has its table below."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    nested: list[str] = []
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        key = info.alias or name
        description = (info.description or "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_type_name(info.annotation)} | {_default(info)} | {description} |")
        for sub in dict.fromkeys(_models(info.annotation)):
            nested += ["", f"`{path}{key}`:", "", *_fields(sub, path=f"{path}{key}.")]
    return rows + nested


def _kind_section(title: str, kind: Kind, registry: Registry, base: type[BaseModel]) -> list[str]:
    common = frozenset(base.model_fields)
    out = [
        f"## {title}",
        "",
        f"Every {kind} has `type` and these keys:",
        "",
        *_fields(base, frozenset({"type"})),
    ]
    out += [""]
    for spec in registry.specs(kind):
        own = _fields(spec.config_model, common)
        example = yaml.safe_dump({f"my_{kind}": dict(spec.example)}, sort_keys=False).strip()
        out += [f"### `type: {spec.type}`", "", spec.description, ""]
        out += [*own, ""] if len(own) > 2 else ["No keys of its own.", ""]
        out += ["```yaml", example, "```", ""]
    return out


def render_reference(registry: Registry) -> str:
    """Markdown describing every configuration key of every registered component type."""
    out = [
        "# Component reference",
        "",
        "Generated from the configuration models by `python -m daemon.reference` (`make docs`);",
        "do not edit by hand. Unknown keys are errors everywhere.",
        "",
        "## daemon",
        "",
        *_fields(DaemonConfig),
        "",
        "## agent",
        "",
        "What the llm tools share, and the MCP server ([agent.md](agent.md)).",
        "",
        *_fields(AgentConfig),
        "",
    ]
    out += _kind_section("Sources", "source", registry, SourceConfig)
    out += _kind_section("Tools", "tool", registry, ToolConfig)
    out += ["## Rules", "", *_fields(rule_config_model(registry.steps)), ""]
    out += ["Each entry of `then`:", "", *_fields(ToolCallConfig), ""]
    out += [
        "### Steps",
        "",
        "Each entry of `steps` is a mapping with one key, the step's name. Semantics, examples and",
        "timelines: [rules.md](rules.md).",
        "",
    ]
    for spec in registry.steps:
        out += [f"#### `{spec.name}`", "", spec.doc, ""]
        if spec.shorthand is not None:
            out += [spec.shorthand.doc(spec.name), ""]
        if isinstance(spec.config, type) and issubclass(spec.config, BaseModel):
            out += [*_fields(spec.config), ""]
    return "\n".join(out)


# -- the metrics table ---------------------------------------------------------------------------

METRICS_BEGIN = (
    "<!-- metrics table: generated by `python -m daemon.reference --metrics docs/operations.md`"
    " (`make docs`) from the declared metrics; do not edit by hand -->"
)
METRICS_END = "<!-- end of the metrics table -->"


def _metric_rows(specs: Iterable[MetricSpec], scope: str = "") -> list[str]:
    rows = []
    for spec in specs:
        meaning = f"{scope}{spec.help}" + (f" {spec.doc}" if spec.doc else "")
        labels = ", ".join(spec.labels)
        rows.append(f"| `{spec.name}` | {spec.kind} | {labels} | {meaning} |")
    return rows


def render_metrics(registry: Registry) -> str:
    """The Markdown table of every metric /metrics can show: the daemon's, each registered
    component type's (``SPEC.metrics``), the ops server's."""
    out = ["| metric | type | labels | meaning |", "|---|---|---|---|", *_metric_rows(DAEMON_METRICS)]
    for kind in ("source", "tool"):
        for spec in registry.specs(kind):
            out += _metric_rows(spec.metrics, f"`{spec.type}` {kind}s: ")
    out += _metric_rows(HTTP_METRICS)
    return "\n".join(out) + "\n"


def with_metrics_table(text: str, table: str) -> str:
    """``text`` with the block between :data:`METRICS_BEGIN` and :data:`METRICS_END` replaced by ``table``."""
    head, begin, rest = text.partition(METRICS_BEGIN + "\n")
    _, end, tail = rest.partition(METRICS_END)
    if not begin or not end:
        raise ValueError(f"the metrics table markers are missing: {METRICS_BEGIN!r} ... {METRICS_END!r}")
    return head + begin + table + end + tail


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:2] == ["--metrics"]:
        table = render_metrics(builtin_registry())
        if len(sys.argv) > 2:  # rewrite the table inside that file
            path = Path(sys.argv[2])
            path.write_text(with_metrics_table(path.read_text(), table))
        else:
            sys.stdout.write(table)
    else:
        sys.stdout.write(render_reference(builtin_registry()))
