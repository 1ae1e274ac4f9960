"""A step kind added from outside the package (tests/plugins_step.py, one file) is checked, planned,
documented and run like a built-in one, once it is in the registry the program hands to the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from reactivex import operators as ops

from daemon.config import config_json_schema
from daemon.reference import render_reference
from daemon.registry import builtin_registry
from streams.call import CallContext
from streams.event import Event
from streams.rules.pipeline import Rule, RuleConfig, rule_config_model
from streams.rules.spec import CompiledStep, StepScope, StepSpec
from streams.rules.steps import BUILTIN_STEPS
from tests.daemon.test_replay_cli import line
from tests.plugins_step import EVERY, registry

ROOT = Path(__file__).resolve().parents[3]
PERP = ROOT / "tests" / "data" / "rules" / "perp.jsonl"

CONFIG = f"""\
sources:
  perp: {{type: replay, path: {PERP}}}
tools:
  alert: {{type: log}}
rules:
  third:
    from: perp
    steps:
      - every: 3
      - where: "nth > 3"
    then: [{{tool: alert, args: {{text: "{{key}} {{nth}}"}}}}]
"""


def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_validates_and_plans_a_rule_using_the_plugin_step(tmp_path: Path) -> None:
    """With the plugin in its registry `check` exits 0 and prints the step's plan line; plain reflexd
    does not know the step and says so (exit 2)."""
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    plugged = run("tests.plugins_step", "check", "-c", str(config))
    assert plugged.returncode == 0, plugged.stderr
    assert "third: from perp; every 3 per key; where nth > 3 → alert" in plugged.stdout
    plain = run("daemon.cli", "check", "-c", str(config))
    assert plain.returncode == 2
    assert f"{config}:9 rules.third.steps[0].every: unknown step (steps are: where, set, " in plain.stderr


def test_plugin_step_errors_have_the_built_in_form(tmp_path: Path) -> None:
    """A bad body, a bad shorthand, and a field used before the step adds it are reported as
    file:line path: reason, like a built-in step's."""
    config = tmp_path / "c.yaml"
    config.write_text(
        CONFIG.replace("- every: 3", '- where: "nth > 0"\n      - every: {n: 0}\n      - every: [3]')
    )
    result = run("tests.plugins_step", "check", "-c", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines()[:3] == [
        f"{config}:10 rules.third.steps[1].every.n: input should be greater than or equal to 1",
        f"{config}:11 rules.third.steps[2].every: must be a number of items, or a mapping with n: ...",
        "reflexd: 2 configuration error(s)",
    ]
    config.write_text(CONFIG.replace("- every: 3", '- where: "nth > 0"\n      - every: 3'))
    result = run("tests.plugins_step", "check", "-c", str(config))
    assert result.returncode == 2
    assert f"{config}:9 rules.third.steps[0].where: column 1: unknown name 'nth'" in result.stderr


def test_replay_runs_the_plugin_step(tmp_path: Path) -> None:
    """`replay` fires on every third event of each key after the third, as a plain loop computes."""
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    result = run("tests.plugins_step", "replay", "-c", str(config), str(PERP))
    assert result.returncode == 0, result.stderr
    seen: Counter[str] = Counter()
    want = []
    for text in PERP.read_text().splitlines():
        record = json.loads(text)
        seen[record["key"]] += 1
        nth = seen[record["key"]]
        if nth % 3 == 0 and nth > 3:
            want.append(line(record["ts"], "third", "alert", {"text": f"{record['key']} {nth}"}))
    assert len(want) > 10
    assert result.stdout.splitlines() == want


def test_schema_and_reference_include_the_plugin_step_only_when_registered() -> None:
    """The JSON Schema, the rule's `steps` description and the reference are derived from the registry's steps."""
    schema = config_json_schema(registry())
    assert schema["$defs"]["EveryStep"]["properties"]["every"]["anyOf"] == [
        {"type": "integer"},
        {"$ref": "#/$defs/EveryConfig"},
    ]
    steps = schema["properties"]["rules"]["additionalProperties"]["properties"]["steps"]
    assert {"$ref": "#/$defs/EveryStep"} in steps["items"]["oneOf"]
    assert steps["description"].endswith("join_latest, absence, every (see docs/rules.md).")
    reference = render_reference(registry())
    assert (
        "#### `every`\n\n``every``: pass every `n`-th item (of each key), with its count in field `nth`."
        in reference
    )
    assert "Shorthand: `every: N`." in reference and "| `n` |" in reference
    builtin = builtin_registry()
    assert "EveryStep" not in config_json_schema(builtin)["$defs"]
    assert "`every`" not in render_reference(builtin)
    assert builtin.with_steps(EVERY).steps[-1] is EVERY and EVERY not in builtin.steps


def _even_only(cfg: bool, scope: StepScope) -> CompiledStep | None:
    """A step kind whose operator is a reactivex pipeline of its own, not a StepOperator."""
    return scope.compiled("even", lambda ctx: ops.filter(lambda item: item.data["n"] % 2 == 0))


EVEN = StepSpec("even", bool, _even_only, checkpoint="stateless")


def test_a_step_built_on_reactivex_runs_the_rule_on_a_subject() -> None:
    """Built-in steps are chained directly; a plugin operator that is a reactivex pipeline still
    works (the rule falls back to a Subject), with the built-in steps around it, and a disposed
    rule fires nothing more."""
    model = rule_config_model((*BUILTIN_STEPS, EVEN))
    body = {
        "from": ["feed"],
        "steps": [{"where": "data.n > 1"}, {"even": True}, {"cooldown": 0.5}],
        "then": [{"tool": "t", "args": {"half": "{data.n / 2}"}}],
    }
    calls: list[dict[str, Any]] = []

    def submit(tool: str, args: dict[str, Any], ctx: CallContext) -> bool:
        calls.append(args)
        return True

    rule = Rule("r", model.model_validate(body), submit)
    assert rule.subject is not None
    for n in range(6):
        rule.on_next(Event("feed", float(n), float(n), None, {"n": n}, {}))
    assert calls == [{"half": 1.0}, {"half": 2.0}]
    rule.dispose()
    rule.on_next(Event("feed", 9.0, 9.0, None, {"n": 8}, {}))
    assert len(calls) == 2
    direct = Rule("d", RuleConfig.model_validate({**body, "steps": [{"where": "data.n > 1"}]}), submit)
    assert direct.subject is None
