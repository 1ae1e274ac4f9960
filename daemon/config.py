"""Configuration: load the YAML file, validate every section, check cross-references.

Every problem becomes a :class:`~daemon.errors.ConfigIssue` printed as
``config.yaml:LINE path.to.field: reason``; all of them are collected before failing, so one
``reflexd check`` shows everything to fix. Component sections are validated by the model
their type registers (see :mod:`daemon.registry`); unknown keys are errors everywhere.
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_core import ErrorDetails

from daemon.endpoint import MIN_TOKEN_CHARS, bearer_token, host_names, is_loopback, parse_listen
from daemon.errors import ConfigError, ConfigIssue, ExpressionError
from daemon.mcp import BUILTIN_TOOLS, McpConfig
from daemon.preflight import argument_problems, component_problems, state_path_problems
from daemon.registry import BuildContext, ComponentSpec, Kind, Registry
from daemon.tracing import TracingConfig
from daemon.yamlio import EnvText, LoadedYaml, format_path, load_yaml_file, load_yaml_text, resolve_scalar
from handlers.notifications import NotificationsConfig
from streams.component import PreflightContext
from streams.event import READABLE_FIELDS
from streams.expressions import compile_expression, compile_template
from streams.rules.pipeline import RuleConfig, plan_rule, rule_config_model

__all__ = [
    "AgentConfig",
    "AppConfig",
    "ComponentPlan",
    "DaemonConfig",
    "HttpConfig",
    "JournalConfig",
    "config_json_schema",
    "load_config",
    "load_config_text",
    "parse_listen",
]

TOP_LEVEL = ("daemon", "agent", "sources", "tools", "rules")
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
Path_ = tuple[str | int, ...]


class HttpConfig(BaseModel):
    """The ops HTTP server: /healthz /readyz /metrics /status /kill-switch (see :mod:`daemon.http`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    listen: str = Field(
        "127.0.0.1:9108", description="host:port to bind; keep it on loopback unless protected."
    )
    token: SecretStr | None = Field(
        None,
        description=(
            "Bearer token required by every state-changing request (POST, DELETE, ...), normally "
            f"`${{REFLEXD_OPS_TOKEN}}`; at least {MIN_TOKEN_CHARS} characters. Unset or empty: "
            "those endpoints answer 403."
        ),
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "Host names accepted in the `Host` header besides the listen address (and, on loopback, "
            "`localhost` / `127.0.0.1` / `[::1]`; on 0.0.0.0 or `::`, any IP address); others get 421. "
            "Also the origins a state-changing request may come from. `*` accepts any Host."
        ),
        examples=[["reflexd.internal"]],
    )
    max_connections: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Most open connections; at the cap a new one replaces the oldest idle one, or is closed.",
    )
    request_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description=(
            "A client must send a request's headers within this long of connecting (or of the previous "
            "response) and its body within this long of the headers; otherwise the connection is closed."
        ),
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    # `${REFLEXD_OPS_TOKEN:-}` (empty) is no token: state-changing endpoints stay off
    _token = field_validator("token", mode="before")(bearer_token)
    _allowed_hosts = field_validator("allowed_hosts")(host_names)


class JournalConfig(BaseModel):
    """The invocation journal and dead-letter queue in ``state_path``."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    enabled: bool = Field(True, description="Journal every tool invocation; dead-letter final failures.")
    retention_seconds: float = Field(
        7 * 86400.0, gt=0, description="Journal rows older than this are dropped."
    )
    max_rows: int = Field(1_000_000, ge=1000, description="Most journal rows kept (oldest dropped first).")


class DaemonConfig(BaseModel):
    """Process-wide settings."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level logged."
    )
    log_format: Literal["json", "console"] = Field("json", description="JSON lines, or a console format.")
    http: HttpConfig | None = Field(
        default_factory=HttpConfig, description="Ops endpoints; null disables them."
    )
    state_path: str = Field(
        "./var/reflexd.db", description="Embedded SQLite state (journal, DLQ, rule state)."
    )
    journal: JournalConfig = Field(default_factory=JournalConfig, description="Invocation journal and DLQ.")
    checkpoint_seconds: float = Field(
        10.0,
        ge=0,
        le=86400,
        description="How often every rule's state (cooldowns, windows, ...) is saved to state_path, "
        "also at a graceful stop, and restored at start; 0: not saved, rules start empty.",
    )
    shutdown_timeout_seconds: float = Field(20.0, gt=0, le=3600, description="Budget for a graceful stop.")
    pid_file: str | None = Field(
        None,
        description="File the running daemon writes its process id to (removed at exit); "
        "`reflexd reload` signals the process it names.",
    )
    watch_config: bool = Field(
        False,
        description="Reload when the configuration file changes (checked every second), as on SIGHUP.",
    )
    tracing: TracingConfig | None = Field(
        None, description="OpenTelemetry traces of the events that fire rules (OTLP/HTTP); null: off."
    )


