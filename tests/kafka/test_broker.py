"""Smoke tests of the real-broker harness: aiokafka round trip, durability across restart and kill -9, failures."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.kafka_broker import (
    AnyKafkaBroker,
    BrokerControlUnsupported,
    BrokerError,
    ExternalKafkaBroker,
    KafkaBroker,
    fetch_committed_offsets,
    unique_name,
)

KafkaTopicFactory = Callable[..., Awaitable[str]]
KafkaBrokerFactory = Callable[..., KafkaBroker]

N = 1_000
PARTITIONS = 4


async def produce(bootstrap: str, topic: str, ids: range) -> dict[TopicPartition, int]:
    """Send ``ids`` (key = value = the id) with acks=all and idempotence, all in flight; return end offset per partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    async with asyncio.timeout(30):
        await producer.start()
    try:
        async with asyncio.timeout(30):
            futures = [await producer.send(topic, key=str(i).encode(), value=str(i).encode()) for i in ids]
            sent = await asyncio.gather(*futures)
    finally:
        async with asyncio.timeout(10):
            await producer.stop()
    ends: dict[TopicPartition, int] = {}
    for meta in sent:
        tp = TopicPartition(meta.topic, meta.partition)
        ends[tp] = max(ends.get(tp, 0), meta.offset + 1)
    return ends


async def consume(bootstrap: str, topic: str, group: str, want: int, *, commit: bool = True) -> list[int]:
    """Read ``want`` records with a consumer group (auto-commit off), then commit last offset + 1 per partition."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        max_poll_records=500,
    )
    ids: list[int] = []
    async with asyncio.timeout(60):
        await consumer.start()
        try:
            last: dict[TopicPartition, int] = {}
            while len(ids) < want:
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    ids += [int(r.value) for r in records]
                    last[tp] = records[-1].offset
            if commit:
                await consumer.commit({tp: offset + 1 for tp, offset in last.items()})
        finally:
            await consumer.stop()
    return ids


async def produce_consume_commit(broker: AnyKafkaBroker, topic: str, group: str) -> dict[TopicPartition, int]:
    """Round trip of N ids through ``topic``; assert every id came back once; return the end offsets."""
    ends = await produce(broker.bootstrap, topic, range(N))
    assert len(ends) == PARTITIONS and sum(ends.values()) == N
    ids = await consume(broker.bootstrap, topic, group, N)
    assert sorted(ids) == list(range(N))
    return ends


async def test_1000_records_round_trip_through_a_consumer_group(
    kafka_broker: AnyKafkaBroker, kafka_topic: KafkaTopicFactory
) -> None:
    """1,000 idempotent acks=all records over 4 partitions come back exactly once; explicit commits are stored."""
    topic = await kafka_topic(PARTITIONS)
    group = unique_name("g")
    ends = await produce_consume_commit(kafka_broker, topic, group)
    assert await fetch_committed_offsets(kafka_broker.bootstrap, group) == ends


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "kill9"])
async def test_records_and_committed_offsets_survive_a_broker_restart(
    restartable_kafka_broker: KafkaBroker, kafka_topic: KafkaTopicFactory, hard: bool
) -> None:
    """After stop+start (or kill -9+start) on the same ports and data dir: offsets and records are still there,
    the group resumes at its commit, and the broker takes new writes."""
    broker = restartable_kafka_broker
    topic = await kafka_topic(PARTITIONS)
    group = unique_name("g")
    ends = await produce_consume_commit(broker, topic, group)
    bootstrap = broker.bootstrap

    await broker.arestart(hard=hard)

    assert broker.bootstrap == bootstrap
    assert await fetch_committed_offsets(bootstrap, group) == ends
    assert sorted(await consume(bootstrap, topic, unique_name("fresh"), N, commit=False)) == list(range(N))
    more = await produce(bootstrap, topic, range(N, N + 100))
    assert sum(more.values()) == N + 100
    assert sorted(await consume(bootstrap, topic, group, 100)) == list(range(N, N + 100))


def test_a_broker_that_cannot_bind_fails_fast_with_its_log_tail(
    kafka_broker_factory: KafkaBrokerFactory,
) -> None:
    """A port already in use → start() raises well before its deadline, quoting the broker's own error."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = kafka_broker_factory(start=False, port=taken.getsockname()[1])
        with pytest.raises(BrokerError, match="exited with") as failure:
            broker.start()
    assert "Address already in use" in str(failure.value)
    assert not broker.running


def test_external_broker_handle_refuses_lifecycle_control() -> None:
    """The KAFKA_BOOTSTRAP_SERVERS handle says why it cannot stop, kill or restart the broker."""
    external = ExternalKafkaBroker("127.0.0.1:1")
    for call in (external.start, external.stop, external.kill, external.restart):
        with pytest.raises(BrokerControlUnsupported, match=re.escape("KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1")):
            call()


def test_unique_names_are_valid_topic_names() -> None:
    """Generated names are distinct and use only Kafka's topic characters, even from a parametrised test id."""
    names = {unique_name("test_x[sigterm-1] / é") for _ in range(100)}
    assert len(names) == 100
    assert all(len(n) < 100 and n.replace("-", "").replace("_", "").replace(".", "").isalnum() for n in names)
