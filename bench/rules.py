#!/usr/bin/env python3
"""Rule pipeline throughput: reflexd vs the same logic as a plain Python loop, in the same run.

The rule is ``where`` + ``window`` (60 s sliding, per key: vwap and pct_change) + ``crossing``
(the price crossing its window's vwap, 0.01 % hysteresis)::

    steps:
      - where: "data.e == 'trade'"
      - window: {seconds: 60, aggregates: {vwap: "vwap(float(data.p), float(data.q))",
                                           move: "pct_change(float(data.p))"}}
      - crossing: {value: "float(data.p)", level: vwap, hysteresis_pct: 0.01}

Both sides read the same pre-built events (Binance-like trades with string prices; by default
200,000 of them over 20 symbols at 2,000 per second of event time, so each symbol's 60 s window
holds ~6,000 events) and must agree on the number of crossings. The reflexd side is a real
:class:`~streams.rules.pipeline.Rule` on an AsyncIOScheduler, fed the way the dispatcher feeds it
(``rule.on_next`` from a task on the loop). Machines are noisy: ``--repeat`` rounds (default 5)
run the two interleaved, the order alternating; each round's ratio is printed, then the medians.

    .venv/bin/python bench/rules.py [--events 200000] [--keys 20] [--repeat 3]

``--rules N[,N...]`` measures something else: the cost of N rules of the shape
``float(data.p) * float(data.q) > X`` (X different per rule, each firing on a few % of the trades) on
one source, relative to one such rule, with ``reflexd replay``'s engine
(:func:`streams.rules.replay.replay_rules`: the same Rule objects and fan-out as the daemon, tools never
called). 1 rule is always measured; the sizes run interleaved (1, N1, N2, ... then rotated), ``--repeat``
rounds, medians. The time excludes building the rules (a replay over no events, timed and subtracted).
By default ``--rules`` replays 20,000 events (``--events`` changes it): 1,000 rules cost ~1 µs each per
event today, so 200,000 events would take minutes per round.

    .venv/bin/python bench/rules.py --rules 10,100,1000 [--events 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import random
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from reactivex.scheduler.eventloop import AsyncIOScheduler

from handlers.base import CallContext
from streams.event import Event
from streams.rules.pipeline import Rule, RuleConfig
from streams.rules.replay import Fired, ReplayInput, encode_event, read_input, replay_rules

TARGET = 100_000  # events/s for the reflexd pipeline
WINDOW = 60.0
HYSTERESIS_PCT = 0.01

RULE = {
    "from": ["trades"],
    "steps": [
        {"where": "data.e == 'trade'"},
        {
            "window": {
                "seconds": WINDOW,
                "aggregates": {
                    "vwap": "vwap(float(data.p), float(data.q))",
                    "move": "pct_change(float(data.p))",
                },
            }
        },
        {"crossing": {"value": "float(data.p)", "level": "vwap", "hysteresis_pct": HYSTERESIS_PCT}},
    ],
    "then": [{"tool": "alert", "args": {"text": "{key} {direction} through vwap {vwap}"}}],
}


def make_events(n: int, keys: int, rate: float, seed: int = 1) -> list[Event]:
    """Trades of ``keys`` symbols, ``rate`` per second of event time, prices as random walks."""
    rnd = random.Random(seed)
    symbols = [f"SYM{i:02d}USDT" for i in range(keys)]
    price = {s: 100.0 + 10 * i for i, s in enumerate(symbols)}
    ts = 1_768_485_600.0
    events = []
    for seq in range(n):
        ts += rnd.expovariate(rate)
        s = rnd.choice(symbols)
        price[s] = max(0.01, price[s] * math.exp(rnd.gauss(0, 0.0005)))
        kind = "trade" if rnd.random() < 0.98 else "aggTrade"
        data = {"e": kind, "s": s, "p": f"{price[s]:.2f}", "q": f"{rnd.lognormvariate(-3, 1.2):.5f}", "T": ts}
        events.append(Event("trades", ts, ts, s, data, {"seq": seq}))
    return events


def plain_loop(events: list[Event]) -> int:
    """The same rule, written by hand: per-key deque + running sums, side tracking with a dead band."""
    windows: dict[Any, deque[tuple[float, float, float]]] = {}
    sums: dict[Any, list[float]] = {}
    sides: dict[Any, int] = {}
    fired = 0
    band_pct = HYSTERESIS_PCT / 100
    for e in events:
        data = e.data
        if data["e"] != "trade":
            continue
        p = float(data["p"])
        q = float(data["q"])
        key = e.key
        window = windows.get(key)
        if window is None:
            window = windows[key] = deque()
            sums[key] = [0.0, 0.0]
        s = sums[key]
        cutoff = e.ts - WINDOW
        while window and window[0][0] <= cutoff:
            _t, op, oq = window.popleft()
            s[0] -= op * oq
            s[1] -= oq
        window.append((e.ts, p, q))
        s[0] += p * q
        s[1] += q
        if not s[1]:
            continue
        vwap = s[0] / s[1]
        first = window[0][1]
        _move = (p - first) / first * 100 if first else None
        band = abs(vwap) * band_pct
        side = 1 if p > vwap + band else -1 if p < vwap - band else 0
        if side == 0:
            continue
        old = sides.get(key)
        sides[key] = side
        if old is not None and old != side:
            fired += 1
    return fired


async def reflexd_pipeline(events: list[Event]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and calls fired for ``events`` through the real Rule."""
    fired = 0

    def submit(tool: str, args: dict[str, Any], ctx: CallContext) -> bool:
        nonlocal fired
        fired += 1
        return True

    scheduler = AsyncIOScheduler(asyncio.get_running_loop())
    rule = Rule("bench", RuleConfig.model_validate(RULE), submit, scheduler)
    on_next = rule.on_next
    cpu = time.process_time()
    started = time.perf_counter()
    for event in events:
        on_next(event)
    took = time.perf_counter() - started
    cpu = time.process_time() - cpu
    rule.dispose()
    assert rule.stats.errors == 0, rule.stats.as_dict()
    return took, cpu, fired


