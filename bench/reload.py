"""Reload time: a running daemon with 100 rules over 3 sources, reloaded with one rule changed.

    .venv/bin/python bench/reload.py [--rounds 20]

Each round rewrites the file with rule r0's threshold changed and calls ``Daemon.reload`` as SIGHUP
does (full validation with preflight, in a thread, then the diff and the swap). Printed: the
median and worst of the reload's own time (``last_reload.seconds``) and, apart, of the validation
alone (``load_config(..., preflight=True)``), and the events the sources delivered meanwhile (they
are never stopped: the three sources are kept).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from daemon.config import load_config
from daemon.registry import builtin_registry
from daemon.supervisor import Daemon

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample-trades.jsonl"


def config_text(tmp: Path, threshold: int) -> str:
    sources = "".join(
        f"  s{i}: {{type: replay, path: {SAMPLE}, time_field: T, key_field: s, speed: 1, loop: true}}\n"
        for i in range(3)
    )
    rules = "".join(
        f'  r{i}: {{from: s{i % 3}, where: "float(data.q) > {threshold if i == 0 else i}", '
        f'cooldown_seconds: 5, then: [{{tool: out, args: {{p: "{{data.p}}"}}}}]}}\n'
        for i in range(100)
    )
    return f"""daemon:
  http: null
  state_path: {tmp / "state.db"}
  log_level: warning
sources:
{sources}tools:
  out: {{type: file, path: {tmp / "out.jsonl"}}}
rules:
{rules}"""


async def main(rounds: int) -> None:
    registry = builtin_registry()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        path = tmp / "config.yaml"
        path.write_text(config_text(tmp, 1000))
        daemon = Daemon(load_config(path, registry))
        await daemon.start()
        try:
            reloads: list[float] = []
            validations: list[float] = []
            for r in range(rounds):
                path.write_text(config_text(tmp, 1000 + r + 1))
                started = time.perf_counter()
                load_config(path, registry, preflight=True)
                validations.append(time.perf_counter() - started)
                before = sum(s.stats.received for s in daemon.sources.values())
                report = await daemon.reload(lambda: load_config(path, registry, preflight=True))
                assert report["result"] == "applied" and report["rules"]["changed"] == ["r0"], report
                assert len(report["rules"]["kept"]) == 99 and len(report["sources"]["kept"]) == 3
                reloads.append(report["seconds"])
                await asyncio.sleep(0.05)
            delivered = sum(s.stats.received for s in daemon.sources.values()) - before
        finally:
            await daemon.stop()
    print(f"100 rules, 3 sources, one rule changed, {rounds} reloads:")
    print(
        f"  reload (validation + diff + swap): median {1000 * statistics.median(reloads):.1f} ms, "
        f"worst {1000 * max(reloads):.1f} ms"
    )
    print(
        f"  of which validation with preflight: median {1000 * statistics.median(validations):.1f} ms, "
        f"worst {1000 * max(validations):.1f} ms"
    )
    print(f"  sources kept delivering: {delivered} events in the last round's reload and pause")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=20)
    asyncio.run(main(parser.parse_args().rounds))
