"""The step registry: one module per step kind, one list of specs, everything else derived from it."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from pydantic import ValidationError

import streams.rules.steps as steps_package
from daemon.registry import Registry, builtin_registry
from streams.rules.pipeline import RuleConfig, rule_config_model
from streams.rules.spec import StepSpec, compile_steps, step_union
from streams.rules.steps import BUILTIN_STEPS
from streams.rules.steps.where import SPEC as WHERE
from tests.plugins_step import EVERY, EveryConfig, compile_every

NAMES = [spec.name for spec in BUILTIN_STEPS]


def test_every_step_module_has_its_spec_in_the_list_and_nothing_else_is_listed() -> None:
    """Each module of streams/rules/steps defines SPEC named after the module, and the list holds exactly those."""
    modules = [info.name for info in pkgutil.iter_modules(steps_package.__path__)]
    specs = [importlib.import_module(f"streams.rules.steps.{name}").SPEC for name in modules]
    assert sorted(spec.name for spec in specs) == sorted(modules)
    assert sorted(NAMES) == sorted(modules) and len(set(NAMES)) == len(NAMES)
    assert all(spec in BUILTIN_STEPS for spec in specs)
    assert all(spec.doc for spec in BUILTIN_STEPS)  # the reference has a line for each


def test_step_names_in_parse_errors_and_descriptions_come_from_the_list() -> None:
    """The union's error lists the listed names in order; a trimmed list no longer parses a removed kind."""
    with pytest.raises(ValidationError) as caught:
        RuleConfig.model_validate({"from": "a", "steps": [{"nope": 1}], "then": [{"tool": "t"}]})
    assert f"a step is a mapping with one key, the step's name: {', '.join(NAMES)}" in str(caught.value)
    description = RuleConfig.model_fields["steps"].description
    assert description == f"Pipeline after `where`: {', '.join(NAMES)} (see docs/rules.md)."
    trimmed = rule_config_model([WHERE])
    ok = trimmed.model_validate({"from": "a", "steps": [{"where": "key == 1"}], "then": [{"tool": "t"}]})
    assert [type(step).spec for step in ok.steps] == [WHERE]
    with pytest.raises(ValidationError, match=r"the step's name: where \[type=step_kind"):
        trimmed.model_validate({"from": "a", "steps": [{"set": {"a": "1"}}], "then": [{"tool": "t"}]})
    assert rule_config_model(BUILTIN_STEPS) is RuleConfig


def test_a_step_name_is_snake_case_and_registered_once() -> None:
    """Bad names and duplicates are refused when the spec or the list is built; with_steps replaces in place."""
    for bad in ("Every", "every-n", "1st", ""):
        with pytest.raises(ValueError, match="must be snake_case"):
            StepSpec(bad, EveryConfig, compile_every)
    with pytest.raises(ValueError, match="registered twice: every"):
        step_union([EVERY, EVERY])
    with pytest.raises(ValueError, match="rule steps registered twice"):
        Registry([], [EVERY, EVERY])
    other_where = StepSpec("where", str, WHERE.compile, summary="another where")
    replaced = builtin_registry().with_steps(other_where, EVERY)
    assert replaced.steps[0] is other_where and replaced.steps[-1] is EVERY
    assert [s.name for s in replaced.steps] == [*NAMES, "every"]
    assert replaced.without("tool", "log").steps == replaced.steps  # component edits keep the steps


def test_compile_steps_labels_paths_and_names_in_scope() -> None:
    """Each parsed entry compiles through its own spec: labels steps.<i>.<name>, problems at their path,
    the fields a step adds in scope for the steps after it (not before)."""
    model = rule_config_model([*BUILTIN_STEPS, EVERY])
    rule = model.model_validate(
        {
            "from": "a",
            "steps": [{"where": "nth > 1"}, {"every": 2}, {"set": {"x": "nth * 2"}}, {"throttle": 5}],
            "then": [{"tool": "t"}],
        }
    )
    plan = compile_steps(rule.steps, prefix=("steps",))
    assert [step.label for step in plan.steps] == ["steps.1.every", "steps.2.set", "steps.3.throttle"]
    assert [step.summary for step in plan.steps] == ["every 2 per key", "set x", "throttle 1 per 5s per key"]
    assert [(issue.path, issue.reason.split(":")[0]) for issue in plan.issues] == [
        (("steps", 0, "where"), "column 1")
    ]
    assert plan.names == {"nth", "x"}
