"""At-least-once from Kafka to tools, with reflexd as a real process: kill -9, SIGTERM, consumer groups.

Every record ``{"id": i}`` triggers one kafka-tool call writing ``{"id": i}`` to an output topic; the
ledger reconciles output against input: lost must be 0, duplicates are counted and bounded by what was
received but not yet committed when the process died.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import KafkaTopicFactory
from tests.kafka_broker import unique_name
from tests.kafka_ledger import Ledger, committed_total, produce_ids, read_output
from tests.streams.test_kafka import COMMIT_ON_RECEIPT_ENV

ROOT = Path(__file__).resolve().parents[2]
N = 20_000


def write_config(
    path: Path,
    bootstrap: str,
    src: str,
    out: str,
    group: str,
    *,
    tool_concurrency: int = 64,
    max_pending: int = 200,
    max_batch: int = 256,
) -> Path:
    path.write_text(
        textwrap.dedent(
            f"""\
            daemon: {{http: null, shutdown_timeout_seconds: 30, log_level: info}}
            sources:
              in:
                type: kafka
                bootstrap_servers: "{bootstrap}"
                topics: [{src}]
                group_id: {group}
                commit_interval_seconds: 0.5
                session_timeout_seconds: 6
                heartbeat_interval_seconds: 1
                queue: {{max_events: 1000}}
            tools:
              out:
                type: kafka
                bootstrap_servers: "{bootstrap}"
                topic: {out}
                concurrency: {tool_concurrency}
                max_pending: {max_pending}
                max_batch: {max_batch}
            rules:
              every: {{from: in, then: [{{tool: out, args: {{id: "{{data.id}}"}}}}]}}
            """
        )
    )
    return path


def spawn(config: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "run", "-c", str(config)],
        cwd=ROOT,
        stdout=out,
        stderr=out,
        env={**os.environ, **(env or {})},
    )


async def wait_output(
    bootstrap: str, out: str, at_least: int, timeout: float = 120, *, settle: float | None = None
) -> Ledger:
    """Poll the output topic until it holds ``at_least`` distinct ids (or, with ``settle``, until it stopped
    growing for that many seconds: a run that loses records never reaches ``at_least``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last, since = -1, loop.time()
    while True:
        ledger = await read_output(bootstrap, out, timeout=5)
        seen = len(ledger.counts)
        if seen >= at_least or loop.time() > deadline:
            return ledger
        if seen != last:
            last, since = seen, loop.time()
        elif settle is not None and loop.time() - since >= settle:
            return ledger
        await asyncio.sleep(0.3)


def log_size(log: Path) -> int:
    return log.stat().st_size if log.exists() else 0


def ready_after(log: Path, since: int) -> bool:
    return b'"msg":"ready"' in log.read_bytes()[since:]


async def wait_ready(log: Path, since: int, timeout: float = 60) -> None:
    """Until the daemon log (every process appends to it) holds a "ready" line after byte ``since`` (its size
    when the last process was spawned): that process is running, its signal handlers installed (a SIGTERM
    during its imports would just kill it). Counting all the ready lines instead would wait forever for a
    process killed before it logged its own."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not ready_after(log, since):
        assert loop.time() < deadline, f"no ready line after byte {since} in {log}"
        await asyncio.sleep(0.05)


async def committed_ahead(bootstrap: str, group: str, src: str, out: str, timeout: float = 30) -> None:
    """Until the group's committed offsets exceed the records written (the output read after the commits)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        committed = await committed_total(bootstrap, group, src)
        written = len((await read_output(bootstrap, out, timeout=5)).counts)
        if committed > written:
            return
        assert loop.time() < deadline, f"committed offsets never ran ahead of the output ({committed} <= {written})"
        await asyncio.sleep(0.05)


async def crash_run(
    tmp_path: Path, bootstrap: str, kafka_topic: KafkaTopicFactory, *, env: dict[str, str] | None = None,
    tool_concurrency: int = 16, n: int = N, settle: float | None = None, max_batch: int = 256,
    ahead: bool = False,
) -> tuple[Ledger, list[int]]:
    """Process ``n`` records, kill -9 the daemon at 1/3 and 2/3 and restart it each time; return the ledger and,
    per kill, how many processed records were not committed yet (the duplicates the kill may cause).

    ``tool_concurrency`` 16 (one batch of 16 calls at a time) keeps the stream flowing for seconds, so both kills
    and the final SIGTERM land on a running daemon (with 64, a fast daemon had written everything before the first
    poll saw 1/3, and the last restart was sent SIGTERM while still importing).

    ``ahead``: kill only once the committed offsets are seen ahead of the output (the control run, whose commits
    on receipt must be caught ahead of the work, however fast or loaded the machine).

    ``settle``: stop waiting once the output has not grown for that long (only for runs expected to lose
    records; a restarted member may wait a whole session timeout for its group to rebalance)."""
    src, out = await kafka_topic(4), await kafka_topic(4, prefix="out")
    group = unique_name("g")
    config = write_config(
        tmp_path / "c.yaml", bootstrap, src, out, group, tool_concurrency=tool_concurrency, max_batch=max_batch
    )
    await produce_ids(bootstrap, src, range(n))
    exposed: list[int] = []
    proc = spawn(config, tmp_path / "daemon.log", env)
    try:
        for k in (1, 2):
            await wait_output(bootstrap, out, k * n // 3)
            if ahead:
                await committed_ahead(bootstrap, group, src, out)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            processed = len((await read_output(bootstrap, out, timeout=10)).counts)
            committed = await committed_total(bootstrap, group, src)
            exposed.append(processed - committed)  # negative: offsets committed ahead of the work
            since = log_size(tmp_path / "daemon.log")
            proc = spawn(config, tmp_path / "daemon.log", env)
        await wait_output(bootstrap, out, n, timeout=180, settle=settle)
        await wait_ready(tmp_path / "daemon.log", since)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return await read_output(bootstrap, out, timeout=20), exposed


async def test_kill_9_twice_loses_nothing(tmp_path: Path, kafka_broker: object, kafka_topic: KafkaTopicFactory) -> None:
    """kill -9 twice while 20,000 records flow, restarting each time → 0 lost; duplicates ≤ what was in flight."""
    bootstrap = kafka_broker.bootstrap  # type: ignore[attr-defined]
    ledger, exposed = await crash_run(tmp_path, bootstrap, kafka_topic)
    lost = ledger.lost(range(N))
    print(f"kill -9 x2: lost={len(lost)} duplicates={ledger.duplicates} uncommitted-at-kill={exposed}")
    assert lost == [], f"lost {len(lost)} records, first: {lost[:20]}"
    assert all(e >= 0 for e in exposed), f"committed offsets ran ahead of the processed records: {exposed}"
    assert ledger.duplicates <= sum(exposed)


async def test_checker_sees_loss_when_offsets_are_committed_on_receipt(
    tmp_path: Path, kafka_broker: object, kafka_topic: KafkaTopicFactory
) -> None:
    """Control run: the same crash test against commit-on-receipt (a test-only switch) must report loss.

    The tool writes one record per acknowledged send (concurrency 1, max_batch 1), so the records received
    and committed run well ahead of those written whenever a kill lands (with batches of 256 a fast daemon
    could write everything it received before the first commit, and lose nothing)."""
    bootstrap = kafka_broker.bootstrap  # type: ignore[attr-defined]
    ledger, _ = await crash_run(
        tmp_path,
        bootstrap,
        kafka_topic,
        env={COMMIT_ON_RECEIPT_ENV: "1"},
        tool_concurrency=1,
        max_batch=1,
        n=4_000,
        settle=15.0,
        ahead=True,
    )
    lost = ledger.lost(range(4_000))
    print(f"control run (commit on receipt): lost={len(lost)}")
    assert len(lost) > 0, "the checker did not see the loss that committing on receipt causes"


async def test_sigterm_commits_what_was_processed_and_restart_duplicates_nothing(
    tmp_path: Path, kafka_broker: object, kafka_topic: KafkaTopicFactory
) -> None:
    """SIGTERM mid-stream → exit 0, committed offsets equal the processed position; a restart then adds 0 duplicates."""
    bootstrap = kafka_broker.bootstrap  # type: ignore[attr-defined]
    src, out = await kafka_topic(4), await kafka_topic(4, prefix="out")
    group = unique_name("g")
    # 16 calls in flight (one batch of 16 at a time) instead of 64: the stream lasts seconds, not a
    # fraction of one, so the SIGTERM below lands mid-stream however fast the daemon gets
    config = write_config(tmp_path / "c.yaml", bootstrap, src, out, group, tool_concurrency=16)
    await produce_ids(bootstrap, src, range(N))
    proc = spawn(config, tmp_path / "daemon.log")
    try:
        await wait_output(bootstrap, out, N // 4)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        stopped = await read_output(bootstrap, out, timeout=10)
        committed = await committed_total(bootstrap, group, src)
        assert len(stopped.counts) < N, "the stream had finished before SIGTERM"
        assert committed == len(stopped.counts) == stopped.total
        since = log_size(tmp_path / "daemon.log")
        proc = spawn(config, tmp_path / "daemon.log")
        final = await wait_output(bootstrap, out, N)
        await wait_ready(tmp_path / "daemon.log", since)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    final = await read_output(bootstrap, out, timeout=20)
    assert final.lost(range(N)) == [] and final.duplicates == 0


async def test_two_instances_share_a_group_and_take_over(
    tmp_path: Path, kafka_broker: object, kafka_topic: KafkaTopicFactory
) -> None:
    """Two reflexd processes in one group split the partitions; stopping one hands its partitions to the other."""
    bootstrap = kafka_broker.bootstrap  # type: ignore[attr-defined]
    src, out = await kafka_topic(4), await kafka_topic(4, prefix="out")
    group = unique_name("g")
    config = write_config(tmp_path / "c.yaml", bootstrap, src, out, group, tool_concurrency=4)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [spawn(config, logs[0]), spawn(config, logs[1])]
    try:
        await asyncio.sleep(1)
        await produce_ids(bootstrap, src, range(N))
        await wait_output(bootstrap, out, N // 3)
        for log in logs:
            assert b'"partitions":2' in log.read_bytes(), f"{log.name} did not get its share of the partitions"
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(timeout=60) == 0
        at_handover = len((await read_output(bootstrap, out, timeout=10)).counts)
        assert at_handover < N, "the stream had finished before the first instance stopped"
        for _ in range(300):
            if b'"partitions":4' in logs[1].read_bytes():
                break
            await asyncio.sleep(0.1)
        ledger = await wait_output(bootstrap, out, N, timeout=180)
        procs[1].send_signal(signal.SIGTERM)
        assert procs[1].wait(timeout=60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert ledger.lost(range(N)) == []
    assert b'"partitions":4' in logs[1].read_bytes(), "the second instance never took over all partitions"
