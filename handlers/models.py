"""Model providers for the ``llm`` tool: one neutral conversation, two wire protocols.

The agent loop (:mod:`handlers.agent`) keeps its conversation in one provider-neutral form,
a list of plain dicts that the journal stores as they are:

- ``{"role": "user", "content": str}``
- ``{"role": "assistant", "content": str, "tool_calls": [{"id", "name", "arguments": str}]}``
  (``arguments`` as the model wrote them: JSON text, parsed later and defensively)
- ``{"role": "tool", "tool_call_id": str, "name": str, "content": str}``

A :class:`ModelClient` turns it into one request of its protocol and the answer back into a
:class:`ModelReply`:

- ``openai``: Chat Completions through the ``openai`` SDK's async client with ``base_url``, so any
  OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp's server, LiteLLM, OpenRouter);
- ``anthropic``: the Messages API with tool use through the ``anthropic`` SDK.

The SDKs' own retries are off (``max_retries=0``): the tool runner's retry policy owns retries, so
they never multiply. Failures become :class:`ToolError`: 408/409/429 (with ``Retry-After``), 5xx,
timeouts, dropped connections and unreadable answers are retryable; 401/403 are configuration
problems; other 4xx are not retried. The SDKs are imported when a client is built, never at import.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

import orjson

from daemon.errors import ToolError

__all__ = ["ModelClient", "ModelReply", "ModelToolCall", "build_client", "retry_after_of"]

_RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
#: The neutral tool_choice (auto | required | none) in the Messages API's words.
_ANTHROPIC_CHOICE = {"auto": "auto", "required": "any", "none": "none"}


@dataclass(frozen=True)
class ModelToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


@dataclass(frozen=True)
class ModelReply:
    text: str
    tool_calls: list[ModelToolCall] = field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0
    stop: str = ""

    def as_message(self) -> dict[str, Any]:
        """The assistant message of the neutral conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in self.tool_calls
            ]
        return message


class ModelClient(Protocol):
    """One provider endpoint."""

    async def complete(
        self,
        system: str,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        *,
        tool_choice: str = "auto",
    ) -> ModelReply:
        """One model call. ``tools``: ``{"name", "description", "parameters"}`` each; ``tool_choice``:
        auto | required | none. Raises :class:`ToolError` (retryable or not) on failure."""
        ...

    async def close(self) -> None: ...


def retry_after_of(headers: Any) -> float | None:
    """Seconds from a ``Retry-After`` (or ``retry-after-ms``) header; None if absent or unreadable."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
        value = headers.get("retry-after")
    except Exception:
        return None
    if value is None:
        return None
    try:
        return min(max(0.0, float(value)), 3600.0)
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        return min(max(0.0, parsedate_to_datetime(value).timestamp() - time.time()), 3600.0)
    except (TypeError, ValueError):
        return None


def _failure(tool: str, provider: str, exc: Exception, secret: str | None = None) -> ToolError:
    """The :class:`ToolError` for an SDK exception (both SDKs share the class names and fields); the
    key (``secret``), if an endpoint echoed it, is *** in the reason (replaced before it is cut short)."""
    kind = type(exc).__name__
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    message = str(getattr(exc, "message", None) or str(exc))
    if secret:
        message = message.replace(secret, "***")
    message = " ".join(message.split())[:300]
    if isinstance(status, int):
        retry_after = retry_after_of(getattr(response, "headers", None))
        wait = f", Retry-After {retry_after:g}s" if retry_after is not None else ""
        reason = f"{provider} answered HTTP {status}{wait}: {message}"
        if status in (401, 403):
            return ToolError(tool, reason + " (check api_key)", permanent=True)
        if status in _RETRYABLE_STATUS or status >= 500:
            return ToolError(tool, reason, retryable=True, retry_after=retry_after)
        return ToolError(tool, reason)
    if kind in ("APITimeoutError", "APIConnectionError", "APIResponseValidationError"):
        what = {
            "APITimeoutError": "timed out",
            "APIConnectionError": "could not be reached",
            "APIResponseValidationError": "sent an answer that does not fit its protocol",
        }[kind]
        return ToolError(tool, f"{provider} {what}: {message}", retryable=True)
    if isinstance(exc, ValueError):  # a body that is not JSON (orjson / json decode errors)
        return ToolError(tool, f"{provider} sent an unreadable answer: {message}", retryable=True)
    return ToolError(tool, f"{provider} call failed: {kind}: {message}", retryable=True)


def _raise_failure(tool: str, provider: str, exc: Exception, secret: str | None) -> NoReturn:
    """Raise :func:`_failure`'s error, chained to ``exc`` unless the key is in it: the runner logs a
    failure with its traceback, which would print the SDK exception's message."""
    error = _failure(tool, provider, exc, secret)
    if secret and (secret in str(exc) or secret in str(getattr(exc, "body", ""))):
        raise error from None
    raise error from exc


