"""The agent's runs and approvals as people see them (``reflexd agent``, ``reflexd approvals``, the ops
server's ``/approvals`` and ``/agent/runs``): plain records with the secrets taken out.

What the state file holds is what the model saw and what a tool will be called with, so it is kept
as it is; everything *shown* goes through :class:`Shown`:

- every text that came from ``${VAR}`` in the configuration (:attr:`AppConfig.secret_texts`) is
  replaced by ``***`` wherever it occurs — a prompt, a model's answer, a tool's result, an error;
- in every JSON object shown (call arguments, tool results, notifications, the escalating event)
  the values of names that look secret are ``***``, as the journal hides them
  (:func:`daemon.state.redact`), and so are the arguments a rule fills from ``${VAR}`` for that tool;
- a prompt that a rule fills from ``${VAR}`` is ``***`` as a whole.

The configuration read is the current one: a secret rotated since a run was journaled is not known.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from typing import Any

import orjson

from daemon.config import AppConfig
from daemon.state import REDACTED, redact
from handlers.agent_store import Approval, RunState

__all__ = ["Shown", "first_line", "format_age", "format_when"]


def format_when(ts: float | None) -> str:
    """``2026-01-15T14:00:01Z`` (UTC), ``-`` for none."""
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_age(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h10m``, ``3d04h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def first_line(text: str | None, limit: int = 100) -> str:
    """The first non-empty line of ``text``, cut to ``limit`` characters (with ``…``)."""
    line = next((part.strip() for part in (text or "").splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


class Shown:
    """Turns runs and approvals into what may be printed or served, for one configuration."""

    def __init__(self, config: AppConfig) -> None:
        # longest first: a secret that contains another is replaced whole
        self._texts = sorted(config.secret_texts, key=len, reverse=True)
        self._by_call = config.secret_arguments()
        by_tool: dict[str, frozenset[str]] = {}
        for (_rule, tool), names in self._by_call.items():
            by_tool[tool] = by_tool.get(tool, frozenset()) | names
        self._by_tool = by_tool

    # -- the pieces -------------------------------------------------------------------------------

    def text(self, value: str) -> str:
        for secret in self._texts:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def value(self, value: Any, names: Iterable[str] = ()) -> Any:
        """A JSON-like value with secret texts replaced and secret-looking names (and ``names``, at the
        top) hidden in every object, at any depth."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            hidden = redact(value, frozenset(names))
            return {self.text(k) if isinstance(k, str) else k: self.value(v) for k, v in hidden.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value

    def args(self, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        """Arguments of a call of ``tool``: also the names any rule fills from ``${VAR}`` for it."""
        shown = self.value(args, self._by_tool.get(tool, ()))
        return shown if isinstance(shown, dict) else {}

    def json_text(self, text: str, tool: str | None = None) -> str:
        """A JSON text the model wrote or read (call arguments, a tool result) shown: parsed, hidden as
        :meth:`value` (as ``tool``'s arguments when ``tool`` is given), written again. A notifications
        message is a header line and a JSON array: the header is kept. Other text only has its
        secrets replaced."""
        head, newline, rest = text.partition("\n")
        for prefix, body in (("", text), (head + newline, rest)) if newline else (("", text),):
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                continue
            if isinstance(parsed, dict) and tool is not None:
                return self.text(prefix) + orjson.dumps(self.args(tool, parsed)).decode()
            if isinstance(parsed, dict | list):
                return self.text(prefix) + orjson.dumps(self.value(parsed)).decode()
        return self.text(text)

    def _prompt_hidden(self, rule: str | None, tool: str) -> bool:
        return "prompt" in self._by_call.get((rule, tool), frozenset())

    def message(self, message: dict[str, Any], *, hide: str | None = None) -> dict[str, Any]:
        """One message of a conversation (:mod:`handlers.models` form); ``hide``: a text to show as
        ``***`` when it is a message's whole content (a prompt from ``${VAR}``)."""
        out: dict[str, Any] = {}
        for name, value in message.items():
            if name == "content" and isinstance(value, str):
                if hide is not None and value == hide:
                    out[name] = REDACTED
                elif message.get("role") in ("tool", "user"):  # a result; a prompt or notifications
                    out[name] = self.json_text(value)
                else:
                    out[name] = self.text(value)
            elif name == "tool_calls" and isinstance(value, list):
                out[name] = [self._tool_call(call) for call in value]
            else:
                out[name] = self.value(value)
        return out

    def _tool_call(self, call: Any) -> Any:
        if not isinstance(call, dict):
            return self.value(call)
        shown = {k: self.value(v) for k, v in call.items() if k != "arguments"}
        arguments = call.get("arguments")
        if isinstance(arguments, str):
            shown["arguments"] = self.json_text(arguments, str(call.get("name") or ""))
        elif arguments is not None:
            shown["arguments"] = self.value(arguments)
        return shown

    # -- records ----------------------------------------------------------------------------------

    def run(self, run: RunState, *, messages: bool = False) -> dict[str, Any]:
        """A run as a JSON object; with its conversation when ``messages``."""
        hidden = self._prompt_hidden(run.rule, run.tool)
        latency = None if run.ended is None else round(max(0.0, run.ended - run.started), 3)
        record: dict[str, Any] = {
            "id": run.run_id,
            "tool": run.tool,
            "rule": run.rule,
            "key": self.value(run.key),
            "started": format_when(run.started),
            "ended": format_when(run.ended) if run.ended is not None else None,
            "latency_seconds": latency,
            "outcome": run.outcome or "running",
            "rounds": run.rounds,
            "tokens_in": run.tokens_in,
            "tokens_out": run.tokens_out,
            "prompt": REDACTED if hidden else self.text(run.prompt),
            "answer": None if run.answer is None else self.text(run.answer),
            "error": None if run.error is None else self.text(run.error),
        }
        if messages:
            hide = run.prompt if hidden else None
            record["event"] = self.value(run.event)
            record["messages"] = [self.message(m, hide=hide) for m in run.messages]
        return record

    def approval(self, approval: Approval, now: float | None = None) -> dict[str, Any]:
        """An approval as a JSON object (its arguments hidden as the tool's arguments are)."""
        now = time.time() if now is None else now
        return {
            "id": approval.id,
            "status": approval.status,
            "llm": approval.llm,
            "tool": approval.tool,
            "args": self.args(approval.tool, approval.args),
            "run": approval.run_id,
            "rule": approval.rule,
            "reasoning": self.text(approval.reasoning),
            "created": format_when(approval.created),
            "age_seconds": round(max(0.0, now - approval.created), 3),
            "decided_at": format_when(approval.decided_at) if approval.decided_at is not None else None,
            "decided_by": approval.decided_by,
            "note": None if approval.note is None else self.text(approval.note),
            "outcome": approval.outcome,
            "result": self.value(approval.result),
            "error": None if approval.error is None else self.text(approval.error),
        }
