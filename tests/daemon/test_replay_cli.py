"""`reflexd replay` and `reflexd record` as real processes.

The golden test replays the shipped sample (raw trades, source ``spot``) and a recording
(``perp``) through seven rules and compares the output with ``tests/data/rules/expected.txt``.
That file is what :func:`reference_output` computes: a plain, separate implementation of what each
rule means (lists and loops, no reactivex, nothing from ``streams.rules``). Set
``REFLEXD_WRITE_GOLDEN=1`` to rewrite it from the reference after changing the data or the config.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from streams.rules.replay import Pacer
from tests.servers import FeedServer, Plan

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "rules"
SAMPLE = ROOT / "data" / "sample-trades.jsonl"
GOLDEN = DATA / "golden.yaml"
EXPECTED = DATA / "expected.txt"


def reflexd(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args], cwd=cwd, capture_output=True, timeout=60, check=False
    )


# -- the reference: what the golden rules mean, computed directly -------------------------------------


class Ev(NamedTuple):
    source: str
    ts: float
    key: str
    data: dict[str, Any]


def load_events() -> list[Ev]:
    """The two inputs merged by event time (a stable sort: spot before perp at equal times)."""
    spot = []
    for line in SAMPLE.read_text().splitlines():
        trade = json.loads(line)
        spot.append(Ev("spot", trade["T"] / 1000, trade["s"], trade))
    perp = []
    for line in (DATA / "perp.jsonl").read_text().splitlines():
        rec = json.loads(line)
        perp.append(Ev("perp", rec["ts"], rec["key"], rec["data"]))
    return sorted(spot + perp, key=lambda e: e.ts)


def stamp(ts: float) -> str:
    moment = datetime.fromtimestamp(ts, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{moment.microsecond // 1000:03d}Z"


def line(ts: float, rule: str, tool: str, args: dict[str, Any]) -> str:
    return f"{stamp(ts)}  {rule}  {tool}  {json.dumps(args, separators=(',', ':'), ensure_ascii=False)}"


class SharpMove:
    """Price change over the key's trades in the last 60 s >= 0.5 %, then 60 s of quiet per key."""

    name, sources = "sharp_move", ("spot",)

    def __init__(self) -> None:
        self.history: dict[str, deque[tuple[float, float]]] = {}
        self.fired_at: dict[str, float] = {}

    def timers(self, now: float) -> list[str]:
        return []

    def event(self, e: Ev) -> list[str]:
        price = float(e.data["p"])
        window = self.history.setdefault(e.key, deque())
        window.append((e.ts, price))
        while window[0][0] <= e.ts - 60:
            window.popleft()
        first = window[0][1]
        move = (price - first) / first * 100
        if abs(move) < 0.5:
            return []
        last = self.fired_at.get(e.key)
        if last is not None and last <= e.ts < last + 60:
            return []
        self.fired_at[e.key] = e.ts
        text = f"{e.key} moved {round(move, 2)}% within 60 s ({len(window)} trades)"
        return [line(e.ts, self.name, "alert", {"text": text})]


class BtcLevel:
    """BTC above 64310 is 'above', below 64290 'below', in between unchanged; report changes of side."""

    name, sources = "btc_level", ("spot",)

    def __init__(self) -> None:
        self.side: int | None = None

    def timers(self, now: float) -> list[str]:
        return []

    def event(self, e: Ev) -> list[str]:
        if e.key != "BTCUSDT":
            return []
        price = float(e.data["p"])
        side = 1 if price > 64310 else -1 if price < 64290 else None
        if side is None or side == self.side:
            return []
        before, self.side = self.side, side
        if before is None:
            return []
        text = f"BTC crossed 64300 {'up' if side == 1 else 'down'} at {e.data['p']}"
        return [line(e.ts, self.name, "alert", {"text": text})]


class BlockThenPerp:
    """A spot trade over 250,000, then a perp mark of the same symbol less than 3 s later."""

    name, sources = "block_then_perp", ("spot", "perp")

    def __init__(self) -> None:
        self.pending: dict[str, Ev] = {}

    def timers(self, now: float) -> list[str]:
        for key, block in list(self.pending.items()):
            if block.ts + 3 <= now:
                del self.pending[key]
        return []

    def event(self, e: Ev) -> list[str]:
        out = []
        block = self.pending.get(e.key)
        if e.source == "perp" and block is not None and 0 <= e.ts - block.ts < 3:
            del self.pending[e.key]
            text = (
                f"{e.key} block {block.data['q']} @ {block.data['p']}, "
                f"perp mark {e.data['mark']} {round(e.ts - block.ts, 3)} s later"
            )
            out.append(line(e.ts, self.name, "alert", {"text": text}))
        if e.source == "spot" and float(e.data["p"]) * float(e.data["q"]) > 250000:
            self.pending[e.key] = e
        return out


