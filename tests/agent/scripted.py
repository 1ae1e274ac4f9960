"""Scripted LLM protocol servers for deterministic tests of an agent loop.

Both servers are real HTTP servers (aiohttp.web on 127.0.0.1, port 0) that the real SDK clients
talk to: :class:`ScriptedOpenAI` speaks the Chat Completions API (``POST /v1/chat/completions``,
also ``GET /v1/models``) for ``openai.AsyncOpenAI(base_url=server.base_url)``, and
:class:`ScriptedAnthropic` speaks the Messages API (``POST /v1/messages``) for
``anthropic.AsyncAnthropic(base_url=server.base_url)``. Build the clients with ``max_retries=0``:
the SDKs retry 408/409/429/5xx and timeouts by themselves otherwise.

Each request takes the next :class:`Reply` from a FIFO filled by :meth:`ScriptedModel.script`;
when the FIFO is empty, :attr:`ScriptedModel.default` answers (``Reply.text("done")`` unless
changed); with ``default = None`` an exhausted script answers 500 "script exhausted". A reply is
taken when its request arrives, so concurrent requests get replies in arrival order.

Every request to the protocol endpoint is recorded before it is answered, errors included:
:attr:`~ScriptedModel.requests` holds the parsed JSON bodies, :attr:`~ScriptedModel.headers` their
headers (lower-cased names), :attr:`~ScriptedModel.call_ids` every tool-call id handed out
(``call_1``, ``call_2``, ... per server, for both protocols). ``GET /v1/models`` is answered but
not recorded.

Tool-call arguments are a dict, or a raw string sent as it is (to test invalid JSON). OpenAI sends
``function.arguments`` as a string anyway. Anthropic's ``tool_use.input`` must be an object, so a
raw string is sent as its parsed value when it parses to an object, else as ``{"_raw": string}``.

What the SDKs raise (openai 3.x, anthropic 2.x, ``max_retries=0``), proven in test_scripted.py:

=====================  ==========================================  ==========================================
reply                  openai                                      anthropic
=====================  ==========================================  ==========================================
``error(429)``         ``openai.RateLimitError``                   ``anthropic.RateLimitError``
``error(500)``         ``openai.InternalServerError``              ``anthropic.InternalServerError``
``error(503)``         ``openai.InternalServerError``              ``anthropic.ServiceUnavailableError``
``error(529)``         ``openai.InternalServerError``              ``anthropic.OverloadedError``
``malformed()``        ``json.JSONDecodeError`` (not wrapped)      ``json.JSONDecodeError`` (not wrapped)
``stall(s)`` > timeout ``openai.APITimeoutError``                  ``anthropic.APITimeoutError``
=====================  ==========================================  ==========================================

(anthropic's 503/529 classes are subclasses of its ``InternalServerError``.)
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Literal

from aiohttp import web

__all__ = ["Reply", "ScriptedAnthropic", "ScriptedModel", "ScriptedOpenAI"]

Kind = Literal["text", "tool_calls", "error", "malformed", "stall"]
Call = tuple[str, dict[str, Any] | str]


@dataclass(frozen=True)
class Reply:
    """One scripted answer, protocol-neutral. Build it with the static constructors."""

    kind: Kind
    content: str = ""
    calls: tuple[Call, ...] = ()
    tokens_in: int = 10
    tokens_out: int = 5
    status: int = 200
    retry_after: float | None = None
    body: dict[str, Any] | None = None
    seconds: float = 0.0

    @staticmethod
    def text(text: str, *, tokens_in: int = 10, tokens_out: int = 5) -> Reply:
        """A plain assistant message (finish ``stop`` / stop ``end_turn``)."""
        return Reply("text", content=text, tokens_in=tokens_in, tokens_out=tokens_out)

    @staticmethod
    def tool_calls(*calls: Call, text: str = "", tokens_in: int = 10, tokens_out: int = 5) -> Reply:
        """An assistant message calling tools: each call is ``(name, arguments)``, arguments a dict or
        a raw string sent as it is. Call ids are generated per server (``call_1``, ``call_2``, ...)."""
        if not calls:
            raise ValueError("Reply.tool_calls needs at least one call")
        return Reply(
            "tool_calls", content=text, calls=tuple(calls), tokens_in=tokens_in, tokens_out=tokens_out
        )

    @staticmethod
    def error(status: int, *, retry_after: float | None = None, body: dict[str, Any] | None = None) -> Reply:
        """An HTTP error: ``body`` as it is, else a JSON error in the protocol's shape; a
        ``Retry-After`` header when ``retry_after`` is set."""
        if status < 400:
            raise ValueError(f"Reply.error needs an error status, not {status}")
        return Reply("error", status=status, retry_after=retry_after, body=body)

    @staticmethod
    def malformed() -> Reply:
        """200 with ``Content-Type: application/json`` and a body that is not valid JSON."""
        return Reply("malformed")

    @staticmethod
    def stall(seconds: float) -> Reply:
        """Wait ``seconds`` before answering (for client timeouts), then answer the text ``late``.
        :meth:`ScriptedModel.stop` cuts the wait short."""
        return Reply("stall", content="late", seconds=seconds)


def _retry_after(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(eq=False)
class ScriptedModel:
    """Shared script and recording logic; subclasses render the protocol."""

    default: Reply | None = field(default_factory=lambda: Reply.text("done"))
    host: str = "127.0.0.1"
    requests: list[dict[str, Any]] = field(default_factory=list, init=False)
    headers: list[dict[str, str]] = field(default_factory=list, init=False)
    call_ids: list[str] = field(default_factory=list, init=False)

    PATH: ClassVar[str] = ""
    BASE_PATH: ClassVar[str] = ""
    ID_PREFIX: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self._script: deque[Reply] = deque()
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self._recorded = asyncio.Condition()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- script and recording ---------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Append replies to the FIFO."""
        self._script.extend(replies)

    @property
    def pending(self) -> int:
        """Scripted replies not yet used."""
        return len(self._script)

    async def wait_requests(self, n: int, timeout: float = 5.0) -> None:
        """Wait until at least ``n`` requests were recorded; ``TimeoutError`` after ``timeout``."""
        try:
            async with asyncio.timeout(timeout), self._recorded:
                await self._recorded.wait_for(lambda: len(self.requests) >= n)
        except TimeoutError:
            raise TimeoutError(
                f"{type(self).__name__}: {len(self.requests)} requests after {timeout}s, wanted {n}"
            ) from None

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._runner is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://{self.host}:{self.port}{self.BASE_PATH}"

    async def start(self) -> None:
        app = web.Application()
        self._routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._closing.clear()
        self._runner = runner

    async def stop(self) -> None:
        self._closing.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> ScriptedModel:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- request handling -------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        app.router.add_post(self.PATH, self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.text()
        try:
            body = json.loads(raw)
            valid = isinstance(body, dict)
        except ValueError:
            valid = False
        if not valid:
            body = {"_invalid_json": raw}
        async with self._recorded:
            self.requests.append(body)
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
            self._recorded.notify_all()
        if not valid:
            return self._error_response(400, f"request body is not a JSON object: {raw[:200]!r}")

        reply = self._script.popleft() if self._script else self.default
        if reply is None:
            return self._error_response(500, "script exhausted")
        model = str(body.get("model", "scripted"))
        if reply.kind == "stall":
            try:
                await asyncio.wait_for(self._closing.wait(), reply.seconds)
            except TimeoutError:
                pass
            return self._json(self._message(Reply.text(reply.content), model))
        if reply.kind == "error":
            headers = {} if reply.retry_after is None else {"retry-after": _retry_after(reply.retry_after)}
            if reply.body is not None:
                return self._json(reply.body, status=reply.status, headers=headers)
            return self._error_response(reply.status, f"scripted error {reply.status}", headers=headers)
        if reply.kind == "malformed":
            return web.Response(
                status=200,
                text='{"id": "malformed", "choices": [',
                content_type="application/json",
                headers=self._id_headers(),
            )
        return self._json(self._message(reply, model))

    def _json(
        self, data: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None
    ) -> web.Response:
        return web.json_response(data, status=status, headers={**self._id_headers(), **(headers or {})})

    def _error_response(
        self, status: int, message: str, *, headers: dict[str, str] | None = None
    ) -> web.Response:
        return self._json(self._error_body(status, message), status=status, headers=headers)

    def _next_call_id(self) -> str:
        call_id = f"call_{next(self._ids)}"
        self.call_ids.append(call_id)
        return call_id

    def _next_id(self) -> str:
        return f"{self.ID_PREFIX}{next(self._seq)}"

    # -- protocol hooks ---------------------------------------------------------------------

    def _id_headers(self) -> dict[str, str]:
        return {}

    def _message(self, reply: Reply, model: str) -> dict[str, Any]:
        raise NotImplementedError

    def _error_body(self, status: int, message: str) -> dict[str, Any]:
        raise NotImplementedError


_OPENAI_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


@dataclass(eq=False)
class ScriptedOpenAI(ScriptedModel):
    """Chat Completions: ``POST /v1/chat/completions``; ``GET /v1/models`` lists one model.
    ``base_url`` is ``http://127.0.0.1:PORT/v1``."""

    PATH: ClassVar[str] = "/v1/chat/completions"
    BASE_PATH: ClassVar[str] = "/v1"
    ID_PREFIX: ClassVar[str] = "chatcmpl-scripted-"

    def _routes(self, app: web.Application) -> None:
        super()._routes(app)
        app.router.add_get("/v1/models", self._models)

    async def _models(self, request: web.Request) -> web.Response:
        model = {"id": "scripted", "object": "model", "created": 0, "owned_by": "reflexd-tests"}
        return web.json_response({"object": "list", "data": [model]})

    def _id_headers(self) -> dict[str, str]:
        return {"x-request-id": f"req_scripted_{len(self.requests)}"}

    def _message(self, reply: Reply, model: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.content or None, "refusal": None}
        finish = "stop"
        if reply.kind == "tool_calls":
            finish = "tool_calls"
            message["tool_calls"] = [
                {
                    "id": self._next_call_id(),
                    "type": "function",
                    "function": {
                        "name": name,
                        "arguments": args if isinstance(args, str) else json.dumps(args),
                    },
                }
                for name, args in reply.calls
            ]
        return {
            "id": self._next_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": reply.tokens_in,
                "completion_tokens": reply.tokens_out,
                "total_tokens": reply.tokens_in + reply.tokens_out,
            },
        }

    def _error_body(self, status: int, message: str) -> dict[str, Any]:
        kind, code = _OPENAI_ERRORS.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None)
        )
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}


