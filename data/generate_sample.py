#!/usr/bin/env python3
"""Deterministic generator of SYNTHETIC Binance spot ``<symbol>@trade`` messages (JSON Lines).

Nothing here is recorded from Binance: every message is produced by the stochastic model below,
driven by a seeded ``random.Random``, so the same flags always give the same bytes.

Model (event time ``t`` in seconds from ``--start``):

* Mid prices follow a two-asset geometric Brownian motion with correlated shocks
  (``d log S = -sigma^2/2 dt + sigma dW``), with per-symbol volatility.
* Volatility clustering: a two-state Markov regime (calm / turbulent) multiplies both the volatility
  and the order arrival rate; two scripted "sharp move" windows (about -0.9% and +1.0% on BTC, larger on
  ETH) add a smooth deterministic drift, extra volatility and one-sided order flow.
* Taker orders arrive as a Poisson process per symbol (BTC more often than ETH); an order prints at the
  touch (bid for a seller-initiated trade, ``m=true``; ask otherwise) and may sweep into several prints
  sharing one trade time and walking the book tick by tick.  Each order has a small permanent price impact.
* Sizes are log-normal with a heavier block component.  On top of that, BTC block trades above 250,000 USDT
  notional are scheduled in the first 5 s and then every 20-40 s.

Usage::

    .venv/bin/python data/generate_sample.py --out data/sample-trades.jsonl

A summary of the generated file is printed on stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TypedDict

DEFAULT_SEED: Final = 20260115
DEFAULT_COUNT: Final = 4000
DEFAULT_START: Final = "2026-01-15T14:00:00Z"
DEFAULT_OUT: Final = Path(__file__).resolve().parent / "sample-trades.jsonl"

SECONDS_PER_YEAR: Final = 365.0 * 86400.0
BLOCK_NOTIONAL: Final = 250_000.0  # USDT; the threshold rule tests look for
SHARP_MOVE: Final = 0.005  # +-0.5% ...
SHARP_WINDOW_MS: Final = 60_000  # ... within 60 s

# Regime switching (continuous-time Markov chain) and its multipliers.
CALM_TO_TURBULENT_RATE: Final = 1.0 / 110.0  # per second
TURBULENT_TO_CALM_RATE: Final = 1.0 / 22.0
TURBULENT_VOL_MULT: Final = 3.0
TURBULENT_RATE_MULT: Final = 2.0
SHOCK_VOL_MULT: Final = 2.0
SHOCK_RATE_MULT: Final = 2.5

CORRELATION: Final = 0.8  # BTC/ETH correlation of Brownian shocks
IMPACT: Final = 1.0e-5  # permanent log-impact per sqrt(notional / 10,000 USDT)
SIDE_PERSISTENCE: Final = 0.35  # probability a taker order repeats the previous side
SHOCK_FLOW_BIAS: Final = 0.2  # extra probability of the shock's direction for the taker side

# Scheduled BTC blocks above BLOCK_NOTIONAL.
FIRST_BLOCK_WINDOW_S: Final = (1.0, 4.0)
BLOCK_GAP_S: Final = (20.0, 40.0)
BLOCK_NOTIONAL_MULT: Final = (1.04, 4.0)  # log-uniform multiple of BLOCK_NOTIONAL


@dataclass(frozen=True)
class SymbolSpec:
    symbol: str
    start_price: float
    price_decimals: int
    qty_decimals: int
    annual_vol: float
    base_rate: float  # taker orders per second in the calm regime
    qty_median: float
    qty_sigma: float
    block_prob: float  # probability that a taker order comes from the block-size component
    block_median: float
    block_sigma: float
    shock_beta: float  # multiplier applied to the scripted sharp moves
    first_trade_id: int

    @property
    def sigma(self) -> float:
        """Volatility per sqrt(second)."""
        return self.annual_vol / math.sqrt(SECONDS_PER_YEAR)


@dataclass(frozen=True)
class Shock:
    start_s: float
    duration_s: float
    log_return: float

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def active(self, t: float) -> bool:
        return self.start_s <= t < self.end_s

    def offset(self, t: float) -> float:
        x = min(max((t - self.start_s) / self.duration_s, 0.0), 1.0)
        return self.log_return * x * x * (3.0 - 2.0 * x)  # smoothstep


SYMBOLS: Final[tuple[SymbolSpec, ...]] = (
    SymbolSpec(
        symbol="BTCUSDT",
        start_price=65_000.0,
        price_decimals=2,
        qty_decimals=5,
        annual_vol=0.55,
        base_rate=2.35,
        qty_median=0.0025,
        qty_sigma=1.6,
        block_prob=0.03,
        block_median=2.0,
        block_sigma=0.8,
        shock_beta=1.0,
        first_trade_id=5_214_377_310,
    ),
    SymbolSpec(
        symbol="ETHUSDT",
        start_price=3_400.0,
        price_decimals=2,
        qty_decimals=4,
        annual_vol=0.70,
        base_rate=1.2,
        qty_median=0.04,
        qty_sigma=1.5,
        block_prob=0.03,
        block_median=15.0,
        block_sigma=0.8,
        shock_beta=1.3,
        first_trade_id=2_987_120_544,
    ),
)

SHOCKS: Final[tuple[Shock, ...]] = (
    Shock(start_s=150.0, duration_s=35.0, log_return=math.log(1.0 - 0.009)),
    Shock(start_s=420.0, duration_s=40.0, log_return=math.log(1.0 + 0.010)),
)


class Trade(TypedDict):
    e: str
    E: int
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool
    M: bool


def format_units(units: int, decimals: int) -> str:
    """Format an integer number of 10**-decimals units exactly (no float rounding)."""
    scale = 10**decimals
    return f"{units // scale}.{units % scale:0{decimals}d}"


def parse_start(text: str) -> int:
    """ISO-8601 timestamp (naive means UTC) -> epoch milliseconds."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