class PerpSilent:
    """No perp mark at all for 10 s: report once, at the moment the silence reached 10 s."""

    name, sources = "perp_silent", ("perp",)

    def __init__(self) -> None:
        self.last: Ev | None = None

    def timers(self, now: float) -> list[str]:
        last = self.last
        if last is None or last.ts + 10 > now:
            return []
        self.last = None
        at = last.ts + 10
        text = f"perp feed silent for {round(at - last.ts, 3)} s; last: {last.key} {last.data['mark']}"
        return [line(at, self.name, "alert", {"text": text})]

    def event(self, e: Ev) -> list[str]:
        self.last = e
        return []


class BigTrades:
    """Trades over 100,000: at most 2 per symbol per 30 s interval (started by the first)."""

    name, sources = "big_trades", ("spot",)

    def __init__(self) -> None:
        self.interval: dict[str, list[Any]] = {}

    def timers(self, now: float) -> list[str]:
        return []

    def event(self, e: Ev) -> list[str]:
        if float(e.data["p"]) * float(e.data["q"]) <= 100000:
            return []
        current = self.interval.get(e.key)
        if current is None or not current[0] <= e.ts < current[0] + 30:
            current = self.interval[e.key] = [e.ts, 0]
        if current[1] >= 2:
            return []
        current[1] += 1
        args = {"symbol": e.key, "price": e.data["p"], "qty": e.data["q"], "trade_id": e.data["t"]}
        return [line(e.ts, self.name, "journal", args)]


class Basis:
    """On each perp mark: (mark - last spot price) / spot in bps, if the spot price is at most 5 s old."""

    name, sources = "basis", ("spot", "perp")

    def __init__(self) -> None:
        self.spot: dict[str, tuple[float, float]] = {}

    def timers(self, now: float) -> list[str]:
        return []

    def event(self, e: Ev) -> list[str]:
        if e.source == "spot":
            self.spot[e.key] = (e.ts, float(e.data["p"]))
            return []
        if e.key not in self.spot:
            return []
        spot_ts, spot = self.spot[e.key]
        if e.ts - spot_ts > 5:
            return []
        perp = float(e.data["mark"])
        bps = (perp - spot) / spot * 10000
        if abs(bps) <= 8:
            return []
        args = {"text": f"{e.key} basis {round(bps, 2)} bps", "perp": perp, "spot": spot}
        return [line(e.ts, self.name, "alert", args)]


class MinuteBars:
    """Per symbol and calendar minute of event time: open/high/low/close, volume, trades; reported when
    event time reaches the end of the minute (minutes without trades report nothing)."""

    name, sources = "minute_bars", ("spot",)

    def __init__(self) -> None:
        self.bars: dict[str, dict[str, Any]] = {}
        self.opened = 0

    def timers(self, now: float) -> list[str]:
        due = sorted(
            (b["start"] + 60, b["order"], key) for key, b in self.bars.items() if b["start"] + 60 <= now
        )
        out = []
        for end, _order, key in due:
            b = self.bars.pop(key)
            args = {
                "bar": f"{key} {b['start']}",
                "ohlc": [b["open"], b["high"], b["low"], b["close"]],
                "volume": round(b["volume"], 5),
                "trades": b["trades"],
            }
            out.append(line(end, self.name, "journal", args))
        return out

    def event(self, e: Ev) -> list[str]:
        price, qty = float(e.data["p"]), float(e.data["q"])
        bar = self.bars.get(e.key)
        if bar is None:
            self.opened += 1
            start = math.floor(e.ts / 60.0) * 60.0
            bar = self.bars[e.key] = {"start": start, "order": self.opened, "open": price, "high": price}
            bar.update(low=price, volume=0, trades=0)
        bar["high"] = max(bar["high"], price)
        bar["low"] = min(bar["low"], price)
        bar["close"] = price
        bar["volume"] += qty
        bar["trades"] += 1
        return []


