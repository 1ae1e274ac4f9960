"""Kafka soak: the real Daemon (kafka source → rule → kafka tool, journal on) for minutes at full speed.

Not part of the test suite (a few minutes by default)::

    .venv/bin/python bench/kafka_soak.py            # 6,000,000 records, journal capped at 1,000,000 rows
    .venv/bin/python bench/kafka_soak.py --n 2000000 --max-rows 200000 --strict

A real single-node KRaft broker runs in a temporary directory (or ``--bootstrap`` names one). The
input topic (4 partitions) is pre-filled with ``--n`` records of 100 bytes; the daemon runs the
pipeline of ``bench/kafka_pipeline.py`` (b) with the invocation journal on and ``max_rows`` =
``--max-rows``, so the journal reaches its cap early and must prune while it writes. Every
``--report-every`` seconds it prints the calls done and the rate, the journal's backlog and
dropped rows, the state file's size (with its WAL) and the process RSS.

At the end it checks: the output topic holds exactly N records, the group committed N, the
journal dropped nothing, and the journal holds at most ``--max-rows`` rows plus what was written
since its last pruning step. ``--strict`` exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from benchlib import rss_mb, run_loop
from kafka_pipeline import PARTITIONS, TOOL, daemon_config, prefill

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from daemon.config import load_config_text  # noqa: E402
from daemon.registry import builtin_registry  # noqa: E402
from daemon.state import PRUNE_STEP_ROWS  # noqa: E402
from daemon.supervisor import Daemon  # noqa: E402
from tests.kafka_broker import KafkaBroker, create_topic_on, unique_name, wait_for_metadata  # noqa: E402
from tests.kafka_ledger import committed_total, end_offsets_total  # noqa: E402


def state_mb(state_dir: Path) -> float:
    return sum(p.stat().st_size for p in state_dir.glob("reflexd.db*")) / 1e6


async def soak(args: argparse.Namespace, bootstrap: str) -> int:
    await wait_for_metadata(bootstrap, 30)
    n: int = args.n
    src = await create_topic_on(bootstrap, unique_name("soak-in"), PARTITIONS)
    out = await create_topic_on(bootstrap, unique_name("soak-out"), PARTITIONS)
    group = unique_name("soak")
    took = await prefill(bootstrap, src, n)
    print(f"pre-filled {n:,} records in {took:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="reflexd-soak-state-") as tmp:
        state_dir = Path(tmp)
        text = daemon_config(bootstrap, src, out, group, None, state_dir / "reflexd.db", True, args.max_rows)
        daemon = Daemon(load_config_text(text, builtin_registry()))
        journal = daemon.journal
        assert journal is not None
        stats = daemon.runner.stats(TOOL)
        await daemon.start()
        started = last_at = time.monotonic()
        last = 0
        peak_backlog = 0
        try:
            while stats.succeeded < n:
                await asyncio.sleep(0.5)
                peak_backlog = max(peak_backlog, journal.backlog)
                now = time.monotonic()
                if now - last_at >= args.report_every or stats.succeeded >= n:
                    rate = (stats.succeeded - last) / (now - last_at)
                    print(
                        f"{now - started:6.0f} s  done {stats.succeeded:>10,}  {rate:>8,.0f}/s  "
                        f"journal backlog {journal.backlog:>7,} dropped {journal.dropped:>7,}  "
                        f"state {state_mb(state_dir):>6,.0f} MB  rss {rss_mb():>5,.0f} MiB",
                        flush=True,
                    )
                    last, last_at = stats.succeeded, now
                if stats.failures or stats.rejected:
                    break
        finally:
            elapsed = time.monotonic() - started
            cancelled = await daemon.stop()
        with contextlib.closing(sqlite3.connect(state_dir / "reflexd.db")) as db:
            (rows,) = db.execute("SELECT COUNT(*) FROM invocations").fetchone()
    written = await end_offsets_total(bootstrap, out, PARTITIONS)
    committed = await committed_total(bootstrap, group, src)
    # rows written after the last pruning step: at most one step's worth plus what the stop flushed
    row_bound = args.max_rows + PRUNE_STEP_ROWS + peak_backlog
    checks = {
        f"output topic holds {written:,} records (want {n:,})": written == n,
        f"group committed {committed:,} (want {n:,})": committed == n,
        f"journal dropped {journal.dropped:,} rows (want 0)": journal.dropped == 0,
        f"journal holds {rows:,} rows (want <= {row_bound:,})": rows <= row_bound,
        f"tool failures {stats.failures}, rejected {stats.rejected} (want 0)": not (
            stats.failures or stats.rejected
        ),
        f"stop cancelled {cancelled or 'nothing'}": not cancelled,
    }
    print(f"{n:,} records in {elapsed:.0f} s = {n / elapsed:,.0f}/s on average")
    for what, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    return 1 if args.strict and not all(checks.values()) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=6_000_000, help="records to pre-fill and process")
    parser.add_argument("--max-rows", type=int, default=1_000_000, help="daemon.journal.max_rows")
    parser.add_argument("--report-every", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument(
        "--bootstrap", help="host:port of a running broker (default: start one in a temp dir)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 if a check fails")
    args = parser.parse_args(argv)
    if args.n < 1 or args.max_rows < 1000:
        parser.error("need --n >= 1 and --max-rows >= 1000")
    if args.bootstrap:
        return run_loop(soak(args, args.bootstrap), False)
    with tempfile.TemporaryDirectory(prefix="reflexd-soak-kafka-") as tmp:
        broker = KafkaBroker(Path(tmp))
        broker.start()
        try:
            print(f"broker: Kafka single-node KRaft on {broker.bootstrap} (shares the CPUs with the daemon)")
            return run_loop(soak(args, broker.bootstrap), False)
        finally:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