def iso_ms(ms: int) -> str:
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


class Generator:
    def __init__(self, seed: int, count: int, start_ms: int) -> None:
        self.rng = random.Random(seed)
        self.count = count
        self.start_ms = start_ms
        self.t = 0.0
        self.turbulent = False
        self.log_px = [math.log(s.start_price) for s in SYMBOLS]
        self.next_id = [s.first_trade_id for s in SYMBOLS]
        self.last_buyer_maker = [False for _ in SYMBOLS]
        self.last_event_ms = start_ms
        self.out: list[Trade] = []

    # ---- model state -------------------------------------------------------------------------
    def shock_at(self, t: float) -> Shock | None:
        for shock in SHOCKS:
            if shock.active(t):
                return shock
        return None

    def vol_mult(self) -> float:
        mult = TURBULENT_VOL_MULT if self.turbulent else 1.0
        return mult * (SHOCK_VOL_MULT if self.shock_at(self.t) else 1.0)

    def rate(self, i: int) -> float:
        mult = TURBULENT_RATE_MULT if self.turbulent else 1.0
        mult *= SHOCK_RATE_MULT if self.shock_at(self.t) else 1.0
        return SYMBOLS[i].base_rate * mult

    def advance(self, t_new: float) -> None:
        """Evolve the correlated GBM mid prices from self.t to t_new under the current regime."""
        dt = t_new - self.t
        if dt > 0.0:
            v = self.vol_mult()
            z_common = self.rng.gauss(0.0, 1.0)
            rho_idio = math.sqrt(1.0 - CORRELATION * CORRELATION)
            for i, spec in enumerate(SYMBOLS):
                z = CORRELATION * z_common + rho_idio * self.rng.gauss(0.0, 1.0)
                sig = spec.sigma * v
                self.log_px[i] += -0.5 * sig * sig * dt + sig * math.sqrt(dt) * z
        self.t = t_new

    def mid(self, i: int) -> float:
        offset = sum(shock.offset(self.t) for shock in SHOCKS)
        return math.exp(self.log_px[i] + SYMBOLS[i].shock_beta * offset)

    # ---- order flow --------------------------------------------------------------------------
    def draw_buyer_maker(self, i: int) -> bool:
        """True = seller-initiated trade (buyer was the resting maker)."""
        if self.rng.random() < SIDE_PERSISTENCE:
            return self.last_buyer_maker[i]
        p_sell = 0.5
        shock = self.shock_at(self.t)
        if shock is not None:
            p_sell += SHOCK_FLOW_BIAS if shock.log_return < 0 else -SHOCK_FLOW_BIAS
        return self.rng.random() < p_sell

    def lognormal_units(self, median: float, sigma: float, decimals: int) -> int:
        qty = median * math.exp(sigma * self.rng.gauss(0.0, 1.0))
        return max(1, round(qty * 10.0**decimals))

    def emit(self, i: int, price_ticks: int, qty_units: int, trade_ms: int, buyer_maker: bool) -> None:
        if len(self.out) >= self.count:
            return
        spec = SYMBOLS[i]
        r = self.rng.random()
        jitter = self.rng.randint(0, 3) if r < 0.85 else self.rng.randint(4, 12)
        event_ms = max(trade_ms + jitter, self.last_event_ms)
        self.last_event_ms = event_ms
        self.out.append(
            Trade(
                e="trade",
                E=event_ms,
                s=spec.symbol,
                t=self.next_id[i],
                p=format_units(max(1, price_ticks), spec.price_decimals),
                q=format_units(qty_units, spec.qty_decimals),
                T=trade_ms,
                m=buyer_maker,
                M=True,
            )
        )
        self.next_id[i] += 1

    def taker_order(self, i: int, scheduled_block: bool = False) -> None:
        spec = SYMBOLS[i]
        rng = self.rng
        tick_scale = 10**spec.price_decimals
        mid = self.mid(i)
        bid = max(1, math.floor(mid * tick_scale))
        buyer_maker = self.draw_buyer_maker(i)
        self.last_buyer_maker[i] = buyer_maker
        direction = -1 if buyer_maker else 1  # sells walk the book down, buys up
        touch = bid if buyer_maker else bid + 1
        trade_ms = self.start_ms + math.floor(self.t * 1000.0)

        prints: list[int] = []  # quantities in units, first print at the touch
        if scheduled_block:
            lo, hi = BLOCK_NOTIONAL_MULT
            notional = BLOCK_NOTIONAL * math.exp(rng.uniform(math.log(lo), math.log(hi)))
            prints.append(math.ceil(notional / (touch / tick_scale) * 10**spec.qty_decimals))
            if rng.random() < 0.5:
                prints += [
                    self.lognormal_units(spec.qty_median, spec.qty_sigma, spec.qty_decimals)
                    for _ in range(rng.randint(1, 3))
                ]
        elif rng.random() < spec.block_prob:
            prints.append(self.lognormal_units(spec.block_median, spec.block_sigma, spec.qty_decimals))
            if rng.random() < 0.5:
                prints += [
                    self.lognormal_units(spec.qty_median, spec.qty_sigma, spec.qty_decimals)
                    for _ in range(rng.randint(1, 3))
                ]
        else:
            total = self.lognormal_units(spec.qty_median, spec.qty_sigma, spec.qty_decimals)
            k = 1 if rng.random() < 0.8 else rng.randint(2, 4)
            k = min(k, total)
            weights = [rng.expovariate(1.0) for _ in range(k)]
            cuts = [max(1, math.floor(total * w / sum(weights))) for w in weights]
            cuts[0] += total - sum(cuts)
            if cuts[0] < 1:  # rounding left the first print empty: print the order in one go
                cuts = [total]
            prints = cuts

        price = touch
        notional_total = 0.0
        for n, qty_units in enumerate(prints):
            if n > 0 and rng.random() < 0.5:
                price += direction * rng.randint(1, 3)
            self.emit(i, price, qty_units, trade_ms, buyer_maker)
            notional_total += (price / tick_scale) * (qty_units / 10**spec.qty_decimals)
        # Permanent price impact in the direction of the aggressor.
        self.log_px[i] += direction * IMPACT * math.sqrt(notional_total / 10_000.0)

    # ---- event loop --------------------------------------------------------------------------
    def run(self) -> list[Trade]:
        rng = self.rng
        n_sym = len(SYMBOLS)
        boundaries = sorted({s.start_s for s in SHOCKS} | {s.end_s for s in SHOCKS})
        next_switch = rng.expovariate(CALM_TO_TURBULENT_RATE)
        next_block = rng.uniform(*FIRST_BLOCK_WINDOW_S)
        next_arrival = [rng.expovariate(self.rate(i)) for i in range(n_sym)]

        while len(self.out) < self.count:
            next_boundary = boundaries[0] if boundaries else math.inf
            # Deterministic tie-break: regime/boundary changes before trades.
            candidates: list[tuple[float, int, str, int]] = [
                (next_switch, 0, "switch", -1),
                (next_boundary, 1, "boundary", -1),
                (next_block, 2, "block", 0),
            ]
            candidates += [(next_arrival[i], 3 + i, "arrival", i) for i in range(n_sym)]
            when, _, kind, i = min(candidates)
            self.advance(when)
            if kind in ("switch", "boundary"):
                if kind == "switch":
                    self.turbulent = not self.turbulent
                    rate = TURBULENT_TO_CALM_RATE if self.turbulent else CALM_TO_TURBULENT_RATE
                    next_switch = self.t + rng.expovariate(rate)
                else:
                    boundaries.pop(0)
                # Poisson arrivals are memoryless: redraw them with the new intensities.
                next_arrival = [self.t + rng.expovariate(self.rate(j)) for j in range(n_sym)]
            elif kind == "block":
                self.taker_order(i, scheduled_block=True)
                next_block = self.t + rng.uniform(*BLOCK_GAP_S)
            else:
                self.taker_order(i)
                next_arrival[i] = self.t + rng.expovariate(self.rate(i))
        return self.out


