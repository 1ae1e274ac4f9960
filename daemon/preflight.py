"""``reflexd check``'s second half: what ``run`` would fail on, found without starting anything
(as ``nginx -t`` does).

The schema says a configuration is well formed; these checks say it can start:

- each source or tool type's own ``SPEC.preflight`` (a replay file that is not there, an exec
  program not found, a python function that does not import, a file tool's folder that cannot
  be written);
- the daemon's ``state_path`` can be created (when the journal is on);
- the literal arguments a rule passes to a tool fit the tool's own argument schema
  (``tool.schema()["parameters"]``): keys that are required or unknown, and the values that
  are constants (templates without placeholders are checked; the others depend on the event).

Each problem is returned as ``(path, reason)``; :func:`daemon.config.validate` reports them with
their line among the other configuration errors, in one round. Every check here is local:
nothing is sent, ``--offline`` changes nothing yet (a type whose check needs the network reads
``PreflightContext.offline``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from streams.component import BuildContext, ComponentSpec, PreflightContext, writable_file_problem
from streams.expressions import is_constant_template
from streams.rules.pipeline import RuleConfig

__all__ = ["argument_problems", "component_problems", "schema_problems", "state_path_problems"]

Path_ = tuple[str | int, ...]
Found = list[tuple[Path_, str]]


def component_problems(
    section: str, components: Iterable[tuple[str, ComponentSpec, Any]], ctx: PreflightContext
) -> Found:
    """Every component's ``SPEC.preflight`` problems, at ``(section, name, *path)``."""
    found: Found = []
    for name, spec, config in components:
        if spec.preflight is None:
            continue
        for problem in spec.preflight(config, ctx):
            found.append(((section, name, *problem.path), problem.reason))
    return found


def state_path_problems(state_path: str, journal_enabled: bool, ctx: BuildContext) -> Found:
    """The SQLite file the journal opens at start must be creatable."""
    if not journal_enabled:
        return []
    problem = writable_file_problem(ctx.resolve(state_path))
    return [(("daemon", "state_path"), problem)] if problem else []


def argument_problems(rules: Mapping[str, RuleConfig], schemas: Mapping[str, Mapping[str, Any]]) -> Found:
    """Rule call arguments against the called tool's argument schema (``schemas`` by tool name)."""
    found: Found = []
    for rule_name, rule in rules.items():
        for i, call in enumerate(rule.then):
            schema = schemas.get(call.tool)
            if schema is None:
                continue
            at: Path_ = ("rules", rule_name, "then", i, "args")
            found.extend(((*at, *p), reason) for p, reason in schema_problems(schema, call.args))
    return found


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


def _type_ok(value: Any, name: str) -> bool:
    kinds = _JSON_TYPES.get(name)
    if kinds is None:
        return True  # a type this checker does not know: not judged
    if isinstance(value, bool) and name in ("number", "integer"):
        return False
    return isinstance(value, kinds)


def schema_problems(schema: Mapping[str, Any], value: Any, path: Path_ = ()) -> Found:
    """Problems of ``value`` against a JSON Schema, judged only where the value is known now.

    A value that holds a placeholder is rendered per event and is not judged (its key still is).
    Understands ``type``, ``enum``, ``const``, ``properties``, ``required``,
    ``additionalProperties``, ``items``, ``minimum``/``maximum``; other keywords are not judged.
    """
    if not is_constant_template(value):
        if isinstance(value, dict) and schema.get("type", "object") == "object":
            return _object_problems(schema, value, path)
        return []
    found: Found = []
    expected = schema.get("type")
    if expected is not None:
        names: Sequence[str] = [expected] if isinstance(expected, str) else expected
        if not any(_type_ok(value, n) for n in names):
            return [(path, f"must be {' or '.join(names)} (the tool's argument schema), not {_shown(value)}")]
    if "enum" in schema and value not in schema["enum"]:
        options = ", ".join(str(v) for v in schema["enum"])
        found.append((path, f"must be one of: {options} (the tool's argument schema), not {_shown(value)}"))
    if "const" in schema and value != schema["const"]:
        found.append((path, f"must be {schema['const']!r} (the tool's argument schema)"))
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            found.append((path, f"must be at least {schema['minimum']} (the tool's argument schema)"))
        if "maximum" in schema and value > schema["maximum"]:
            found.append((path, f"must be at most {schema['maximum']} (the tool's argument schema)"))
    if isinstance(value, dict):
        found.extend(_object_problems(schema, value, path))
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            found.extend(schema_problems(schema["items"], item, (*path, i)))
    return found


def _object_problems(schema: Mapping[str, Any], value: dict[str, Any], path: Path_) -> Found:
    found: Found = []
    properties: Mapping[str, Any] = schema.get("properties") or {}
    missing = [k for k in schema.get("required", ()) if k not in value]
    if missing:
        found.append((path, f"missing {', '.join(missing)} (required by the tool's argument schema)"))
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            found.extend(schema_problems(properties[key], item, (*path, key)))
        elif extra is False:
            known = ", ".join(properties) or "none"
            found.append(((*path, key), f"unknown argument (the tool takes: {known})"))
        elif isinstance(extra, Mapping):
            found.extend(schema_problems(extra, item, (*path, key)))
    return found


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return type(value).__name__ if isinstance(value, dict | list) else repr(value)
