"""``reflexd record`` on a Kafka source takes nothing from the daemon, against the real broker.

record reads without a consumer group (it assigns every partition itself) and never commits, from
``--from latest|earliest|<time>``; a daemon of the configured group keeps its partitions and its offsets.
Also: a daemon starting against a fresh broker logs no ERROR (aiokafka's transient
``GroupCoordinatorNotAvailableError`` while the broker creates ``__consumer_offsets``).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from daemon.cli import parse_start
from tests.conftest import KafkaBrokerFactory, KafkaTopicFactory
from tests.daemon.test_kafka_delivery import ROOT, spawn, wait_output, write_config
from tests.kafka_broker import free_port, unique_name, wait_for_metadata
from tests.kafka_ledger import produce_ids

N = 400


async def run_record(config: Path, out: Path, *args: str, timeout: float = 60) -> tuple[int, str]:
    """``reflexd record in --out OUT ARGS`` as a subprocess; its exit code and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon.cli", "record", "-c", str(config), "in", "--out", str(out), *args,
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def recorded_ids(path: Path) -> list[int]:
    return sorted(int(orjson.loads(line)["data"]["id"]) for line in path.read_bytes().splitlines() if line)


async def committed(broker: Any, group: str) -> dict[Any, int]:
    return dict(await broker.committed_offsets(group))


def log_has(path: Path, needle: bytes) -> bool:
    return path.exists() and needle in path.read_bytes()


def log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


async def wait_log(path: Path, needle: bytes, timeout: float = 60) -> None:
    for _ in range(int(timeout / 0.1)):
        if log_has(path, needle):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{needle!r} never appeared in {path.name}:\n{log_tail(path)}")


async def test_record_from_earliest_commits_nothing_and_the_daemon_still_gets_every_record(
    tmp_path: Path, kafka_broker: Any, kafka_topic: KafkaTopicFactory
) -> None:
    """record --from earliest captures all N records, leaves the group with no committed offset, and a daemon of
    that group then processes all N."""
    bootstrap = kafka_broker.bootstrap
    src, out = await kafka_topic(4), await kafka_topic(4, prefix="out")
    group = unique_name("g")
    config = write_config(tmp_path / "c.yaml", bootstrap, src, out, group)
    await produce_ids(bootstrap, src, range(N))
    code, err = await run_record(config, tmp_path / "rec.jsonl", "--from", "earliest", "--duration", "6")
    assert code == 0, err
    assert recorded_ids(tmp_path / "rec.jsonl") == list(range(N))
    assert await committed(kafka_broker, group) == {}, "record committed offsets for the daemon's group"
    proc = spawn(config, tmp_path / "daemon.log")
    try:
        ledger = await wait_output(bootstrap, out, N, timeout=90)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert ledger.lost(range(N)) == []


async def test_record_beside_a_running_daemon_takes_no_partition(
    tmp_path: Path, kafka_broker: Any, kafka_topic: KafkaTopicFactory
) -> None:
    """A record (default --from latest) running beside a daemon of the same group causes no rebalance: the
    daemon keeps all 4 partitions and processes every record, and the recording holds them all too."""
    bootstrap = kafka_broker.bootstrap
    src, out = await kafka_topic(4), await kafka_topic(4, prefix="out")
    group = unique_name("g")
    config = write_config(tmp_path / "c.yaml", bootstrap, src, out, group)
    log = tmp_path / "daemon.log"
    proc = spawn(config, log)
    try:
        await wait_log(log, b'"partitions":4')
        recording = asyncio.create_task(run_record(config, tmp_path / "rec.jsonl", "--duration", "8"))
        await asyncio.sleep(4)  # the recorder is up (python start + consumer start) before anything is produced
        await produce_ids(bootstrap, src, range(N))
        ledger = await wait_output(bootstrap, out, N, timeout=90)
        code, err = await recording
        assert code == 0, err
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_bytes()
    assert b"partitions revoked" not in text, "the recorder joined the group: the daemon lost partitions"
    assert text.count(b"partitions assigned") == 1
    assert ledger.lost(range(N)) == []
    assert recorded_ids(tmp_path / "rec.jsonl") == list(range(N))


async def test_record_from_a_time_starts_at_the_first_record_at_or_after_it(
    tmp_path: Path, kafka_broker: Any, kafka_topic: KafkaTopicFactory
) -> None:
    """--from <ISO-8601> and --from <epoch ms> seek each partition with offsets_for_times: older records are
    not recorded."""
    bootstrap = kafka_broker.bootstrap
    src = await kafka_topic(2)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        # ids 0..19 an hour ago, 20..39 ten minutes ago: recent, so the broker's retention (7 days, judged by
        # record time) cannot delete them while the test runs
        now_ms = int(time.time() * 1000)
        for i in range(40):
            ts = now_ms - 3_600_000 + i if i < 20 else now_ms - 600_000 + i
            await producer.send_and_wait(src, orjson.dumps({"id": i}), partition=i % 2, timestamp_ms=ts)
    finally:
        await producer.stop()
    config = write_config(tmp_path / "c.yaml", bootstrap, src, "unused", unique_name("g"))
    between = now_ms - 1_800_000
    iso = datetime.datetime.fromtimestamp(between / 1000, datetime.UTC).isoformat()
    for start in (iso, str(between)):
        code, err = await run_record(config, tmp_path / "rec.jsonl", "--from", start, "--duration", "5")
        assert code == 0, err
        assert recorded_ids(tmp_path / "rec.jsonl") == list(range(20, 40)), start