def generate(
    seed: int = DEFAULT_SEED, count: int = DEFAULT_COUNT, start_ms: int | None = None
) -> list[Trade]:
    if start_ms is None:
        start_ms = parse_start(DEFAULT_START)
    return Generator(seed, count, start_ms).run()


def dumps(trade: Trade) -> str:
    return json.dumps(trade, separators=(",", ":"))


# ---- summary ---------------------------------------------------------------------------------
def sharp_moves(trades: Sequence[Trade]) -> list[tuple[int, int, float]]:
    """Episodes where a trade is >= SHARP_MOVE away from some trade of the previous 60 s.

    Returns (start_ms of the first flagged trade, sign, most extreme move in the episode).
    """
    episodes: list[tuple[int, int, float]] = []
    window: list[tuple[int, float]] = []
    last_flag_ms = -(10**18)
    for tr in trades:
        ts, px = tr["T"], float(tr["p"])
        window.append((ts, px))
        while window[0][0] < ts - SHARP_WINDOW_MS:
            window.pop(0)
        lo = min(p for _, p in window)
        hi = max(p for _, p in window)
        up, down = px / lo - 1.0, px / hi - 1.0
        move = up if up >= -down else down
        if abs(move) < SHARP_MOVE:
            continue
        sign = 1 if move > 0 else -1
        if episodes and episodes[-1][1] == sign and ts - last_flag_ms <= SHARP_WINDOW_MS:
            start, _, best = episodes[-1]
            episodes[-1] = (start, sign, move if abs(move) > abs(best) else best)
        else:
            episodes.append((ts, sign, move))
        last_flag_ms = ts
    return episodes


