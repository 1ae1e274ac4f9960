"""Kafka → reflexd → Kafka pipeline benchmark: a raw aiokafka loop vs the real Daemon.

A real single-node KRaft broker (``tests/kafka_broker.py``, jars from ``make kafka-jars``) runs in a
temporary directory, or ``--bootstrap host:port`` names one that already runs. The input topic
(4 partitions) is pre-filled with ``--n`` JSON records of 100 bytes each (``{"id": i, "sym":
"BTCUSDT", "p": "65000.12", "q": "0.01234", "pad": "xx..."}``, round-robin over the partitions, no
key). On this 2-core machine **the broker shares the cores with the process measured**: the numbers
are for the whole pipeline (client + broker), and each run prints the CPU seconds of both.

Measured in the same run, alternating (a→b, then b→a, ...), ``--runs`` times each, after one small
warm-up run of each on a separate topic. Every run uses a fresh consumer group and a fresh output
topic (4 partitions), and writes one 100-byte JSON record ``{"id", "sym", "p", "q", "pad"}`` (the
same bytes in (a) and (b)) per input record:

(a) raw aiokafka loop: ``AIOKafkaConsumer`` (group, ``enable_auto_commit=False``, the source's fetch
    bounds, ``max_records=--raw-batch``, 500 like the source) → ``getmany`` → per record
    ``orjson.loads`` + ``orjson.dumps`` + ``await producer.send()`` (``acks="all"``,
    ``enable_idempotence=True``, ``linger_ms=5``), then ``gather`` of the batch's futures; the
    processed positions are committed every ~1 s and at the end. Done when N sends are acknowledged.
(b) reflexd, in a process of its own (``bench/peers/reflexd_job.py``, this interpreter, ``PYTHONPATH`` = the
    checkout; its CPU seconds and RSS are its own): the real :class:`daemon.supervisor.Daemon` from a config
    file the bench writes (``http: null``): ``kafka``
    source (same topic, fresh group, default queue: 10,000 events, block) → rule ``every`` with no
    ``where`` → ``kafka`` tool (``acks=all``, idempotent, ``linger_ms: 5``, its defaults otherwise:
    ``concurrency`` 1,024 calls in flight handed to the producer in batches of up to ``max_batch``
    256, ``max_pending`` 1,000; ``--concurrency`` sets it) with args ``{id: "{data.id}", sym:
    ..., pad: "{data.pad}"}``. The tool also adds its ``reflexd-call-id`` header (~40 bytes) to every
    record; the raw loop sends no header. The invocation journal is on, as in a default config
    (``--journal off`` turns it off), with ``state_path`` in a fresh temp dir per run: a shared one
    would deduplicate every call of a later run on the same input. Done when
    ``daemon.runner.stats("out").succeeded`` reaches N (polled every 10 ms in the job, so the end is at
    most ~10 ms late: < 0.3 % of a run). ``--compare DIR`` also runs the daemon of another checkout (the
    same job script) as ``base-on`` / ``base-off``: before and after in one interleaved run.

Variants and peers (issue 16): every system keeps ``id % 100 < kept`` of the records (``--kept 10,100``, each
variant measured on its own; reflexd's rule gets ``where: "data.id % 100 < 10"``) and writes only those;
``--journal both`` (default) runs reflexd with the journal on and off as two systems; ``--peers quix,bytewax``
adds (c) Quix Streams and Bytewax running ``bench/peers/<name>_job.py`` in ``.bench-venvs/<name>`` (``make
bench-peers``), the same job on the same topic, their output counted. Each round runs every system once, the
order rotated by one per round; the summary prints medians, ratios, CPU seconds per 100k input records and RSS
at the end (each system's own process; for (a) the bench process's).

Time = first record returned by the consumer → N-th acknowledgement (for (b) the first record is
seen by polling ``source.stats.received`` every 1 ms). Rate = N / time. Each run also prints the
CPU seconds of this process, the part of them spent in Python's cyclic garbage collector, and
the broker's CPU seconds; and the time from the client's start (producer + consumer start,
group join). After each run the output topic must
hold exactly N records and the group's committed offsets must sum to N (checked: anything else
fails the run), so both sides really did at-least-once work with nothing lost or duplicated.

Usage::

    .venv/bin/python bench/kafka_pipeline.py [--n 200000] [--runs 3] [--bootstrap host:port]
                                             [--concurrency N] [--raw-batch 500] [--journal on|off|both]
                                             [--kept 10,100] [--peers quix,bytewax|all] [--broker-pid PID]
                                             [--compare DIR] [--uvloop] [--profile] [--profile-out FILE]
                                             [--strict]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import os
import platform
import pstats
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiokafka
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from benchlib import GcClock, rss_mb, run_loop, uvloop_available

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the broker harness lives in tests/, which is not an installed package
    sys.path.insert(0, str(ROOT))

from tests.kafka_broker import (  # noqa: E402
    KafkaBroker,
    create_topic_on,
    delete_topics_on,
    kafka_version,
    unique_name,
    wait_for_metadata,
)
from tests.kafka_ledger import committed_total, end_offsets_total  # noqa: E402

T = TypeVar("T")

PARTITIONS = 4
RECORD_BYTES = 100
RAW_COMMIT_INTERVAL = 1.0
RUN_TIMEOUT = 180.0
WARMUP_N = 20_000
PEER_POLL_SECONDS = 0.01
PEER_START_TIMEOUT = 60.0
PEERS = ("quix", "bytewax")
PEER_VENVS = ROOT / ".bench-venvs"
PEER_SCRIPTS = Path(__file__).resolve().parent / "peers"
JOB = PEER_SCRIPTS / "reflexd_job.py"  # reflexd's side, run with this interpreter
TOOL = "out"
SOURCE = "in"


# -- records -------------------------------------------------------------------------------------


def input_record(i: int) -> bytes:
    """A JSON trade-like record padded to exactly RECORD_BYTES bytes."""
    head = {"id": i, "sym": "BTCUSDT", "p": "65000.12", "q": "0.01234", "pad": ""}
    pad = RECORD_BYTES - len(orjson.dumps(head))
    return orjson.dumps({**head, "pad": "x" * max(0, pad)})


def is_kept(i: int, kept: int) -> bool:
    """The filter every system applies: keep ``kept`` % of the records (``id % 100 < kept``)."""
    return i % 100 < kept


def kept_count(n: int, kept: int) -> int:
    return sum(1 for i in range(n) if is_kept(i, kept))


def output_record(d: dict[str, Any]) -> bytes:
    """What both sides write per record (the reflexd tool renders the same dict)."""
    return orjson.dumps({"id": d["id"], "sym": d["sym"], "p": d["p"], "q": d["q"], "pad": d["pad"]})


async def prefill(bootstrap: str, topic: str, n: int) -> float:
    """Write ``n`` input records round-robin over the partitions (acks=all); return the seconds it took."""
    t0 = time.perf_counter()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    try:
        futures: list[asyncio.Future[Any]] = []
        for i in range(n):
            futures.append(await producer.send(topic, input_record(i), partition=i % PARTITIONS))
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - t0


# -- CPU accounting --------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of another process (the broker JVM), from /proc; None if unknown."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


gc.callbacks.append(GcClock.callback)


@dataclass
class CpuMeter:
    broker_pid: int | None
    client0: float = 0.0
    broker0: float | None = None
    gc0: float = 0.0

    def start(self) -> None:
        self.client0 = time.process_time()
        self.broker0 = proc_cpu_seconds(self.broker_pid)
        self.gc0 = GcClock.total

    def read(self) -> tuple[float, float | None, float]:
        """CPU seconds of this process, of the broker (None if unknown), seconds spent in the GC."""
        client = time.process_time() - self.client0
        now = proc_cpu_seconds(self.broker_pid)
        broker = None if now is None or self.broker0 is None else now - self.broker0
        return client, broker, GcClock.total - self.gc0


# -- results -------------------------------------------------------------------------------------


@dataclass
class RunResult:
    n: int
    seconds: float  # first record returned by the consumer → N-th acknowledgement
    from_start: float  # client start → N-th acknowledgement
    client_cpu: float  # CPU seconds of this process from client start to the N-th ack
    broker_cpu: float | None  # CPU seconds of the broker JVM over the same span
    gc_seconds: float | None  # of client_cpu, time in the cyclic garbage collector (None: a peer)
    info: str
    rss: float | None = None  # MiB resident at the N-th acknowledgement (client process)

    @property
    def rate(self) -> float:
        """Input records per second (every system reads all N; the filter decides what it writes)."""
        return self.n / self.seconds

    @property
    def cpu_per_100k(self) -> float:
        return self.client_cpu / self.n * 100_000

    def describe(self) -> str:
        broker = "?" if self.broker_cpu is None else f"{self.broker_cpu:.1f}"
        gc_part = "" if self.gc_seconds is None else f" (gc {self.gc_seconds:.2f})"
        rss = "?" if self.rss is None else f"{self.rss:.0f} MB"
        return (
            f"{self.rate:>8,.0f} rec/s ({self.seconds:.2f} s; {self.from_start:.2f} s from start; "
            f"cpu client {self.client_cpu:.2f} s = {self.cpu_per_100k:.2f} s/100k{gc_part}, rss {rss}, "
            f"broker {broker} s{self.info})"
        )


async def verify(
    bootstrap: str, src: str, out: str, group: str, n: int, expected: int, commits: bool = True
) -> None:
    """The output topic holds exactly ``expected`` records and (``commits``) the group committed all ``n``."""
    written = await end_offsets_total(bootstrap, out, PARTITIONS)
    committed = await committed_total(bootstrap, group, src) if commits else n
    if written != expected or committed != n:
        raise RuntimeError(
            f"run not clean: output holds {written} records (want {expected}), "
            f"group committed {committed} (want {n})"
        )


# -- (a) raw loop --------------------------------------------------------------------------------


async def raw_run(bootstrap: str, src: str, n: int, kept: int, batch_size: int, cpu: CpuMeter) -> RunResult:
    out = await create_topic_on(bootstrap, unique_name("bench-out-raw"), PARTITIONS)
    group = unique_name("bench-raw")
    clock = time.perf_counter
    cpu.start()
    t_start = clock()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5, client_id="bench-raw"
    )
    consumer = AIOKafkaConsumer(
        src,
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id="bench-raw",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=batch_size,
        fetch_max_bytes=16 << 20,
        max_partition_fetch_bytes=1 << 20,
    )
    await producer.start()
    await consumer.start()
    loads, send, gather = orjson.loads, producer.send, asyncio.gather
    positions: dict[TopicPartition, int] = {}
    done = 0
    commits = 0
    t_first: float | None = None
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            next_commit = clock() + RAW_COMMIT_INTERVAL
            while done < n:
                got = await consumer.getmany(timeout_ms=100, max_records=batch_size)
                if not got:
                    continue
                if t_first is None:
                    t_first = clock()
                futures = []
                for tp, records in got.items():
                    for r in records:
                        d = loads(r.value)
                        if d["id"] % 100 < kept:
                            futures.append(await send(out, output_record(d)))
                    positions[tp] = records[-1].offset + 1
                    done += len(records)
                await gather(*futures)
                if clock() >= next_commit:
                    await consumer.commit(positions)
                    commits += 1
                    next_commit = clock() + RAW_COMMIT_INTERVAL
            t_end = clock()
            client_cpu, broker_cpu, gc_seconds = cpu.read()
            rss = rss_mb()
            await consumer.commit(positions)
            commits += 1
    finally:
        await consumer.stop()
        await producer.stop()
    assert t_first is not None
    await verify(bootstrap, src, out, group, n, kept_count(n, kept))
    await delete_topics_on(bootstrap, [out])
    return RunResult(
        n,
        t_end - t_first,
        t_end - t_start,
        client_cpu,
        broker_cpu,
        gc_seconds,
        f"; batch {batch_size}, commits {commits}",
        rss,
    )


# -- (b) reflexd ---------------------------------------------------------------------------------


def daemon_config(
    bootstrap: str,
    src: str,
    out: str,
    group: str,
    concurrency: int | None,
    state_path: Path,
    journal: bool,
    max_rows: int | None = None,
    kept: int = 100,
) -> str:
    tuning = "" if concurrency is None else f"\n    concurrency: {concurrency}"
    where = "" if kept >= 100 else f'\n    where: "data.id % 100 < {kept}"'
    rows = "" if max_rows is None else f", max_rows: {max_rows}"
    return f"""