def _tool_call_arguments(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


class _SdkClient:
    """What both clients share: the settings of every request, the SDK's async client (built by
    :meth:`_connect`, its own retries off) and the exceptions that become :class:`ToolError`."""

    provider = "the endpoint"  # how failures name it

    def __init__(
        self,
        tool: str,
        *,
        model: str,
        base_url: str | None,
        api_key: str | None,
        timeout: float,
        max_tokens: int,
        temperature: float | None,
    ) -> None:
        self.tool = tool
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._secret = api_key  # kept out of every error message
        self._errors: tuple[type[Exception], ...] = (ValueError,)
        self._client = self._connect(base_url, api_key or "unused", timeout)

    def _connect(self, base_url: str | None, api_key: str, timeout: float) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        await self._client.close()


class OpenAIClient(_SdkClient):
    """Chat Completions (``/chat/completions``) of any OpenAI-compatible endpoint."""

    provider = "the model endpoint"

    def _connect(self, base_url: str | None, api_key: str, timeout: float) -> Any:
        import openai

        self._errors = (openai.OpenAIError, ValueError)
        return openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)

    @staticmethod
    def wire_messages(system: str, messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        for m in messages:
            role = m["role"]
            if role == "assistant":
                # always a string: llama.cpp's function-calling template fails on a null content
                wire: dict[str, Any] = {"role": "assistant", "content": m.get("content") or ""}
                if m.get("tool_calls"):
                    wire["tool_calls"] = [
                        {
                            "id": c["id"],
                            "type": "function",
                            "function": {"name": c["name"], "arguments": c["arguments"]},
                        }
                        for c in m["tool_calls"]
                    ]
                out.append(wire)
            elif role == "tool":
                out.append({"role": "tool", "tool_call_id": m["tool_call_id"], "content": m["content"]})
            else:
                out.append({"role": "user", "content": m["content"]})
        return out

    async def complete(
        self,
        system: str,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        *,
        tool_choice: str = "auto",
    ) -> ModelReply:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": self.wire_messages(system, messages),
            "max_tokens": self.max_tokens,
        }
        if self.temperature is not None:
            request["temperature"] = self.temperature
        if tools:
            request["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t["name"],
                        "description": t["description"],
                        "parameters": t["parameters"],
                    },
                }
                for t in tools
            ]
            request["tool_choice"] = tool_choice
        try:
            response = await self._client.chat.completions.create(**request)
        except self._errors as exc:
            _raise_failure(self.tool, self.provider, exc, self._secret)
        choices = getattr(response, "choices", None)
        if not choices:
            raise ToolError(self.tool, "the model endpoint answered without a choice", retryable=True)
        choice = choices[0]
        message = choice.message
        calls = [
            ModelToolCall(c.id or f"call_{i}", c.function.name, _tool_call_arguments(c.function.arguments))
            for i, c in enumerate(message.tool_calls or [])
            if getattr(c, "function", None) is not None
        ]
        usage = response.usage
        return ModelReply(
            message.content or "",
            calls,
            int(getattr(usage, "prompt_tokens", 0) or 0),
            int(getattr(usage, "completion_tokens", 0) or 0),
            str(choice.finish_reason or ""),
        )