def threshold_rules(count: int) -> dict[str, RuleConfig]:
    """``count`` alert rules on the one source, thresholds spread over the notional's upper tail."""
    return {
        f"big{i}": RuleConfig.model_validate(
            {
                "from": ["trades"],
                "where": f"float(data.p) * float(data.q) > {60 + (i % 200) * 0.5:g}",
                "then": [{"tool": "alert", "args": {"text": "{key} {data.p} x {data.q}"}}],
            }
        )
        for i in range(count)
    }


def replay_seconds(
    rules: dict[str, RuleConfig], events: Callable[[], Iterable[Event]]
) -> tuple[float, float, int]:
    """Seconds to replay ``events()`` through ``rules`` (building them excluded), wall clock and this
    process's CPU time (what other load on the machine changes least), and the calls fired."""
    fired = 0

    def report(_fired: Fired) -> None:
        nonlocal fired
        fired += 1

    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    replay_rules(rules, ["trades"], [], report)
    setup, setup_cpu = time.perf_counter() - started, time.process_time() - cpu
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    replay_rules(rules, ["trades"], events(), report)
    took, took_cpu = time.perf_counter() - started, time.process_time() - cpu
    return took - setup, took_cpu - setup_cpu, fired


def rules_scaling(events: list[Event], sizes: list[int], repeat: int) -> int:
    """Two inputs per size: the events in memory (the engine alone) and a recording file read the way
    ``reflexd replay recording.jsonl`` reads it (the CLI's cost minus printing the calls)."""
    sizes = sorted({1, *sizes})
    configs = {n: threshold_rules(n) for n in sizes}
    with tempfile.TemporaryDirectory(prefix="reflexd-bench-rules-") as tmp:
        path = Path(tmp) / "trades.jsonl"
        with path.open("wb") as f:
            for e in events:
                f.write(encode_event(e) + b"\n")
        inputs: dict[str, Callable[[], Iterable[Event]]] = {
            "engine": lambda: events,
            "recording": lambda: read_input(ReplayInput(path)),
        }
        took: dict[tuple[str, int], list[float]] = {(m, n): [] for m in inputs for n in sizes}
        cpu: dict[tuple[str, int], list[float]] = {(m, n): [] for m in inputs for n in sizes}
        fired: dict[int, int] = {}
        for r in range(repeat):
            order = sizes[r % len(sizes) :] + sizes[: r % len(sizes)]
            for n in order:
                for mode, source in inputs.items():
                    seconds, cpu_seconds, fired[n] = replay_seconds(configs[n], source)
                    took[mode, n].append(seconds)
                    cpu[mode, n].append(cpu_seconds)
            print(
                f"round {r + 1}: "
                + ", ".join(
                    f"{n} rules {took['engine', n][-1]:.3f} / {took['recording', n][-1]:.3f} s" for n in order
                )
            )
    print(
        f"\n{len(events):,} events, medians of {repeat} interleaved rounds, reflexd replay's engine "
        "(events in memory) and with the recording read from a file (as `reflexd replay file.jsonl`):"
    )
    print(
        f"{'rules':>6} {'engine s':>9} {'x 1 rule':>9} {'µs/rule/ev':>11} "
        f"{'file s':>9} {'x 1 rule':>9} {'cpu: engine':>12} {'file':>6} {'fired':>9}"
    )
    one = {m: statistics.median(took[m, 1]) for m in inputs}
    one_cpu = {m: statistics.median(cpu[m, 1]) for m in inputs}
    for n in sizes:
        med = {m: statistics.median(took[m, n]) for m in inputs}
        med_cpu = {m: statistics.median(cpu[m, n]) for m in inputs}
        added = (med["engine"] - one["engine"]) / (n - 1) if n > 1 else med["engine"]
        print(
            f"{n:>6} {med['engine']:>9.3f} {med['engine'] / one['engine']:>9.2f} "
            f"{added / len(events) * 1e6:>11.2f} {med['recording']:>9.3f} "
            f"{med['recording'] / one['recording']:>9.2f} {med_cpu['engine'] / one_cpu['engine']:>12.2f} "
            f"{med_cpu['recording'] / one_cpu['recording']:>6.2f} {fired[n]:>9,}"
        )
    print("(µs/rule/ev for N > 1: the engine's added time over one rule, per added rule and event;")
    print(" cpu: the same ratios of this process's CPU time, which the machine's other load changes least)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, help="events to replay (default 200,000; 20,000 with --rules)")
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--rate", type=float, default=2_000.0, help="events per second of event time")
    parser.add_argument("--repeat", type=int, help="rounds (default 5; 3 with --rules)")
    parser.add_argument(
        "--rules",
        help="comma-separated rule counts (e.g. 10,100,1000): the cost of N threshold rules vs one",
    )
    args = parser.parse_args()
    if args.rules:
        try:
            sizes = [int(x) for x in args.rules.split(",") if x.strip()]
        except ValueError:
            parser.error("--rules takes integers, e.g. 10,100,1000")
        if not sizes or min(sizes) < 1:
            parser.error("--rules needs counts >= 1")
        events = make_events(args.events or 20_000, args.keys, args.rate)
        return rules_scaling(events, sizes, args.repeat or 3)

    args.repeat = args.repeat or 5
    events = make_events(args.events or 200_000, args.keys, args.rate)
    span = events[-1].ts - events[0].ts
    print(
        f"{len(events):,} events, {args.keys} keys, {span:.0f} s of event time "
        f"(~{len(events) / span * WINDOW / args.keys:,.0f} events per key in a {WINDOW:.0f} s window)"
    )
    plain_runs: list[float] = []
    rx_runs: list[float] = []
    plain_cpu: list[float] = []  # CPU seconds: steadier than wall time when others share the machine
    rx_cpu: list[float] = []
    plain_fired = rx_fired = 0
    n = len(events)
    for round_ in range(args.repeat):  # interleaved, the order alternating
        for side in ("plain", "reflexd") if round_ % 2 == 0 else ("reflexd", "plain"):
            gc.collect()
            if side == "plain":
                cpu = time.process_time()
                started = time.perf_counter()
                plain_fired = plain_loop(events)
                plain_runs.append(time.perf_counter() - started)
                plain_cpu.append(time.process_time() - cpu)
            else:
                took, took_cpu, rx_fired = asyncio.run(reflexd_pipeline(events))
                rx_runs.append(took)
                rx_cpu.append(took_cpu)
        print(
            f"round {round_ + 1}: plain {plain_runs[-1] / n * 1e6:.2f} µs/event, "
            f"reflexd {rx_runs[-1] / n * 1e6:.2f} µs/event: {plain_runs[-1] / rx_runs[-1]:.2f} "
            f"of the plain loop (CPU time: {plain_cpu[-1] / rx_cpu[-1]:.2f})"
        )
    if plain_fired != rx_fired:
        print(f"MISMATCH: plain loop fired {plain_fired}, reflexd fired {rx_fired}")
        return 1
    print(f"crossings fired: {rx_fired:,} (both)")
    ratio = statistics.median(p / r for p, r in zip(plain_runs, rx_runs, strict=True))
    ratio_cpu = statistics.median(p / r for p, r in zip(plain_cpu, rx_cpu, strict=True))
    plain_s, rx_s = statistics.median(plain_runs), statistics.median(rx_runs)
    print(f"medians of {args.repeat} rounds:")
    print(f"plain python loop : {n / plain_s:>12,.0f} events/s  ({plain_s / n * 1e6:.2f} µs/event)")
    print(f"reflexd pipeline  : {n / rx_s:>12,.0f} events/s  ({rx_s / n * 1e6:.2f} µs/event)")
    print(
        f"ratio             : {ratio:.2f} of the plain loop (median of the rounds'; CPU time {ratio_cpu:.2f})"
    )
    verdict = "meets" if n / rx_s >= TARGET else "MISSES"
    print(f"target            : {TARGET:,} events/s -> {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