daemon:
  log_level: warning
  http: null
  shutdown_timeout_seconds: 30
  state_path: "{state_path}"
  journal: {{enabled: {str(journal).lower()}{rows}}}
sources:
  {SOURCE}:
    type: kafka
    bootstrap_servers: "{bootstrap}"
    topics: [{src}]
    group_id: {group}
tools:
  {TOOL}:
    type: kafka
    bootstrap_servers: "{bootstrap}"
    topic: {out}
    linger_ms: 5{tuning}
rules:
  every:
    from: {SOURCE}{where}
    then:
      - tool: {TOOL}
        args:
          {{id: "{{data.id}}", sym: "{{data.sym}}", p: "{{data.p}}", q: "{{data.q}}", pad: "{{data.pad}}"}}
"""


async def reflexd_run(
    bootstrap: str,
    src: str,
    n: int,
    args: argparse.Namespace,
    cpu: CpuMeter,
    profile_out: str | None = None,
    *,
    journal: bool = True,
    kept: int = 100,
    root: Path = ROOT,
) -> RunResult:
    """Run reflexd in a process of its own (``bench/peers/reflexd_job.py``, this interpreter) and check
    its output: N records written, the group's commits summing to N, journal on: N succeeded rows.
    ``root``: the checkout whose reflexd runs (``--compare``: another one, with this job script)."""
    out = await create_topic_on(bootstrap, unique_name("bench-out-reflexd"), PARTITIONS)
    group = unique_name("bench-reflexd")
    concurrency: int | None = args.concurrency
    expected = kept_count(n, kept)
    with tempfile.TemporaryDirectory(prefix="reflexd-bench-state-") as state_dir:
        state_path = Path(state_dir) / "reflexd.db"
        text = daemon_config(bootstrap, src, out, group, concurrency, state_path, journal, kept=kept)
        config_path = Path(state_dir) / "reflexd.yaml"
        config_path.write_text(text)
        extra = ["--profile-out", profile_out] if profile_out else []
        if args.uvloop and uvloop_available():
            extra.append("--uvloop")
        argv = [str(JOB), str(config_path), str(expected), *extra]
        result = await _job_run(argv, cpu.broker_pid, n, "reflexd", root)
        await verify(bootstrap, src, out, group, n, expected)
        await delete_topics_on(bootstrap, [out])
        if journal:
            with contextlib.closing(sqlite3.connect(state_path)) as db:
                # a batch row (daemon.state.batch_calls) counts its calls; imported here, not at the
                # top: the raw loop's RSS is this process's
                from daemon.state import ROW_CALLS_SQL

                query = f"SELECT COALESCE(SUM({ROW_CALLS_SQL}), 0) FROM invocations"
                (rows,) = db.execute(query + " WHERE outcome = 'succeeded'").fetchone()
            if rows != expected:
                raise RuntimeError(f"the journal holds {rows} succeeded invocations, want {expected}")
        return result


async def _job_run(argv: list[str], broker_pid: int | None, n: int, name: str, root: Path) -> RunResult:
    """Run reflexd's job script and read its READY / FIRST / END / STATUS lines (see the script)."""
    clock = time.perf_counter
    t_start = clock()
    env = {**os.environ, "PYTHONPATH": str(root)}
    with tempfile.TemporaryFile() as errors:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *argv, stdout=asyncio.subprocess.PIPE, stderr=errors, env=env
        )
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(RUN_TIMEOUT):
                lines: dict[str, list[str]] = {}
                broker0 = broker_now = None
                while line := await proc.stdout.readline():
                    word, _, rest = line.decode().strip().partition(" ")
                    lines[word] = [rest] if word == "STATUS" else rest.split()
                    if word == "READY":
                        broker0 = proc_cpu_seconds(broker_pid)
                    elif word == "END":
                        broker_now = proc_cpu_seconds(broker_pid)
                code = await proc.wait()
            if code != 0 or "END" not in lines or "STATUS" not in lines:
                raise RuntimeError(f"{name} job exited {code}: {lines.get('STATUS')}")
        except BaseException:
            errors.seek(0)
            tail = errors.read()[-3000:].decode(errors="replace")
            print(f"[{name}] stderr tail:\n{tail}", file=sys.stderr)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
    t_first = float(lines["FIRST"][0])
    t_end_s, cpu_s, gc_s, rss_s, backlog = lines["END"]
    status = orjson.loads(lines["STATUS"][0])
    broker_cpu = None if broker_now is None or broker0 is None else broker_now - broker0
    info = (
        f"; journal backlog at the end {backlog}, concurrency {status['concurrency']}, "
        f"pauses {status['pauses']}, read waits {status['read_waits']}, commits {status['commits']}, "
        f"queue high water {status['high_water']}"
    )
    t_end = float(t_end_s)
    return RunResult(
        n, t_end - t_first, t_end - t_start, float(cpu_s), broker_cpu, float(gc_s), info, float(rss_s)
    )


