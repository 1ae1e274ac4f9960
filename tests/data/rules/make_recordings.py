#!/usr/bin/env python3
"""Write ``perp.jsonl``, the recording the golden replay test reads besides the shipped sample.

The golden test replays ``data/sample-trades.jsonl`` (SYNTHETIC Binance trades, see
data/README.md) as raw messages of source ``spot``, and this file, in the recording format of
``reflexd record``: a SYNTHETIC perpetual-futures mark-price feed, source ``perp``. Per symbol a
mark comes every 1-4 s, equal to the latest spot price times (1 + basis), the basis a
mean-reverting random walk in basis points; the whole feed is silent from +200 s to +225 s and
from +400 s to +414 s. Deterministic: the same bytes on every run.

Usage: ``.venv/bin/python tests/data/rules/make_recordings.py`` (writes next to this file).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parents[2] / "data" / "sample-trades.jsonl"
SEED = 5
SILENCES = ((200.0, 225.0), (400.0, 414.0))  # seconds after the first trade


def envelope(source: str, ts: float, received_at: float, key: str, seq: int, data: dict[str, object]) -> str:
    record = {
        "source": source,
        "ts": ts,
        "received_at": received_at,
        "key": key,
        "kind": "data",
        "meta": {"seq": seq},
        "data": data,
    }
    return json.dumps(record, separators=(",", ":")) + "\n"


def main() -> None:
    trades = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    rnd = random.Random(SEED)
    start = trades[0]["T"] / 1000
    end = trades[-1]["T"] / 1000
    marks: list[tuple[float, str, float]] = []
    for symbol in ("BTCUSDT", "ETHUSDT"):
        basis = 0.0
        t = start + rnd.uniform(0, 2)
        while t < end:
            offset = t - start
            if not any(lo <= offset < hi for lo, hi in SILENCES):
                marks.append((round(t, 3), symbol, basis))
            basis = 0.85 * basis + rnd.gauss(0, 2.0)
            t += rnd.uniform(1, 4)
    marks.sort()
    last_price: dict[str, float] = {}
    i = 0
    seq = 0
    with (HERE / "perp.jsonl").open("w") as out:
        for ts, symbol, basis in marks:
            while i < len(trades) and trades[i]["T"] / 1000 <= ts:
                last_price[trades[i]["s"]] = float(trades[i]["p"])
                i += 1
            if symbol not in last_price:
                continue
            seq += 1
            mark = f"{last_price[symbol] * (1 + basis / 10_000):.2f}"
            data = {"s": symbol, "mark": mark, "E": round(ts * 1000)}
            out.write(envelope("perp", ts, round(ts + 0.003, 3), symbol, seq, data))


if __name__ == "__main__":
    main()
