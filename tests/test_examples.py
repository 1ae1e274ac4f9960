"""The configurations in ``examples/`` work as their comments say.

Every example passes ``reflexd check`` (with the environment variables it documents), and those that
can run offline are replayed over their input (``reflexd replay``, as a user runs it from the
repository's top folder) with assertions on what fires, computed here from the input itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.config import load_config_text
from daemon.registry import builtin_registry
from tests.agent.scripted import Reply, ScriptedOpenAI
from tests.conftest import StartDaemon
from tests.servers import wait_for

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SAMPLE = ROOT / "data" / "sample-trades.jsonl"

#: Every example, with the environment variables it needs to pass `check`.
NEEDS: dict[str, dict[str, str]] = {
    "binance-trades-alerts.yaml": {},
    "kafka-triggered-action.yaml": {},
    "ccxt-order-guarded.yaml": {},
    "windows-and-crossings.yaml": {},
    "exec-and-webhook.yaml": {"WEBHOOK_SECRET": "whsec_c2VjcmV0LWZvci10aGUtZXhhbXBsZS10ZXN0"},
    "agent.yaml": {"OPENAI_API_KEY": "sk-example-test-key-1f3a9c"},
}


def reflexd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``reflexd ARGS`` from the repository's top folder, in a clean environment plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "HOME", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def replay(example: str, *files: str, env: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], str]:
    """What ``reflexd replay`` says would fire (JSON lines), and its summary; it must exit 0."""
    done = reflexd("replay", "-c", f"examples/{example}", *files, "--format", "jsonl", env=env)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()], done.stderr


def sample() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines()]


def big_trades(trades: list[dict[str, Any]], threshold: float, cooldown: float) -> list[dict[str, Any]]:
    """Trades above ``threshold`` notional, then ``cooldown`` seconds of trade time muted per symbol."""
    last: dict[str, float] = {}
    out = []
    for t in trades:
        ts = t["T"] / 1000
        if float(t["p"]) * float(t["q"]) > threshold and (
            t["s"] not in last or ts - last[t["s"]] >= cooldown
        ):
            last[t["s"]] = ts
            out.append(t)
    return out


def test_every_example_is_listed() -> None:
    """The examples folder holds exactly the listed examples (a new one must get its check here)."""
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(NEEDS)


@pytest.mark.parametrize("example", sorted(NEEDS))
def test_example_passes_check(example: str) -> None:
    """`reflexd check` accepts the example as shipped, with only the variables its comments name,
    shows no secret, and the example says how to check and replay or run itself."""
    text = (EXAMPLES / example).read_text()
    assert f"reflexd check  -c examples/{example}" in text
    assert "reflexd replay" in text or "reflexd run" in text
    env = NEEDS[example]
    for name in env:
        assert name in text.split("daemon:")[0], f"{name} is not documented in the header comments"
    done = reflexd("check", "-c", f"examples/{example}", env=env)
    assert done.returncode == 0, done.stderr
    assert f"examples/{example}: ok" in done.stdout
    for value in env.values():
        assert value not in done.stdout + done.stderr


def test_exec_and_webhook_needs_its_secret() -> None:
    """Without WEBHOOK_SECRET the exec-and-webhook example is a configuration error naming it."""
    done = reflexd("check", "-c", "examples/exec-and-webhook.yaml")
    assert done.returncode == 2
    assert "signing_secret: environment variable WEBHOOK_SECRET is not set" in done.stderr


def test_windows_and_crossings_replay() -> None:
    """Over the sample: one bar per symbol and closed minute with the OHLC computed here, sharp
    moves down then up for both symbols, BTC level crossings alternating from down, beyond the band."""
    fired, summary = replay("windows-and-crossings.yaml", "data/sample-trades.jsonl")
    assert "errors 0" in summary and "errors 1" not in summary
    by_rule: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in fired:
        by_rule[f["rule"]].append(f)

    trades = sample()
    last_ts = trades[-1]["T"] / 1000
    expected: dict[tuple[str, float], dict[str, Any]] = {}
    for t in trades:
        start = (t["T"] / 1000) // 60 * 60
        if start + 60 > last_ts:  # the minute still open at the end is not emitted
            continue
        bar = expected.setdefault(
            (t["s"], start), {"open": float(t["p"]), "high": 0.0, "low": float("inf"), "trades": 0}
        )
        price = float(t["p"])
        bar.update(high=max(bar["high"], price), low=min(bar["low"], price), close=price)
        bar["trades"] += 1
    bars = {(f["args"]["symbol"], f["args"]["start"]): f["args"] for f in by_rule["minute_bars"]}
    assert len(expected) == 20  # 10 closed minutes, 2 symbols
    assert bars.keys() == expected.keys()
    for k, want in expected.items():
        assert {name: bars[k][name] for name in want} == want, k

    moves: dict[str, list[float]] = defaultdict(list)
    for f in by_rule["sharp_move"]:
        symbol, _, rest = f["args"]["text"].partition(" moved ")
        moves[symbol].append(float(rest.partition("%")[0]))
    assert set(moves) == {"BTCUSDT", "ETHUSDT"}
    for seen in moves.values():  # data/README.md: a drop at +150..185 s, a rise at +420..460 s
        assert seen[0] <= -0.5 and all(m >= 0.5 for m in seen[1:]) and len(seen) >= 2

    levels = [f["args"]["text"].split() for f in by_rule["btc_level"]]
    directions = [words[3] for words in levels]
    assert len(directions) >= 2 and directions[0] == "down"
    assert all(a != b for a, b in pairwise(directions))
    for words in levels:
        price = float(words[-1])
        assert price < 64290 if words[3] == "down" else price > 64310
    assert by_rule["vwap_cross"], "the VWAP crossing never fired"


def test_binance_replay_fires_on_the_big_trades() -> None:
    """The recorded Binance frames: the subscription reply is filtered by the source's `where:`, not a
    rule error; the alerts
    are the trades above 250,000 USDT with 10 s of cooldown per symbol (data/README.md: the first
    is BTCUSDT 9.47143 @ 65004.03)."""
    path = EXAMPLES / "data" / "binance-trades.jsonl"
    frames = [json.loads(line) for line in path.read_text().splitlines()]
    assert frames[0] == {"result": None, "id": 1}
    fired, summary = replay("binance-trades-alerts.yaml", "binance=examples/data/binance-trades.jsonl")
    assert "1 message(s) filtered by the source's where:" in summary
    assert "rule big_trade: seen 207, fired 2, errors 0" in summary
    want = big_trades(frames[1:], 250000, 10)
    assert [f["args"] for f in fired if f["tool"] == "record"] == [
        {"symbol": t["s"], "price": t["p"], "qty": t["q"], "trade_id": t["t"]} for t in want
    ]
    alerts = [f["args"]["text"] for f in fired if f["tool"] == "alert"]
    assert alerts[0] == "big trade BTCUSDT 9.47143 @ 65004.03"
    assert len(alerts) == len(want) == 2


def test_kafka_example_replay_flags_only_large_orders() -> None:
    """Over the recorded orders: only the orders of 10,000 or more are reviewed and flagged; a
    cancel and an order without an amount are no rule error."""
    fired, summary = replay("kafka-triggered-action.yaml", "examples/data/orders.recording.jsonl")
    assert "rule large_order: seen 6, fired 2, errors 0" in summary
    assert [(f["tool"], f["args"]["order_id"]) for f in fired] == [
        ("review", "A-1002"),
        ("flagged", "A-1002"),
        ("review", "A-1005"),
        ("flagged", "A-1005"),
    ]
    assert fired[2]["args"] == {
        "order_id": "A-1005",
        "customer": "c-08",
        "amount": 48000.0,
        "currency": "USD",
        "offset": 102,
    }


def test_ccxt_example_replay_orders_within_its_guards() -> None:
    """Over the recorded drop: one limit buy, 0.1 % under the trade that fired, on an allowed symbol
    and within max_notional (so the dry-run tool would accept it)."""
    fired, summary = replay("ccxt-order-guarded.yaml", "examples/data/ccxt-btc-trades.recording.jsonl")
    assert "fired 1, errors 0" in summary
    [order] = fired
    records = [json.loads(line) for line in (EXAMPLES / "data" / "ccxt-btc-trades.recording.jsonl").open()]
    trigger = next(r for r in records if r["ts"] == order["ts"])
    args = order["args"]
    assert args["symbol"] == "BTC/USDT" and args["side"] == "buy" and args["type"] == "limit"
    assert args["price"] == round(trigger["data"]["price"] * 0.999, 2)
    assert args["amount"] * args["price"] <= 100


def test_exec_and_webhook_replay() -> None:
    """Over the sample: for every big trade (cooldown 10 s per symbol) one notify call and one
    webhook call with the trade's numbers."""
    env = NEEDS["exec-and-webhook.yaml"]
    fired, _ = replay("exec-and-webhook.yaml", "data/sample-trades.jsonl", env=env)
    want = big_trades(sample(), 250000, 10)
    assert len(want) > 10
    hooks = [f["args"] for f in fired if f["tool"] == "webhook"]
    assert hooks == [
        {
            "symbol": t["s"],
            "price": float(t["p"]),
            "qty": float(t["q"]),
            "notional": round(float(t["p"]) * float(t["q"]), 2),
            "trade_id": t["t"],
        }
        for t in want
    ]
    notes = [f["args"]["text"] for f in fired if f["tool"] == "notify"]
    assert notes == [f"big trade {t['s']} {t['q']} @ {t['p']}" for t in want]


