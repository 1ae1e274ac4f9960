"""The real local model (tests/llm_server.py) through the real openai SDK: a forced tool call comes
back as a call of the offered tool with JSON arguments that match its schema, and the tool's result
sent back yields a text answer."""

from __future__ import annotations

import json
from typing import Any

from openai import AsyncOpenAI

from tests.llm_server import LocalModel

ECHO: Any = {
    "type": "function",
    "function": {
        "name": "echo",
        "description": "Echo a piece of text back.",
        "parameters": {
            "type": "object",
            "properties": {"text": {"type": "string", "description": "The text to echo."}},
            "required": ["text"],
            "additionalProperties": False,
        },
    },
}


async def test_forced_tool_call_then_text_answer(local_model: LocalModel) -> None:
    assert local_model.base_url.endswith("/v1")
    async with AsyncOpenAI(base_url=local_model.base_url, api_key="x", max_retries=0, timeout=60) as client:
        listed = await client.models.list()
        assert local_model.model in [m.id for m in listed.data]

        user = {"role": "user", "content": "Echo the text 'hello world'."}
        first = await client.chat.completions.create(
            model=local_model.model, messages=[user], tools=[ECHO], tool_choice="required", max_tokens=128
        )
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        calls = choice.message.tool_calls or []
        assert len(calls) == 1, calls
        call = calls[0]
        assert call.type == "function" and call.id
        assert call.function.name == "echo"
        arguments = json.loads(call.function.arguments)
        assert isinstance(arguments, dict) and set(arguments) == {"text"}
        assert isinstance(arguments["text"], str)

        history: list[Any] = [
            user,
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": call.function.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"echoed": arguments["text"]})},
        ]
        second = await client.chat.completions.create(
            model=local_model.model, messages=history, tools=[ECHO], tool_choice="none", max_tokens=64
        )
        answer = second.choices[0]
        assert not answer.message.tool_calls
        assert isinstance(answer.message.content, str) and answer.message.content.strip()
        assert answer.finish_reason in ("stop", "length")
        assert second.usage is not None and second.usage.completion_tokens > 0