def reference_output() -> str:
    """What `reflexd replay` should print: events in time order; whenever time moves on, each rule
    first reports what became due (silence, closed minutes); then the rules reading the event react."""
    rules = [SharpMove(), BtcLevel(), BlockThenPerp(), PerpSilent(), BigTrades(), Basis(), MinuteBars()]
    out: list[str] = []
    now = -math.inf
    for e in load_events():
        if e.ts > now:
            now = e.ts
            for rule in rules:
                out += rule.timers(now)
        for rule in rules:
            if e.source in rule.sources:
                out += rule.event(e)
    for rule in rules:
        out += rule.timers(now)
    return "".join(f"{text}\n" for text in out)


# -- golden -------------------------------------------------------------------------------------------


def golden_replay() -> subprocess.CompletedProcess[bytes]:
    return reflexd("replay", "-c", str(GOLDEN), f"spot={SAMPLE}", str(DATA / "perp.jsonl"))


def test_expected_file_is_the_reference_computation() -> None:
    """expected.txt is exactly what the independent reference computes (not a recording of reflexd)."""
    want = reference_output()
    if os.environ.get("REFLEXD_WRITE_GOLDEN"):
        EXPECTED.write_text(want)
    assert EXPECTED.read_text() == want
    rules = {text.split("  ")[1] for text in want.splitlines()}
    assert rules == {
        "sharp_move",
        "btc_level",
        "block_then_perp",
        "perp_silent",
        "big_trades",
        "basis",
        "minute_bars",
    }


def test_golden_replay_equals_expected_and_is_byte_identical_when_repeated() -> None:
    """`reflexd replay` over the sample prints expected.txt, exits 0, and a second run gives the same bytes."""
    first = golden_replay()
    assert first.returncode == 0, first.stderr.decode()
    assert first.stdout.decode() == EXPECTED.read_text()
    second = golden_replay()
    assert second.returncode == 0 and second.stdout == first.stdout
    assert b"dry run: no tool was called" in first.stderr
    assert not (GOLDEN.parent / "var").exists()  # the file tool was never built, let alone called


def test_replay_output_does_not_depend_on_speed_or_file_order_of_options() -> None:
    """--speed only paces; jsonl carries the same calls; --rule narrows to one rule."""
    fast = reflexd(
        "replay", "-c", str(GOLDEN), f"spot={SAMPLE}", str(DATA / "perp.jsonl"), "--speed", "1000000"
    )
    assert fast.returncode == 0 and fast.stdout.decode() == EXPECTED.read_text()
    only = reflexd(
        "replay", "-c", str(GOLDEN), f"spot={SAMPLE}", str(DATA / "perp.jsonl"), "--rule", "perp_silent"
    )
    assert only.stdout.decode() == "".join(
        t + "\n" for t in EXPECTED.read_text().splitlines() if "  perp_silent  " in t
    )
    as_json = reflexd(
        "replay", "-c", str(GOLDEN), f"spot={SAMPLE}", str(DATA / "perp.jsonl"), "--format", "jsonl"
    )
    records = [json.loads(text) for text in as_json.stdout.decode().splitlines()]
    assert [(r["time"], r["rule"], r["tool"]) for r in records] == [
        tuple(text.split("  ")[:3]) for text in EXPECTED.read_text().splitlines()
    ]


def test_pacer_sleeps_event_time_divided_by_speed() -> None:
    """--speed N sleeps so that events come at their event-time spacing divided by N."""
    slept: list[float] = []
    pace = Pacer(5.0, slept.append)
    pace(Ev("s", 100.0, "k", {}))  # type: ignore[arg-type]
    pace(Ev("s", 110.0, "k", {}))  # type: ignore[arg-type]
    assert len(slept) == 1 and 1.9 < slept[0] <= 2.0


# -- CLI errors ---------------------------------------------------------------------------------------


