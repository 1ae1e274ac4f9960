"""The agent run: model call → the model's tool calls → results back → … until it answers.

Used by the ``llm`` tool (:mod:`handlers.llm`); the pieces here are the ones that decide:

- :class:`AgentGate` — per llm tool, before a run is queued: dedup per (rule, key) and the budget
  windows (tokens per hour and per day, runs per minute). O(1) per decision.
- :class:`AgentLoop` — one run, resumable. Its conversation is journaled as it goes (each
  message durable before the next model call), so a run cut off by a crash, a timeout or a
  retryable provider error picks up where it stopped: a tool call whose result is journaled is
  not made again; one without a result is made again with the same idempotency key (the runner
  skips a key that already succeeded; tools that accept a key pass it on).

What goes to the model is text with a stated format (docs/agent.md): tool results are JSON
(``{"outcome", "result"|"error"}``), capped with a visible marker; the notifications drained
before a model call are one user message, a header line and a JSON array. What comes back is
parsed defensively: arguments that are not JSON (HTML-escaped JSON is unescaped first), not an
object, not valid against the tool's schema, or naming a tool the model may not call, go back to
the model as an error result, never to the tool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import html
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from daemon.errors import ToolError
from handlers.agent_store import Approval, RunState
from handlers.base import CallContext, CallReply, ToolHost
from handlers.models import ModelClient, ModelReply
from handlers.notifications import Notification
from streams.event import ANSWER, event_record, new_event
from streams.tracing import Span

__all__ = [
    "NOTIFICATIONS_HEADER",
    "AgentGate",
    "AgentLoop",
    "BudgetConfig",
    "LoopSettings",
    "call_key",
    "cap_text",
    "parse_arguments",
    "run_id_of",
]

NOTIFICATIONS_HEADER = "Notifications since your last turn (JSON array, oldest first):"
TRUNCATED = "…[truncated {n} characters]"
_MARKER_ROOM = 40  # longer than any TRUNCATED text


class BudgetConfig(BaseModel):
    """``budget:`` of an llm tool: spending limits over sliding windows, counted from the usage each
    model call reports and kept in the state database (a restart does not reset them)."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    tokens_per_hour: int | None = Field(None, ge=1, description="Tokens (in + out) in any 60 minutes.")
    tokens_per_day: int | None = Field(None, ge=1, description="Tokens (in + out) in any 24 hours.")
    runs_per_minute: int | None = Field(None, ge=1, description="Runs started in any 60 seconds.")


class _Window:
    """A sliding sum over ``seconds``: entries drop off as they age."""

    __slots__ = ("entries", "limit", "seconds", "total")

    def __init__(self, seconds: float, limit: int) -> None:
        self.seconds = seconds
        self.limit = limit
        self.entries: deque[tuple[float, int]] = deque()
        self.total = 0

    def add(self, ts: float, amount: int) -> None:
        self.entries.append((ts, amount))
        self.total += amount

    def used(self, now: float) -> int:
        entries = self.entries
        horizon = now - self.seconds
        while entries and entries[0][0] <= horizon:
            self.total -= entries.popleft()[1]
        return self.total


#: (rule, key) entries the gate keeps before it first drops those past their dedup window.
FORGET_AT = 4096


