"""End to end with a real language model: SmolLM2-135M behind llama.cpp's OpenAI-compatible server
(tests/llm_server.py), no network.

A replayed event matches a rule that escalates to an llm tool; the model's tool call goes through
reflexd's runner to a real file tool; the model's answer comes back as an event of the llm tool that
a second rule routes to another file. The model is tiny: the test checks the mechanics (a forced
first call, the result sent back, a text answer on the last round), never the model's judgement.
"""

from __future__ import annotations

import json
from pathlib import Path

from daemon.config import load_config_text
from daemon.registry import builtin_registry
from tests.conftest import StartDaemon
from tests.llm_server import LocalModel
from tests.servers import wait_for


async def test_a_rule_escalates_to_a_real_model_that_acts_through_a_tool_and_its_answer_is_routed(
    local_model: LocalModel, run_daemon: StartDaemon, tmp_path: Path
) -> None:
    recording = tmp_path / "moves.jsonl"
    recording.write_text(json.dumps({"sym": "BTC", "move": 3.2, "p": 101250}) + "\n")
    alerts, routed = tmp_path / "alerts.jsonl", tmp_path / "answers.jsonl"
    config = f"""
daemon: {{http: null, state_path: "{tmp_path / "state.db"}"}}
sources:
  moves: {{type: replay, path: "{recording}", key_field: sym}}
tools:
  alert:
    type: file
    path: "{alerts}"
    description: "Send an alert to the trading desk."
    parameters:
      type: object
      properties: {{text: {{type: string, maxLength: 80, description: "One line for the desk."}}}}
      required: [text]
      additionalProperties: false
  answers_out: {{type: file, path: "{routed}"}}
  analyst:
    type: llm
    base_url: "{local_model.base_url}"
    model: "{local_model.model}"
    system: "You watch crypto prices for a trading desk. Use the alert tool to tell the desk."
    tools: [alert]
    first_tool_choice: required
    max_rounds: 2
    max_tokens: 160
    request_timeout_seconds: 120
    timeout_seconds: 300
rules:
  big_move:
    from: moves
    where: "data.move > 2"
    then: [{{tool: analyst, args: {{prompt: "{{key}} moved {{data.move}}% to {{data.p}}. Alert the desk."}}}}]
  answers:
    from: analyst
    then: [{{tool: answers_out, args: {{text: "{{data.text}}", run: "{{data.run}}"}}}}]
"""
    daemon = await run_daemon(load_config_text(config, builtin_registry(), base_dir=tmp_path))
    await wait_for(
        lambda: routed.exists() and bool(routed.read_text().strip()),
        240,
        interval=0.1,
        what=lambda: f"a routed answer; status {daemon.status()['tools']['analyst']}",
    )
    lines = alerts.read_text().splitlines()
    assert len(lines) == 1, lines  # the model's one call went through the runner to the real tool, once
    call = json.loads(lines[0])
    assert call["tool"] == "alert" and call["rule"] == "big_move"
    assert set(call["args"]) == {"text"} and isinstance(call["args"]["text"], str)  # its schema, as configured

    answer = json.loads(routed.read_text().splitlines()[0])
    assert answer["source"] == "analyst" and answer["rule"] == "answers" and answer["key"] == "BTC"
    run_id = answer["args"]["run"]
    assert answer["args"]["text"].strip()

    assert daemon.agent_state is not None
    run = daemon.agent_state.run(run_id)
    assert run is not None and run.outcome == "answered" and run.rounds == 2
    assert run.tokens_in > 0 and run.tokens_out > 0  # the server's reported usage, counted
    roles = [m["role"] for m in run.messages]
    assert roles == ["user", "assistant", "tool", "assistant"], roles
    assert run.messages[1]["tool_calls"][0]["name"] == "alert"
    assert json.loads(run.messages[2]["content"])["outcome"] == "succeeded"
