"""While daemons run, the cyclic collector is tuned for queued events; the last one to stop undoes it."""

from __future__ import annotations

import gc
from pathlib import Path

from daemon.config import load_config_text
from daemon.registry import builtin_registry
from daemon.supervisor import GC_YOUNG_THRESHOLD, Daemon

ROOT = Path(__file__).resolve().parents[2]


def config_text() -> str:
    return f"""
daemon: {{http: null, journal: {{enabled: false}}}}
sources:
  trades: {{type: replay, path: "{ROOT / "data" / "sample-trades.jsonl"}", speed: 0}}
tools:
  note: {{type: log}}
rules:
  never: {{from: trades, where: "1 > 2", then: [{{tool: note}}]}}
"""


async def test_collector_is_tuned_while_daemons_run_and_restored_after_the_last_stops() -> None:
    before = gc.get_threshold()
    assert before[0] < GC_YOUNG_THRESHOLD and gc.get_freeze_count() == 0
    first = Daemon(load_config_text(config_text(), builtin_registry()))
    second = Daemon(load_config_text(config_text(), builtin_registry()))
    await first.start()
    try:
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0  # what start built is out of the collector's way
        await second.start()
        await first.stop()
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD  # the second still runs
    finally:
        await first.stop()
        await second.stop()
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