def test_notify_script_writes_each_call_once(tmp_path: Path) -> None:
    """examples/bin/notify.sh, run as the exec tool runs it (after `--`): one line per call id, a
    retry of the same call writes nothing more, and event text stays one argument."""
    log = tmp_path / "out" / "notifications.log"
    env = {"PATH": os.environ["PATH"], "NOTIFY_LOG": str(log), "REFLEXD_CALL_ID": "c1", "EVENT_ID": "e1"}
    argv = [str(EXAMPLES / "bin" / "notify.sh"), "--", "BTCUSDT", "65004.03", "9.47143", "big; $(x) trade"]
    for _ in range(2):
        subprocess.run(argv, env=env, check=True, timeout=10)
    assert log.read_text() == "c1 BTCUSDT 65004.03 9.47143 big; $(x) trade\n"


def test_agent_replay_escalates_sharp_moves_and_notes_big_trades() -> None:
    """Over the sample, in a replay (no model, no tool): the sharp moves become analyst prompts, at
    most one per symbol and minute, for both symbols and both directions; the big trades (250,000 USDT,
    10 s per symbol) become notify calls; the model's own tools are never fired by a rule and, with no
    model, there is no answer for the answers rule."""
    fired, summary = replay("agent.yaml", "data/sample-trades.jsonl")
    assert "errors 1" not in summary and "rule answers: seen 0, fired 0" in summary
    assert {f["tool"] for f in fired} == {"analyst", "note"}
    prompts = [(f["ts"], f["args"]["prompt"]) for f in fired if f["tool"] == "analyst"]
    moves: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for ts, prompt in prompts:
        symbol, _, rest = prompt.partition(" moved ")
        moves[symbol].append((ts, float(rest.partition("%")[0])))
    assert set(moves) == {"BTCUSDT", "ETHUSDT"}
    for seen in moves.values():  # data/README.md: a drop at +150..185 s, a rise at +420..460 s
        assert seen[0][1] <= -0.5 and any(m >= 0.5 for _, m in seen) and all(abs(m) >= 0.5 for _, m in seen)
    notes = [f["args"]["text"] for f in fired if f["tool"] == "note"]
    assert notes == [f"big trade {t['s']} {t['q']} @ {t['p']}" for t in big_trades(sample(), 250000, 10)]


