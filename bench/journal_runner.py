"""The journal's cost per Kafka call through the tool runner, without Kafka: journal on vs off.

``bench/kafka_pipeline.py`` measures the journal inside the whole pipeline, where the broker and the
other processes on the machine move the rates by more than the journal costs. This runs only the
part the journal changes, on one event loop: :class:`handlers.runner.ToolRunner` with a batching
tool (``batch_limit`` 256, ``concurrency`` 1,024, as the kafka tool's defaults) whose calls succeed at
once, one producer-batch-like result shared by the calls of a batch; ``--n`` calls submitted as a
Kafka source does (an event with its record's :class:`~streams.ack.Ack`, the kafka tool's five
string arguments, a call id naming the record), waiting for room when the lane is full. With the
journal on (:class:`daemon.state.Journal` on a fresh file in a temp dir) these calls take the
``calls_succeeded`` path (``calls_ended`` given columns as the runner has them): one batch row per rule and
outcome, keys remembered for deduplication.

The garbage collector is set as a running daemon sets it (young threshold
:data:`daemon.supervisor.GC_YOUNG_THRESHOLD`, the heap frozen). Per run: process CPU (all threads:
the journal's writer too) and wall time per call, from the first submit until every call succeeded,
the runner stopped and, journal on, :meth:`~daemon.state.Journal.stop` wrote what was buffered (the journal's
buffer is unbounded here: on this loop, with nothing else to do, the runner ends calls faster than the
writer thread writes them, and a full buffer would drop rows instead of writing them); the file must
then hold ``--n`` calls in succeeded batch rows. On and off alternate, ``--runs`` each, after a warm-up of
each; medians and on - off are printed.

Usage::

    PYTHONPATH=. .venv/bin/python bench/journal_runner.py [--n 200000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from daemon.state import ROW_CALLS_SQL, Journal, StateStore
from daemon.supervisor import GC_YOUNG_THRESHOLD
from handlers.base import CallContext, StartedCalls, Tool, ToolConfig
from handlers.runner import ToolRunner
from streams.ack import OffsetTracker
from streams.event import Event

PAD = "x" * 40
TOOL = "out"
RESULT = {"partition": 0, "base_offset": 0}  # what the kafka tool gives the calls of one producer batch


class Instant(Tool):
    """A batching tool whose calls succeed at once, all of a batch with one future (one producer batch)."""

    type_name: ClassVar[str] = "instant"

    @property
    def batch_limit(self) -> int:
        return 256

    async def call(self, args: dict[str, Any], ctx: CallContext) -> Any:  # pragma: no cover - batched
        raise AssertionError("a batching tool is never called one by one")

    async def start_calls(self, calls: Sequence[tuple[dict[str, Any], CallContext]]) -> StartedCalls:
        done = asyncio.get_running_loop().create_future()
        done.set_result(RESULT)
        return StartedCalls([done] * len(calls), None)


async def run(n: int, journaled: bool) -> tuple[float, float]:
    """(process CPU µs per call, wall µs per call)."""
    with tempfile.TemporaryDirectory(prefix="reflexd-bench-journal-runner-") as tmp:
        path = Path(tmp) / "state.db"
        store = StateStore(path).open() if journaled else None
        journal = Journal(store, max_buffered=2 * n) if store is not None else None
        if journal is not None:
            await journal.start()
        tool = Instant(TOOL, ToolConfig(type="instant", concurrency=1024, max_pending=1000))
        runner = ToolRunner({TOOL: tool}, journal=journal)
        await runner.start()
        stats = runner.stats(TOOL)
        tracker = OffsetTracker()
        meta_topic = "bench-in"
        cpu0, t0 = time.process_time(), time.perf_counter()
        for i in range(n):
            if runner.full:
                await runner.wait_for_room()
            ack = tracker.received(i)
            now = time.time()
            meta = {"topic": meta_topic, "partition": 0, "offset": i}
            event = Event("in", now, now, None, {"id": i}, meta, "data", ack)
            args = {"id": str(i), "sym": "BTCUSDT", "p": "65000.12", "q": "0.01234", "pad": PAD}
            runner.submit(TOOL, args, CallContext(TOOL, "every", event, f"every:in:{meta_topic}/0@{i}:0"))
            ack.release()
            if i % 500 == 499:  # a source hands the loop back between the records it fetched
                await asyncio.sleep(0)
        while stats.succeeded < n:  # noqa: ASYNC110 (a counter, polled as the pipeline bench polls it)
            await asyncio.sleep(0.001)
        await runner.stop(5)
        if journal is not None:
            await journal.stop()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        if journal is not None and store is not None:
            if journal.dropped:
                raise RuntimeError(f"the journal dropped {journal.dropped} rows")
            store.close()
            with contextlib.closing(sqlite3.connect(path)) as db:
                (calls,) = db.execute(
                    f"SELECT COALESCE(SUM({ROW_CALLS_SQL}), 0)"
                    " FROM invocations WHERE outcome = 'succeeded' AND substr(args, 1, 1) = '['"
                ).fetchone()
            if calls != n:
                raise RuntimeError(f"the journal holds {calls} succeeded calls in batch rows, want {n}")
        return cpu / n * 1e6, wall / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200_000, help="calls per run")
    parser.add_argument("--runs", type=int, default=3, help="runs with the journal on and off each")
    args = parser.parse_args(argv)
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])  # as a running daemon sets it
    gc.freeze()
    asyncio.run(run(args.n // 10, True))
    asyncio.run(run(args.n // 10, False))
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for r in range(args.runs):
        for journaled in (True, False) if r % 2 == 0 else (False, True):
            res = asyncio.run(run(args.n, journaled))
            results[journaled].append(res)
            name = "on " if journaled else "off"
            print(f"  run {r + 1} journal {name}: cpu {res[0]:.2f} µs/call, wall {res[1]:.2f} µs/call")
    on_cpu = statistics.median(c for c, _ in results[True])
    off_cpu = statistics.median(c for c, _ in results[False])
    on_wall = statistics.median(w for _, w in results[True])
    off_wall = statistics.median(w for _, w in results[False])
    print(f"medians of {args.runs} ({args.n:,} calls):")
    print(f"  journal off  cpu {off_cpu:.2f} µs/call  wall {off_wall:.2f} µs/call")
    print(f"  journal on   cpu {on_cpu:.2f} µs/call  wall {on_wall:.2f} µs/call")
    print(f"  on - off: cpu {on_cpu - off_cpu:.2f} µs/call, wall {on_wall - off_wall:.2f} µs/call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
