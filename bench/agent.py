#!/usr/bin/env python3
"""Agent bench: reflexd's own time per agent round (the model's time excluded), and how many
escalations per second an llm tool's gate decides on a busy rule.

(a) Overhead per round. The real :class:`daemon.supervisor.Daemon`, built from config text
(``http: null``), with an ``llm`` tool ``analyst`` whose model client is either

- ``--model fake`` (the default): a **minimal in-process fake** :class:`~handlers.models.ModelClient`
  (no HTTP, no SDK; it answers from the length of the conversation), or
- ``--model scripted``: the tests' **scripted OpenAI-compatible HTTP server**
  (``tests/agent/scripted.py``, on this process's loop) through the real ``openai`` SDK.

``--runs`` runs are made one after the other, each submitted through ``runner.submit`` as a rule
submits it. Each run has ``--rounds`` model calls (K): the first K-1 ask for one call of ``echo``
(a bench-only async tool that returns its arguments; its JSON Schema is what the model's arguments
are validated against), the last one answers. One notification is put in the queue before each run,
so its first round drains one item.

    overhead per round = (wall time of the runs - LlmTool.model_seconds) / (runs x K)

``model_seconds`` is the time spent inside ``client.complete()``: the fake, or the SDK, HTTP and the
scripted server, with the conversion to the wire format. Everything else is counted: the llm call's
queueing and journal row, loading and starting the run, the notification drain, the budget check,
the usage rows, the durable writes of the transcript (each message committed to SQLite on the
journal's writer thread before the next model call, after the rows the journal still buffers: for
K = 5, 12 writes and 1 read per run), parsing and schema-validating the model's arguments, the
idempotency key, the ``echo`` call through the runner (its lane, its journal rows, a future back),
the result's JSON and cap, the run's end and its answer event.

Measured in the same process, alternating, ``--repeat`` times; medians printed:

- ``bare``: the same rounds as a plain loop — fake model, ``orjson.loads`` of the arguments,
  ``await echo.call(...)``, the result's JSON appended — without runner, journal, validation or queue;
- ``reflexd, journal off`` (``daemon.journal.enabled: false``: no transcript, nothing resumes);
- ``reflexd, journal on`` (the default configuration).

Goal: at most 2 ms per round with the journal on.

(b) Gate decisions per second on a busy rule: ``runner.submit`` in a loop, as a rule calls it
(chunks of 1,000, the loop yielding between chunks), the daemon's journal on, three cases:

- ``deduplicated``: an llm tool with ``dedup_seconds: 300`` and 10 keys, each with a run admitted
  before the timing: every call is settled by ``LlmTool.screen`` before it is queued — journaled
  (the call's row with its verdict, and a run row), counted, its event put in the notification
  queue, where the repeats of a (rule, key) coalesce while unread;
- ``over_budget``: ``runs_per_minute: 1`` used up before the timing, every call a new key (nothing
  coalesces: one new notification per call, the queue evicting its oldest);
- ``plain`` (the baseline): ``runner.submit`` of a plain tool whose one slot is held busy during the
  timing, so each call is journaled and queued and none runs: the submit alone.

Two modes: a **burst** of ``--burst`` calls (their journal rows only queued: what a rule pays per
call), then ``--decisions`` **sustained** (the loop waits for the journal's writer whenever it holds
30,000 rows, and the time runs until every row is written: what the state file can record). A daemon
does not wait for its journal: a rule deciding faster than the sustained rate for long makes the
journal drop rows (counted, ``/status`` journal.dropped). Rows dropped are printed (0 expected).

Usage::

    .venv/bin/python bench/agent.py [--model fake|scripted] [--rounds 5] [--runs 200] [--repeat 5]
                                    [--burst 20000] [--decisions 100000] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import orjson
from benchlib import run_loop, uvloop_available

import handlers.llm
from daemon.config import load_config_text
from daemon.registry import ComponentSpec, Registry, builtin_registry
from daemon.supervisor import Daemon
from handlers.base import CallContext, CallReply, Tool, ToolConfig
from handlers.llm import LlmTool
from handlers.models import ModelClient, ModelReply, ModelToolCall
from streams.event import new_event

GOAL_MS = 2.0  # reflexd's own time per round, journal on
ROOT = Path(__file__).resolve().parent.parent
KEYS = 10  # keys of the busy rule in the dedup timing
CHUNK = 1000  # submits between two yields to the loop


# -- the bench-only pieces -------------------------------------------------------------------------


class BenchToolConfig(ToolConfig):
    """Bench-only tools."""


class EchoTool(Tool):
    """Returns its arguments (async, no I/O): the cheapest tool a model can call."""

    type_name: ClassVar[str] = "bench_echo"
    description: ClassVar[str] = "Echo the arguments back."
    args_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0}, "note": {"type": "string"}},
        "required": ["n"],
        "additionalProperties": False,
    }

    async def call(self, args: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        return {"echo": args}


class HeldTool(Tool):
    """Waits until :attr:`release` is set: with concurrency 1, one held call keeps the lane busy and
    every later call only queued (the gate timing's baseline measures the submit alone)."""

    type_name: ClassVar[str] = "bench_held"

    def __init__(self, name: str, config: ToolConfig) -> None:
        super().__init__(name, config)
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def call(self, args: dict[str, Any], ctx: CallContext) -> None:
        self.holding.set()
        await self.release.wait()


class FakeModel:
    """A :class:`ModelClient` in process: K-1 replies with one ``echo`` call, then the answer."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.calls = 0

    async def complete(
        self,
        system: str,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        *,
        tool_choice: str = "auto",
    ) -> ModelReply:
        self.calls += 1
        done = sum(1 for m in messages if m["role"] == "assistant")
        if done + 1 >= self.rounds:
            return ModelReply("The desk was told.", [], 120, 12, "stop")
        arguments = orjson.dumps({"n": done, "note": "a cheap call"}).decode()
        call = ModelToolCall(f"call_{self.calls}", "echo", arguments)
        return ModelReply("", [call], 120, 12, "tool_calls")

    async def close(self) -> None:
        pass


def registry(client: ModelClient | None) -> Registry:
    """The built-in types and the bench's; with ``client``, llm tools talk to it, not to an endpoint."""
    specs = [
        ComponentSpec("tool", t.type_name, BenchToolConfig, lambda n, c, ctx, t=t: t(n, c), lambda c: [])
        for t in (EchoTool, HeldTool)
    ]
    if client is not None:
        fake = dataclasses.replace(handlers.llm.SPEC, factory=lambda n, c, ctx: LlmTool(n, c, client=client))
        specs.append(fake)
    return builtin_registry().with_specs(*specs)


def config_text(state_dir: str, *, journal: bool, base_url: str, rounds: int) -> str:
    # the state file in state_dir either way (never the working directory's var/reflexd.db)
    state = f'state_path: "{state_dir}/state.db"' + ("" if journal else "\n  journal: {enabled: false}")
    Path(state_dir, "idle.jsonl").write_text("{}\n")
    llm = f'type: llm, base_url: "{base_url}", model: bench, tools: [echo]'
    return f"""
daemon:
  log_level: warning
  http: null
  shutdown_timeout_seconds: 10
  {state}
sources:
  idle: {{type: replay, path: "{state_dir}/idle.jsonl"}}
tools:
  analyst: {{{llm}, system: "Benchmarked.", max_rounds: {rounds}, concurrency: 1, timeout_seconds: 60}}
  gatekeeper: {{{llm}, dedup_seconds: 300}}
  budgeted: {{{llm}, budget: {{runs_per_minute: 1}}}}
  echo: {{type: bench_echo}}
  held: {{type: bench_held, concurrency: 1, max_pending: 1000000, timeout_seconds: 3600}}
"""


async def start_daemon(state_dir: str, *, journal: bool, model: str, rounds: int, base_url: str) -> Daemon:
    client = FakeModel(rounds) if model == "fake" else None
    text = config_text(state_dir, journal=journal, base_url=base_url, rounds=rounds)
    daemon = Daemon(load_config_text(text, registry(client)))
    await daemon.start()
    return daemon


# -- (a) overhead per round ------------------------------------------------------------------------


async def reflexd_runs(daemon: Daemon, n: int, rounds: int, tag: str) -> tuple[float, float]:
    """``n`` runs of ``analyst`` one after the other: (wall seconds, seconds inside the model client)."""
    tool = daemon.tools["analyst"]
    assert isinstance(tool, LlmTool)
    submit, notes, loop = daemon.runner.submit, daemon.notifications, asyncio.get_running_loop()
    model_before = tool.model_seconds
    started = time.perf_counter()
    for i in range(n):
        notes.put("notify", f"note {i}", {"i": i}, rule="bench_note", key=i)
        now = time.time()
        event = new_event("feed", now, now, f"k{i}", {"p": "64000.1"}, {})
        done: asyncio.Future[CallReply] = loop.create_future()
        submit(
            "analyst", {"prompt": f"move {i}"}, CallContext("analyst", "r", event, f"{tag}:{i}"), done=done
        )
        reply = await done
        result = reply.result or {}
        if (
            reply.outcome != "succeeded"
            or result.get("outcome") != "answered"
            or result.get("rounds") != rounds
        ):
            raise SystemExit(f"run {i} did not answer in {rounds} rounds: {reply}")
    wall = time.perf_counter() - started
    return wall, tool.model_seconds - model_before


async def bare_runs(n: int, rounds: int) -> tuple[float, float]:
    """The same rounds as a plain loop: fake model, arguments parsed, the tool awaited, result appended."""
    model, echo = FakeModel(rounds), EchoTool("echo", BenchToolConfig(type="bench_echo"))
    tools = [echo.schema()]
    in_model = 0.0
    started = time.perf_counter()
    for i in range(n):
        messages: list[dict[str, Any]] = [{"role": "user", "content": f"move {i}"}]
        ctx = CallContext("echo", "r", None, f"bare:{i}")
        while True:
            t0 = time.perf_counter()
            reply = await model.complete("You are benchmarked.", messages, tools)
            in_model += time.perf_counter() - t0
            messages.append(reply.as_message())
            if not reply.tool_calls:
                break
            for call in reply.tool_calls:
                result = await echo.call(orjson.loads(call.arguments), ctx)
                content = orjson.dumps({"outcome": "succeeded", "result": result}).decode()
                messages.append(
                    {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": content}
                )
    return time.perf_counter() - started, in_model


async def measure_rounds(args: argparse.Namespace, base_url: str) -> dict[str, list[float]]:
    """µs per round of each variant, and the model client's share of the wall time, per repeat."""
    out: dict[str, list[float]] = {
        "bare": [],
        "journal off": [],
        "journal on": [],
        "share off": [],
        "share on": [],
    }
    n, k = args.runs, args.rounds
    await bare_runs(20, k)  # warm-up
    for rep in range(args.repeat):
        order = ["bare", "journal off", "journal on"]
        for variant in order if rep % 2 == 0 else order[::-1]:
            gc.collect()
            if variant == "bare":
                wall, in_model = await bare_runs(n, k)
            else:
                journal = variant == "journal on"
                with tempfile.TemporaryDirectory(prefix="reflexd-bench-agent-") as state_dir:
                    daemon = await start_daemon(
                        state_dir, journal=journal, model=args.model, rounds=k, base_url=base_url
                    )
                    try:
                        await reflexd_runs(daemon, 10, k, f"warm{rep}")
                        wall, in_model = await reflexd_runs(daemon, n, k, f"rep{rep}")
                    finally:
                        await daemon.stop()
                out["share on" if journal else "share off"].append(in_model / wall)
            us = (wall - in_model) / (n * k) * 1e6
            out[variant].append(us)
            print(
                f"  repeat {rep + 1} {variant:<11}: {us:8.1f} µs/round  "
                f"(wall {wall:.3f} s, model client {in_model:.3f} s)"
            )
    return out


# -- (b) gate decisions per second -----------------------------------------------------------------

#: Journal rows buffered before the sustained timing waits for the writer (its buffer holds 100,000).
BACKLOG_ROWS = 30_000


async def timed_submits(
    daemon: Daemon, tool: str, m: int, key_of: Callable[[int], Any], tag: str, *, sustained: bool
) -> float:
    """``m`` submits of ``tool`` in chunks of :data:`CHUNK`, yielding between chunks; seconds taken.
    ``sustained``: waiting for the journal whenever it buffers :data:`BACKLOG_ROWS`, and until it has
    written every row at the end (the rate the state file can record)."""
    submit, journal = daemon.runner.submit, daemon.journal
    assert journal is not None
    now = time.time()
    started = time.perf_counter()
    for base in range(0, m, CHUNK):
        for i in range(base, min(base + CHUNK, m)):
            key = key_of(i)
            event = new_event("feed", now, now, key, {"p": "64000.1"}, {})
            submit(tool, {"prompt": f"{key} moved"}, CallContext(tool, "busy", event, f"{tag}:{i}"))
        if sustained and journal.backlog >= BACKLOG_ROWS:
            await journal.flush()
        else:
            await asyncio.sleep(0)
    if sustained:
        await journal.flush()
    return time.perf_counter() - started


async def idle(daemon: Daemon, tool: str) -> None:
    """Until ``tool``'s lane has nothing queued or running."""
    while daemon.runner.pending(tool) or daemon.runner.stats(tool).in_flight:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


def submit_one(daemon: Daemon, tool: str, key: str, call_id: str) -> None:
    event = new_event("feed", time.time(), time.time(), key, {}, {})
    daemon.runner.submit(tool, {"prompt": "p"}, CallContext(tool, "busy", event, call_id))


GATE_CASES = ("plain", "deduplicated", "over_budget")


async def gate_once(args: argparse.Namespace) -> dict[str, float]:
    """One repeat of (b) in a fresh daemon: decisions per second per ``<case> <mode>``, and the journal
    rows dropped per mode (``dropped <mode>``)."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="reflexd-bench-gate-") as state_dir:
        # the fake model whatever --model says: these runs must not take the scripted replies
        daemon = await start_daemon(
            state_dir, journal=True, model="fake", rounds=2, base_url="http://127.0.0.1:9"
        )
        try:
            runner, journal = daemon.runner, daemon.journal
            gatekeeper, budgeted, held = (
                daemon.tools["gatekeeper"],
                daemon.tools["budgeted"],
                daemon.tools["held"],
            )
            assert isinstance(gatekeeper, LlmTool) and isinstance(budgeted, LlmTool)
            assert isinstance(held, HeldTool) and journal is not None
            for key in range(KEYS):  # admitted before the timing: a run per key, the budget's one run
                submit_one(daemon, "gatekeeper", f"k{key}", f"a{key}")
            submit_one(daemon, "budgeted", "first", "b0")
            submit_one(daemon, "held", "first", "h0")  # holds the held lane's one slot
            await idle(daemon, "gatekeeper")
            await idle(daemon, "budgeted")
            await held.holding.wait()
            await journal.flush()
            cases: dict[str, tuple[str, Callable[[], int]]] = {
                "plain": ("held", lambda: runner.pending("held")),
                "deduplicated": ("gatekeeper", lambda: gatekeeper.gate.deduplicated),
                "over_budget": ("budgeted", lambda: budgeted.gate.over_budget),
            }
            for mode, m in (("burst", args.burst), ("sustained", args.decisions)):
                dropped = journal.dropped
                for case, (tool, count) in cases.items():
                    prefix = f"{case}-{mode}"
                    key_of = (
                        (lambda i: f"k{i % KEYS}")
                        if case != "over_budget"
                        else (lambda i, p=prefix: f"{p}-{i}")
                    )
                    gc.collect()
                    before = count()
                    took = await timed_submits(daemon, tool, m, key_of, prefix, sustained=mode == "sustained")
                    assert count() - before == m, f"{case}: not every call was {case}"
                    out[f"{case} {mode}"] = m / took
                    await journal.flush()
                out[f"dropped {mode}"] = float(journal.dropped - dropped)
            held.release.set()
            await idle(daemon, "held")
        finally:
            await daemon.stop()
    return out


async def measure_gate(args: argparse.Namespace) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for rep in range(args.repeat):
        once = await gate_once(args)
        for name, value in once.items():
            out.setdefault(name, []).append(value)
        rates = "  ".join(
            f"{case} {once[f'{case} burst']:,.0f}/s | {once[f'{case} sustained']:,.0f}/s"
            for case in GATE_CASES
        )
        dropped = f"{once['dropped burst']:.0f} | {once['dropped sustained']:.0f}"
        print(f"  repeat {rep + 1}: {rates}  (journal rows dropped {dropped})")
    return out


# -- main ------------------------------------------------------------------------------------------


async def amain(args: argparse.Namespace) -> int:
    logging.getLogger("reflexd").setLevel(logging.ERROR)
    server: Any = None
    base_url = "http://127.0.0.1:9/v1"  # never asked: the fake model answers in process
    if args.model == "scripted":
        sys.path.insert(0, str(ROOT))  # the tests' scripted server
        from tests.agent.scripted import Reply, ScriptedOpenAI

        server = ScriptedOpenAI(default=None)  # an exhausted script answers 500: that run would fail
        await server.start()
        base_url = server.base_url
        # one run at a time: the FIFO holds one run's replies after another's
        call = Reply.tool_calls(("echo", {"n": 0, "note": "a cheap call"}), tokens_in=120, tokens_out=12)
        answer = Reply.text("The desk was told.", tokens_in=120, tokens_out=12)
        for _ in range((args.runs + 10) * 2 * args.repeat):
            server.script(*([call] * (args.rounds - 1)), answer)
    try:
        print(
            f"(a) reflexd's time per agent round: {args.runs} runs x {args.rounds} rounds "
            f"({args.rounds - 1} with one echo call, then the answer), model client: {args.model}"
        )
        rounds = await measure_rounds(args, base_url)
    finally:
        if server is not None:
            await server.stop()
    print(f"(b) gate decisions on a busy rule: bursts of {args.burst:,}, then {args.decisions:,} sustained")
    gate = await measure_gate(args)

    med = {name: statistics.median(values) for name, values in rounds.items()}
    gmed = {name: statistics.median(values) for name, values in gate.items()}
    print()
    print(
        f"Python {platform.python_version()} on {platform.machine()}, model client {args.model}, "
        f"medians of {args.repeat}"
    )
    print("(a) reflexd's own time per round (the model client's time excluded)")
    print(f"    bare loop            : {med['bare']:8.1f} µs")
    off, on = med["journal off"], med["journal on"]
    print(
        f"    reflexd, journal off : {off:8.1f} µs  ({off / med['bare']:.0f}x the bare loop; "
        f"the model client took {med['share off']:.0%} of the wall time)"
    )
    print(
        f"    reflexd, journal on  : {on:8.1f} µs  ({on / off:.1f}x journal off, {on / med['bare']:.0f}x the "
        f"bare loop; the model client took {med['share on']:.0%} of the wall time)"
    )
    verdict = "meets" if med["journal on"] <= GOAL_MS * 1000 else "MISSES"
    print(f"    goal                 : <= {GOAL_MS:g} ms per round with the journal on -> {verdict}")
    print(
        f"(b) escalations decided per second, journal on: a burst of {args.burst:,} (rows queued) | "
        f"{args.decisions:,} sustained (every row written)"
    )
    for case in GATE_CASES:
        burst, sustained = gmed[f"{case} burst"], gmed[f"{case} sustained"]
        line = f"    {case:<13}: {burst:>9,.0f}/s | {sustained:>9,.0f}/s"
        if case != "plain":
            line += (
                f"   ({gmed['plain burst'] / burst:.1f}x | {gmed['plain sustained'] / sustained:.1f}x "
                "the time of a plain submit)"
            )
        print(line)
    print(
        f"    journal rows dropped: {max(gate['dropped burst']):.0f} | {max(gate['dropped sustained']):.0f}"
        " (the worst repeat)"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=("fake", "scripted"), default="fake", help="model client of (a)")
    parser.add_argument("--rounds", type=int, default=5, help="model calls per run (K); K-1 call a tool")
    parser.add_argument("--runs", type=int, default=200, help="runs per timing of (a)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--burst", type=int, default=20_000, help="submits per burst timing of (b)")
    parser.add_argument("--decisions", type=int, default=100_000, help="submits per sustained timing of (b)")
    parser.add_argument("--uvloop", action="store_true", help="uvloop, if importable")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2")
    return run_loop(amain(args), args.uvloop and uvloop_available())


if __name__ == "__main__":
    sys.exit(main())