def test_parse_start_accepts_words_times_and_epoch_ms_and_refuses_a_time_without_zone() -> None:
    """--from: latest/earliest, epoch ms and zoned ISO-8601 are understood; a naive time or a typo is refused."""
    assert parse_start(None) is None
    assert parse_start("Earliest") == "earliest"
    assert parse_start("latest") == "latest"
    assert parse_start("1700000000000") == 1_700_000_000_000
    assert parse_start("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert parse_start("2023-11-14T23:13:20+01:00") == 1_700_000_000_000
    with pytest.raises(ValueError, match="zone"):
        parse_start("2023-11-14T22:13:20")
    with pytest.raises(ValueError, match="expected latest, earliest"):
        parse_start("yesterday")


async def test_record_from_on_a_live_feed_source_is_refused(tmp_path: Path) -> None:
    """--from earliest on a source without positions (websocket) is an error, not silently ignored."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "sources:\n  in: {type: websocket, url: 'ws://127.0.0.1:9/'}\n"
        "tools:\n  t: {type: log}\n"
        "rules:\n  r: {from: in, then: [{tool: t}]}\n"
    )
    code, err = await run_record(config, tmp_path / "rec.jsonl", "--from", "earliest", "--duration", "1")
    assert code == 1, err
    assert "cannot start at 'earliest'" in err


async def test_daemon_on_a_fresh_broker_logs_no_error(
    tmp_path: Path, kafka_broker_factory: KafkaBrokerFactory
) -> None:
    """A daemon started against a freshly formatted broker (no __consumer_offsets yet: aiokafka's
    GroupCoordinatorNotAvailableError while the broker creates it) logs no ERROR record and gets its partitions."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("needs a broker of its own")
    broker = kafka_broker_factory()
    src = await broker.create_topic(partitions=2)
    config = write_config(tmp_path / "c.yaml", broker.bootstrap, src, "unused", unique_name("g"))
    log = tmp_path / "daemon.log"
    proc = spawn(config, log)
    try:
        await wait_log(log, b"partitions assigned")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records = [orjson.loads(line) for line in log.read_bytes().splitlines() if line.startswith(b"{")]
    errors = [r for r in records if r["level"] in ("error", "critical")]
    assert errors == [], errors


def test_known_transient_is_debug_at_first_and_a_warning_once_it_persists() -> None:
    """KnownTransients lowers aiokafka's coordinator-not-available ERROR to DEBUG, lets other ERRORs through
    unchanged, and raises a WARNING once the condition has lasted persist_seconds."""
    from aiokafka.errors import GroupCoordinatorNotAvailableError

    from daemon.logs import KnownTransients

    def record(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("aiokafka.consumer.group_coordinator", logging.ERROR, "x", 1, msg, args, None)

    f = KnownTransients(persist_seconds=0.2)
    first = record("Group Coordinator Request failed: %s", GroupCoordinatorNotAvailableError())
    f.filter(first)
    assert first.levelno == logging.DEBUG
    other = record("Heartbeat failed: %r", ValueError("x"))
    assert f.filter(other) and other.levelno == logging.ERROR
    time.sleep(0.25)
    later = record("Group Coordinator Request failed: %s", GroupCoordinatorNotAvailableError())
    assert f.filter(later)
    assert later.levelno == logging.WARNING and "(for 0 s)" in later.getMessage()


def make_kafka(port: int, controller: int, tmp_path: Path) -> subprocess.Popen[bytes]:
    """`make kafka` on those ports with its data in ``tmp_path``, in a process group of its own."""
    return subprocess.Popen(
        ["make", "-s", "kafka", f"PORT={port}", f"CONTROLLER_PORT={controller}", f"ARGS=--data-dir {tmp_path / 'k'}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(tmp_path / "broker.log").open("wb"), start_new_session=True,
    )


async def test_make_kafka_takes_ports_and_make_kafka_topic_creates_a_topic(tmp_path: Path) -> None:
    """`make kafka PORT= CONTROLLER_PORT=` runs the broker on those ports and `make kafka-topic NAME= PARTITIONS=`
    creates the topic there with that many partitions (auto-create is off); a second run says it exists."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    port, controller = free_port(), free_port()
    broker = make_kafka(port, controller, tmp_path)
    try:
        await wait_for_metadata(f"127.0.0.1:{port}", timeout=90)
        for _ in range(2):
            made = await asyncio.create_subprocess_exec(
                "make", "-s", "kafka-topic", "NAME=orders", "PARTITIONS=4", f"PORT={port}",
                cwd=ROOT, stderr=asyncio.subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(made.communicate(), 60)
            assert made.returncode == 0, err.decode()
        assert "already exists" in err.decode()
        admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
        await admin.start()
        try:
            (described,) = await admin.describe_topics(["orders"])
        finally:
            await admin.close()
        assert described["error_code"] == 0
        assert len(described["partitions"]) == 4
    finally:
        os.killpg(broker.pid, signal.SIGTERM)
        try:
            broker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(broker.pid, signal.SIGKILL)
            broker.wait()