class AnthropicClient(_SdkClient):
    """The Messages API (``/v1/messages``) with tool use."""

    provider = "the Anthropic endpoint"

    def _connect(self, base_url: str | None, api_key: str, timeout: float) -> Any:
        import anthropic

        self._errors = (anthropic.AnthropicError, ValueError)
        return anthropic.AsyncAnthropic(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)

    @staticmethod
    def wire_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Messages alternate user / assistant: tool results and the text after them share one user turn;
        an assistant message with neither text nor tool calls is left out (its neighbours merge)."""
        out: list[dict[str, Any]] = []

        def user_blocks() -> list[dict[str, Any]]:
            if out and out[-1]["role"] == "user":
                blocks: list[dict[str, Any]] = out[-1]["content"]
                return blocks
            out.append({"role": "user", "content": []})
            return out[-1]["content"]  # type: ignore[no-any-return]

        for m in messages:
            role = m["role"]
            if role == "assistant" and not m.get("content") and not m.get("tool_calls"):
                continue  # an empty answer: the API refuses an empty text block (the user turns merge)
            if role == "assistant":
                blocks: list[dict[str, Any]] = []
                if m.get("content"):
                    blocks.append({"type": "text", "text": m["content"]})
                for c in m.get("tool_calls") or ():
                    try:
                        args = orjson.loads(c["arguments"])
                    except orjson.JSONDecodeError:
                        args = {}
                    blocks.append(
                        {
                            "type": "tool_use",
                            "id": c["id"],
                            "name": c["name"],
                            "input": args if isinstance(args, dict) else {},
                        }
                    )
                out.append({"role": "assistant", "content": blocks})
            elif role == "tool":
                user_blocks().append(
                    {"type": "tool_result", "tool_use_id": m["tool_call_id"], "content": m["content"]}
                )
            else:
                user_blocks().append({"type": "text", "text": m["content"]})
        return out

    async def complete(
        self,
        system: str,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        *,
        tool_choice: str = "auto",
    ) -> ModelReply:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": self.wire_messages(messages),
            "max_tokens": self.max_tokens,
        }
        if system:
            request["system"] = system
        if self.temperature is not None:
            request["temperature"] = self.temperature
        if tools:
            # the tools go with every request, "none" included: the API refuses a conversation with
            # tool_use / tool_result blocks whose request defines no tools
            request["tools"] = [
                {"name": t["name"], "description": t["description"], "input_schema": t["parameters"]}
                for t in tools
            ]
            request["tool_choice"] = {"type": _ANTHROPIC_CHOICE.get(tool_choice, "auto")}
        try:
            response = await self._client.messages.create(**request)
        except self._errors as exc:
            _raise_failure(self.tool, self.provider, exc, self._secret)
        texts: list[str] = []
        calls: list[ModelToolCall] = []
        for block in response.content or []:
            kind = getattr(block, "type", None)
            if kind == "text":
                texts.append(block.text)
            elif kind == "tool_use":
                calls.append(ModelToolCall(block.id, block.name, _tool_call_arguments(block.input)))
        usage = response.usage
        return ModelReply(
            "".join(texts),
            calls,
            int(getattr(usage, "input_tokens", 0) or 0),
            int(getattr(usage, "output_tokens", 0) or 0),
            str(response.stop_reason or ""),
        )


def build_client(
    provider: str,
    tool: str,
    *,
    model: str,
    base_url: str | None,
    api_key: str | None,
    timeout: float,
    max_tokens: int,
    temperature: float | None,
) -> ModelClient:
    cls = AnthropicClient if provider == "anthropic" else OpenAIClient
    return cls(
        tool,
        model=model,
        base_url=base_url,
        api_key=api_key,
        timeout=timeout,
        max_tokens=max_tokens,
        temperature=temperature,
    )
