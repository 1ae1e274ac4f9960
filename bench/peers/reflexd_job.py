"""reflexd's side of bench/kafka_pipeline.py, in a process of its own (so its RSS and CPU are its own).

Runs the real :class:`daemon.supervisor.Daemon` from a config file (written by the bench) until its
tool ``out`` has succeeded ``EXPECTED`` times, then stops it. The lines it prints on stdout, in order:

- ``READY`` once imported and the daemon built (before ``Daemon.start``);
- ``FIRST <time.perf_counter()>`` when the source has received its first record (polled every 1 ms;
  ``perf_counter`` is a system-wide monotonic clock, comparable with the bench process's);
- ``END <perf_counter> <cpu s> <gc s> <rss MiB> <journal backlog>`` when the tool's ``succeeded``
  reaches ``EXPECTED`` (polled every 10 ms): CPU seconds of this process (all threads) since ``READY``,
  the part of them spent in the cyclic garbage collector, resident memory then;
- ``STATUS <json>`` after the daemon stopped: the source's counters and what went wrong, if anything
  (``cancelled`` tasks at stop, journal rows dropped, tool failures). The bench checks it and the output.

    PYTHONPATH=<a reflexd checkout> python reflexd_job.py CONFIG EXPECTED [--profile-out FILE] [--uvloop]

The bench sets ``PYTHONPATH`` to this checkout, or to the one ``--compare`` names (A/B runs).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import sys
import time
from pathlib import Path

import orjson

from daemon.config import load_config_text
from daemon.registry import builtin_registry
from daemon.supervisor import Daemon

TOOL = "out"
SOURCE = "in"
POLL_FIRST_SECONDS = 0.001
POLL_END_SECONDS = 0.01
RUN_TIMEOUT = 180.0


class GcClock:
    """Wall time spent in the cyclic garbage collector."""

    total = 0.0
    _began = 0.0

    @classmethod
    def callback(cls, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            cls._began = time.perf_counter()
        else:
            cls.total += time.perf_counter() - cls._began


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run(config_text: str, expected: int, profile_out: str | None) -> int:
    config = load_config_text(config_text, builtin_registry())
    daemon = Daemon(config)
    source = daemon.sources[SOURCE]
    stats = daemon.runner.stats(TOOL)
    journal = daemon.journal
    clock = time.perf_counter
    gc.callbacks.append(GcClock.callback)
    profiler = cProfile.Profile() if profile_out else None
    say("READY")
    cpu0 = time.process_time()
    if profiler is not None:
        profiler.enable()
    problems: list[str] = []

    def check() -> None:
        skipped = getattr(stats, "deduplicated", 0)  # the journal skips keys that already succeeded
        if source.stats.state == "failed" or stats.failures or stats.rejected or skipped:
            raise RuntimeError(
                f"reflexd run failed: source {source.stats.state} ({source.stats.last_error}), "
                f"tool failures {stats.failures}, rejected {stats.rejected}, deduplicated {skipped}"
            )

    try:
        await daemon.start()
        async with asyncio.timeout(RUN_TIMEOUT):
            while source.stats.received == 0:
                check()
                await asyncio.sleep(POLL_FIRST_SECONDS)
            say(f"FIRST {clock()!r}")
            while stats.succeeded < expected:
                check()
                await asyncio.sleep(POLL_END_SECONDS)
            t_end = clock()
            cpu = time.process_time() - cpu0
            rss = rss_mb()
            backlog = journal.backlog if journal is not None else 0
            say(f"END {t_end!r} {cpu!r} {GcClock.total!r} {rss!r} {backlog}")
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_out)
    except Exception as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        cancelled = await daemon.stop()
    if cancelled:
        problems.append(f"daemon stop had to cancel: {cancelled}")
    if journal is not None and journal.dropped:
        problems.append(f"the journal fell behind: {journal.dropped} rows dropped")
    st = daemon.status()["sources"][SOURCE]
    status = {
        "pauses": st["pauses"],
        "read_waits": st["read_waits"],
        "commits": st["commits"],
        "rebalances": st["rebalances"],
        "high_water": source.queue.high_water,
        "concurrency": daemon.tools[TOOL].concurrency,
        "problems": problems,
    }
    say("STATUS " + orjson.dumps(status).decode())
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config")
    parser.add_argument("expected", type=int)
    parser.add_argument("--profile-out")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    args = parser.parse_args()
    main = run(Path(args.config).read_text(), args.expected, args.profile_out)
    if args.uvloop:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)


if __name__ == "__main__":
    sys.exit(main())
