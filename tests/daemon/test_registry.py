"""The registry: every type has a valid example; it is a value; plugins load as module:attr (through the one
import_from_string); each type's SPEC lives in its own module and the registry only lists them."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from daemon.config import load_config_text
from daemon.errors import ConfigError
from daemon.registry import BuildContext, Registry, builtin_registry
from handlers.base import Tool
from streams.base import Source
from streams.component import ComponentSpec, ImportStringError, import_from_string
from tests.plugins import COUNTER, CounterTool
from tests.plugins_source import LINES, LinesSource

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


def test_each_spec_lives_in_its_types_module() -> None:
    """Every built-in type's SPEC is the `SPEC` of the module holding its config model and runtime
    (streams/<type>.py or handlers/<type>.py), and builds a component of that type name."""
    registry = builtin_registry()
    for kind in ("source", "tool"):
        for spec in registry.specs(kind):
            module = importlib.import_module(spec.config_model.__module__)
            assert module.__name__ == f"{'streams' if kind == 'source' else 'handlers'}.{spec.type}"
            assert module.SPEC is spec, spec.type
            built = spec.factory("x", spec.config_model.model_validate(dict(spec.example)), BuildContext(ROOT))
            assert built.type_name == spec.type, spec.type


def test_outside_types_load_by_reference_and_by_registry_value(tmp_path: Path) -> None:
    """A source type and a tool type from outside the package (one file each, with its SPEC) load as
    `type: module:attr`, and by name from an extended registry value; a trimmed one no longer has them."""
    data = tmp_path / "x.jsonl"
    data.write_text("{}\n")
    by_reference = f"""\
        sources: {{s: {{type: "tests.plugins_source:LINES", port: 9}}, r: {{type: replay, path: {data}}}}}
        tools: {{c: {{type: "tests.plugins:COUNTER", step: 2}}}}
        rules: {{x: {{from: s, then: [{{tool: c}}]}}}}
        """.replace("        ", "")
    extended = builtin_registry().with_specs(LINES, COUNTER)
    by_name = by_reference.replace('"tests.plugins_source:LINES"', "lines").replace('"tests.plugins:COUNTER"', "counter")
    for text, registry in ((by_reference, builtin_registry()), (by_name, extended)):
        cfg = load_config_text(text, registry)
        ctx = BuildContext(tmp_path)
        source = cfg.sources["s"].spec.factory("s", cfg.sources["s"].config, ctx)
        tool = cfg.tools["c"].spec.factory("c", cfg.tools["c"].config, ctx)
        assert isinstance(source, LinesSource) and source.config.port == 9
        assert isinstance(tool, CounterTool) and tool.step == 2
    trimmed = extended.without("source", "lines").without("tool", "counter")
    assert isinstance(trimmed, Registry) and "lines" not in trimmed.types("source")
    with pytest.raises(ConfigError, match="unknown source type 'lines'"):
        load_config_text(by_name, trimmed)


@pytest.mark.parametrize(
    ("ref", "stage", "message"),
    [
        (".x:y", "form", "'.x:y' must look like package.module:attr (absolute dotted names of letters, digits and '_')"),
        ("tests.plugins:", "form", "must look like package.module:attr"),
        ("no_such_module_xyz:X", "import", "cannot import module 'no_such_module_xyz': ModuleNotFoundError: "),
        ("tests.handlers.pyfuncs_broken:f", "import", "RuntimeError: broken on import"),
        ("tests.plugins:COUNTER.nope", "attribute", "module 'tests.plugins' has no attribute 'COUNTER.nope'"),
    ],
)
def test_import_from_string_says_why(ref: str, stage: str, message: str) -> None:
    """The one `module:attr` loader (plugins, python tool functions): a malformed reference, a module that
    fails to import (whatever it raises) and a missing attribute are ImportStringErrors saying which."""
    with pytest.raises(ImportStringError) as info:
        import_from_string(ref)
    assert info.value.stage == stage and message in str(info.value)
    assert "\n" not in str(info.value)


def test_import_from_string_follows_an_attribute_path() -> None:
    """`module:a.b` walks attributes: the spec object itself, then one of its fields."""
    assert import_from_string("tests.plugins:COUNTER") is COUNTER
    assert import_from_string("tests.plugins:COUNTER.type") == "counter"
    assert isinstance(import_from_string("tests.plugins_source:LINES"), ComponentSpec)