_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


@dataclass(eq=False)
class ScriptedAnthropic(ScriptedModel):
    """Messages: ``POST /v1/messages``. ``base_url`` is ``http://127.0.0.1:PORT``.

    A raw-string tool argument becomes ``input`` = its parsed value when that is a JSON object,
    else ``{"_raw": the string}`` (the protocol only has objects there)."""

    PATH: ClassVar[str] = "/v1/messages"
    BASE_PATH: ClassVar[str] = ""
    ID_PREFIX: ClassVar[str] = "msg_scripted_"

    def _id_headers(self) -> dict[str, str]:
        return {"request-id": f"req_scripted_{len(self.requests)}"}

    @staticmethod
    def _input(args: dict[str, Any] | str) -> dict[str, Any]:
        if isinstance(args, dict):
            return args
        try:
            parsed = json.loads(args)
        except ValueError:
            return {"_raw": args}
        return parsed if isinstance(parsed, dict) else {"_raw": args}

    def _message(self, reply: Reply, model: str) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if reply.content:
            content.append({"type": "text", "text": reply.content})
        for name, args in reply.calls:
            content.append(
                {"type": "tool_use", "id": self._next_call_id(), "name": name, "input": self._input(args)}
            )
        return {
            "id": self._next_id(),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": "tool_use" if reply.kind == "tool_calls" else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": reply.tokens_in, "output_tokens": reply.tokens_out},
        }

    def _error_body(self, status: int, message: str) -> dict[str, Any]:
        kind = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
