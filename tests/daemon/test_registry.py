"""The registry: every type has a valid example; it is a value; plugins load as module:attr."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import load_config_text
from daemon.errors import ConfigError
from daemon.registry import BuildContext, builtin_registry
from handlers.base import Tool
from streams.base import Source
from tests.plugins import COUNTER, CounterTool

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", ["source", "tool"])
def test_every_registered_type_has_a_valid_example(kind: str) -> None:
    """Each built-in type's example validates with its model and builds a component of the right kind."""
    registry = builtin_registry()
    specs = registry.specs(kind)  # type: ignore[arg-type]
    assert specs
    for spec in specs:
        assert spec.example.get("type") == spec.type, spec.type
        config = spec.config_model.model_validate(dict(spec.example))
        built = spec.factory("x", config, BuildContext(ROOT))
        assert isinstance(built, Source if kind == "source" else Tool)
        assert all(isinstance(k, str) for k, _ in spec.summary(config))


def test_registry_is_a_value() -> None:
    """with_specs / without return new registries and leave the original alone."""
    base = builtin_registry()
    extended = base.with_specs(COUNTER)
    trimmed = base.without("source", "websocket")
    assert "counter" in extended.types("tool") and "counter" not in base.types("tool")
    assert "websocket" not in trimmed.types("source") and "websocket" in base.types("source")


def test_plugin_type_loads_from_module_path() -> None:
    """`type: package.module:attr` loads a ComponentSpec from an importable module."""
    cfg = load_config_text(
        """\
        sources: {s: {type: replay, path: x.jsonl}}
        tools: {c: {type: "tests.plugins:COUNTER", step: 3}}
        rules: {r: {from: s, then: [{tool: c}]}}
        """.replace("        ", ""),
        builtin_registry(),
    )
    plan = cfg.tools["c"]
    tool = plan.spec.factory("c", plan.config, BuildContext(ROOT))
    assert isinstance(tool, CounterTool) and tool.step == 3


@pytest.mark.parametrize(
    ("type_name", "reason"),
    [
        ("tests.plugins:NOT_A_SPEC", "is not a reflexd ComponentSpec"),
        ("tests.plugins:MISSING", "has no attribute 'MISSING'"),
        ("no_such_module_xyz:X", "cannot import plugin module 'no_such_module_xyz'"),
    ],
)
def test_bad_plugin_is_a_config_error(type_name: str, reason: str) -> None:
    """A plugin that cannot be loaded is a configuration error at the `type` line."""
    text = f'sources: {{s: {{type: replay, path: x}}}}\ntools:\n  c: {{type: "{type_name}"}}\nrules: {{}}\n'
    with pytest.raises(ConfigError) as info:
        load_config_text(text, builtin_registry())
    (issue,) = info.value.issues
    assert str(issue).startswith("config.yaml:3 tools.c.type: ") and reason in str(issue)
