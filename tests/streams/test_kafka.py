"""The kafka source and tool against a real broker: delivery, backpressure, poison records, broker restart."""

from __future__ import annotations

import asyncio
import textwrap
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from daemon.config import AppConfig, load_config_text
from daemon.registry import builtin_registry
from streams.kafka import COMMIT_ON_RECEIPT_ENV, KafkaSource
from tests.conftest import KafkaTopicFactory, StartDaemon
from tests.kafka_broker import unique_name
from tests.kafka_ledger import committed_total, produce_ids, read_output
from tests.plugins import SLEEPER
from tests.servers import wait_for

__all__ = ["COMMIT_ON_RECEIPT_ENV"]


def pipeline(
    bootstrap: str,
    src: str,
    out: str,
    group: str,
    *,
    where: str = "",
    steps: str = "",
    extra: str = "",
    max_events: int = 1000,
) -> AppConfig:
    text = f"""\
    daemon: {{http: null, shutdown_timeout_seconds: 20}}
    sources:
      in:
        type: kafka
        bootstrap_servers: "{bootstrap}"
        topics: [{src}]
        group_id: {group}
        commit_interval_seconds: 0.2
        queue: {{max_events: {max_events}}}
        {extra}
    tools:
      out: {{type: kafka, bootstrap_servers: "{bootstrap}", topic: {out}, key: "{{key}}"}}
    rules:
      pick:
        from: in
        {f'where: "{where}"' if where else ""}
        {f"steps: {steps}" if steps else ""}
        then: [{{tool: out, args: {{id: "{{data.id}}"}}}}]
    """
    return load_config_text(textwrap.dedent(text), builtin_registry())


async def test_matching_subset_reaches_output_topic(
    kafka_broker: object, kafka_topic: KafkaTopicFactory, run_daemon: StartDaemon
) -> None:
    """10,000 records on 4 partitions → the rule's subset is written to the output topic, none missing."""
    bootstrap = kafka_broker.bootstrap  # type: ignore[attr-defined]
    src, out = await kafka_topic(4), await kafka_topic(4, prefix="out")
    group = unique_name("g")
    await produce_ids(bootstrap, src, range(10_000))
    daemon = await run_daemon(pipeline(bootstrap, src, out, group, where="data.v == 3"))
    expected = {i for i in range(10_000) if i % 10 == 3}
    ledger = await read_output(bootstrap, out, until=len(expected), timeout=90)
    assert ledger.lost(expected) == [] and set(ledger.counts) == expected
    source = daemon.sources["in"]
    assert isinstance(source, KafkaSource)
    await wait_for(lambda: sum(t.committed or 0 for t in source.trackers.values()) == 10_000, within=10)
    await daemon.stop()
    assert await committed_total(bootstrap, group, src) == 10_000


async def slow_consumer(
    run_daemon: StartDaemon, bootstrap: str, src: str, *, records: int, events: int, seconds: float, pending: int
) -> tuple[Any, KafkaSource]:
    """A daemon whose Kafka source (poll interval 3 s) feeds one sleeper tool that runs one call at a time."""
    text = f"""\
    daemon: {{http: null}}
    sources:
      in:
        type: kafka
        bootstrap_servers: "{bootstrap}"
        topics: [{src}]
        group_id: {unique_name("g")}
        max_poll_records: {records}
        max_poll_interval_seconds: 3
        session_timeout_seconds: 6
        heartbeat_interval_seconds: 1
        queue: {{max_events: {events}}}
    tools:
      slow: {{type: sleeper, seconds: {seconds}, concurrency: 1, max_pending: {pending}}}
    rules:
      all: {{from: in, then: [{{tool: slow}}]}}
    """
    registry = builtin_registry().with_specs(SLEEPER)
    daemon = await run_daemon(load_config_text(textwrap.dedent(text), registry))
    source = daemon.sources["in"]
    assert isinstance(source, KafkaSource)
    return daemon, source


async def test_slow_tool_pauses_partitions_without_leaving_the_group(
    kafka_broker: object, kafka_topic: KafkaTopicFactory, run_daemon: StartDaemon
) -> None:
    """A slow tool fills the queue → the source stops reading (fetched records kept); no rebalance; all
    records processed."""
    bootstrap = kafka_broker.bootstrap  # type: ignore[attr-defined]
    src = await kafka_topic(4)
    await produce_ids(bootstrap, src, range(2_000))
    daemon, source = await slow_consumer(run_daemon, bootstrap, src, records=50, events=100, seconds=0.002, pending=10)
    max_depth = 0

    def done() -> bool:
        nonlocal max_depth
        max_depth = max(max_depth, len(source.queue))
        return daemon.runner.stats("slow").succeeded == 2_000

    await wait_for(done, within=60, interval=0.01)
    assert source.waits > 0, "the queue never filled up: the test did not exercise backpressure"
    assert source.rebalances == 0, "the consumer was kicked out of its group"
    assert source.queue.high_water <= 100 and max_depth <= 100
    assert daemon.runner.stats("slow").calls == 2_000