# -- (c) peers, each in its own virtualenv -------------------------------------------------------


def peer_python(name: str) -> Path:
    return PEER_VENVS / name / "bin" / "python"


def proc_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def peer_run(
    name: str, bootstrap: str, src: str, n: int, kept: int, broker_pid: int | None
) -> RunResult:
    """Run ``bench/peers/<name>_job.py`` in ``.bench-venvs/<name>``; done when the output topic is complete.

    Time = the peer's first record (``FIRST`` stamp, ``time.perf_counter`` is system-wide monotonic) →
    the output topic's end offsets reach the expected count (polled every 10 ms from this process, with
    acks=all the end offset only covers fully replicated records). CPU = the peer process's CPU (all
    threads) from its ``READY`` line (after imports) to that end; RSS = its VmRSS then.
    """
    out = await create_topic_on(bootstrap, unique_name(f"bench-out-{name}"), PARTITIONS)
    group = unique_name(f"bench-{name}")
    expected = kept_count(n, kept)
    clock = time.perf_counter
    t_start = clock()
    script = PEER_SCRIPTS / f"{name}_job.py"
    tps = [TopicPartition(out, p) for p in range(PARTITIONS)]
    with tempfile.TemporaryFile() as errors:
        proc = await asyncio.create_subprocess_exec(
            str(peer_python(name)),
            str(script),
            bootstrap,
            src,
            out,
            group,
            str(kept),
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
        )
        assert proc.stdout is not None
        watcher = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await watcher.start()
        try:
            async with asyncio.timeout(RUN_TIMEOUT):
                while (line := await proc.stdout.readline()) and line.strip() != b"READY":
                    pass
                if not line:
                    raise RuntimeError(f"peer {name} exited before READY")
                cpu0 = proc_cpu_seconds(proc.pid) or 0.0
                broker0 = proc_cpu_seconds(broker_pid)
                line = await proc.stdout.readline()
                if not line.startswith(b"FIRST "):
                    raise RuntimeError(f"peer {name}: expected FIRST, got {line!r}")
                t_first = float(line.split()[1])
                while True:
                    written = sum((await watcher.end_offsets(tps)).values())
                    if written >= expected:
                        break
                    if proc.returncode is not None:
                        raise RuntimeError(f"peer {name} exited ({proc.returncode}) at {written}/{expected}")
                    await asyncio.sleep(PEER_POLL_SECONDS)
                t_end = clock()
                client_cpu = (proc_cpu_seconds(proc.pid) or 0.0) - cpu0
                broker_now = proc_cpu_seconds(broker_pid)
                broker_cpu = None if broker_now is None or broker0 is None else broker_now - broker0
                rss = proc_rss_mb(proc.pid)
        except BaseException:
            errors.seek(0)
            tail = errors.read()[-3000:].decode(errors="replace")
            print(f"[{name}] stderr tail:\n{tail}", file=sys.stderr)
            raise
        finally:
            await watcher.stop()
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)  # Quix commits its checkpoint on a graceful stop
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
    # Quix commits consumer-group offsets (checked, after its graceful stop); Bytewax keeps its
    # positions in its own recovery store, which this job does not configure (nothing to check).
    await verify(bootstrap, src, out, group, n, expected, commits=name == "quix")
    await delete_topics_on(bootstrap, [out])
    return RunResult(n, t_end - t_first, t_end - t_start, client_cpu, broker_cpu, None, "", rss)


