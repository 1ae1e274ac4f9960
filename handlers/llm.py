"""``llm`` tool: a rule escalates an event to a language model, which acts through the same tools.

One call is one *agent run* (:mod:`handlers.agent`): model call → the model's tool calls → their
results back → … until it answers or ``max_rounds`` is reached. Every model-chosen call goes
through the daemon's tool runner like a rule's call (concurrency, timeout, retries, breaker,
guards, journal, idempotency key, DLQ); ``require_approval`` tools wait for a person,
``background_tools`` return at once and report through the notification queue. The answer is an
event of this tool (``kind: answer``) that rules route with ``from: [<this tool>]``.

Before a run is queued, :meth:`LlmTool.screen` applies ``dedup_seconds`` per (rule, key) and the
``budget``: a run turned away is journaled as ``deduplicated`` or ``over_budget`` and its event goes
to the notification queue, so the model sees it at its next call. Provider failures (429 with
Retry-After, 5xx, timeouts) fail the call retryably: the runner's retry policy retries it and the
next attempt resumes the run from its journaled conversation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from daemon.logs import RateLimitedLog, get_logger
from handlers.agent import AgentGate, AgentLoop, BudgetConfig, LoopSettings, run_id_of
from handlers.agent_store import RunState
from handlers.base import CallContext, RetryConfig, Tool, ToolConfig, ToolHost
from handlers.models import ModelClient, build_client
from streams.component import BuildContext, ComponentSpec
from streams.event import event_record
from streams.metrics import MetricSpec

__all__ = ["SPEC", "LlmTool", "LlmToolConfig", "schema_validator"]

log = get_logger("tool.llm")

#: The outcomes ``reflexd_agent_runs_total`` counts.
COUNTED = ("answered", "max_rounds", "over_budget", "failed", "deduplicated")

RUNS = MetricSpec(
    "reflexd_agent_runs_total",
    "counter",
    "Agent runs by outcome.",
    ("tool", "outcome"),
    "`outcome`: answered, max_rounds, over_budget, failed, deduplicated (a run interrupted by a restart "
    "is only journaled).",
)


class LlmToolConfig(ToolConfig):
    """Hands the event to a language model that may call the listed tools."""

    provider: Literal["openai", "anthropic"] = Field(
        "openai",
        description="openai: any OpenAI-compatible endpoint (base_url); anthropic: the Messages API.",
    )
    base_url: str | None = Field(
        None, description="Endpoint, e.g. http://127.0.0.1:8080/v1 (default: the provider's own)."
    )
    model: str = Field(description="Model name, as the endpoint knows it.")
    api_key: SecretStr | None = Field(
        None, description="Key, from the environment (`${OPENAI_API_KEY}`); never logged."
    )
    system: str = Field("", description="System prompt: who the model is and what it may do.")
    tools: list[str] = Field(default_factory=list, description="Configured tools the model may call.")
    require_approval: list[str] = Field(
        default_factory=list, description="Of `tools`: calls the model makes wait for a person's approval."
    )
    background_tools: list[str] = Field(
        default_factory=list,
        description="Of `tools`: calls return at once; the result reaches the model as a notification.",
    )
    max_rounds: int = Field(4, ge=1, le=50, description="Model calls per run at most.")
    max_result_chars: int = Field(
        4000, ge=100, le=1_000_000, description="A tool result shown to the model is cut to this length."
    )
    max_tokens: int = Field(1024, ge=1, le=200_000, description="Tokens one model answer may have.")
    temperature: float | None = Field(
        None, ge=0, le=2, description="Sampling temperature (the model's default)."
    )
    first_tool_choice: Literal["auto", "required"] = Field(
        "auto",
        description="The first model call may answer at once (auto) or must call a tool (required; "
        "small local models need it). Later calls: auto; the last one: none.",
    )
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="Spending limits.")
    dedup_seconds: float = Field(
        0.0,
        ge=0,
        le=86_400,
        description="Per (rule, key): a repeat within this long joins the notifications.",
    )
    request_timeout_seconds: float = Field(60.0, gt=0, le=3600, description="One model call's timeout.")
    timeout_seconds: float = Field(
        300.0,
        gt=0,
        le=3600,
        description="One attempt of a whole run fails after this (retried per `retry`, resuming the run).",
    )
    concurrency: int = Field(2, ge=1, le=64, description="Runs at once.")
    retry: RetryConfig = Field(
        default_factory=lambda: RetryConfig(max_attempts=3, initial_seconds=2.0),
        description="Retries of a run after a provider failure; each resumes the run.",
    )

    @field_validator("require_approval", "background_tools")
    @classmethod
    def _subset(cls, value: list[str], info: ValidationInfo) -> list[str]:
        """Entries must be in ``tools``; as a field's error, ``check`` shows it at that list's line."""
        tools = info.data.get("tools")
        if tools is None:  # tools itself is invalid, and reported
            return value
        missing = [name for name in value if name not in tools]
        if missing:
            names = ", ".join(repr(name) for name in missing)
            verb = "is" if len(missing) == 1 else "are"
            listed = ", ".join(tools) or "none"
            raise ValueError(f"{names} {verb} not in tools ({listed}); list it there first")
        both = sorted(set(value) & set(info.data.get("require_approval") or ()))
        if info.field_name == "background_tools" and both:
            raise ValueError(f"{', '.join(both)}: in both require_approval and background_tools")
        return value


def schema_validator(schema: dict[str, Any]) -> Callable[[dict[str, Any]], list[str]]:
    """A function giving the problems of an argument object against a JSON Schema (none: valid)."""
    import jsonschema

    try:
        validator = jsonschema.Draft202012Validator(schema)
    except Exception:  # a schema jsonschema cannot use: check only that it is an object
        return lambda args: []

    def problems(args: dict[str, Any]) -> list[str]:
        found = []
        for err in validator.iter_errors(args):
            where = "/".join(str(p) for p in err.absolute_path)
            found.append(f"{where}: {err.message}" if where else err.message)
        return found

    return problems


class LlmTool(Tool):
    type_name: ClassVar[str] = "llm"
    description: ClassVar[str] = "Escalate to a language model that may call the listed tools."
    args_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"prompt": {"type": "string", "description": "What the model is asked."}},
        "required": ["prompt"],
        "additionalProperties": False,
    }
    config: LlmToolConfig

    def __init__(self, name: str, config: LlmToolConfig, client: ModelClient | None = None) -> None:
        super().__init__(name, config)
        self._client = client
        self._host: ToolHost | None = None
        self._loop: AgentLoop | None = None
        attempts = config.retry.max_attempts
        self.gate = AgentGate(config.budget, config.dedup_seconds, config.timeout_seconds * attempts + 60.0)
        self.outcomes: dict[str, int] = {}
        self._budget_logs = {
            window: RateLimitedLog(
                log, "escalation over budget: not sent", level=logging.WARNING, interval=seconds
            )
            for window, seconds in (
                ("tokens_per_hour", 3600.0),
                ("tokens_per_day", 86400.0),
                ("runs_per_minute", 60.0),
            )
        }

    def attach(self, host: ToolHost) -> None:
        self._host = host
        host.notifications.add_reader(self.name, owner=self)

    async def start(self) -> None:
        host = self._host
        if host is None:
            raise RuntimeError("the llm tool needs the daemon's tool host (attach) before start")
        cfg = self.config
        if self._client is None:
            self._client = build_client(
                cfg.provider,
                self.name,
                model=cfg.model,
                base_url=cfg.base_url,
                api_key=cfg.api_key.get_secret_value() if cfg.api_key is not None else None,
                timeout=cfg.request_timeout_seconds,
                max_tokens=cfg.max_tokens,
                temperature=cfg.temperature,
            )
        validators = {}
        for name in cfg.tools:
            described = host.describe(name)
            if described is not None:
                validators[name] = schema_validator(described["parameters"])
        store = host.store
        if store is not None:
            now = time.time()
            self.gate.load(
                store.usage_since(self.name, now - 86400.0), store.runs_since(self.name, now - 60.0)
            )
        settings = LoopSettings(
            name=self.name,
            system=cfg.system,
            tools=list(cfg.tools),
            require_approval=frozenset(cfg.require_approval),
            background=frozenset(cfg.background_tools),
            max_rounds=cfg.max_rounds,
            max_result_chars=cfg.max_result_chars,
            first_tool_choice=cfg.first_tool_choice,
            max_attempts=cfg.retry.max_attempts,
            run_seconds=cfg.timeout_seconds,
            retry_timeouts=cfg.retry.retry_timeouts,
        )
        self._loop = AgentLoop(settings, self._client, host, self.gate, validators, self._count)

    async def stop(self) -> None:
        if self._host is not None:  # a reload that rebuilt this tool has handed the reader on already
            self._host.notifications.remove_reader(self.name, owner=self)
        if self._client is not None:
            try:
                await self._client.close()
            except Exception:
                log.warning(
                    "closing the model client failed", exc_info=True, extra={"fields": {"tool": self.name}}
                )

    @property
    def model_seconds(self) -> float:
        return self._loop.model_seconds if self._loop is not None else 0.0

    def extra_status(self) -> dict[str, Any]:
        gate = self.gate
        return {
            "runs": dict(self.outcomes),
            "gate": {
                "admitted": gate.admitted,
                "deduplicated": gate.deduplicated,
                "over_budget": gate.over_budget,
            },
            "model_seconds": round(self.model_seconds, 3),
        }

    def metric_samples(self) -> list[tuple[MetricSpec, tuple[str, ...], float]]:
        # every outcome from the start (at 0), so rates and alerts work before the first of each
        return [(RUNS, (outcome,), float(self.outcomes.get(outcome, 0))) for outcome in COUNTED]

    def _count(self, run: RunState) -> None:
        outcome = run.outcome or "unknown"
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def screen(self, args: dict[str, Any], ctx: CallContext) -> str | None:
        event = ctx.event
        key = event.key if event is not None else None
        now = time.time()
        verdict = self.gate.screen(ctx.rule, key, now)
        if verdict is None:
            return None
        outcome, detail = verdict
        prompt = args.get("prompt")
        text = prompt if isinstance(prompt, str) else ""
        fields: dict[str, Any] = {"llm": self.name}
        if detail:
            fields["why"] = detail
        if event is not None:
            fields["source"] = event.source
            fields["data"] = event.data
        host = self._host
        if host is not None:
            host.notifications.put(outcome, text, fields, rule=ctx.rule, key=key, ts=now)
            store = host.store
            if store is not None:
                store.screened(
                    RunState(
                        run_id_of(ctx.call_id),
                        self.name,
                        ctx.rule,
                        key,
                        event_record(event),
                        text,
                        now,
                        outcome=outcome,
                        error=detail,
                        ended=now,
                        call_id=ctx.call_id,
                    )
                )
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if outcome == "over_budget" and detail in self._budget_logs:
            self._budget_logs[detail].hit(tool=self.name, rule=ctx.rule, budget=detail)
        return outcome

    async def call(self, args: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        if self._loop is None:
            raise RuntimeError(f"llm tool {self.name} is not started")
        prompt = args.get("prompt")
        return await self._loop.run(prompt if isinstance(prompt, str) else str(prompt), ctx)


# -- registry entry (daemon/registry.py lists SPEC) ----------------------------------------------------


def _factory(name: str, config: LlmToolConfig, ctx: BuildContext) -> LlmTool:
    return LlmTool(name, config)


def _summary(c: LlmToolConfig) -> list[tuple[str, Any]]:
    return [
        ("provider", c.provider),
        ("model", c.model),
        ("tools", ",".join(c.tools) or "-"),
        *([("require_approval", ",".join(c.require_approval))] if c.require_approval else []),
        *([("background_tools", ",".join(c.background_tools))] if c.background_tools else []),
        ("max_rounds", c.max_rounds),
        *LlmTool.common_summary(c),
    ]


def _tool_refs(c: LlmToolConfig) -> list[tuple[tuple[str | int, ...], str]]:
    return [(("tools", i), name) for i, name in enumerate(c.tools)]


SPEC = ComponentSpec(
    "tool",
    "llm",
    LlmToolConfig,
    _factory,
    _summary,
    LlmTool.description,
    {
        "type": "llm",
        "provider": "openai",
        "base_url": "http://127.0.0.1:8080/v1",
        "model": "gpt-4o-mini",
        "api_key": "${OPENAI_API_KEY}",
        "system": "You watch BTC for the desk.",
        "tools": [],
    },
    metrics=(RUNS,),
    emits_events=True,
    tool_refs=_tool_refs,
    env_only=("api_key",),
)