class AgentGate:
    """Dedup and budget decisions of one llm tool (its :meth:`screen` runs before a run is queued)."""

    def __init__(self, budget: BudgetConfig, dedup_seconds: float, pending_seconds: float) -> None:
        self.dedup_seconds = dedup_seconds
        self.pending_seconds = pending_seconds  # a run pending longer than this is taken as gone
        self.tokens: list[tuple[str, _Window]] = []
        if budget.tokens_per_hour is not None:
            self.tokens.append(("tokens_per_hour", _Window(3600.0, budget.tokens_per_hour)))
        if budget.tokens_per_day is not None:
            self.tokens.append(("tokens_per_day", _Window(86400.0, budget.tokens_per_day)))
        self.runs = _Window(60.0, budget.runs_per_minute) if budget.runs_per_minute is not None else None
        self._last: dict[tuple[str | None, Any], float] = {}  # (rule, key) → when its last run was admitted
        self._pending: dict[tuple[str | None, Any], float] = {}  # (rule, key) → admitted, not yet ended
        self._forget_at = FORGET_AT  # size of _last that triggers dropping the entries past their window
        self.deduplicated = 0
        self.over_budget = 0
        self.admitted = 0

    def load(self, usage: Iterable[tuple[float, int]], runs: Iterable[float]) -> None:
        """What the store remembers of earlier processes (oldest first)."""
        for ts, tokens in usage:
            for _, window in self.tokens:
                window.add(ts, tokens)
        if self.runs is not None:
            for ts in runs:
                self.runs.add(ts, 1)

    def exceeded(self, now: float, *, runs: bool = False) -> str | None:
        """The first budget window that is used up (``runs``: the run rate too), or None."""
        for name, window in self.tokens:
            if window.used(now) >= window.limit:
                return name
        if runs and self.runs is not None and self.runs.used(now) >= self.runs.limit:
            return "runs_per_minute"
        return None

    def screen(self, rule: str | None, key: Any, now: float) -> tuple[str, str | None] | None:
        """None: admit a new run for (rule, key) (counted as started); else (verdict, detail):
        ``("deduplicated", None)`` or ``("over_budget", window)``."""
        slot = (rule, key)
        if self.dedup_seconds > 0:
            pending = self._pending.get(slot)
            if pending is not None and now - pending < self.pending_seconds:
                self.deduplicated += 1
                return "deduplicated", "a run for this rule and key is still going"
            last = self._last.get(slot)
            if last is not None and now - last < self.dedup_seconds:
                self.deduplicated += 1
                return "deduplicated", f"a run for this rule and key started {now - last:.0f} s ago"
        window = self.exceeded(now, runs=True)
        if window is not None:
            self.over_budget += 1
            return "over_budget", window
        self.admitted += 1
        if self.runs is not None:
            self.runs.add(now, 1)
        if self.dedup_seconds > 0:
            self._pending[slot] = now
            self._last[slot] = now
            if len(self._last) > self._forget_at:
                self._forget(now)
        return None

    def spent(self, now: float, tokens: int) -> None:
        for _, window in self.tokens:
            window.add(now, tokens)

    def ended(self, rule: str | None, key: Any) -> None:
        self._pending.pop((rule, key), None)

    def _forget(self, now: float) -> None:
        """Drop (rule, key) entries whose window has passed (keeps memory bounded by the busy keys)."""
        horizon = now - self.dedup_seconds
        self._last = {slot: ts for slot, ts in self._last.items() if ts > horizon}
        pending_horizon = now - self.pending_seconds
        self._pending = {slot: ts for slot, ts in self._pending.items() if ts > pending_horizon}
        # next time at twice what is still in its window: a pass per admission would cost O(keys) each
        self._forget_at = max(FORGET_AT, 2 * len(self._last))


def run_id_of(call_id: str) -> str:
    """The run id of an llm tool call: stable across its retries and a restart (it resumes)."""
    return "run-" + hashlib.blake2b(call_id.encode(), digest_size=8).hexdigest()


def canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def call_key(run_id: str, tool: str, args: Mapping[str, Any]) -> str:
    """Idempotency key of a model-chosen call: the run, the tool and its canonical arguments."""
    digest = hashlib.blake2b(canonical(dict(args)), digest_size=8).hexdigest()
    return f"{run_id}:{tool}:{digest}"


def cap_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with a marker saying how much was left out."""
    if len(text) <= limit:
        return text
    return text[:limit] + TRUNCATED.format(n=len(text) - limit)


#: What the model wrote instead of an object, in JSON's words (the model reads them).
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
_JSON_TYPES[type(None)] = "null"


def parse_arguments(text: str) -> dict[str, Any]:
    """A model's tool arguments as an object. Raises ValueError saying why they are unusable."""
    if not text.strip():
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        unescaped = html.unescape(text)  # some servers echo arguments HTML-escaped
        try:
            value = orjson.loads(unescaped)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"arguments are not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"arguments must be a JSON object, not {_JSON_TYPES.get(type(value), 'that')}")
    return value


DUPLICATE_NOTE = "the same call was made earlier in this run: not made again; this is its result"