def summarize(trades: Sequence[Trade], start_ms: int | None = None) -> str:
    """Human-readable statistics; offsets (+x s) are from start_ms (default: the first trade)."""
    if start_ms is None:
        start_ms = trades[0]["T"]
    lines = [
        f"messages: {len(trades)}",
        f"first T: {iso_ms(trades[0]['T'])}  last T: {iso_ms(trades[-1]['T'])}  "
        f"span: {(trades[-1]['T'] - trades[0]['T']) / 1000:.3f} s",
    ]
    for spec in SYMBOLS:
        rows = [tr for tr in trades if tr["s"] == spec.symbol]
        if not rows:
            continue
        prices = [float(tr["p"]) for tr in rows]
        notionals = [float(tr["p"]) * float(tr["q"]) for tr in rows]
        big = [tr for tr, n in zip(rows, notionals, strict=True) if n > BLOCK_NOTIONAL]
        lines.append(
            f"{spec.symbol}: {len(rows)} trades, ids {rows[0]['t']}..{rows[-1]['t']}, "
            f"price first {rows[0]['p']} last {rows[-1]['p']} min {min(prices):.2f} max {max(prices):.2f}, "
            f"buyer-maker {sum(tr['m'] for tr in rows) / len(rows):.1%}, "
            f"median notional {sorted(notionals)[len(notionals) // 2]:,.2f} USDT"
        )
        if big:
            gaps = [(b["T"] - a["T"]) / 1000 for a, b in itertools.pairwise(big)]
            gap_txt = f", max gap {max(gaps):.1f} s" if gaps else ""
            lines.append(
                f"  notional > {BLOCK_NOTIONAL:,.0f}: {len(big)} trades ({len(big) / len(rows):.2%}), "
                f"first at {iso_ms(big[0]['T'])} (+{(big[0]['T'] - start_ms) / 1000:.3f} s, "
                f"p={big[0]['p']} q={big[0]['q']}){gap_txt}"
            )
        else:
            lines.append(f"  notional > {BLOCK_NOTIONAL:,.0f}: 0 trades")
        for ep_start, _, move in sharp_moves(rows):
            lines.append(
                f"  sharp move: {move:+.2%} within 60 s, first flagged at {iso_ms(ep_start)} "
                f"(+{(ep_start - start_ms) / 1000:.1f} s)"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="RNG seed (default %(default)s)")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="messages (default %(default)s)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output path, '-' for stdout")
    parser.add_argument("--start", default=DEFAULT_START, help="ISO-8601 UTC start (default %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="do not print the summary on stderr")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be >= 1")

    start_ms = parse_start(args.start)
    trades = generate(args.seed, args.count, start_ms)
    text = "".join(dumps(tr) + "\n" for tr in trades)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text, encoding="utf-8", newline="\n")
    if not args.quiet:
        where = "<stdout>" if args.out == "-" else args.out
        print(f"wrote {len(trades)} messages to {where}\n{summarize(trades, start_ms)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