class AgentConfig(BaseModel):
    """``agent:``: what the llm tools share (docs/agent.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    notifications: NotificationsConfig = Field(
        default_factory=NotificationsConfig,
        description="The queue an llm tool drains into one message before each model call.",
    )
    approvals_poll_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often the daemon looks for approvals decided by `reflexd approvals`.",
    )
    mcp: McpConfig | None = Field(
        None,
        description="The MCP server: configured tools, rule fires and notifications for any MCP client; "
        "off unless set.",
    )


@dataclass(frozen=True)
class ComponentPlan:
    """One validated source or tool."""

    name: str
    spec: ComponentSpec
    config: Any
    line: int | None


@dataclass(frozen=True)
class AppConfig:
    """A validated configuration, ready to build."""

    file: str
    base_dir: Path
    daemon: DaemonConfig
    sources: dict[str, ComponentPlan]
    tools: dict[str, ComponentPlan]
    rules: dict[str, RuleConfig]
    secret_paths: frozenset[Path_] = field(default_factory=frozenset)
    agent: AgentConfig = field(default_factory=AgentConfig)
    #: the texts that came from ``${VAR}`` (what the agent's transcripts are scrubbed of when shown)
    secret_texts: frozenset[str] = field(default_factory=frozenset)

    def secret_arguments(self) -> dict[tuple[str | None, str], frozenset[str]]:
        """Per (rule, tool): argument names whose configured value came from the environment
        (the journal and ``reflexd dlq list`` redact them)."""
        out: dict[tuple[str | None, str], set[str]] = {}
        for rule_name, rule in self.rules.items():
            for i, call in enumerate(rule.then):
                names = {k for k in call.args if self.is_secret(("rules", rule_name, "then", i, "args", k))}
                out.setdefault((rule_name, call.tool), set()).update(names)
        return {k: frozenset(v) for k, v in out.items()}

    def is_secret(self, path: Sequence[str | int]) -> bool:
        """True if the value at ``path`` (or inside it) came from the environment."""
        return self.build_context().from_env(*path)

    def build_context(self) -> BuildContext:
        """What the component factories get besides their own config."""
        return BuildContext(self.base_dir, self.secret_paths)


def load_config(
    path: str | os.PathLike[str],
    registry: Registry,
    env: Mapping[str, str] | None = None,
    *,
    preflight: bool = False,
    offline: bool = False,
) -> AppConfig:
    """Read and validate a configuration file. Raises :class:`ConfigError`.

    ``preflight`` (``reflexd check``): also report what would make ``run`` fail to start
    (:mod:`daemon.preflight`), among the other errors; ``offline`` skips checks that need the network.
    """
    loaded = load_yaml_file(path, env)
    return validate(loaded, registry, Path(path).resolve().parent, preflight=preflight, offline=offline)


def load_config_text(
    text: str,
    registry: Registry,
    *,
    file: str = "config.yaml",
    base_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> AppConfig:
    """Validate configuration text (tests, embedded configs). Raises :class:`ConfigError`."""
    return validate(
        load_yaml_text(text, file, env if env is not None else {}), registry, base_dir or Path.cwd()
    )


_FROM_ENV = "a value from the environment"


class _Checker:
    def __init__(self, loaded: LoadedYaml) -> None:
        self.loaded = loaded
        self.issues: list[ConfigIssue] = []

    def add(self, path: Sequence[str | int], reason: str) -> None:
        reason = self._masked(path, reason)
        self.issues.append(
            ConfigIssue(self.loaded.file, self.loaded.line_of(path), format_path(path), reason)
        )

    def secret(self, path: Sequence[str | int]) -> bool:
        """True if ``path`` is, holds or lies inside a value that came from ``${VAR}``."""
        key = tuple(path)
        return any(_related(p, key) for p in self.loaded.secret_paths)

    def from_env(self, path: Sequence[str | int]) -> bool:
        """True if ``path`` is, or lies inside, a value that came from ``${VAR}``."""
        key = tuple(path)
        return any(key[: len(p)] == p for p in self.loaded.secret_paths)

    def _masked(self, path: Sequence[str | int], reason: str) -> str:
        """The last guard: in a reason about (or around) an interpolated value, every environment
        value used there is written ``***``, whatever produced the reason (a validator, a parser...)."""
        key = tuple(path)
        found = {v for p, values in self.loaded.secret_values.items() if _related(p, key) for v in values}
        for value in sorted(found, key=len, reverse=True):
            reason = reason.replace(value, "***")
        return reason

    def kind(self, path: Sequence[str | int], value: Any) -> str:
        """What ``value`` is, for an error at ``path``; a value from the environment is not shown."""
        if isinstance(value, str | int | float) and not isinstance(value, bool) and self.secret(path):
            return _FROM_ENV
        return _kind(value)

    def pydantic(self, prefix: Path_, errors: list[ErrorDetails], model: Any = None) -> None:
        for err in errors:
            path = prefix + tuple(err["loc"])
            self.add(path, self.reason(path, err, model))

    def reason(self, path: Path_, err: ErrorDetails, model: Any = None) -> str:
        """Why ``err`` (at ``path``); ``model``, the type validated, names the keys an unknown key
        could have meant."""
        value = err.get("input")
        if err["type"] == "extra_forbidden" and model is not None:
            return "unknown key" + _key_hint(str(err["loc"][-1]), _keys_at(model, tuple(err["loc"])[:-1]))
        if isinstance(value, dict) and err["type"].endswith("_type") and not self.secret(path):
            quoted = _unquoted_template(value)
            if quoted is not None:
                return _unquoted_reason(path, quoted)
        if isinstance(value, EnvText) and err["type"].endswith(("_parsing", "_parsing_size", "_type")):
            try:
                resolve_scalar(value)
            except ValueError as exc:
                return str(exc)  # "number too large ..."
        return _reason(err, hide=isinstance(value, EnvText) or self.secret(path))

    def validate(self, model: type[BaseModel], raw: Any) -> tuple[Any, list[ErrorDetails]]:
        """``model`` validated from ``raw``, or ``None`` and the errors.

        A value from ``${VAR}`` arrives as its exact text (:class:`EnvText`), which string fields
        keep; where a field rejects that text, it is validated once more as the YAML scalar it
        spells (``0x10`` → 16, ``1e3`` → 1000.0, ``null`` → None).
        """
        try:
            return model.model_validate(raw), []
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        typed: dict[int, Any] = {}
        for err in errors:
            value = err.get("input")
            if isinstance(value, EnvText) and id(value) not in typed:
                try:
                    resolved = resolve_scalar(value)
                except ValueError:
                    continue
                if not isinstance(resolved, str):
                    typed[id(value)] = resolved
        if not typed:
            return None, errors
        try:
            return model.model_validate(_retyped(raw, typed)), []
        except ValidationError as exc:
            return None, exc.errors(include_url=False)

    def model(self, model: type[BaseModel], raw: Any, prefix: Path_) -> Any:
        result, errors = self.validate(model, raw)
        self.pydantic(prefix, errors, model)
        return result


def _related(a: Path_, b: Path_) -> bool:
    """One path is a prefix of the other (the same value, or one inside the other)."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _retyped(node: Any, typed: Mapping[int, Any]) -> Any:
    """A copy of ``node`` where each EnvText whose ``id`` is in ``typed`` is replaced by that value."""
    if isinstance(node, dict):
        return {k: _retyped(v, typed) for k, v in node.items()}
    if isinstance(node, list):
        return [_retyped(v, typed) for v in node]
    if isinstance(node, EnvText):
        return typed.get(id(node), node)
    return node