# -- main ----------------------------------------------------------------------------------------


async def run_system(
    system: str,
    bootstrap: str,
    src: str,
    n: int,
    kept: int,
    args: argparse.Namespace,
    cpu: CpuMeter,
) -> RunResult:
    if system == "raw":
        return await raw_run(bootstrap, src, n, kept, args.raw_batch, cpu)
    if system.startswith(("reflexd-", "base-")):
        on = system.endswith("-on")
        root = args.compare if system.startswith("base-") else ROOT
        return await reflexd_run(bootstrap, src, n, args, cpu, journal=on, kept=kept, root=root)
    return await peer_run(system, bootstrap, src, n, kept, cpu.broker_pid)


LABELS = {
    "raw": "raw aiokafka loop",
    "reflexd-on": "reflexd, journal on",
    "reflexd-off": "reflexd, journal off",
    "base-on": "baseline, journal on",
    "base-off": "baseline, journal off",
    "quix": "Quix Streams",
    "bytewax": "Bytewax",
}


async def measure(args: argparse.Namespace, bootstrap: str, broker_pid: int | None) -> int:
    await wait_for_metadata(bootstrap, 30)
    n = args.n
    cpu = CpuMeter(broker_pid)
    created: list[str] = []
    systems: list[str] = ["raw"]
    if args.journal in ("on", "both"):
        systems.append("reflexd-on")
        if args.compare:
            systems.append("base-on")
    if args.journal in ("off", "both"):
        systems.append("reflexd-off")
        if args.compare:
            systems.append("base-off")
    for name in args.peers:
        if peer_python(name).exists():
            systems.append(name)
        else:
            print(f"peer {name} skipped: {peer_python(name)} not found (run `make bench-peers`)")
    code = 0
    try:
        src = await create_topic_on(bootstrap, unique_name("bench-in"), PARTITIONS)
        created.append(src)
        warm_n = min(n, WARMUP_N)
        warm = await create_topic_on(bootstrap, unique_name("bench-warm"), PARTITIONS)
        created.append(warm)
        took = await prefill(bootstrap, src, n)
        took += await prefill(bootstrap, warm, warm_n)
        print(
            f"pre-filled {n:,} records of {len(input_record(n - 1))} bytes into {PARTITIONS} partitions "
            f"(+ {warm_n:,} for the warm-up) in {took:.1f} s"
        )

        if args.profile:
            with tempfile.TemporaryDirectory(prefix="reflexd-bench-profile-") as tmp:
                out_file = args.profile_out or str(Path(tmp) / "reflexd.pstats")
                on = args.journal != "off"  # --journal off: profile reflexd without its journal
                res = await reflexd_run(
                    bootstrap, src, n, args, cpu, out_file, journal=on, kept=args.kept[-1]
                )
                rate = f"{res.rate:,.0f} rec/s"
                print(f"[profile] reflexd under cProfile: {rate} (inflated cost, see ranking only)")
                buf = io.StringIO()
                pstats.Stats(out_file, stream=buf).sort_stats("tottime").print_stats(35)
                print(buf.getvalue())
                if args.profile_out:
                    print(f"[profile] pstats written to {args.profile_out}")

        summary: list[str] = []
        for kept in args.kept:
            expected = kept_count(n, kept)
            print(
                f"\n== {kept} % kept ({expected:,} of {n:,} records written): {', '.join(systems)}; "
                f"{args.runs} rounds, the order rotated each round"
            )
            for system in systems:  # warm-up (not counted): imports, the broker's JIT, first connections
                await run_system(system, bootstrap, warm, warm_n, kept, args, cpu)
            results: dict[str, list[RunResult]] = {s: [] for s in systems}
            for i in range(args.runs):
                order = systems[i % len(systems) :] + systems[: i % len(systems)]
                print(f"  round {i + 1}: {' → '.join(order)}")
                for system in order:
                    res = await run_system(system, bootstrap, src, n, kept, args, cpu)
                    results[system].append(res)
                    print(f"    {system:<12} {res.describe()}")
            raw_med = statistics.median(r.rate for r in results["raw"])
            summary.append(f"{kept} % kept, medians of {args.runs} rounds (rates: every round's, in order):")
            for system in systems:
                runs = results[system]
                med = statistics.median(r.rate for r in runs)
                cpu_med = statistics.median(r.cpu_per_100k for r in runs)
                rss_known = [r.rss for r in runs if r.rss is not None]
                rss = f"{max(rss_known):.0f} MB" if rss_known else "?"
                each = ", ".join(f"{r.rate / 1000:.1f}k" for r in runs)
                summary.append(
                    f"  {LABELS[system]:<22} {med / 1000:>7.1f}k rec/s  x{med / raw_med:.2f} of raw  "
                    f"CPU {cpu_med:.2f} s/100k  RSS max {rss}  ({each})"
                )
            if "reflexd-on" in results and "reflexd-off" in results:
                on = statistics.median(r.rate for r in results["reflexd-on"])
                off = statistics.median(r.rate for r in results["reflexd-off"])
                summary.append(f"  journal on / off = {on / off:.2f}")
            for peer in PEERS:
                if peer in results:
                    theirs = statistics.median(r.rate for r in results[peer])
                    for mine in ("reflexd-on", "reflexd-off"):
                        if mine in results:
                            ours = statistics.median(r.rate for r in results[mine])
                            summary.append(f"  {mine} / {peer} = {ours / theirs:.2f}")
            first = "reflexd-on" if "reflexd-on" in results else "reflexd-off"
            ratios = [b.rate / a.rate for a, b in zip(results["raw"], results[first], strict=True)]
            med_ratio = statistics.median(ratios)
            if args.strict and kept == 100 and med_ratio < 0.5:
                code = 1
        print("\n" + "\n".join(summary))
        return code
    finally:
        if created:
            await delete_topics_on(bootstrap, created)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200_000, help="records per run")
    parser.add_argument("--runs", type=int, default=3, help="runs of (a) and (b) each")
    parser.add_argument(
        "--bootstrap", help="host:port of a running broker (default: start one in a temp dir)"
    )
    parser.add_argument(
        "--concurrency", type=int, help="kafka tool concurrency in (b) (default: the tool's default)"
    )
    parser.add_argument("--raw-batch", type=int, default=500, help="max records per getmany in (a)")
    parser.add_argument(
        "--journal",
        choices=("on", "off", "both"),
        default="both",
        help="reflexd's invocation journal: on (as configs default; SQLite in a temp dir per run), off, "
        "or both as two systems (default)",
    )
    parser.add_argument(
        "--kept",
        default="10,100",
        help="comma-separated percentages of records the filter keeps (default 10,100)",
    )
    parser.add_argument(
        "--peers",
        default="",
        help="comma-separated peers to run too: quix, bytewax, or all (each needs `make bench-peers`)",
    )
    parser.add_argument(
        "--broker-pid", type=int, help="with --bootstrap: the broker's pid, to measure its CPU"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        help="another checkout of reflexd (e.g. a worktree of main): also run its daemon, with this job "
        "script, as the systems base-on / base-off, interleaved with the others",
    )
    parser.add_argument("--uvloop", action="store_true", help="use uvloop if importable")
    parser.add_argument("--profile", action="store_true", help="also run (b) once under cProfile first")
    parser.add_argument("--profile-out", help="with --profile: also dump the pstats to this file")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 if reflexd/raw at 100 %% kept is below 0.5"
    )
    args = parser.parse_args(argv)
    try:
        args.kept = [int(k) for k in args.kept.split(",") if k.strip()]
    except ValueError:
        parser.error("--kept takes integers, e.g. 10,100")
    if not args.kept or any(not 0 < k <= 100 for k in args.kept):
        parser.error("--kept needs percentages in 1..100")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    args.peers = list(PEERS) if peers == ["all"] else peers
    if any(p not in PEERS for p in args.peers):
        parser.error(f"--peers takes {', '.join(PEERS)} or all")
    if args.n < 1 or args.runs < 1 or (args.concurrency or 1) < 1 or args.raw_batch < 1:
        parser.error("need --n, --runs, --concurrency and --raw-batch >= 1")

    use_uvloop = bool(args.uvloop) and uvloop_available()
    loop_name = "uvloop" if use_uvloop else "asyncio (default)"
    if args.uvloop and not use_uvloop:
        loop_name += " [--uvloop given but uvloop is not importable]"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"python {platform.python_version()}, aiokafka {aiokafka.__version__}, orjson {orjson.__version__}, "
        f"loop: {loop_name}; {os.cpu_count()} CPUs, load average {load} at start"
    )
    started = time.monotonic()
    code: int
    if args.bootstrap:
        known = "its CPU is not measured" if args.broker_pid is None else f"pid {args.broker_pid}"
        print(f"broker: {args.bootstrap} (external; {known})")
        code = run_loop(measure(args, args.bootstrap, args.broker_pid), use_uvloop)
    else:
        with tempfile.TemporaryDirectory(prefix="reflexd-bench-kafka-") as tmp:
            broker = KafkaBroker(Path(tmp))
            broker.start()
            try:
                print(
                    f"broker: Kafka {kafka_version()} single-node KRaft on {broker.bootstrap} "
                    f"(pid {broker.pid}, started in {broker.timings.get('start', 0.0):.1f} s); it SHARES the "
                    "CPUs with this process, so the rates are for client + broker together"
                )
                code = run_loop(measure(args, broker.bootstrap, broker.pid), use_uvloop)
            finally:
                broker.stop()
    print(f"total wall time {time.monotonic() - started:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
