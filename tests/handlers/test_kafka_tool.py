"""The kafka tool through the runner, against the real broker: batches, partitions by key, per-call failures."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import murmur2

from daemon.errors import ToolError
from handlers.base import CallContext
from handlers.kafka import KafkaTool, KafkaToolConfig
from handlers.runner import ToolRunner
from streams.event import Event
from tests.conftest import KafkaTopicFactory
from tests.servers import wait_for


@dataclass
class Written:
    partition: int
    offset: int
    key: bytes | None
    call_id: str
    data: dict[str, object]


async def read_all(bootstrap: str, topic: str, n: int, timeout: float = 30.0) -> list[Written]:
    """The first ``n`` records of ``topic`` (all partitions, no group)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    out: list[Written] = []
    try:
        async with asyncio.timeout(timeout):
            while len(out) < n:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for r in records:
                        headers = dict(r.headers)
                        call_id = headers["reflexd-call-id"].decode()
                        out.append(Written(r.partition, r.offset, r.key, call_id, orjson.loads(r.value)))
    finally:
        await consumer.stop()
    return out


def ctx(i: int, key: str | None) -> CallContext:
    event = Event("src", float(i), float(i), key, {"i": i}, {"seq": i})
    return CallContext("out", "rule", event, f"rule:src:seq={i}:0")


async def run_calls(tool: KafkaTool, calls: list[tuple[dict[str, object], CallContext]]) -> ToolRunner:
    runner = ToolRunner({"out": tool})
    await runner.start()
    for args, c in calls:  # all queued before a worker runs: the runner hands them over in full batches
        assert runner.submit("out", args, c)
    stats = runner.stats("out")
    await wait_for(lambda: stats.succeeded + stats.failures == len(calls) and stats.in_flight == 0, within=30)
    await runner.stop(10)
    return runner


