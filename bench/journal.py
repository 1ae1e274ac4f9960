"""The invocation journal's cost per call: loop-side µs and process CPU, vs a bare baseline.

Runs on one event loop what the tool runner asks of the journal for Kafka-shaped calls (the kafka
tool's case in ``bench/kafka_pipeline.py``): per call a journal id, ``started`` with the call's
five string arguments and the event's journaled form without data (a redelivered record), then
``ended`` as succeeded with the tool's result (``{"partition", "base_offset"}``), in batches of
``--batch`` calls (the kafka tool's ``max_batch``). Between batches the loop yields, as the daemon
does, so the journal's writer runs alongside (its own thread, SQLite in a temp dir).

(a) bare: the same loop building the same arguments, events and results, without a journal.
(b) journal: the same, with :class:`daemon.state.Journal` on a fresh :class:`~daemon.state.StateStore`;
    the time runs until :meth:`~daemon.state.Journal.stop` has written every row (checked: the file
    holds ``--n`` succeeded rows).

Printed per run: wall time, the process CPU time (and the part in the cyclic garbage collector),
and the µs per call spent on the loop inside the journal's methods (wall: it includes waiting for
the GIL while the writer thread holds it); then medians and (b) - (a) per call. (a) and (b)
alternate, ``--runs`` each, after one warm-up of each. ``--heap`` long-lived tracked objects stand
for a daemon's heap, which the collector walks in its full collections. The writer may fall
behind this loop (nothing else runs on it): the journal's buffer is unbounded here, nothing is
dropped.

Usage::

    .venv/bin/python bench/journal.py [--n 200000] [--runs 3] [--batch 256] [--heap 300000]
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
from pathlib import Path
from typing import Any

from benchlib import GcClock

from daemon.state import Journal, StateStore
from streams.event import Event, event_record

PAD = "x" * 40



def call_args(i: int) -> dict[str, Any]:
    return {"id": str(i), "sym": "BTCUSDT", "p": "65000.12", "q": "0.01234", "pad": PAD}


def call_event(i: int) -> Event:
    meta = {"topic": "bench-in", "partition": i % 4, "offset": i // 4}
    now = time.time()
    return Event("kafka-in", now, now, None, {"id": i}, meta, "data")


async def run(n: int, batch: int, journaled: bool) -> tuple[float, float, float, float]:
    """(wall seconds, process CPU seconds, loop seconds inside the journal's methods, GC seconds)."""
    with tempfile.TemporaryDirectory(prefix="reflexd-bench-journal-") as tmp:
        path = Path(tmp) / "state.db"
        store = StateStore(path).open() if journaled else None
        # nothing dropped: the run lasts until every row is written (the writer may fall behind the loop)
        journal = Journal(store, max_buffered=2 * n) if store is not None else None
        if journal is not None:
            await journal.start()
        clock = time.perf_counter
        inside = 0.0
        cpu0, t0, gc0 = time.process_time(), clock(), GcClock.total
        for start in range(0, n, batch):
            calls = []
            for i in range(start, min(start + batch, n)):
                event = call_event(i)
                calls.append((f"kafka-in:{i % 4}:{i // 4}", call_args(i), event))
            results = [{"partition": 0, "base_offset": start} for _ in calls]
            if journal is not None:
                t = clock()
                ids = []
                for key, args, event in calls:
                    inv = journal.new_id()
                    journal.started(
                        inv, key, "every", "out", args, event_record(event, data=False), resumable=False
                    )
                    ids.append(inv)
                t1 = clock()
                inside += t1 - t
            await asyncio.sleep(0)  # the tool's batch is sent meanwhile
            if journal is not None:
                t = clock()
                for k, (key, _, _) in enumerate(calls):
                    if not journal.succeeded(key):
                        journal.ended(ids[k], key, 1, "succeeded", None, results[k])
                inside += clock() - t
            await asyncio.sleep(0)
        if journal is not None:
            await journal.stop()
        wall, cpu, gc_seconds = clock() - t0, time.process_time() - cpu0, GcClock.total - gc0
        if store is not None:
            store.close()
            with contextlib.closing(sqlite3.connect(path)) as db:
                (rows,) = db.execute(
                    "SELECT COUNT(*) FROM invocations WHERE outcome = 'succeeded'"
                ).fetchone()
            if rows != n:
                raise RuntimeError(f"the journal holds {rows} succeeded rows, want {n}")
        return wall, cpu, inside, gc_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200_000, help="calls per run")
    parser.add_argument("--runs", type=int, default=3, help="runs of (a) and (b) each")
    parser.add_argument("--batch", type=int, default=256, help="calls per batch (the kafka tool's max_batch)")
    parser.add_argument(
        "--heap",
        type=int,
        default=300_000,
        help="long-lived objects the collector tracks besides (a daemon's heap: clients, buffers, state)",
    )
    args = parser.parse_args(argv)
    ballast = [[i] for i in range(args.heap)]  # noqa: F841 (tracked: lists, kept alive for the collector to walk)
    gc.callbacks.append(GcClock.callback)
    asyncio.run(run(args.n // 10, args.batch, False))
    asyncio.run(run(args.n // 10, args.batch, True))
    bare: list[tuple[float, float, float, float]] = []
    on: list[tuple[float, float, float, float]] = []
    for r in range(args.runs):
        order = (False, True) if r % 2 == 0 else (True, False)
        for journaled in order:
            res = asyncio.run(run(args.n, args.batch, journaled))
            (on if journaled else bare).append(res)
            name = "journal" if journaled else "bare   "
            print(
                f"  run {r + 1} {name}: wall {res[0]:.2f} s, cpu {res[1]:.2f} s (gc {res[3]:.2f} s), "
                f"loop inside the journal {res[2] / args.n * 1e6:.2f} µs/call"
            )
    per = 1e6 / args.n
    bw, bc = statistics.median(x[0] for x in bare), statistics.median(x[1] for x in bare)
    jw, jc = statistics.median(x[0] for x in on), statistics.median(x[1] for x in on)
    ji = statistics.median(x[2] for x in on)
    bg, jg = statistics.median(x[3] for x in bare), statistics.median(x[3] for x in on)
    print(f"medians of {args.runs} ({args.n:,} calls, batches of {args.batch}):")
    print(f"  bare     wall {bw * per:6.2f} µs/call  cpu {bc * per:6.2f} µs/call  gc {bg * per:.2f} µs/call")
    print(
        f"  journal  wall {jw * per:6.2f} µs/call  cpu {jc * per:6.2f} µs/call  gc {jg * per:.2f} µs/call"
        f"  loop-side {ji * per:.2f} µs/call"
    )
    print(f"  journal - bare: wall {(jw - bw) * per:.2f} µs/call, cpu {(jc - bc) * per:.2f} µs/call")
    print(f"  journal rows/s (wall): {args.n / jw:,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
