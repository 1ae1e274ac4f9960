"""Producing numbered records and reconciling what the daemon wrote: lost, duplicates, committed."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.kafka_broker import fetch_committed_offsets


async def produce_ids(
    bootstrap: str, topic: str, ids: Iterable[int], *, poison: Iterable[int] = (), key_of: int = 0
) -> int:
    """Write one JSON record ``{"id": i, "v": i % 10}`` per id (acks=all); ids in ``poison`` get bad JSON."""
    bad = set(poison)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    n = 0
    try:
        futures = []
        for i in ids:
            value = b"{not json" if i in bad else orjson.dumps({"id": i, "v": i % 10})
            key = str(i % key_of).encode() if key_of else str(i).encode()
            futures.append(await producer.send(topic, value, key=key))
            n += 1
            if len(futures) >= 2000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return n


@dataclass
class Ledger:
    """What reached an output topic, as a multiset of ids."""

    counts: collections.Counter[int]

    def lost(self, expected: Iterable[int]) -> list[int]:
        return sorted(i for i in expected if self.counts[i] == 0)

    @property
    def duplicates(self) -> int:
        return sum(c - 1 for c in self.counts.values() if c > 1)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


async def read_output(bootstrap: str, topic: str, *, until: int | None = None, timeout: float = 60.0) -> Ledger:
    """Read an output topic from the start (no group) until ``until`` records were seen or the end is reached."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    counts: collections.Counter[int] = collections.Counter()
    try:
        parts = consumer.partitions_for_topic(topic)
        if parts is None:
            await consumer._client.force_metadata_update()  # first use of the topic by this client
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            end = await consumer.end_offsets(tps)
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batch.values():
                for r in records:
                    counts[int(orjson.loads(r.value)["id"])] += 1
            total = sum(counts.values())
            if until is not None and total >= until:
                break
            if until is None and all([await consumer.position(tp) >= end[tp] for tp in tps]):
                break
    finally:
        await consumer.stop()
    return Ledger(counts)


async def committed_total(bootstrap: str, group: str, topic: str) -> int:
    """Sum of the group's committed offsets on ``topic`` (retried while the group coordinator loads)."""
    offsets = await fetch_committed_offsets(bootstrap, group)
    return sum(offset for tp, offset in offsets.items() if tp.topic == topic)


async def end_offsets_total(bootstrap: str, topic: str, partitions: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return sum(ends.values())
    finally:
        await consumer.stop()
