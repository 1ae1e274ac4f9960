"""ccxt soak: the real Daemon + ccxt against the Binance emulator for minutes, with reconnects.

Not part of the test suite (it runs 10 minutes by default)::

    .venv/bin/python bench/ccxt_soak.py                    # 10 min, 3 symbols x 100 trades/s, drop every 60 s
    .venv/bin/python bench/ccxt_soak.py --minutes 2 --strict

The emulator (:class:`tests.exchange.BinanceEmulator`) runs in a **separate process**, so its
trade history does not count in the measured RSS. It produces ``--rate`` trades/s on each of
``--symbols`` markets and drops every WebSocket every ``--drop-every`` seconds. The daemon
(this process) runs two ``ccxt`` sources — trades on every symbol, and the order book of the
first symbol (one update per trade) — with ``recycle_after_seconds`` = ``--recycle``, and a
rule per source into a counting tool. Trade ids are reconciled exactly at the end (a
preallocated bitmap per symbol, so the check itself does not grow): missing and duplicate ids
must be 0.

RSS (``/proc/self/statm``) is sampled every 10 s; the figure that counts is the growth between
the end of the warm-up (``--warmup`` seconds) and the end of the run (target: <= 20 MB).
``--strict`` exits 1 on a missed target, a lost or a duplicate trade.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import platform
import shutil
import sys
import tempfile
import time
import tracemalloc
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import rss_mb  # noqa: E402

from daemon.registry import ComponentSpec  # noqa: E402
from handlers.base import CallContext, Tool, ToolConfig  # noqa: E402

MAX_TRADES_PER_SYMBOL = 4_000_000  # bitmap size: 4 MB per symbol, allocated before the warm-up


# -- emulator process ----------------------------------------------------------------------------


def emulator_main(conn: Connection, symbols: list[str], rate: float, drop_every: float) -> None:
    asyncio.run(_emulator(conn, symbols, rate, drop_every))


async def _emulator(conn: Connection, symbols: list[str], rate: float, drop_every: float) -> None:
    from tests.exchange import BinanceEmulator, MarketSpec

    emu = BinanceEmulator([MarketSpec(s) for s in symbols])
    await emu.start()
    conn.send(
        {
            "port": emu.port,
            "config": emu.ccxt_config(),
            "first_ids": {s: emu.markets[s].next_id for s in symbols},
        }
    )
    loop = asyncio.get_running_loop()
    drops = 0

    async def dropper() -> None:
        nonlocal drops
        while True:
            await asyncio.sleep(drop_every)
            await emu.drop(1001)
            drops += 1

    command = await loop.run_in_executor(None, conn.recv)
    assert command == "produce"
    wanted = {f"{s.replace('/', '').lower()}@aggTrade" for s in symbols}
    while not wanted <= {sub for c in emu.open_connections for sub in c.subscriptions}:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # trades made before the subscriptions are not the daemon's to see
    emu.produce(rate, symbols, batch=max(1, int(rate // 200)))
    dropping = asyncio.create_task(dropper())
    command = await loop.run_in_executor(None, conn.recv)
    assert command == "stop"
    dropping.cancel()
    await emu.producing_stopped()
    conn.send(
        {
            "made": {
                s: (emu.markets[s].trades[0].id if emu.markets[s].trades else 0, emu.markets[s].next_id - 1)
                for s in symbols
            },
            "drops": drops,
            "connections": len(emu.connections),
            "requests": len(emu.requests),
        }
    )
    await loop.run_in_executor(None, conn.recv)  # "quit" once the daemon has stopped
    await emu.stop()


# -- the counting tool ---------------------------------------------------------------------------


class SinkConfig(ToolConfig):
    """Counts calls and marks trade ids (bench only)."""


class Sink(Tool):
    type_name: ClassVar[str] = "soak_sink"

    def __init__(self, name: str, config: SinkConfig, seen: dict[str, tuple[int, bytearray]]) -> None:
        super().__init__(name, config)
        self.seen = seen
        self.calls = 0
        self.duplicates = 0
        self.out_of_range = 0

    async def call(self, args: dict[str, Any], ctx: CallContext) -> None:
        self.calls += 1
        event = ctx.event
        if event is None or "id" not in event.data:
            return
        first, bitmap = self.seen[event.data["symbol"]]
        i = int(event.data["id"]) - first
        if not 0 <= i < len(bitmap):
            self.out_of_range += 1
            return
        if bitmap[i]:
            self.duplicates += 1
        bitmap[i] = 1


# -- the run -------------------------------------------------------------------------------------


async def soak(args: argparse.Namespace) -> int:
    from daemon.config import load_config_text
    from daemon.registry import builtin_registry
    from daemon.supervisor import Daemon
    from streams.ccxt import CcxtSource
    from tests.exchange.harness import daemon_config

    del load_config_text
    symbols = [f"S{i}/USDT" for i in range(args.symbols)]
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(
        target=emulator_main, args=(child, symbols, args.rate, args.drop_every), daemon=True
    )
    proc.start()
    hello = parent.recv()
    seen = {s: (hello["first_ids"][s], bytearray(MAX_TRADES_PER_SYMBOL)) for s in symbols}
    sinks: list[Sink] = []

    def make_sink(name: str, cfg: SinkConfig, ctx: Any) -> Tool:
        sink = Sink(name, cfg, seen)
        sinks.append(sink)
        return sink

    registry = builtin_registry().with_specs(
        ComponentSpec("tool", "soak_sink", SinkConfig, make_sink, lambda c: [], "bench sink")
    )
    common = {
        "type": "ccxt",
        "exchange": "binance",
        "urls": hello["config"]["urls"],
        "options": hello["config"]["options"],
        "stall_timeout_seconds": 10,
        "recycle_after_seconds": args.recycle,
        "reconnect": {"initial_seconds": 0.05, "max_seconds": 2, "healthy_after_seconds": 5},
        "queue": {"max_events": 10_000, "when_full": "drop_oldest"},
    }
    state_dir = tempfile.mkdtemp(prefix="reflexd-soak-")  # not the working directory's var/reflexd.db
    cfg = daemon_config(
        registry,
        state_path=f"{state_dir}/state.db",
        sources={
            "trades": {**common, "symbols": symbols},
            "book": {**common, "symbols": symbols[:1], "channel": "order_book", "depth": 10},
        },
        tools={"sink": {"type": "soak_sink", "concurrency": 1}, "gaps": {"type": "soak_sink"}},
        rules={
            "count": {"from": ["trades", "book"], "then": [{"tool": "sink"}]},
            "gap": {"from": ["trades", "book"], "kinds": ["gap"], "then": [{"tool": "gaps"}]},
        },
    )
    daemon = Daemon(cfg)
    await daemon.start()
    trades, book = daemon.sources["trades"], daemon.sources["book"]
    assert isinstance(trades, CcxtSource) and isinstance(book, CcxtSource)
    while not (trades.stats.state == book.stats.state == "connected"):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    parent.send("produce")
    started = time.monotonic()
    duration = args.minutes * 60
    samples: list[tuple[float, float]] = []
    base_rss: float | None = None
    print(
        f"python {platform.python_version()} {platform.machine()}; "
        f"{args.symbols} symbols x {args.rate:g} trades/s, drop every {args.drop_every:g}s, "
        f"recycle every {args.recycle:g}s, {args.minutes:g} min (warm-up {args.warmup:g}s)",
        flush=True,
    )
    next_sample = started
    while (elapsed := time.monotonic() - started) < duration:
        if time.monotonic() >= next_sample:
            gc.collect()
            rss = rss_mb()
            samples.append((elapsed, rss))
            if base_rss is None and elapsed >= args.warmup:
                base_rss = rss
                if args.tracemalloc:
                    tracemalloc.start(8)
            st = trades.stats
            print(
                f"{elapsed:6.0f}s rss {rss:7.1f} MB  received {st.received + book.stats.received:9d}  "
                f"gaps {st.gaps}+{book.stats.gaps}  backfilled {st.backfilled}  "
                f"recycles {st.recycles}+{book.stats.recycles}  "
                f"queue drops {trades.queue.evicted + book.queue.evicted}",
                flush=True,
            )
            next_sample += 10
        await asyncio.sleep(0.5)
    end_rss = rss_mb()
    grown = None
    if args.tracemalloc and tracemalloc.is_tracing():
        grown = tracemalloc.take_snapshot().statistics("traceback")[:8]
        tracemalloc.stop()
    parent.send("stop")
    report = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
    await asyncio.sleep(3)  # let the last trades (and a last backfill) through
    gc.collect()
    end_rss = max(end_rss, rss_mb())
    missing_total = dup_total = 0
    lines = []
    for s in symbols:
        first, last = report["made"][s]
        base, bitmap = seen[s]
        made = last - first + 1
        got = bitmap.count(1, first - base, last - base + 1)
        missing = made - got
        missing_total += missing
        holes = [first + i for i in range(made) if not bitmap[first - base + i]][:10]
        lines.append(
            f"  {s}: made {made}, received {got}, missing {missing}" + (f" (first: {holes})" if holes else "")
        )
    sink = sinks[0]
    dup_total = sink.duplicates
    await daemon.stop()
    shutil.rmtree(state_dir, ignore_errors=True)
    parent.send("quit")
    proc.join(10)

    st, bk = trades.stats, book.stats
    growth = end_rss - (base_rss if base_rss is not None else samples[0][1])
    print()
    print(
        f"RSS: start (after {args.warmup:g}s warm-up) {base_rss:.1f} MB, end {end_rss:.1f} MB, "
        f"growth {growth:+.1f} MB (target <= 20 MB); max {max(r for _, r in samples):.1f} MB"
        if base_rss is not None
        else f"RSS: end {end_rss:.1f} MB (the run was shorter than the warm-up)"
    )
    print(
        f"emulator: {report['drops']} drops, {report['connections']} WebSocket connections, "
        f"{report['requests']} requests"
    )
    print(
        f"trades source: gaps {st.gaps}, reconnects {st.reconnect_attempts}, backfills {st.backfills}, "
        f"backfilled {st.backfilled}, duplicates dropped {st.duplicates}, recycles {st.recycles}, "
        f"stalls {st.stalls}"
    )
    print(f"book source: gaps {bk.gaps}, recycles {bk.recycles}, received {bk.received}")
    print(f"queue drops: {trades.queue.evicted + book.queue.evicted}; sink calls {sink.calls}")
    print(*lines, sep="\n")
    if grown:
        print("allocations alive at the end that were made after the warm-up (largest first):")
        for stat in grown:
            print(f"  {stat.size / 2**10:8.1f} KiB in {stat.count} blocks")
            for line in stat.traceback.format()[-6:]:
                print(f"      {line}")
    print(f"trade ids: missing {missing_total}, duplicates {dup_total}, out of range {sink.out_of_range}")
    failed = (base_rss is not None and growth > 20) or missing_total or dup_total
    return 1 if (failed and args.strict) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--symbols", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100.0, help="trades/s per symbol")
    parser.add_argument("--drop-every", type=float, default=60.0, help="seconds between WebSocket drops")
    parser.add_argument(
        "--recycle", type=float, default=45.0, help="recycle_after_seconds (below --drop-every)"
    )
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the RSS baseline")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 on a missed target or lost/duplicate ids"
    )
    parser.add_argument(
        "--tracemalloc", action="store_true", help="print the allocation sites that grew after the warm-up"
    )
    args = parser.parse_args()
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