def _reason(err: ErrorDetails, hide: bool = False) -> str:
    """A short reason for a pydantic error; ``hide``: never describe the input by its value."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    loc = err["loc"]
    value = err.get("input")
    found = _FROM_ENV if hide and isinstance(value, str | int | float) else _kind(value)
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"must be one of: {expected}"
    if kind in ("int_type", "int_parsing", "int_from_float", "int_parsing_size"):
        return f"must be an integer, not {found}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, not {found}"
    if kind in ("string_type",):
        return f"must be a string, not {found}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, not {found}"
    if kind in ("list_type",):
        return f"must be a list, not {found}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping, not {found}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    msg = err["msg"]
    del loc
    return msg[:1].lower() + msg[1:]


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, EnvText):
        return _FROM_ENV
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _unknown_key_hint(checker: _Checker, path: Path_, key: str, allowed: Sequence[str]) -> None:
    checker.add((*path, key), f"unknown key{_key_hint(key, allowed)}")


def _key_hint(key: str, allowed: Sequence[str] | None) -> str:
    """`` (did you mean 'x'?)``, or the keys allowed when none is close; empty when they are unknown."""
    if not allowed:
        return ""
    close = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (expected one of: {', '.join(allowed)})"


def _arms(annotation: Any) -> list[Any]:
    """The types a value of ``annotation`` may have (``Annotated`` and unions unwrapped)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _arms(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [arm for arg in get_args(annotation) for arm in _arms(arg)]
    return [annotation]


def _keys_at(annotation: Any, loc: Path_, depth: int = 0) -> list[str] | None:
    """The keys of the model found at ``loc`` (a pydantic error location) below ``annotation``,
    or None when that is not a model (or not known)."""
    if depth > 64:
        return None
    arms = _arms(annotation)
    for arm in arms:
        if isinstance(arm, type) and issubclass(arm, BaseModel):
            fields = {(f.alias or n): f.annotation for n, f in arm.model_fields.items()}
            if not loc:
                return list(fields)
            head = loc[0]
            if isinstance(head, str) and head in fields:
                found = _keys_at(fields[head], loc[1:], depth + 1)
                if found is not None:
                    return found
        elif loc and get_origin(arm) in (list, tuple, dict):
            args = get_args(arm)
            if args:  # an index or a key, then the item's type
                found = _keys_at(args[-1], loc[1:], depth + 1)
                if found is not None:
                    return found
    if len(arms) > 1 and loc and isinstance(loc[0], str):  # a tagged union puts the tag in the location
        return _keys_at(annotation, loc[1:], depth + 1)
    return None


def validate(
    loaded: LoadedYaml, registry: Registry, base_dir: Path, *, preflight: bool = False, offline: bool = False
) -> AppConfig:
    """Validate a loaded YAML document against the registry's component models (and, with
    ``preflight``, what starting it needs: :mod:`daemon.preflight`)."""
    c = _Checker(loaded)
    root = loaded.data
    if root is None:
        raise ConfigError([ConfigIssue(loaded.file, 1, "", "the configuration is empty")])
    if not isinstance(root, dict):
        raise ConfigError([ConfigIssue(loaded.file, 1, "", f"must be a mapping, not {c.kind((), root)}")])
    for key in root:
        if key not in TOP_LEVEL:
            _unknown_key_hint(c, (), key, TOP_LEVEL)

    daemon_cfg = c.model(DaemonConfig, root.get("daemon") or {}, ("daemon",)) or DaemonConfig()
    agent_cfg = c.model(AgentConfig, root.get("agent") or {}, ("agent",)) or AgentConfig()
    sources = _components(c, registry, "source", "sources", root.get("sources"))
    tools = _components(c, registry, "tool", "tools", root.get("tools"))
    _tool_refs(c, tools, root.get("tools"))
    _event_names(c, tools, root.get("sources"))
    rules = _rules(c, registry, root.get("rules"), sources, tools)
    _env_only(c, tools, root.get("tools"))
    _event_loops(c, rules, tools)
    _mcp(c, agent_cfg, daemon_cfg, tools, root.get("agent"), root.get("tools"))
    if not sources and not any(i.path.startswith("sources") for i in c.issues):
        c.add(("sources",), "at least one source is required")
    if preflight:
        daemon_ok = not any(i.path.startswith("daemon") for i in c.issues)
        ctx = BuildContext(base_dir, loaded.secret_paths)
        for at, reason in _preflight(daemon_cfg if daemon_ok else None, sources, tools, rules, ctx, offline):
            c.add(at, reason)
    if c.issues:
        raise ConfigError(c.issues)
    secret_texts = frozenset(v for values in loaded.secret_values.values() for v in values if len(v) >= 4)
    return AppConfig(
        loaded.file, base_dir, daemon_cfg, sources, tools, rules, loaded.secret_paths, agent_cfg, secret_texts
    )


def _tool_refs(c: _Checker, tools: Mapping[str, ComponentPlan], raw_tools: Any) -> None:
    """The tools a tool calls (an llm tool's ``tools``) must be configured tools that call no tools
    themselves (no loops, no llm tool calling another) and not the tool itself."""
    callers = {name for name, plan in tools.items() if plan.spec.tool_refs is not None}
    for name, plan in tools.items():
        refs = plan.spec.tool_refs
        if refs is None:
            continue
        for rel, target in refs(plan.config):
            at: Path_ = ("tools", name, *rel)
            if target == name:
                c.add(at, f"{name!r} cannot call itself")
            elif target in callers:
                c.add(
                    at,
                    f"{target!r} calls tools itself ({tools[target].spec.type} tool): a tool that calls "
                    "tools may not call another (no loops)",
                )
            elif target not in tools:
                if isinstance(raw_tools, dict) and target in raw_tools:
                    continue  # the tool itself is invalid and already reported
                known = ", ".join(sorted(t for t in tools if t not in callers)) or "none"
                c.add(at, f"no tool named {_FROM_ENV if c.secret(at) else repr(target)} (tools: {known})")


def _env_only(c: _Checker, tools: Mapping[str, ComponentPlan], raw_tools: Any) -> None:
    """Fields a type takes only from the environment (an llm tool's ``api_key``): a literal value in
    the file is refused, without showing it."""
    if not isinstance(raw_tools, dict):
        return
    for name, plan in tools.items():
        body = raw_tools.get(name)
        for field_name in plan.spec.env_only:
            if isinstance(body, dict) and body.get(field_name) is not None:
                at: Path_ = ("tools", name, field_name)
                if not c.from_env(at):
                    c.add(
                        at,
                        f"must come from the environment (e.g. ${{{name.upper()}_{field_name.upper()}}}), "
                        "never written in the file; the value is not shown",
                    )


def _mcp(
    c: _Checker,
    agent: AgentConfig,
    daemon: DaemonConfig,
    tools: Mapping[str, ComponentPlan],
    raw_agent: Any,
    raw_tools: Any,
) -> None:
    """``agent.mcp``: its token only from the environment and present unless ``auth: none`` on
    loopback; its tools configured (an llm tool is allowed: a call starts an agent run), none named
    like the server's own, ``require_approval`` among them (and the journal on, where approvals live)."""
    mcp = agent.mcp
    if mcp is None:
        return
    at: Path_ = ("agent", "mcp")
    raw = raw_agent.get("mcp") if isinstance(raw_agent, dict) else None
    raw = raw if isinstance(raw, dict) else {}
    token_at: Path_ = (*at, "token")
    if raw.get("token") is not None and not c.from_env(token_at):
        c.add(
            token_at,
            "must come from the environment (e.g. ${REFLEXD_MCP_TOKEN}), never written in the file; "
            "the value is not shown",
        )
    host, _port = parse_listen(mcp.listen)
    if mcp.auth == "none":
        if not is_loopback(host):
            c.add(
                (*at, "listen"),
                f"auth: none is allowed only on a loopback address (127.0.0.1, ::1, localhost), not on "
                f"{_FROM_ENV if c.secret((*at, 'listen')) else host}: set a token",
            )
        if mcp.token is not None:
            c.add(token_at, "a token is set but auth is none: remove one of them")
    elif mcp.token is None:
        c.add(
            token_at if "token" in raw else at,
            "needs a bearer token: token: ${REFLEXD_MCP_TOKEN} (or, on a loopback listen address only, "
            "auth: none)",
        )
    for i, name in enumerate(mcp.tools):
        if name in BUILTIN_TOOLS:
            c.add(
                (*at, "tools", i),
                f"{name!r} is also the name of one of the MCP server's own tools "
                f"({', '.join(BUILTIN_TOOLS)}): rename the configured tool",
            )
        elif name not in tools and not (isinstance(raw_tools, dict) and name in raw_tools):
            # (a tool whose own section is invalid is reported there)
            shown = _FROM_ENV if c.secret((*at, "tools", i)) else repr(name)
            c.add((*at, "tools", i), f"no tool named {shown} (tools: {', '.join(sorted(tools)) or 'none'})")
    for i, name in enumerate(mcp.require_approval):
        if name not in mcp.tools:
            shown = _FROM_ENV if c.secret((*at, "require_approval", i)) else repr(name)
            c.add((*at, "require_approval", i), f"{shown} is not in agent.mcp.tools")
    if mcp.require_approval and not daemon.journal.enabled:
        c.add(
            (*at, "require_approval"),
            "approvals live in the journal, which is off (daemon.journal.enabled: false)",
        )


def _event_loops(c: _Checker, rules: Mapping[str, RuleConfig], tools: Mapping[str, ComponentPlan]) -> None:
    """A rule reading a tool's events (an llm tool's answers) may not call, through any chain of
    rules, the tool whose events it reads: every answer would start another run. Refused at the call
    that closes the loop."""
    emitters = {name for name, plan in tools.items() if plan.spec.emits_events}
    edges: dict[str, set[str]] = {}  # emitter → the emitters its events lead to
    closing: dict[tuple[str, str], Path_] = {}
    for rule_name, rule in rules.items():
        for src in rule.from_:
            if src not in emitters:
                continue
            for i, call in enumerate(rule.then):
                if call.tool in emitters:
                    edges.setdefault(src, set()).add(call.tool)
                    closing.setdefault((src, call.tool), ("rules", rule_name, "then", i, "tool"))
    for (src, target), at in closing.items():
        # a loop: from target's events we get back to src
        seen, todo = set(), [target]
        while todo:
            node = todo.pop()
            if node == src:
                chain = "itself" if src == target else f"{target!r}, whose answers lead back to {src!r}"
                c.add(
                    at,
                    f"a loop: this rule reads the answers of {src!r} and calls {chain}; every answer "
                    "would start another run",
                )
                break
            if node not in seen:
                seen.add(node)
                todo.extend(edges.get(node, ()))


def _event_names(c: _Checker, tools: Mapping[str, ComponentPlan], raw_sources: Any) -> None:
    """A tool whose results are events (an llm tool's answers) is read as a source of its own name:
    a source of that name too would make ``from: [name]`` mean two things. Refused at the tool."""
    if not isinstance(raw_sources, dict):
        return
    for name, plan in tools.items():
        if plan.spec.emits_events and name in raw_sources:
            c.add(
                ("tools", name),
                f"a source is named {name!r} too, and this {plan.spec.type} tool's answers are events of "
                f"source {name!r}: rename one of them",
            )


def _preflight(
    daemon_cfg: DaemonConfig | None,
    sources: Mapping[str, ComponentPlan],
    tools: Mapping[str, ComponentPlan],
    rules: Mapping[str, RuleConfig],
    ctx: BuildContext,
    offline: bool,
) -> list[tuple[Path_, str]]:
    """What ``run`` would fail on in the valid parts of the configuration (:mod:`daemon.preflight`)."""
    pctx = PreflightContext(ctx, offline)
    found = []
    if daemon_cfg is not None:
        found += state_path_problems(daemon_cfg.state_path, daemon_cfg.journal.enabled, ctx)
    found += component_problems("sources", ((n, p.spec, p.config) for n, p in sources.items()), pctx)
    found += component_problems("tools", ((n, p.spec, p.config) for n, p in tools.items()), pctx)
    schemas: dict[str, Any] = {}
    for name, plan in tools.items():
        try:
            schemas[name] = plan.spec.factory(name, plan.config, ctx).schema()["parameters"]
        except Exception:  # a factory that cannot build here is judged at start, not now
            continue
    found += argument_problems(rules, schemas)
    return found


def _section(c: _Checker, key: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        c.add((key,), f"must be a mapping of names to {key}, not {c.kind((key,), raw)}")
        return {}
    good = {}
    for name, body in raw.items():
        if not NAME_RE.match(name):
            c.add((key, name), "names start with a letter and use letters, digits, '_' or '-' (at most 64)")
            continue
        if not isinstance(body, dict):
            c.add((key, name), f"must be a mapping, not {c.kind((key, name), body)}")
            continue
        good[name] = body
    return good


def _components(c: _Checker, registry: Registry, kind: Kind, key: str, raw: Any) -> dict[str, ComponentPlan]:
    plans: dict[str, ComponentPlan] = {}
    for name, body in _section(c, key, raw).items():
        type_name = body.get("type")
        if type_name is None:
            c.add((key, name, "type"), f"required (one of: {', '.join(registry.types(kind))})")
            continue
        if not isinstance(type_name, str):
            c.add((key, name, "type"), f"must be a string, not {c.kind((key, name, 'type'), type_name)}")
            continue
        try:
            spec = registry.get(kind, type_name)
        except LookupError as exc:
            if c.secret((key, name, "type")):  # the reason would show (part of) the value
                c.add((key, name, "type"), f"not a {kind} type or plugin ({_FROM_ENV}, not shown)")
            else:
                c.add((key, name, "type"), str(exc.args[0]))
            continue
        fields: frozenset[str] = getattr(spec.config_model, "template_fields", frozenset())
        body = _as_templates(c, (key, name), body, _in_fields(fields))
        model = c.model(spec.config_model, body, (key, name))
        if model is not None:
            plans[name] = ComponentPlan(name, spec, model, c.loaded.line_of((key, name)))
    return plans


def _rules(
    c: _Checker,
    registry: Registry,
    raw: Any,
    sources: Mapping[str, ComponentPlan],
    tools: Mapping[str, ComponentPlan],
) -> dict[str, RuleConfig]:
    rules: dict[str, RuleConfig] = {}
    rule_model = rule_config_model(registry.steps)  # the rule step kinds are the registry's
    step_kinds = [step.name for step in registry.steps]
    raw_sources = c.loaded.data.get("sources") if isinstance(c.loaded.data, dict) else None
    raw_tools = c.loaded.data.get("tools") if isinstance(c.loaded.data, dict) else None
    for name, body in _section(c, "rules", raw).items():
        prefix: Path_ = ("rules", name)
        reported = _precheck_steps(c, prefix, body.get("steps"), step_kinds)
        body = _as_templates(c, prefix, body, _is_call_argument)
        rule, errors = c.validate(rule_model, body)
        # With schema errors the rule is not built, but the parts that are valid are still checked
        # (names, expressions, templates): all the errors in one round.
        bad: set[str | int | tuple[str, int]] = set()
        for err in errors:
            loc = _step_loc(tuple(err["loc"]))
            if loc:  # () is the rule as a whole (e.g. a key that is not valid text): nothing named is bad
                bad.add(loc[0] if len(loc) < 2 or not isinstance(loc[1], int) else (str(loc[0]), loc[1]))
            if len(loc) >= 2 and loc[0] == "steps" and loc[1] in reported:
                continue  # already explained by the pre-check
            c.add(prefix + loc, c.reason(prefix + loc, err, rule_model))
        ok = rule is not None and not reported
        from_ = rule.from_ if rule is not None else _raw_names(body.get("from"), "from" in bad)
        for i, src in enumerate(from_):
            if src not in sources and not (src in tools and tools[src].spec.emits_events):
                written = (raw_sources, raw_tools)
                if src not in tools and any(isinstance(raw, dict) and src in raw for raw in written):
                    continue  # the source (or tool) itself is invalid and already reported
                emitting = ", ".join(_emitting(registry, tools, raw_tools))
                known = ", ".join(sorted(sources)) or "none"
                listed = isinstance(body.get("from"), list)
                path: Path_ = (*prefix, "from", i) if listed else (*prefix, "from")
                if src in tools and not c.secret(path):  # a tool whose results are not events
                    reason = f"tool {src!r} has no events; tools with events: {emitting or 'none'}"
                    c.add(path, f"{reason} (sources: {known})")
                else:
                    if emitting:
                        known += f"; tools with events: {emitting}"
                    shown = _FROM_ENV if c.secret(path) else repr(src)
                    c.add(path, f"no source named {shown} (sources: {known})")
                ok = False
        where = rule.where if rule is not None else body.get("where")
        if isinstance(where, str) and "where" not in bad:
            ok &= _expression(c, (*prefix, "where"), where)
        plan = None
        if rule is not None and not reported:
            plan = plan_rule(rule)
        elif not reported and not any(b == "steps" or (type(b) is tuple and b[0] == "steps") for b in bad):
            plan = _plan_steps(c, rule_model, body.get("steps"), from_)
        if plan is not None:
            for issue in plan.issues:
                at = prefix + issue.path
                hidden = c.from_env(at)  # an expression error quotes pieces of the text
                c.add(at, f"invalid expression ({_FROM_ENV}, not shown)" if hidden else issue.reason)
                ok = False
        calls = (
            [(i, call.tool, call.args) for i, call in enumerate(rule.then)]
            if rule is not None
            else _raw_calls(body.get("then"), bad)
        )
        for i, tool, args in calls:
            if tool not in tools and not (isinstance(raw_tools, dict) and tool in raw_tools):
                known = ", ".join(sorted(tools)) or "none"
                at = (*prefix, "then", i, "tool")
                c.add(at, f"no tool named {_FROM_ENV if c.secret(at) else repr(tool)} (tools: {known})")
                ok = False
            if plan is not None:  # without the steps' computed fields, placeholders cannot be checked
                ok &= _templates(c, (*prefix, "then", i, "args"), args, plan.names)
        if ok and rule is not None:
            rules[name] = rule
    return rules


def _emitting(registry: Registry, tools: Mapping[str, ComponentPlan], raw_tools: Any) -> list[str]:
    """The tools whose results are events (rules may read them), also those with a config error."""
    names = {name for name, plan in tools.items() if plan.spec.emits_events}
    for name, body in raw_tools.items() if isinstance(raw_tools, dict) else ():
        type_name = body.get("type") if isinstance(body, dict) else None
        if name not in tools and isinstance(type_name, str):
            try:
                if registry.get("tool", type_name).emits_events:
                    names.add(name)
            except LookupError:
                continue
    return sorted(names)


def _raw_names(raw: Any, bad: bool) -> list[str]:
    """A rule's ``from`` as written (one name or a list), when it is a valid one."""
    if bad:
        return []
    if isinstance(raw, str):
        return [raw]
    return [v for v in raw if isinstance(v, str)] if isinstance(raw, list) else []


def _raw_calls(raw: Any, bad: set[Any]) -> list[tuple[int, str, dict[str, Any]]]:
    """A rule's ``then`` entries as written, those without a schema error: (index, tool, args)."""
    if not isinstance(raw, list) or "then" in bad:
        return []
    calls = []
    for i, call in enumerate(raw):
        if ("then", i) not in bad and isinstance(call, dict) and isinstance(call.get("tool"), str):
            args = call.get("args")
            calls.append((i, call["tool"], args if isinstance(args, dict) else {}))
    return calls


def _plan_steps(c: _Checker, rule_model: type[RuleConfig], raw: Any, from_: Sequence[str]) -> Any:
    """The plan of a rule's ``steps`` alone (the rest of the rule has schema errors), or None."""
    stand_in = {"from": list(from_) or ["-"], "steps": raw or [], "then": [{"tool": "-"}]}
    partial, _ = c.validate(rule_model, stand_in)
    if partial is None:
        return None
    return plan_rule(partial.model_copy(update={"from_": list(from_)}))


def _as_templates(
    c: _Checker, prefix: Path_, body: dict[str, Any], is_template: Callable[[Path_], bool]
) -> dict[str, Any]:
    """``body`` (the mapping at ``prefix``) with every value from ``${VAR}`` that sits in a template
    (``is_template`` of its path below ``prefix``) replaced by its template text, where the substituted
    braces are doubled: a value from the environment renders as the literal text it is."""
    n = len(prefix)
    for path, text in c.loaded.template_texts.items():
        if len(path) > n and path[:n] == prefix and is_template(path[n:]):
            body = _replaced(body, path[n:], text)
    return body


def _replaced(tree: Any, rel: Path_, value: str) -> Any:
    """A copy of ``tree`` with the value at ``rel`` replaced (only the containers on the way are copied)."""
    copy: Any = dict(tree) if isinstance(tree, dict) else list(tree)
    head, rest = rel[0], rel[1:]
    copy[head] = _replaced(tree[head], rest, value) if rest else value
    return copy


def _in_fields(fields: frozenset[str]) -> Callable[[Path_], bool]:
    """Paths below a component that lie in one of ``fields`` (its template fields)."""
    return lambda rel: rel[0] in fields


def _is_call_argument(rel: Path_) -> bool:
    """``then[i].args...`` below a rule: the call arguments, which are templates."""
    return len(rel) > 3 and rel[0] == "then" and rel[2] == "args"


def _step_loc(loc: Path_) -> Path_:
    """pydantic puts a tagged union's tag in the error location: ``steps.0.window.window.seconds``."""
    if len(loc) >= 4 and loc[0] == "steps" and loc[2] == loc[3]:
        return loc[:2] + loc[3:]
    return loc


def _precheck_steps(c: _Checker, prefix: Path_, raw: Any, kinds: Sequence[str]) -> set[int]:
    """Explain steps that are not one-key mappings of a known step name; returns their indexes."""
    reported: set[int] = set()
    if not isinstance(raw, list):
        return reported
    for i, step in enumerate(raw):
        at = (*prefix, "steps", i)
        if not isinstance(step, dict):
            c.add(at, f"must be a mapping with one key, the step's name ({', '.join(kinds)})")
            reported.add(i)
            continue
        if len(step) != 1:
            keys = ", ".join(str(k) for k in step) or "none"
            c.add(at, f"a step has exactly one key, the step's name (found: {keys}); write one step per item")
            reported.add(i)
            continue
        (kind,) = step
        if kind == "set" and _written_with_equals(c, (*at, kind), step[kind]):
            reported.add(i)
            continue
        if kind not in kinds:
            close = difflib.get_close_matches(str(kind), kinds, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"steps are: {', '.join(kinds)}"
            c.add((*at, kind), f"unknown step ({hint})")
            reported.add(i)
    return reported


_ASSIGNMENT = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(?!=)\s*(.*?)\s*", re.DOTALL)


def _written_with_equals(c: _Checker, path: Path_, body: Any) -> bool:
    """``set: {price = float(data.p)}`` (YAML reads a mapping whose key is the whole text, valued
    null) or ``set: price = float(data.p)``: explain the ``name: expression`` form. True if found."""
    entries: list[tuple[Path_, str]]
    if isinstance(body, str):
        entries = [((), body)]
    elif isinstance(body, dict):
        entries = [((k,), k) for k, v in body.items() if v is None and isinstance(k, str)]
    else:
        return False
    found = False
    for rel, text in entries:
        match = _ASSIGNMENT.fullmatch(text)
        if match is not None and not c.secret((*path, *rel)):
            name, expression = match.groups()
            c.add((*path, *rel), f"write `{name}: {expression}` (each entry of set is name: expression)")
            found = True
    return found


def _unquoted_template(value: Mapping[Any, Any], names: frozenset[str] = frozenset()) -> str | None:
    """The expression of a template that YAML read as a mapping (unquoted ``{data.s}`` is the mapping
    ``{"data.s": null}``), or None: one key, null value, and the key is an expression."""
    if len(value) != 1:
        return None
    ((key, item),) = value.items()
    if item is not None or not isinstance(key, str) or not key.strip():
        return None
    if key.isidentifier() and key not in READABLE_FIELDS and key not in names:
        return None  # a plain word: maybe a real key with a null value
    try:
        compile_expression(key, names)
    except ExpressionError:
        return None
    return key


def _unquoted_reason(path: Path_, expression: str) -> str:
    template = "{" + expression + "}"
    quoted = '"' + template.replace("\\", "\\\\").replace('"', '\\"') + '"'
    label = f"{path[-1]}: " if path and isinstance(path[-1], str) else "- "
    return f"unquoted template: YAML reads {template} as a mapping; quote it: {label}{quoted}"


def _compiles(c: _Checker, path: Path_, text: str, compiler: Callable[[str], object], what: str) -> bool:
    try:
        compiler(text)
    except ExpressionError as exc:
        if c.from_env(path):  # the reason may quote pieces of the text
            c.add(path, f"invalid {what.strip() or 'expression'} ({_FROM_ENV}, not shown)")
            return False
        where = f"column {exc.column}: " if exc.column else ""
        c.add(path, f"{where}{exc.reason} in {what}{text!r}")
        return False
    return True


def _expression(c: _Checker, path: Path_, text: str) -> bool:
    return _compiles(c, path, text, compile_expression, "")


def _templates(
    c: _Checker, path: Path_, value: Any, names: frozenset[str] = frozenset(), top: bool = True
) -> bool:
    if isinstance(value, dict):
        quoted = None if top else _unquoted_template(value, names)
        if quoted is not None:
            c.add(path, _unquoted_reason(path, quoted))
            return False
        return all([_templates(c, (*path, k), v, names, False) for k, v in value.items()])
    if isinstance(value, list):
        return all([_templates(c, (*path, i), v, names, False) for i, v in enumerate(value)])
    if isinstance(value, str):
        return _compiles(c, path, value, lambda text: compile_template(text, names), "template ")
    return True


# -- JSON Schema -------------------------------------------------------------------------------


def config_json_schema(registry: Registry) -> dict[str, Any]:
    """JSON Schema of the whole configuration, built from the registered models (for editors)."""
    defs: dict[str, Any] = {}

    def embed(model: type[BaseModel]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        return schema

    def variants(kind: Kind) -> dict[str, Any]:
        options = []
        for spec in registry.specs(kind):
            schema = embed(spec.config_model)
            schema["title"] = f"{spec.type} {kind}"
            schema["properties"]["type"] = {"const": spec.type, "description": spec.description}
            options.append(schema)
        return {
            "type": "object",
            "additionalProperties": {"oneOf": options},
            "propertyNames": {"pattern": NAME_RE.pattern},
        }

    rules = embed(rule_config_model(registry.steps))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "reflexd configuration",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "daemon": embed(DaemonConfig),
            "agent": embed(AgentConfig),
            "sources": variants("source"),
            "tools": variants("tool"),
            "rules": {
                "type": "object",
                "additionalProperties": rules,
                "propertyNames": {"pattern": NAME_RE.pattern},
            },
        },
        "required": ["sources"],
        "$defs": defs,
    }