async def test_a_queue_full_for_longer_than_half_the_poll_interval_pauses_and_keeps_the_group(
    kafka_broker: object, kafka_topic: KafkaTopicFactory, run_daemon: StartDaemon
) -> None:
    """A tool stuck for longer than max_poll_interval / 2 with the queue full: the source stops waiting and
    pauses the partitions so it can poll again (no rebalance), and every record is still processed once."""
    bootstrap = kafka_broker.bootstrap  # type: ignore[attr-defined]
    src = await kafka_topic(1)
    await produce_ids(bootstrap, src, range(6))
    daemon, source = await slow_consumer(run_daemon, bootstrap, src, records=1, events=2, seconds=2.0, pending=1)
    await wait_for(lambda: daemon.runner.stats("slow").succeeded == 6, within=40, interval=0.05)
    assert source.pauses > 0, "the queue never stayed full for 1.5 s: the fallback was not exercised"
    assert source.rebalances == 0, "the consumer was kicked out of its group"
    assert daemon.runner.stats("slow").calls == 6


async def test_poison_record_goes_to_dead_letter_topic_and_partition_keeps_flowing(
    kafka_broker: object, kafka_topic: KafkaTopicFactory, run_daemon: StartDaemon
) -> None:
    """An undecodable record lands on the dead-letter topic with error headers; later records still arrive."""
    bootstrap = kafka_broker.bootstrap  # type: ignore[attr-defined]
    src, out, dlq = await kafka_topic(1), await kafka_topic(1, prefix="out"), await kafka_topic(1, prefix="dlq")
    poison = {250, 700}
    await produce_ids(bootstrap, src, range(1_000), poison=poison)
    daemon = await run_daemon(pipeline(bootstrap, src, out, unique_name("g"), extra=f"dead_letter_topic: {dlq}"))
    ledger = await read_output(bootstrap, out, until=998, timeout=60)
    assert ledger.lost(set(range(1_000)) - poison) == []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(dlq, 0)])
        await consumer.seek_to_beginning(TopicPartition(dlq, 0))
        got: list[object] = []
        deadline = time.monotonic() + 30
        while len(got) < 2 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(records)
    finally:
        await consumer.stop()
    assert [r.value for r in got] == [b"{not json", b"{not json"]  # type: ignore[attr-defined]
    headers = dict(got[0].headers)  # type: ignore[attr-defined]
    assert b"JSONDecodeError" in headers["reflexd-error"] and headers["reflexd-topic"] == src.encode()
    assert {int(dict(r.headers)["reflexd-offset"]) for r in got} == poison  # type: ignore[attr-defined]
    assert daemon.sources["in"].stats.decode_errors == 2


async def test_broker_restart_mid_stream_loses_nothing(
    restartable_kafka_broker: object, kafka_topic: KafkaTopicFactory, run_daemon: StartDaemon
) -> None:
    """Stopping the broker mid-stream and starting it again on the same ports and data: reflexd recovers, 0 lost."""
    broker = restartable_kafka_broker
    bootstrap = broker.bootstrap  # type: ignore[attr-defined]
    src, out = await kafka_topic(4), await kafka_topic(4, prefix="out")
    await produce_ids(bootstrap, src, range(10_000))
    cfg = pipeline(bootstrap, src, out, unique_name("g"), max_events=200)
    daemon = await run_daemon(cfg)
    await wait_for(lambda: daemon.runner.stats("out").succeeded >= 1_000, within=60)
    await broker.astop()  # type: ignore[attr-defined]
    assert daemon.runner.stats("out").succeeded < 10_000, "the stream had finished: the restart came too late"
    await asyncio.sleep(2)
    await broker.astart()  # type: ignore[attr-defined]
    ledger = await read_output(bootstrap, out, until=10_000, timeout=120)
    assert ledger.lost(range(10_000)) == []


async def test_a_record_timestamped_half_an_hour_ahead_is_dead_lettered_and_the_window_rule_keeps_firing(
    kafka_broker: object, kafka_topic: KafkaTopicFactory, run_daemon: StartDaemon
) -> None:
    """A record whose producer clock is 30 min ahead (beyond max_future_seconds; the broker itself only refuses
    more than 1 h): dead-lettered and counted as future, its offset finished; a rule with a time window still
    gets every later record (none late)."""
    bootstrap = kafka_broker.bootstrap  # type: ignore[attr-defined]
    src, out, dlq = await kafka_topic(1), await kafka_topic(1, prefix="out"), await kafka_topic(1, prefix="dlq")
    group = unique_name("g")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        now_ms = int(time.time() * 1000)
        for i in range(100):
            stamp = now_ms + 1_800_000 if i == 50 else now_ms - 60_000 + i
            await producer.send_and_wait(src, orjson.dumps({"id": i}), key=b"k", timestamp_ms=stamp)
    finally:
        await producer.stop()
    window = '[{window: {seconds: 60, aggregates: {n: "count()"}}}]'
    daemon = await run_daemon(pipeline(bootstrap, src, out, group, steps=window, extra=f"dead_letter_topic: {dlq}"))
    ledger = await read_output(bootstrap, out, until=99, timeout=60)
    assert ledger.lost(set(range(100)) - {50}) == []
    source = daemon.sources["in"]
    assert source.stats.future == 1 and source.stats.decode_errors == 0
    assert daemon.rules["pick"].stats.late == 0

    async def all_committed() -> bool:
        return await committed_total(bootstrap, group, src) == 100

    await wait_for(all_committed, within=30, what="every offset committed, the dead-lettered one too")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(dlq, 0)])
        await consumer.seek_to_beginning(TopicPartition(dlq, 0))
        got: list[object] = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(records)
    finally:
        await consumer.stop()
    assert [orjson.loads(r.value) for r in got] == [{"id": 50}]  # type: ignore[attr-defined]
    assert b"in the future" in dict(got[0].headers)["reflexd-error"]  # type: ignore[attr-defined]
