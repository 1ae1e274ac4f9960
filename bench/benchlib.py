"""Helpers shared by the benchmarks (run as scripts: ``python bench/<name>.py``)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["GcClock", "rss_mb", "run_loop", "uvloop_available"]

T = TypeVar("T")


def run_loop(coro: Coroutine[Any, Any, T], use_uvloop: bool) -> T:
    """Run ``coro`` on a fresh event loop: uvloop's when asked (and importable), else asyncio's."""
    if use_uvloop:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    return asyncio.run(coro)


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def rss_mb() -> float:
    """Resident memory of this process in MiB (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class GcClock:
    """Wall time this process spends in the cyclic garbage collector (part of the client CPU)."""

    total = 0.0
    _began = 0.0

    @classmethod
    def callback(cls, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            cls._began = time.perf_counter()
        else:
            cls.total += time.perf_counter() - cls._began