def _earlier_result(run: RunState, tool: str, key: str) -> Any:
    """The result the model was shown for an earlier call of this run with the same idempotency key
    (the runner skips the repeat, so it has none of its own), or None. Only looked for on a repeat."""
    calls: dict[str, Mapping[str, Any]] = {}  # the calls of the latest assistant turn, by id
    for message in run.messages:
        if message["role"] == "assistant":
            calls = {c["id"]: c for c in message.get("tool_calls") or ()}
            continue
        call = calls.get(message.get("tool_call_id", "")) if message["role"] == "tool" else None
        if call is None or call["name"] != tool:
            continue
        try:
            if call_key(run.run_id, tool, parse_arguments(call.get("arguments") or "")) != key:
                continue
            shown = orjson.loads(message["content"])
        except (ValueError, orjson.JSONDecodeError):
            continue  # arguments the model got wrong, or a result cut to max_result_chars
        if isinstance(shown, dict) and "result" in shown:
            return shown["result"]
    return None


def _json(value: Any) -> str:
    return orjson.dumps(value, default=repr).decode()


#: How much longer than a background tool's timeout a run waits for its outcome (the runner records it first).
BACKGROUND_GRACE_SECONDS = 1.0


#: Characters per token when a server reports no usage (budgets must still bind): a common rule of
#: thumb for English text and JSON with tokenizers of this generation; it errs towards more tokens.
CHARS_PER_TOKEN = 3.5


def _estimate(text: str, messages: list[dict[str, Any]]) -> int:
    """Tokens of ``text`` and ``messages``, estimated from their length (at least 1)."""
    size = len(text) + sum(len(_json(m)) for m in messages)
    return max(1, int(size / CHARS_PER_TOKEN + 0.5))