async def test_keyed_records_go_to_their_key_partition_keyless_ones_stay_together(
    kafka_broker: object, kafka_topic: KafkaTopicFactory
) -> None:
    """A keyed record lands where every Kafka client puts that key (murmur2 of the key, modulo the partition
    count); the keyless records of one batch share one partition; every call is written exactly once."""
    bootstrap = kafka_broker.bootstrap  # type: ignore[attr-defined]
    keyed, keyless = await kafka_topic(4, prefix="keyed"), await kafka_topic(4, prefix="keyless")
    config = KafkaToolConfig(
        type="kafka", bootstrap_servers=bootstrap, topic=keyed, key="{key}", concurrency=256
    )
    calls: list[tuple[dict[str, object], CallContext]] = [
        ({"i": i}, ctx(i, f"k{i % 20}")) for i in range(600)
    ]
    await run_calls(KafkaTool("out", config), calls)
    written = await read_all(bootstrap, keyed, 600)
    assert sorted(w.data["i"] for w in written) == list(range(600))  # type: ignore[type-var]
    assert {w.call_id for w in written} == {c.call_id for _, c in calls}
    for w in written:
        assert w.key is not None and w.partition == (murmur2(w.key) & 0x7FFFFFFF) % 4

    config = KafkaToolConfig(type="kafka", bootstrap_servers=bootstrap, topic=keyless, concurrency=100)
    runner = await run_calls(KafkaTool("out", config), [({"i": i}, ctx(i, None)) for i in range(300)])
    written = await read_all(bootstrap, keyless, 300)
    assert sorted(w.data["i"] for w in written) == list(range(300))  # type: ignore[type-var]
    by_batch: dict[int, set[int]] = {}
    for w in written:  # calls were handed over 100 at a time, in order: i // 100 names the batch
        by_batch.setdefault(int(w.data["i"]) // 100, set()).add(w.partition)  # type: ignore[call-overload]
    assert all(len(partitions) == 1 for partitions in by_batch.values())
    assert runner.stats("out").attempts == 300


async def test_an_oversized_record_fails_alone(kafka_broker: object, kafka_topic: KafkaTopicFactory) -> None:
    """A record above the size limit fails on its own (not retryable); the others of its batch are written."""
    bootstrap = kafka_broker.bootstrap  # type: ignore[attr-defined]
    out = await kafka_topic(1)
    config = KafkaToolConfig(type="kafka", bootstrap_servers=bootstrap, topic=out, concurrency=10)
    calls: list[tuple[dict[str, object], CallContext]] = [({"i": i}, ctx(i, None)) for i in range(10)]
    calls[4] = ({"i": 4, "blob": "x" * (2 << 20)}, ctx(4, None))
    stats = (await run_calls(KafkaTool("out", config), calls)).stats("out")
    assert (stats.succeeded, stats.failures, stats.attempts) == (9, 1, 10)
    written = await read_all(bootstrap, out, 9)
    assert sorted(w.data["i"] for w in written) == [0, 1, 2, 3, 5, 6, 7, 8, 9]  # type: ignore[type-var]


async def test_a_missing_topic_is_a_retryable_tool_error(kafka_broker: object) -> None:
    """No metadata for the topic within the timeout (the broker does not create topics): a retryable
    ToolError, as for any send the brokers could not take yet — not a bug with a traceback."""
    bootstrap = kafka_broker.bootstrap  # type: ignore[attr-defined]
    config = KafkaToolConfig(
        type="kafka", bootstrap_servers=bootstrap, topic="no-such-topic", timeout_seconds=1
    )
    tool = KafkaTool("out", config)
    await tool.start()
    try:
        with pytest.raises(ToolError) as info:
            await tool.call({"i": 1}, ctx(1, None))
    finally:
        await tool.stop()
    assert info.value.retryable and info.value.reason.startswith("send failed: UnknownTopicOrPartition")


async def test_a_call_reports_where_it_was_written(
    kafka_broker: object, kafka_topic: KafkaTopicFactory
) -> None:
    """The result of a call (what the journal keeps) names the partition and the base offset of its batch."""
    bootstrap = kafka_broker.bootstrap  # type: ignore[attr-defined]
    out = await kafka_topic(2)
    tool = KafkaTool(
        "out", KafkaToolConfig(type="kafka", bootstrap_servers=bootstrap, topic=out, key="{key}")
    )
    await tool.start()
    try:
        first = await tool.call({"i": 1}, ctx(1, "a"))
        second = await tool.call({"i": 2}, ctx(2, "a"))
    finally:
        await tool.stop()
    assert first["partition"] == second["partition"] == (murmur2(b"a") & 0x7FFFFFFF) % 2
    assert (first["base_offset"], second["base_offset"]) == (0, 1)
    written = await read_all(bootstrap, out, 2)
    assert [(w.partition, w.offset, w.data["i"]) for w in written] == [
        (first["partition"], 0, 1),
        (first["partition"], 1, 2),
    ]


async def test_batches_are_closed_when_handed_over_and_a_full_one_is_followed_by_another(
    kafka_broker: object, kafka_topic: KafkaTopicFactory
) -> None:
    """Every producer batch the tool hands over is closed (aiokafka sends a closed batch at once instead of
    letting it linger, and nothing could join it); records that overflow ``batch_bytes`` go on in a next batch of
    the same partition, each call written exactly once."""
    bootstrap = kafka_broker.bootstrap  # type: ignore[attr-defined]
    out = await kafka_topic(2)
    config = KafkaToolConfig(
        type="kafka", bootstrap_servers=bootstrap, topic=out, key="{key}", batch_bytes=1024, linger_ms=1000
    )
    tool = KafkaTool("out", config)
    handed: list[tuple[int, bool, int]] = []  # partition, closed when handed over, records

    async def spy(producer: object) -> None:
        real = producer.send_batch  # type: ignore[attr-defined]

        async def send_batch(batch: object, topic: str, *, partition: int) -> object:
            handed.append((partition, batch.closed(), batch.record_count()))  # type: ignore[attr-defined]
            return await real(batch, topic, partition=partition)

        producer.send_batch = send_batch  # type: ignore[attr-defined]

    runner = ToolRunner({"out": tool})
    await runner.start()
    await spy(tool._producer)
    calls: list[tuple[dict[str, object], CallContext]] = [
        ({"i": i, "pad": "x" * 40}, ctx(i, f"k{i % 2}")) for i in range(200)
    ]
    for args, c in calls:
        assert runner.submit("out", args, c)
    stats = runner.stats("out")
    await wait_for(lambda: stats.succeeded + stats.failures == len(calls) and stats.in_flight == 0, within=30)
    await runner.stop(10)
    assert (stats.succeeded, stats.failures) == (200, 0)
    written = await read_all(bootstrap, out, 200)
    assert sorted(w.data["i"] for w in written) == list(range(200))  # type: ignore[type-var]
    assert all(closed for _, closed, _ in handed)
    assert sum(n for _, _, n in handed) == 200
    assert len(handed) > 2  # 1 KiB batches: more than one per partition
