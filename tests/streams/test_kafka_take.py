"""The kafka source's batch path (``KafkaSource._take``) against its one-record path (``_deliver``), no broker:
the same events and counters, stopping at a record only the one-record path handles, bounded by the queue's room."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import TopicPartition

from streams.ack import OffsetTracker
from streams.event import Event
from streams.kafka import KafkaSource, KafkaSourceConfig

TP = TopicPartition("t", 3)


@dataclass
class Record:
    """The fields of aiokafka's ConsumerRecord the source reads."""

    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    timestamp: int = 0
    topic: str = TP.topic
    partition: int = TP.partition


def source(value_format: str = "json", max_events: int = 100) -> KafkaSource:
    config = KafkaSourceConfig.model_validate(
        {
            "type": "kafka",
            "bootstrap_servers": "127.0.0.1:1",
            "topics": ["t"],
            "group_id": "g",
            "value_format": value_format,
            "queue": {"max_events": max_events},
        }
    )
    return KafkaSource("in", config)


def records(now_ms: int) -> list[Record]:
    return [
        Record(10, b'{"id": 1}', key=b"k1", timestamp=now_ms),
        Record(11, None, timestamp=now_ms + 1),  # a tombstone
        Record(12, b'{"id": 3}', headers=(("h", b"v"), ("n", None)), timestamp=now_ms + 2),
        Record(13, b"[1, 2]", key=b"\xff", timestamp=now_ms + 3),
    ]


def comparable(event: Event) -> tuple[Any, ...]:
    """An event without its wall-clock stamp, its ack as (offset, holds)."""
    ack = event.ack
    return (
        event.source,
        event.ts,
        event.key,
        event.data,
        event.meta,
        event.kind,
        None if ack is None else (ack.offset, ack.holds),
    )


def drained(src: KafkaSource) -> list[Event]:
    items = list(src.queue._items)
    src.queue._items.clear()
    return items


@pytest.mark.parametrize("value_format", ["json", "text", "bytes"])
async def test_batch_path_queues_the_same_events_as_the_one_record_path(value_format: str) -> None:
    now_ms = int(time.time() * 1000)
    batch, single = source(value_format), source(value_format)
    recs = records(now_ms)
    if value_format == "text":
        recs[-1] = Record(13, b"plain", key=b"\xff", timestamp=now_ms + 3)
    t_batch, t_single = OffsetTracker(), OffsetTracker()
    assert batch._take(t_batch, recs, 0) == len(recs)
    for record in recs:
        await single._deliver(TP, t_single, record)
    got, want = drained(batch), drained(single)
    assert [comparable(e) for e in got] == [comparable(e) for e in want]
    assert got[0].key == "k1" and got[3].key == "\ufffd" and got[1].data is None
    assert got[2].meta["headers"] == {"h": "v", "n": None}
    assert batch.stats.received == single.stats.received == len(recs)
    assert t_batch.in_flight == t_single.in_flight == len(recs)
    assert batch.stats.last_event_at is not None


async def test_batch_path_stops_at_a_record_it_leaves_to_the_one_record_path() -> None:
    now_ms = int(time.time() * 1000)
    src = source()
    tracker = OffsetTracker()
    recs = [
        Record(0, b'{"id": 0}', timestamp=now_ms),
        Record(1, b"{not json", timestamp=now_ms),
        Record(2, b'{"id": 2}', timestamp=now_ms + 3_600_000),  # an hour ahead: beyond max_future_seconds
        Record(3, b'{"id": 3}', timestamp=now_ms),
    ]
    assert src._take(tracker, recs, 0) == 1  # stops before the undecodable record, which it does not receive
    assert src.stats.received == 1 and tracker.in_flight == 1
    await src._deliver(TP, tracker, recs[1])  # dead-lettered (no topic: counted), finished
    assert src.stats.decode_errors == 1
    assert src._take(tracker, recs, 2) == 2  # from the future: the one-record path refuses it
    await src._deliver(TP, tracker, recs[2])
    assert src.stats.future == 1
    assert src._take(tracker, recs, 3) == 4
    events = drained(src)
    assert [e.data for e in events] == [{"id": 0}, {"id": 3}]
    assert src.stats.received == 4
    assert tracker.committable is None  # offsets 1 and 2 finished, but 0 is still held by its event
    assert events[0].ack is not None
    events[0].ack.release()
    assert tracker.committable == 3  # 0, 1, 2 finished; 3 held by its event


async def test_batch_path_takes_only_what_fits_in_the_queue() -> None:
    now_ms = int(time.time() * 1000)
    src = source(max_events=3)
    tracker = OffsetTracker()
    recs = [Record(i, b'{"id": %d}' % i, timestamp=now_ms) for i in range(5)]
    assert src._take(tracker, recs, 0) == 3  # full: the rest waits (the read loop's _deliver blocks on room)
    assert len(src.queue) == 3 and src.stats.received == 3 and tracker.in_flight == 3
    assert src._take(tracker, recs, 3) == 3
    drained(src)
    assert src._take(tracker, recs, 3) == 5
    assert src.stats.received == 5