def _lost_background(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items telling the model that background calls started earlier in this conversation (by an
    attempt or a process that is gone) will never report: their result was not in any later message.
    Whether such a call ran is unknown; it kept its idempotency key."""
    lost = []
    for i, m in enumerate(messages):
        if m["role"] != "tool" or '"started"' not in m["content"]:
            continue
        try:
            content = orjson.loads(m["content"])
        except orjson.JSONDecodeError:
            continue
        key = content.get("id") if isinstance(content, dict) and content.get("status") == "started" else None
        if not isinstance(key, str) or any(
            key in later["content"] for later in messages[i + 1 :] if later["role"] == "user"
        ):
            continue
        lost.append(
            {
                "kind": "background",
                "text": f"{m.get('name')}: its result is lost (the run was interrupted while it ran); "
                "it may or may not have run",
                "fields": {"tool": m.get("name"), "id": key},
            }
        )
    return lost


class _Background:
    """The background calls of one run: until when each may take, and which results its model has
    not seen yet. A result reaches the shared notification queue (for every reader) and is also kept
    here, so the run's model gets it even when another run of the same tool drained it first."""

    __slots__ = ("deadlines", "futures", "results", "seen")

    def __init__(self) -> None:
        self.futures: dict[str, asyncio.Future[CallReply]] = {}
        self.deadlines: dict[str, float] = {}  # monotonic
        self.results: dict[int, Notification] = {}  # seq → the result's item, until the model saw it
        self.seen: set[str] = set()

    def unseen(self, drained: list[Notification]) -> list[Notification]:
        """This run's results not among ``drained`` nor shown before; from now on they count as seen."""
        for note in drained:
            self.results.pop(note.seq, None)
        own = sorted(self.results.values(), key=lambda n: n.seq)
        self.results.clear()
        for note in drained + own:
            call = note.fields.get("id") if note.kind == "background" else None
            if call in self.futures:
                self.seen.add(call)
        return own

    def waiting(self) -> bool:
        """Some result the model has not seen yet: still running, or ended since its last call."""
        return any(key not in self.seen for key in self.futures)

    async def wait(self) -> None:
        """Until the calls still running end, each at most until its deadline."""
        pending = [f for f in self.futures.values() if not f.done()]
        if not pending:
            return
        left = max(self.deadlines.values()) - time.monotonic()
        if left > 0:
            await asyncio.wait(pending, timeout=left)


class LoopSettings:
    """What an :class:`AgentLoop` needs of its llm tool's configuration (read once per tool)."""

    def __init__(
        self,
        *,
        name: str,
        system: str,
        tools: list[str],
        require_approval: frozenset[str],
        background: frozenset[str],
        max_rounds: int,
        max_result_chars: int,
        first_tool_choice: str,
        max_attempts: int,
        run_seconds: float = 300.0,
        retry_timeouts: bool = True,
    ) -> None:
        self.name = name
        self.system = system
        self.tools = tools
        self.require_approval = require_approval
        self.background = background
        self.max_rounds = max_rounds
        self.max_result_chars = max_result_chars
        self.first_tool_choice = first_tool_choice
        self.max_attempts = max_attempts
        self.run_seconds = run_seconds  # one attempt of a run (the llm tool's timeout_seconds)
        self.retry_timeouts = retry_timeouts


class AgentLoop:
    """Drives runs of one llm tool. ``validators``: tool name → a function returning the problems
    of an argument object against that tool's schema (empty when valid)."""

    def __init__(
        self,
        settings: LoopSettings,
        client: ModelClient,
        host: ToolHost,
        gate: AgentGate,
        validators: Mapping[str, Callable[[dict[str, Any]], list[str]]],
        on_end: Callable[[RunState], None] | None = None,
    ) -> None:
        self.s = settings
        self.client = client
        self.host = host
        self.gate = gate
        self.validators = validators
        self.on_end = on_end
        self.visible = [d for d in (host.describe(t) for t in settings.tools) if d is not None]
        self.model_seconds = 0.0  # time spent waiting for the model (bench: the rest is our overhead)
        #: without a store (journal off): runs whose attempt failed retryably, for the next attempt
        self._retrying: dict[str, RunState] = {}

    # -- one run ---------------------------------------------------------------------------------

    async def run(self, prompt: str, ctx: CallContext) -> dict[str, Any]:
        # The attempt's own deadline, a little before the runner's (the same timeout_seconds, started
        # just before this call): a run past it ends as a failure this code sees, so the last
        # attempt's run ends "failed" instead of being cancelled and left open until a restart.
        limit = self.s.run_seconds
        deadline = asyncio.get_running_loop().time() + limit - min(1.0, limit * 0.05)
        store = self.host.store
        run_id = run_id_of(ctx.call_id)
        run = await store.load_run(run_id) if store is not None else self._retrying.pop(run_id, None)
        if run is None:
            run = RunState(
                run_id,
                self.s.name,
                ctx.rule,
                ctx.event.key if ctx.event is not None else None,
                event_record(ctx.event),
                prompt,
                time.time(),
                [{"role": "user", "content": prompt}],
                call_id=ctx.call_id,
            )
            if store is not None:
                await store.begin_run(run)
        elif run.outcome == "failed":
            # its call runs again (reflexd dlq replay of the dead letter): it goes on from where it stopped
            run.outcome = run.error = run.ended = None
        elif run.outcome is not None:
            return run.result()  # it ended before (the journal lost the call's end): the same result
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._drive(run, ctx)
            except TimeoutError:
                reason = f"the run took longer than timeout_seconds ({limit:g} s)"
                raise ToolError(self.s.name, reason, retryable=self.s.retry_timeouts) from None
        except ToolError as exc:
            if not exc.retryable or ctx.attempt >= self.s.max_attempts:
                await self._end(run, "failed", error=exc.reason)
            elif store is None:
                self._retrying[run_id] = run
            raise  # a retryable failure before the last attempt: the next attempt resumes the run
        except asyncio.CancelledError:
            raise  # a stop: the run stays open, the next start resumes it
        except Exception as exc:
            await self._end(run, "failed", error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if run.outcome is not None:  # a run waiting for its retry is still going (dedup)
                self.gate.ended(run.rule, run.key)
        return run.result()

    async def _drive(self, run: RunState, ctx: CallContext) -> None:
        background = _Background()
        last = run.messages[-1] if run.messages else None
        if last is not None and last["role"] == "assistant" and not last.get("tool_calls") and run.rounds:
            await self._answer(run, last.get("content") or "", ctx)  # answered before the crash
            return
        await self._finish_calls(run, ctx, background)  # resumed with calls left without a result
        lost = _lost_background(run.messages)
        if lost:  # started by an attempt or a process before this one: their results will not come
            await self._append(run, [{"role": "user", "content": NOTIFICATIONS_HEADER + "\n" + _json(lost)}])
        extra_round = False  # the one more round background results may earn
        while True:
            if run.rounds >= self.s.max_rounds + (1 if extra_round else 0):
                await self._end(run, "max_rounds")
                return
            window = self.gate.exceeded(time.time())
            if window is not None:
                await self._end(run, "over_budget", error=f"budget {window} used up during the run")
                return
            drained = self.host.notifications.drain(self.s.name)
            notes = drained + background.unseen(drained) if background.futures else drained
            if notes:
                text = NOTIFICATIONS_HEADER + "\n" + _json([self._shown(n) for n in notes])
                await self._append(run, [{"role": "user", "content": text}])
            final = run.rounds + 1 >= self.s.max_rounds + (1 if extra_round else 0)
            choice = "none" if final else (self.s.first_tool_choice if run.rounds == 0 else "auto")
            reply = await self._complete(run, choice, ctx.trace)
            if not reply.tool_calls:
                if not extra_round and background.waiting():
                    extra_round = True  # once: the results it has not seen, then its answer
                    await background.wait()
                    continue
                await self._answer(run, reply.text, ctx)
                return
            if final:  # the last round asked for more tools: not made, the run ends here
                await self._append(
                    run,
                    [
                        self._tool_message(c.id, c.name, {"error": "not run: max_rounds reached"})
                        for c in reply.tool_calls
                    ],
                )
                await self._end(run, "max_rounds")
                return
            await self._finish_calls(run, ctx, background)

    async def _complete(self, run: RunState, choice: str, trace: Span | None = None) -> ModelReply:
        """One model call (a span under the run's attempt when tracing is on, tokens as attributes)."""
        span = None
        if trace is not None:
            span = trace.child(
                f"model {self.s.name}", {"reflexd.tool": self.s.name, "reflexd.round": run.rounds + 1}
            )
        started = time.perf_counter()
        try:
            reply = await self.client.complete(self.s.system, run.messages, self.visible, tool_choice=choice)
        except BaseException as exc:
            if span is not None:
                span.end(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.model_seconds += time.perf_counter() - started
        now = time.time()
        if not reply.tokens_in and not reply.tokens_out:  # a server that reports no usage: estimated
            reply = dataclasses.replace(
                reply,
                tokens_in=_estimate(self.s.system, run.messages),
                tokens_out=_estimate(reply.text, [reply.as_message()]),
            )
        tokens = reply.tokens_in + reply.tokens_out
        self.gate.spent(now, tokens)
        store = self.host.store
        if store is not None and tokens:
            store.add_usage(self.s.name, now, tokens)
        run.rounds += 1
        run.tokens_in += reply.tokens_in
        run.tokens_out += reply.tokens_out
        if span is not None:
            span.set(
                {
                    "gen_ai.usage.input_tokens": reply.tokens_in,
                    "gen_ai.usage.output_tokens": reply.tokens_out,
                    "reflexd.tool_calls": len(reply.tool_calls),
                    "reflexd.stop": reply.stop,
                }
            )
            span.end()
        await self._append(run, [reply.as_message()])
        return reply

    async def _finish_calls(self, run: RunState, ctx: CallContext, background: _Background) -> None:
        """Make the tool calls of the last assistant message that have no result yet, in order; each
        result is journaled before the next call starts."""
        messages = run.messages
        at = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "assistant"), None)
        if at is None:
            return
        last_assistant = messages[at]
        # answered by the tool messages after it: ids may repeat across rounds (servers that number
        # each reply's calls from 0)
        answered = {m["tool_call_id"] for m in messages[at + 1 :] if m["role"] == "tool"}
        for call in last_assistant.get("tool_calls") or ():
            if call["id"] in answered:
                continue
            content = await self._dispatch(run, ctx, call, last_assistant.get("content") or "", background)
            await self._append(run, [self._tool_message(call["id"], call["name"], content)])

    def _shown(self, note: Notification) -> dict[str, Any]:
        """A notification as the model sees it: a field longer than max_result_chars (an event's data
        can be anything) is cut with the marker, a structured one as its JSON text. A text field gets
        room for a marker it may carry already (a background result, capped when it was put)."""
        item = note.as_dict()
        fields = item.get("fields")
        if not fields:
            return item
        limit = self.s.max_result_chars
        shown = None
        for name, value in fields.items():
            if isinstance(value, str):
                if len(value) > limit + _MARKER_ROOM:
                    shown = shown or dict(fields)
                    shown[name] = cap_text(value, limit)
            elif not isinstance(value, int | float | bool) and value is not None:
                text = _json(value)
                if len(text) > limit:
                    shown = shown or dict(fields)
                    shown[name] = cap_text(text, limit)
        if shown is not None:
            item["fields"] = shown
        return item

    def _tool_message(self, call_id: str, name: str, content: dict[str, Any]) -> dict[str, Any]:
        return {
            "role": "tool",
            "tool_call_id": call_id,
            "name": name,
            "content": cap_text(_json(content), self.s.max_result_chars),
        }

    async def _dispatch(
        self,
        run: RunState,
        ctx: CallContext,
        call: Mapping[str, Any],
        reasoning: str,
        background: _Background,
    ) -> dict[str, Any]:
        """One model-chosen call: checked, then proposed, started in the background or made."""
        name = call["name"]
        if name not in self.validators:
            allowed = ", ".join(self.s.tools) or "none"
            return {"error": f"unknown tool {name!r}; you may call: {allowed}"}
        try:
            args = parse_arguments(call.get("arguments") or "")
        except ValueError as exc:
            return {"error": str(exc)}
        problems = self.validators[name](args)
        if problems:
            return {"error": "invalid arguments: " + "; ".join(problems[:5])}
        key = call_key(run.run_id, name, args)
        if name in self.s.require_approval:
            store = self.host.store
            if store is None:
                return {
                    "error": f"{name} needs a person's approval, and approvals need the journal (it is off)"
                }
            approval_id = await store.propose(
                Approval(
                    0,
                    run.run_id,
                    self.s.name,
                    run.rule,
                    name,
                    args,
                    key,
                    run.event,
                    reasoning,
                    "pending",
                    time.time(),
                )
            )
            return {
                "status": "awaiting_approval",
                "approval": approval_id,
                "note": "not run yet: a person must approve it; its result will reach you as a notification",
            }
        call_ctx = CallContext(name, ctx.rule, ctx.event, key, trace=ctx.trace)
        if name in self.s.background:
            future = self.host.call(name, args, call_ctx)
            background.futures[key] = future
            limit = self.host.timeout_of(name) + BACKGROUND_GRACE_SECONDS
            background.deadlines[key] = time.monotonic() + limit
            future.add_done_callback(functools.partial(self._background_done, run, background, name, key))
            return {
                "status": "started",
                "id": key,
                "note": "runs in the background; its result arrives as a notification",
            }
        reply = await self.host.call(name, args, call_ctx)
        if reply.outcome == "duplicate":
            earlier = _earlier_result(run, name, key)
            if earlier is not None:
                return {"outcome": "duplicate", "note": DUPLICATE_NOTE, "result": earlier}
        return self._reply_content(reply)

    def _reply_content(self, reply: CallReply) -> dict[str, Any]:
        if reply.outcome in ("succeeded", "duplicate"):
            content: dict[str, Any] = {"outcome": reply.outcome}
            if reply.result is not None:
                content["result"] = reply.result
            return content
        return {"outcome": reply.outcome, "error": (reply.error or reply.outcome).split("\n", 1)[0]}

    def _background_done(
        self, run: RunState, background: _Background, name: str, key: str, future: asyncio.Future[CallReply]
    ) -> None:
        reply = future.result() if not future.cancelled() else CallReply("cancelled")
        content = self._reply_content(reply)
        text = f"{name} finished: {reply.outcome}"
        fields = {
            "tool": name,
            "id": key,
            "run": run.run_id,
            "content": cap_text(_json(content), self.s.max_result_chars),
        }
        now = time.time()
        seq = self.host.notifications.put("background", text, fields, rule=run.rule, ts=now)
        background.results[seq] = Notification(seq, "background", text, fields, run.rule, None, now)

    async def _append(self, run: RunState, messages: list[dict[str, Any]]) -> None:
        run.messages.extend(messages)
        store = self.host.store
        if store is not None:
            await store.add_messages(run, messages)

    async def _answer(self, run: RunState, text: str, ctx: CallContext) -> None:
        run.answer = text
        await self._end(run, "answered")
        now = time.time()
        data = {
            "text": text,
            "run": run.run_id,
            "rule": run.rule,
            "rounds": run.rounds,
            "tokens_in": run.tokens_in,
            "tokens_out": run.tokens_out,
        }
        self.host.emit(new_event(self.s.name, now, now, run.key, data, {"run": run.run_id}, ANSWER))

    async def _end(self, run: RunState, outcome: str, *, error: str | None = None) -> None:
        run.outcome = outcome
        run.error = error
        run.ended = time.time()
        store = self.host.store
        if store is not None:
            await store.end_run(run)
        if self.on_end is not None:
            self.on_end(run)