def test_replay_input_errors_exit_1_with_a_reason(tmp_path: Path) -> None:
    """A missing file, an unknown SOURCE=, or a raw file without SOURCE= are explained; exit 1."""
    missing = reflexd("replay", "-c", str(GOLDEN), str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 1 and b"no such file" in missing.stderr
    unknown = reflexd("replay", "-c", str(GOLDEN), f"nope={SAMPLE}")
    assert unknown.returncode == 1 and b"no source named 'nope'" in unknown.stderr
    raw = tmp_path / "raw.jsonl"
    raw.write_text(SAMPLE.read_text().splitlines()[0] + "\n")
    plain = reflexd("replay", "-c", str(GOLDEN), str(raw))
    assert plain.returncode == 1 and b"to replay raw messages write SOURCE=" in plain.stderr


def test_replay_reads_the_path_of_a_replay_source_as_that_source() -> None:
    """A plain FILE that is a configured replay source's path is decoded as that source."""
    result = reflexd("replay", "-c", str(GOLDEN), str(SAMPLE), "--rule", "btc_level")
    want = [t for t in EXPECTED.read_text().splitlines() if "  btc_level  " in t]
    assert result.returncode == 0 and result.stdout.decode().splitlines() == want


def test_replay_skips_bad_lines_and_counts_them(tmp_path: Path) -> None:
    """Undecodable lines are skipped and reported on stderr; the replay still exits 0."""
    rec = tmp_path / "perp.jsonl"
    rec.write_text("not json\n" + (DATA / "perp.jsonl").read_text() + '{"source": "perp"}\n')
    result = reflexd("replay", "-c", str(GOLDEN), str(rec), "--rule", "perp_silent")
    assert result.returncode == 0
    assert b"2 line(s) skipped" in result.stderr
    assert result.stdout.decode().count("perp_silent") == 2


def test_check_reports_step_errors_with_path_line_and_column(tmp_path: Path) -> None:
    """`reflexd check` names the step, its YAML line and the column inside the expression; exit 2."""
    config = tmp_path / "c.yaml"
    config.write_text(
        GOLDEN.read_text()
        .replace('aggregates: {move: "pct_change(price)"', 'aggregates: {move: "pct_change(prise)"')
        .replace("level: 64300, hysteresis: 10", 'level: "vwap(1)", hysteresis: 10')
        .replace("- absence: 10", "- absense: 10")
        .replace('- where: "abs(basis_bps) > 8"', '- where: "abs(basis_bps) >"')
        .replace("../../../data", str(ROOT / "data"))
    )
    result = reflexd("check", "-c", str(config))
    assert result.returncode == 2
    err = result.stderr.decode()
    assert (
        "c.yaml:27 rules.sharp_move.steps[1].window.aggregates.move: column 12: unknown name 'prise'" in err
    )
    assert "c.yaml:38 rules.btc_level.steps[0].crossing.level: column 1: 'vwap' is a window aggregate" in err
    assert "rules.perp_silent.steps[0].absense: unknown step (did you mean 'absence'?)" in err
    assert "c.yaml:81 rules.basis.steps[2].where: column 17: syntax error" in err


# -- record -------------------------------------------------------------------------------------------


def feed_config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "feed.yaml"
    config.write_text(
        f"""
sources:
  ticks:
    type: websocket
    url: {url}
    key_field: s
    time_field: T
    reconnect: {{initial_seconds: 0.05, max_seconds: 0.1, healthy_after_seconds: 0}}
tools:
  alert: {{type: log}}
rules:
  up:
    from: ticks
    steps:
      - set: {{price: "float(data.p)"}}
      - crossing: {{value: price, level: 100, direction: up}}
    then: [{{tool: alert, args: {{text: "{{key}} above 100 at {{price}}"}}}}]
  gaps:
    from: ticks
    kinds: [gap]
    then: [{{tool: alert, args: {{text: "gap after {{data.reason}}"}}}}]
"""
    )
    return config


def tick(t_ms: int, symbol: str, price: float) -> str:
    return json.dumps({"s": symbol, "T": t_ms, "p": str(price)})


async def run_cli(*args: str, until_lines: tuple[Path, int] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon.cli", *args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    if until_lines is not None:
        path, count = until_lines
        for _ in range(500):
            if path.exists() and path.read_text().count("\n") >= count:
                break
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGINT)
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_record_captures_a_live_websocket_feed_and_replays_it(tmp_path: Path) -> None:
    """`reflexd record` writes what the source received (events, then a reconnect gap) in the replay
    format; `reflexd replay` of that file runs the rules on it."""
    first = [tick(1_000_000 + i * 1000, "AAA", p) for i, p in enumerate([99, 101, 98, 102])]
    second = [tick(1_010_000 + i * 1000, "BBB", p) for i, p in enumerate([90, 110])]
    async with FeedServer([Plan(frames=first, after="close"), Plan(frames=second, after="hold")]) as server:
        config = feed_config(tmp_path, server.url)
        out = tmp_path / "rec.jsonl"
        code, err = await run_cli(
            "record", "-c", str(config), "ticks", "--out", str(out), "--duration", "1.5"
        )
    assert code == 0, err
    assert "recorded 7 event(s) (1 gap(s)) from ticks" in err
    records = [json.loads(text) for text in out.read_text().splitlines()]
    data_records = [r for r in records if r["kind"] == "data"]
    assert [(r["source"], r["ts"], r["key"], r["data"]["p"]) for r in data_records] == [
        ("ticks", 1000.0 + i, "AAA", p) for i, p in enumerate(["99", "101", "98", "102"])
    ] + [("ticks", 1010.0 + i, "BBB", p) for i, p in enumerate(["90", "110"])]
    assert [r["kind"] for r in records].count("gap") == 1

    replayed = reflexd("replay", "-c", str(config), str(out))
    assert replayed.returncode == 0, replayed.stderr
    lines = replayed.stdout.decode().splitlines()
    assert [text.split("  ", 1)[1] for text in lines if "  up  " in text] == [
        'up  alert  {"text":"AAA above 100 at 101.0"}',
        'up  alert  {"text":"AAA above 100 at 102.0"}',
        'up  alert  {"text":"BBB above 100 at 110.0"}',
    ]
    assert sum("  gaps  " in text for text in lines) == 1


async def test_record_stops_on_sigint_with_everything_written(tmp_path: Path) -> None:
    """Ctrl-C ends a recording cleanly: exit 0, every received event on disk."""
    frames = [tick(2_000_000 + i, "AAA", 100 + i) for i in range(50)]
    async with FeedServer(Plan(frames=frames, after="hold")) as server:
        config = feed_config(tmp_path, server.url)
        out = tmp_path / "rec.jsonl"
        code, err = await run_cli(
            "record", "-c", str(config), "ticks", "--out", str(out), until_lines=(out, 50)
        )
    assert code == 0, err
    assert len(out.read_text().splitlines()) == 50


def test_record_a_finite_source_ends_by_itself(tmp_path: Path) -> None:
    """Recording a replay source (speed 0) ends at its end of file, with every line recorded."""
    config = tmp_path / "c.yaml"
    config.write_text(
        f"""
sources:
  spot: {{type: replay, path: {SAMPLE}, time_field: T, key_field: s, speed: 0}}
tools:
  alert: {{type: log}}
rules:
  r: {{from: spot, then: [{{tool: alert}}]}}
"""
    )
    out = tmp_path / "spot.jsonl"
    result = reflexd("record", "-c", str(config), "spot", "--out", str(out))
    assert result.returncode == 0, result.stderr
    records = [json.loads(text) for text in out.read_text().splitlines()]
    assert len(records) == 4000 and records[0]["ts"] == 1768485600.139 and records[0]["key"] == "ETHUSDT"
    # the recording replays like the raw file it came from
    replay = reflexd("replay", "-c", str(GOLDEN), str(out), "--rule", "sharp_move")
    want = [t for t in EXPECTED.read_text().splitlines() if "  sharp_move  " in t]
    assert replay.stdout.decode().splitlines() == want


def test_record_unknown_source_exits_1(tmp_path: Path) -> None:
    """Recording a source that is not configured is an error naming the sources."""
    result = reflexd("record", "-c", str(GOLDEN), "nope", "--out", str(tmp_path / "x.jsonl"))
    assert result.returncode == 1 and b"no source named 'nope' (sources: spot, perp)" in result.stderr
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize("verb", ["replay", "record"])
def test_replay_and_record_report_config_errors_with_exit_2(tmp_path: Path, verb: str) -> None:
    """A bad configuration stops both verbs with exit 2 before anything is read or written."""
    config = tmp_path / "bad.yaml"
    config.write_text("sources: {}\nrules: {r: {from: x, then: []}}\n")
    extra = ["x.jsonl"] if verb == "replay" else ["x", "--out", str(tmp_path / "o.jsonl")]
    result = reflexd(verb, "-c", str(config), *extra)
    assert result.returncode == 2


def test_check_prints_each_rules_steps() -> None:
    """`reflexd check` shows every rule's pipeline, step by step."""
    result = reflexd("check", "-c", str(GOLDEN))
    assert result.returncode == 0, result.stderr
    plan = result.stdout.decode()
    assert (
        "sharp_move: from spot; set price; window 60s sliding per key: move, trades; where abs(move) >= 0.5; "
        "cooldown 60s per key → alert"
    ) in plan
    assert "minute_bars: from spot; set price, qty; window 60s tumbling per key: open, high, low" in plan
    assert "perp_silent: from perp; absence 10s → alert" in plan
