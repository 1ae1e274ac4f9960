"""What a reload changes: the difference between the running configuration and a new one.

A reload (SIGHUP, ``reflexd reload``, ``daemon.watch_config``) validates the new file completely
first — as ``reflexd check`` does, preflight included — and then restarts only what changed,
component by component (:meth:`daemon.supervisor.Daemon.reload` applies the plan made here):

- a source, tool or rule whose configuration is equal (after ``${VAR}`` substitution) is
  **kept**: the same object goes on running — a source keeps its connection (a Kafka consumer
  its assignment and position), a rule its state (cooldowns, windows, ...), a tool its in-flight
  calls, circuit breaker and, for an llm tool, its gate (dedup and budget windows);
- a tool that calls other tools (an llm tool) counts as **changed** when one of those changed,
  was added or was removed: it reads their schemas when it starts;
- the ``daemon:`` and ``agent:`` sections are not applied live (the ops listener, the state
  file, the journal, the notification queue and the MCP server are built once per process):
  a change there is logged with the keys that differ and the running values are kept; the
  rest of the file is applied. Restart the daemon to apply them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from daemon.config import AppConfig, ComponentPlan

__all__ = ["RELOAD_RESULTS", "Diff", "ReloadPlan", "config_hash", "plan_reload"]

#: the values of ``reflexd_reloads_total{result}``
RELOAD_RESULTS = ("applied", "unchanged", "failed")


def config_hash(file: str) -> str | None:
    """The SHA-256 of the configuration file's bytes (``sha256sum config.yaml``), None if it cannot be
    read (a configuration built from text). A change only in an environment variable the file
    reads does not change it, but is still a change a reload applies."""
    try:
        return hashlib.sha256(Path(file).read_bytes()).hexdigest()
    except OSError:
        return None


@dataclass
class Diff:
    """Names of one kind of component, by what a reload does with them."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    @property
    def touched(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def as_dict(self) -> dict[str, list[str]]:
        return {"added": self.added, "changed": self.changed, "removed": self.removed, "kept": self.kept}


@dataclass
class ReloadPlan:
    sources: Diff
    tools: Diff
    rules: Diff
    #: ``daemon.http``, ``agent.mcp``, ...: changed keys not applied (the running values are kept)
    not_applied: list[str]

    @property
    def touched(self) -> bool:
        return self.sources.touched or self.tools.touched or self.rules.touched


def _diff(old: dict[str, Any], new: dict[str, Any], same: Any) -> Diff:
    diff = Diff()
    for name, value in new.items():
        if name not in old:
            diff.added.append(name)
        elif same(old[name], value):
            diff.kept.append(name)
        else:
            diff.changed.append(name)
    diff.removed = [name for name in old if name not in new]
    return diff


def _same_component(a: ComponentPlan, b: ComponentPlan) -> bool:
    # the line a component starts at is not part of its configuration
    return a.spec.type == b.spec.type and a.config == b.config


def _changed_keys(section: str, old: BaseModel, new: BaseModel) -> list[str]:
    return [
        f"{section}.{name}" for name in type(old).model_fields if getattr(old, name) != getattr(new, name)
    ]


def plan_reload(old: AppConfig, new: AppConfig) -> ReloadPlan:
    """What a reload from ``old`` to ``new`` keeps, changes, adds and removes."""
    sources = _diff(old.sources, new.sources, _same_component)
    tools = _diff(old.tools, new.tools, _same_component)
    moved = set(tools.added) | set(tools.changed) | set(tools.removed)
    for name in list(tools.kept):  # a tool calling a tool that changed reads its schema again
        plan = new.tools[name]
        refs = plan.spec.tool_refs
        if refs is not None and any(target in moved for _, target in refs(plan.config)):
            tools.kept.remove(name)
            tools.changed.append(name)
    rules = _diff(old.rules, new.rules, lambda a, b: a == b)
    not_applied = _changed_keys("daemon", old.daemon, new.daemon) + _changed_keys(
        "agent", old.agent, new.agent
    )
    return ReloadPlan(sources, tools, rules, not_applied)
