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
(``rule.on_next`` from a task on the loop). Machines are noisy: the best of ``--repeat`` runs of
each is reported, and their ratio.

    .venv/bin/python bench/rules.py [--events 200000] [--keys 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import random
import sys
import time
from collections import deque
from typing import Any

from reactivex.scheduler.eventloop import AsyncIOScheduler

from handlers.base import CallContext
from streams.event import Event
from streams.rules.pipeline import Rule, RuleConfig

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


async def reflexd_pipeline(events: list[Event]) -> tuple[float, int]:
    fired = 0

    def submit(tool: str, args: dict[str, Any], ctx: CallContext) -> bool:
        nonlocal fired
        fired += 1
        return True

    scheduler = AsyncIOScheduler(asyncio.get_running_loop())
    rule = Rule("bench", RuleConfig.model_validate(RULE), submit, scheduler)
    on_next = rule.on_next
    started = time.perf_counter()
    for event in events:
        on_next(event)
    took = time.perf_counter() - started
    rule.dispose()
    assert rule.stats.errors == 0, rule.stats.as_dict()
    return took, fired


def best(runs: list[float]) -> float:
    return min(runs)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--rate", type=float, default=2_000.0, help="events per second of event time")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    events = make_events(args.events, args.keys, args.rate)
    span = events[-1].ts - events[0].ts
    print(
        f"{len(events):,} events, {args.keys} keys, {span:.0f} s of event time "
        f"(~{len(events) / span * WINDOW / args.keys:,.0f} events per key in a {WINDOW:.0f} s window)"
    )
    plain_runs: list[float] = []
    rx_runs: list[float] = []
    plain_fired = rx_fired = 0
    for _ in range(args.repeat):
        gc.collect()
        started = time.perf_counter()
        plain_fired = plain_loop(events)
        plain_runs.append(time.perf_counter() - started)
        gc.collect()
        took, rx_fired = asyncio.run(reflexd_pipeline(events))
        rx_runs.append(took)
    if plain_fired != rx_fired:
        print(f"MISMATCH: plain loop fired {plain_fired}, reflexd fired {rx_fired}")
        return 1
    plain_rate = len(events) / best(plain_runs)
    rx_rate = len(events) / best(rx_runs)
    print(f"crossings fired: {rx_fired:,} (both)")
    plain_us = best(plain_runs) / len(events) * 1e6
    rx_us = best(rx_runs) / len(events) * 1e6
    print(f"plain python loop : {plain_rate:>12,.0f} events/s  ({plain_us:.2f} µs/event)")
    print(f"reflexd pipeline  : {rx_rate:>12,.0f} events/s  ({rx_us:.2f} µs/event)")
    print(f"ratio             : {plain_rate / rx_rate:.2f}x slower than the plain loop")
    verdict = "meets" if rx_rate >= TARGET else "MISSES"
    print(f"target            : {TARGET:,} events/s -> {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
