"""The scripted protocol servers round-trip every Reply kind through the real openai and anthropic SDKs."""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import anthropic
import openai
import pytest

from tests.agent.scripted import Reply, ScriptedAnthropic, ScriptedModel, ScriptedOpenAI

MODEL = "scripted-model"


@dataclass
class Proto:
    """One protocol: its scripted server, the real SDK client on it, and the SDK module (for exceptions)."""

    name: str
    server: ScriptedModel
    client: Any
    sdk: ModuleType

    async def ask(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        if self.name == "openai":
            return await self.client.chat.completions.create(model=MODEL, messages=messages, **kwargs)
        return await self.client.messages.create(model=MODEL, max_tokens=64, messages=messages, **kwargs)

    def text(self, response: Any) -> str | None:
        if self.name == "openai":
            return response.choices[0].message.content
        texts = [block.text for block in response.content if block.type == "text"]
        return "".join(texts) if texts else None

    def stop_reason(self, response: Any) -> str:
        return response.choices[0].finish_reason if self.name == "openai" else response.stop_reason

    def tokens(self, response: Any) -> tuple[int, int]:
        if self.name == "openai":
            return response.usage.prompt_tokens, response.usage.completion_tokens
        return response.usage.input_tokens, response.usage.output_tokens

    def calls(self, response: Any) -> list[tuple[str, str, Any]]:
        """(id, name, arguments): OpenAI's arguments string, Anthropic's input object."""
        if self.name == "openai":
            return [
                (c.id, c.function.name, c.function.arguments)
                for c in response.choices[0].message.tool_calls or []
            ]
        return [(b.id, b.name, b.input) for b in response.content if b.type == "tool_use"]


def _client(name: str, base_url: str, **kwargs: Any) -> Any:
    kwargs.setdefault("max_retries", 0)
    if name == "openai":
        return openai.AsyncOpenAI(base_url=base_url, api_key="test-key", **kwargs)
    return anthropic.AsyncAnthropic(base_url=base_url, api_key="test-key", **kwargs)


@pytest.fixture(params=["openai", "anthropic"])
async def proto(request: pytest.FixtureRequest) -> AsyncIterator[Proto]:
    name: str = request.param
    server: ScriptedModel = ScriptedOpenAI() if name == "openai" else ScriptedAnthropic()
    async with server:
        client = _client(name, server.base_url)
        try:
            yield Proto(name, server, client, openai if name == "openai" else anthropic)
        finally:
            await client.close()


USER = [{"role": "user", "content": "hello"}]


async def test_base_urls_point_at_the_protocol_roots() -> None:
    async with ScriptedOpenAI() as oa, ScriptedAnthropic() as an:
        assert oa.base_url == f"http://127.0.0.1:{oa.port}/v1"
        assert an.base_url == f"http://127.0.0.1:{an.port}"
        assert oa.port and an.port and oa.port != an.port
    with pytest.raises(RuntimeError, match="not started"):
        _ = ScriptedOpenAI().base_url


async def test_text_parses_into_the_sdk_types_without_warnings(proto: Proto) -> None:
    proto.server.script(Reply.text("hi there", tokens_in=123, tokens_out=45))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response = await proto.ask(USER)
    assert [str(w.message) for w in caught] == []
    assert proto.text(response) == "hi there"
    assert proto.stop_reason(response) == ("stop" if proto.name == "openai" else "end_turn")
    assert proto.tokens(response) == (123, 45)
    assert response.model == MODEL
    if proto.name == "openai":
        assert isinstance(response, openai.types.chat.ChatCompletion)
        assert response.usage.total_tokens == 168
        assert response.choices[0].message.tool_calls is None
    else:
        assert isinstance(response, anthropic.types.Message)
        assert [type(b).__name__ for b in response.content] == ["TextBlock"]
    # the FIFO is empty now: the default answers
    assert proto.text(await proto.ask(USER)) == "done"
    assert len(proto.server.requests) == 2


async def test_tool_calls_with_dict_and_raw_string_arguments(proto: Proto) -> None:
    proto.server.script(
        Reply.tool_calls(
            ("get_price", {"symbol": "BTC", "n": 2}), ("broken", '{"symbol": "BT'), text="looking"
        ),
        Reply.tool_calls(("again", {})),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = await proto.ask(USER)
    assert [str(w.message) for w in caught] == []
    assert proto.stop_reason(first) == ("tool_calls" if proto.name == "openai" else "tool_use")
    assert proto.text(first) == "looking"
    if proto.name == "openai":
        assert proto.calls(first) == [
            ("call_1", "get_price", json.dumps({"symbol": "BTC", "n": 2})),
            ("call_2", "broken", '{"symbol": "BT'),  # sent as it is: invalid JSON reaches the agent
        ]
    else:
        assert proto.calls(first) == [
            ("call_1", "get_price", {"symbol": "BTC", "n": 2}),
            ("call_2", "broken", {"_raw": '{"symbol": "BT'}),  # input must be an object: wrapped
        ]
    # ids go on counting per server, and are recorded
    second = await proto.ask(USER)
    assert proto.text(second) is None
    assert [c[0] for c in proto.calls(second)] == ["call_3"]
    assert proto.server.call_ids == ["call_1", "call_2", "call_3"]


async def test_anthropic_raw_string_input_is_parsed_when_it_is_a_json_object() -> None:
    async with ScriptedAnthropic() as server:
        client = _client("anthropic", server.base_url)
        try:
            server.script(Reply.tool_calls(("a", '{"k": [1, 2]}'), ("b", "[1, 2]"), ("c", "")))
            response = await client.messages.create(model=MODEL, max_tokens=8, messages=USER)
        finally:
            await client.close()
    assert [b.input for b in response.content] == [{"k": [1, 2]}, {"_raw": "[1, 2]"}, {"_raw": ""}]


async def test_openai_text_and_tool_calls_together_and_no_content() -> None:
    async with ScriptedOpenAI() as server:
        client = _client("openai", server.base_url)
        try:
            server.script(Reply.tool_calls(("t", {"a": 1})))
            response = await client.chat.completions.create(model=MODEL, messages=USER)
        finally:
            await client.close()
    message = response.choices[0].message
    assert message.content is None and message.role == "assistant"
    assert message.tool_calls[0].type == "function"


async def test_429_with_retry_after_raises_rate_limit_error(proto: Proto) -> None:
    proto.server.script(Reply.error(429, retry_after=1.5), Reply.error(429, retry_after=2))
    with pytest.raises(proto.sdk.RateLimitError) as info:
        await proto.ask(USER)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "1.5"
    if proto.name == "openai":
        assert info.value.body == {
            "message": "scripted error 429",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    else:
        assert info.value.body == {
            "type": "error",
            "error": {"type": "rate_limit_error", "message": "scripted error 429"},
        }
    with pytest.raises(proto.sdk.RateLimitError) as info:
        await proto.ask(USER)
    assert info.value.response.headers["retry-after"] == "2"
    assert proto.server.requests == [proto.server.requests[0]] * 2  # errors are recorded too
    assert len(proto.server.requests) == 2


async def test_500_raises_internal_server_error(proto: Proto) -> None:
    proto.server.script(Reply.error(500))
    with pytest.raises(proto.sdk.InternalServerError) as info:
        await proto.ask(USER)
    assert info.value.status_code == 500
    assert "retry-after" not in info.value.response.headers
    assert "scripted error 500" in str(info.value)
    assert len(proto.server.requests) == 1


async def test_other_statuses_map_to_the_sdk_classes(proto: Proto) -> None:
    # anthropic has classes of its own for 503 and 529 (subclasses of its InternalServerError)
    expected = {
        400: proto.sdk.BadRequestError,
        401: proto.sdk.AuthenticationError,
        404: proto.sdk.NotFoundError,
        503: openai.InternalServerError if proto.name == "openai" else anthropic.ServiceUnavailableError,
        529: openai.InternalServerError if proto.name == "openai" else anthropic.OverloadedError,
    }
    proto.server.script(*(Reply.error(status) for status in expected))
    for status, cls in expected.items():
        with pytest.raises(proto.sdk.APIStatusError) as info:
            await proto.ask(USER)
        assert type(info.value) is cls, status
        assert info.value.status_code == status


async def test_error_with_a_custom_body_is_sent_as_given(proto: Proto) -> None:
    body = {"weird": True, "error": {"message": "custom words", "type": "x"}}
    proto.server.script(Reply.error(400, body=body))
    with pytest.raises(proto.sdk.BadRequestError) as info:
        await proto.ask(USER)
    assert info.value.response.json() == body
    assert "custom words" in str(info.value)


async def test_malformed_raises_a_json_decode_error(proto: Proto) -> None:
    # both SDKs call response.json() on an application/json body and let the error through unwrapped
    proto.server.script(Reply.malformed())
    with pytest.raises(json.JSONDecodeError):
        await proto.ask(USER)
    assert len(proto.server.requests) == 1
    assert proto.text(await proto.ask(USER)) == "done"  # the connection is still fine


async def test_stall_beyond_the_client_timeout_raises_api_timeout_error(proto: Proto) -> None:
    proto.server.script(Reply.stall(30))
    began = time.monotonic()
    with pytest.raises(proto.sdk.APITimeoutError):
        await proto.ask(USER, timeout=0.2)
    assert time.monotonic() - began < 2
    assert len(proto.server.requests) == 1
    assert proto.text(await proto.ask(USER)) == "done"
    # the stalled handler is still waiting: stop() (the fixture's) cuts it short, see the duration below


async def test_stall_within_the_client_timeout_answers_late(proto: Proto) -> None:
    proto.server.script(Reply.stall(0.05))
    response = await proto.ask(USER, timeout=5)
    assert proto.text(response) == "late"


async def test_stop_is_prompt_with_a_stalled_request_in_flight() -> None:
    server = ScriptedOpenAI()
    await server.start()
    client = _client("openai", server.base_url)
    server.script(Reply.stall(30))
    task = asyncio.create_task(client.chat.completions.create(model=MODEL, messages=USER))
    try:
        await server.wait_requests(1)
        began = time.monotonic()
        await server.stop()
        assert time.monotonic() - began < 1.5
        response = await task  # the stall ended early and answered
        assert response.choices[0].message.content == "late"
    finally:
        task.cancel()
        await client.close()


async def test_requests_record_message_lists_exactly_as_sent(proto: Proto) -> None:
    if proto.name == "openai":
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": "you are a bot"},
            {"role": "user", "content": "price?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_price", "arguments": '{"s": "BTC"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"price": 1.5, "ünïcode": "✓"}'},
        ]
        tools = [{"type": "function", "function": {"name": "get_price", "parameters": {"type": "object"}}}]
    else:
        messages = [
            {"role": "user", "content": "price?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "checking"},
                    {"type": "tool_use", "id": "call_1", "name": "get_price", "input": {"s": "BTC"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_1",
                        "content": '{"price": 1.5, "ünïcode": "✓"}',
                    }
                ],
            },
        ]
        tools = [{"name": "get_price", "input_schema": {"type": "object"}}]
    sent = json.loads(json.dumps(messages))
    await proto.ask(messages, tools=tools)
    await proto.ask([*messages, {"role": "user", "content": "and now?"}])
    first, second = proto.server.requests
    assert first["messages"] == sent
    assert first["model"] == MODEL
    assert first["tools"] == tools
    assert second["messages"] == [*sent, {"role": "user", "content": "and now?"}]
    assert "tools" not in second
    assert messages == sent  # the SDK did not change the caller's list
    headers = proto.server.headers[0]
    assert headers["content-type"] == "application/json"
    assert "test-key" in headers.get("authorization", "") + headers.get("x-api-key", "")
    assert all(k == k.lower() for k in headers)


async def test_exhausted_script_without_default_answers_500(proto: Proto) -> None:
    proto.server.default = None
    proto.server.script(Reply.text("one"))
    assert proto.text(await proto.ask(USER)) == "one"
    with pytest.raises(proto.sdk.InternalServerError, match="script exhausted"):
        await proto.ask(USER)
    assert len(proto.server.requests) == 2
    proto.server.default = Reply.tool_calls(("again", {}))
    assert [c[1] for c in proto.calls(await proto.ask(USER))] == ["again"]
    assert proto.server.pending == 0


async def test_the_sdk_retries_by_itself_unless_max_retries_is_zero(proto: Proto) -> None:
    client = _client(proto.name, proto.server.base_url, max_retries=2)
    try:
        proto.server.script(
            Reply.error(429, retry_after=0.01), Reply.error(500, retry_after=0.01), Reply.text("ok")
        )
        retried = Proto(proto.name, proto.server, client, proto.sdk)
        assert retried.text(await retried.ask(USER)) == "ok"
    finally:
        await client.close()
    assert [h["x-stainless-retry-count"] for h in proto.server.headers] == ["0", "1", "2"]


async def test_wait_requests(proto: Proto) -> None:
    proto.server.script(Reply.stall(0.15))
    task = asyncio.create_task(proto.ask(USER))
    await proto.server.wait_requests(1, timeout=2)
    assert not task.done()
    with pytest.raises(TimeoutError, match=r"1 requests after 0\.05s, wanted 2"):
        await proto.server.wait_requests(2, timeout=0.05)
    assert proto.text(await task) == "late"


async def test_openai_models_endpoint() -> None:
    async with ScriptedOpenAI() as server:
        client = _client("openai", server.base_url)
        try:
            page = await client.models.list()
        finally:
            await client.close()
    assert [m.id for m in page.data] == ["scripted"]
    assert server.requests == []  # GET /v1/models is not recorded


async def test_reply_constructors_check_their_arguments() -> None:
    with pytest.raises(ValueError):
        Reply.tool_calls()
    with pytest.raises(ValueError):
        Reply.error(200)
    assert Reply.text("x") == Reply.text("x")