async def test_agent_example_runs_against_an_openai_compatible_server(
    run_daemon: StartDaemon, tmp_path: Path
) -> None:
    """The example as shipped (only the replay speed, the ops server, the state and the answers file
    moved for the test) against the scripted OpenAI-compatible server through the real openai SDK: one
    run per symbol (the other sharp moves are deduplicated into notifications), the model's alert goes
    through the runner, its buy waits for approval and runs once (dry run) when approved, both answers
    are routed to the answers file, and the model saw the big trades as a notification."""
    doc = yaml.safe_load((EXAMPLES / "agent.yaml").read_text())
    doc["daemon"].update(http=None, state_path=str(tmp_path / "agent.db"))
    doc["sources"]["trades"]["speed"] = 0
    doc["tools"]["answers"]["path"] = str(tmp_path / "answers.jsonl")
    async with ScriptedOpenAI() as model:
        model.default = Reply.text("Told the desk.")
        # the two runs' first calls take these in arrival order; every later call gets the default text
        model.script(
            Reply.tool_calls(("alert", {"text": "sharp move"})),
            Reply.tool_calls(
                ("buy", {"symbol": "BTC/USDT", "side": "buy", "type": "limit", "amount": 0.001, "price": 64000})
            ),
        )
        env = {"LLM_BASE_URL": model.base_url, "OPENAI_API_KEY": "sk-example-test-key-1f3a9c"}
        config = load_config_text(
            yaml.safe_dump(doc, sort_keys=False), builtin_registry(), base_dir=EXAMPLES, env=env
        )
        daemon = await run_daemon(config)
        state = daemon.agent_state
        assert state is not None
        answers = tmp_path / "answers.jsonl"

        def answered() -> int:
            return len(answers.read_text().splitlines()) if answers.exists() else 0

        await wait_for(lambda: answered() == 2, 20, what=lambda: f"2 answers, not {answered()}")
        await wait_for(lambda: daemon.sources["trades"].stats.state == "finished", 20, what="the replay's end")
        runs = state.runs(tool="analyst")
        by_outcome = Counter(r.outcome for r in runs)
        assert by_outcome == {"answered": 2, "deduplicated": 4}, by_outcome
        assert {r.key for r in runs if r.outcome == "answered"} == {"BTCUSDT", "ETHUSDT"}
        assert daemon.runner.stats("alert").succeeded == 1
        assert {json.loads(line)["args"]["text"] for line in answers.read_text().splitlines()} == {
            "Told the desk."
        }
        first_calls = [r for r in model.requests if r["tool_choice"] == "required"]
        assert len(first_calls) == 2 and all(
            {t["function"]["name"] for t in r["tools"]} == {"alert", "buy"} for r in first_calls
        )
        assert any("big trade" in m["content"] for r in model.requests for m in r["messages"] if m["role"] == "user")

        [pending] = state.approvals()
        assert pending.tool == "buy" and daemon.runner.stats("buy").calls == 0
        state.decide(pending.id, True, by="test")
        daemon.approvals_wake.set()
        await wait_for(
            lambda: (found := state.approval(pending.id)) is not None and found.status == "executed",
            10,
            what="the approved buy",
        )
        done = state.approval(pending.id)
        assert done is not None and done.result["dry_run"] is True and done.result["symbol"] == "BTC/USDT"
        assert daemon.runner.stats("buy").succeeded == 1
