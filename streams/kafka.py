"""``kafka`` source (aiokafka): at-least-once delivery of records to the rules and their tools.

- Auto-commit is off. Each record carries an :class:`~streams.ack.Ack` (``event.ack``); it is finished when
  the rules have seen it and every tool call it triggered has ended. Per partition the source
  commits the last contiguous finished offset + 1: every ``commit_interval_seconds``, when
  partitions are revoked (after giving their in-flight records a short while to finish), and
  on shutdown once the queue and the tools have drained.
- Backpressure without throwing fetched records away: above a high-water mark the source stops
  calling ``getmany`` until the queue is down to a low-water mark; aiokafka keeps at most one
  prefetched response per partition meanwhile (``max_partition_fetch_bytes``). aiokafka leaves the
  group when ``getmany`` is not called for ``max_poll_interval``, so a queue that stays full for half
  of it makes the source pause every assigned partition and poll again (aiokafka drops what it had
  prefetched for a paused partition: re-fetched on resume, nothing lost); resumed below the
  low-water mark, the pause re-applied after a rebalance.
- A record that cannot be decoded goes to ``dead_letter_topic`` (if set) with error headers,
  and counts as finished; it never blocks its partition. So does a record whose timestamp is
  more than ``max_future_seconds`` ahead of the wall clock (counted as ``future``).
- Connection and start failures go through the engine's backoff; aiokafka reconnects to
  brokers by itself while a session runs.
- ``reflexd record`` reads as an observer (:meth:`KafkaSource.observe_only`): no consumer group
  (it assigns every partition of the topics itself), nothing ever committed, from the earliest
  offsets, the latest (default) or the first record at a time; a new session resumes after the
  last record received. A daemon running with the group never sees it.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Literal

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from pydantic import Field, field_validator, model_validator

from daemon.errors import NotConnected
from daemon.logs import RateLimitedLog, get_logger
from streams.ack import OffsetTracker
from streams.base import Source, SourceConfig, StartAt
from streams.component import BuildContext, ComponentSpec
from streams.decode import future_limit
from streams.event import DATA, new_event
from streams.kafka_client import KafkaSecurityConfig, client_options, stop_client
from streams.metrics import MetricSpec
from streams.queue import QueueConfig, QueueFull, WhenFull

__all__ = ["SPEC", "KafkaSource", "KafkaSourceConfig"]

log = get_logger("source.kafka")

#: Test-only switch for the checker's control run: commit records as soon as they are received
#: (the bug at-least-once delivery exists to prevent). Never set it in production.
COMMIT_ON_RECEIPT_ENV = "REFLEXD_TEST_KAFKA_COMMIT_ON_RECEIPT"


class KafkaSourceConfig(SourceConfig):
    """Kafka topics, consumed in a consumer group, at least once."""

    bootstrap_servers: str | list[str] = Field(description="host:port, or a list of them.")
    topics: list[str] = Field(default_factory=list, description="Topics to consume (or use `pattern`).")
    pattern: str | None = Field(None, description="Regular expression of topic names (instead of `topics`).")
    group_id: str = Field(description="Consumer group; instances with the same group share the partitions.")
    value_format: Literal["json", "text", "bytes"] = Field(
        "json", description="How a record value becomes `data`."
    )
    dead_letter_topic: str | None = Field(
        None, description="Where undecodable records go, with error headers."
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a group without committed offsets starts."
    )
    commit_interval_seconds: float = Field(
        1.0, gt=0, le=300, description="How often finished offsets are committed."
    )
    max_poll_records: int = Field(500, ge=1, le=100_000, description="Most records taken per poll.")
    fetch_max_bytes: int = Field(16 << 20, ge=1024, description="Bound on one fetch response.")
    max_partition_fetch_bytes: int = Field(1 << 20, ge=1024, description="Bound per partition in one fetch.")
    session_timeout_seconds: float = Field(10.0, gt=0, description="Group session timeout.")
    heartbeat_interval_seconds: float = Field(3.0, gt=0, description="Group heartbeat interval.")
    max_poll_interval_seconds: float = Field(
        300.0, gt=0, description="Max time between polls before eviction."
    )
    connect_timeout_seconds: float = Field(30.0, gt=0, description="Budget for starting the consumer.")
    revoke_drain_seconds: float = Field(
        2.0, ge=0, description="On rebalance, wait this long for in-flight records before committing."
    )
    security: KafkaSecurityConfig = Field(
        default_factory=KafkaSecurityConfig, description="TLS and SASL settings for the brokers."
    )

    @field_validator("queue")
    @classmethod
    def _lossless(cls, value: QueueConfig) -> QueueConfig:
        if value.when_full not in (None, "block"):
            raise ValueError(
                "kafka sources are lossless: when_full must be block (full queues pause the partitions)"
            )
        if value.max_events < 2:
            raise ValueError("kafka sources need max_events of at least 2")
        return value

    @model_validator(mode="after")
    def _topics_or_pattern(self) -> KafkaSourceConfig:
        if bool(self.topics) == bool(self.pattern):
            raise ValueError("set exactly one of `topics` and `pattern`")
        return self


def _text(value: bytes) -> str:
    return value.decode("utf-8")


def _raw(value: bytes) -> bytes:
    return value


#: ``value_format`` -> how a record's value (not None) becomes ``data``.
_DECODERS: dict[str, Callable[[bytes], Any]] = {"json": orjson.loads, "text": _text, "bytes": _raw}


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.source._on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.source._on_assigned(list(assigned))


class KafkaSource(Source):
    type_name: ClassVar[str] = "kafka"
    default_when_full: ClassVar[WhenFull] = "block"
    acknowledges: ClassVar[bool] = True
    emits_gaps: ClassVar[bool] = False  # offsets resume where they were committed: nothing is skipped
    config: KafkaSourceConfig

    def __init__(self, name: str, config: KafkaSourceConfig) -> None:
        super().__init__(name, config)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self.trackers: dict[TopicPartition, OffsetTracker] = {}
        cap = config.queue.max_events
        self._max_records = max(1, min(config.max_poll_records, cap // 2))
        self._high = cap - self._max_records  # pause when a full poll might not fit any more
        self._low = self._high // 2
        self.paused = False
        self.pauses = 0
        self.waits = 0
        self.rebalances = 0
        self.commits = 0
        self.commit_failures = 0
        self.dead_lettered = 0
        self._commit_on_receipt = os.environ.get(COMMIT_ON_RECEIPT_ENV) == "1"
        self._commit_log = RateLimitedLog(log, "offset commit failed", interval=10.0)
        self._poison_log = RateLimitedLog(log, "undecodable record", interval=10.0)
        self._max_future = future_limit(config.max_future_seconds)
        self._decode_value = _DECODERS[config.value_format]
        #: ``reflexd record``: no group, no commits (see observe_only); where the first session starts
        self.observing = False
        self._start: StartAt = "latest"
        self._resume: dict[TopicPartition, int] = {}  # an observer's next offsets, kept across sessions

    def observe_only(self, start: StartAt | None) -> None:
        """Read without a consumer group and never commit: every partition of the topics is assigned
        to this consumer alone, so a daemon of the configured group keeps all its partitions and
        its offsets. ``start``: ``earliest``, ``latest`` (None) or epoch milliseconds."""
        self.observing = True
        self._start = "latest" if start is None else start

    # -- session -----------------------------------------------------------------------------

    async def connect(self) -> None:
        cfg = self.config
        common = client_options(cfg.bootstrap_servers, cfg.security)
        consumer = AIOKafkaConsumer(
            group_id=None if self.observing else cfg.group_id,
            client_id=f"reflexd-{self.name}",
            enable_auto_commit=False,
            auto_offset_reset=cfg.auto_offset_reset,
            max_poll_records=self._max_records,
            fetch_max_bytes=cfg.fetch_max_bytes,
            max_partition_fetch_bytes=cfg.max_partition_fetch_bytes,
            session_timeout_ms=int(cfg.session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(cfg.heartbeat_interval_seconds * 1000),
            max_poll_interval_ms=int(cfg.max_poll_interval_seconds * 1000),
            **common,
        )
        if not self.observing:
            consumer.subscribe(topics=cfg.topics or (), pattern=cfg.pattern, listener=_Rebalance(self))
        try:
            async with asyncio.timeout(cfg.connect_timeout_seconds):
                await consumer.start()
                if self.observing:
                    await self._assign_all(consumer)
                if cfg.dead_letter_topic:
                    self._producer = AIOKafkaProducer(
                        acks="all", enable_idempotence=True, client_id=f"reflexd-{self.name}-dlq", **common
                    )
                    await self._producer.start()
        except NotConnected:
            await self._stop_clients(consumer)
            self.stats.count_error("connect")
            raise
        except (KafkaError, OSError, TimeoutError) as exc:
            await self._stop_clients(consumer)
            self.stats.count_error("connect")
            raise NotConnected(self.name, f"cannot start the consumer: {type(exc).__name__}: {exc}") from exc
        self._consumer = consumer

    async def _assign_all(self, consumer: AIOKafkaConsumer) -> None:
        """An observer's session: assign every partition of the topics, then seek each one to where the
        last session stopped, or else to the requested start."""
        tps = await self._all_partitions()
        consumer.assign(tps)
        fresh = [tp for tp in tps if tp not in self._resume]
        for tp in tps:
            if tp in self._resume:
                consumer.seek(tp, self._resume[tp])
        if not fresh:
            return
        start = self._start
        if start == "earliest":
            await consumer.seek_to_beginning(*fresh)
        elif start == "latest":
            await consumer.seek_to_end(*fresh)
        else:
            found = await consumer.offsets_for_times(dict.fromkeys(fresh, start))
            after = [tp for tp in fresh if found.get(tp) is None]  # nothing at or after the time yet
            for tp, hit in found.items():
                if hit is not None:
                    consumer.seek(tp, hit.offset)
            if after:
                await consumer.seek_to_end(*after)
        for tp in fresh:  # pin "latest" now: a later session must not skip what arrived in between
            self._resume[tp] = await consumer.position(tp)

    async def _all_partitions(self) -> list[TopicPartition]:
        """Every partition of the configured topics (or of the topics matching ``pattern``), from the
        brokers' metadata; a topic that does not exist fails the session (the engine retries)."""
        cfg = self.config
        admin = AIOKafkaAdminClient(
            client_id=f"reflexd-{self.name}-record", **client_options(cfg.bootstrap_servers, cfg.security)
        )
        try:
            await admin.start()
            if cfg.pattern is not None:
                wanted = re.compile(cfg.pattern)
                names = await admin.list_topics()
                topics = sorted(t for t in names if wanted.match(t) and not t.startswith("__"))
            else:
                topics = list(cfg.topics)
            described = await admin.describe_topics(topics) if topics else []
        finally:
            await admin.close()
        tps: list[TopicPartition] = []
        for topic in described:
            if topic["error_code"] or not topic["partitions"]:
                missing = topic["topic"]
                raise NotConnected(self.name, f"topic {missing!r} does not exist (or has no partitions)")
            tps.extend(TopicPartition(topic["topic"], p["partition"]) for p in topic["partitions"])
        if not tps:
            raise NotConnected(self.name, f"no topic matches {cfg.pattern!r}")
        return sorted(tps)

    async def read(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        cfg = self.config
        next_commit = time.monotonic() + cfg.commit_interval_seconds
        # aiokafka leaves the group when no getmany ran for max_poll_interval: a full queue stops the
        # reading for at most half of it before falling back to pausing the partitions
        poll_budget = cfg.max_poll_interval_seconds / 2
        polled_at = time.monotonic()
        while True:
            if not self.paused and len(self.queue) >= self._high:
                now = time.monotonic()
                until = min(polled_at + poll_budget, next_commit)
                if now < until or until == next_commit:
                    await self._wait_for_room(until - now)
                    if time.monotonic() >= next_commit:
                        await self._commit()
                        next_commit = time.monotonic() + cfg.commit_interval_seconds
                    continue
            self._backpressure(consumer, polled_at + poll_budget)
            try:
                batch = await consumer.getmany(timeout_ms=100, max_records=self._max_records)
            except KafkaError as exc:
                raise NotConnected(self.name, f"poll failed: {type(exc).__name__}: {exc}") from exc
            polled_at = time.monotonic()
            for tp, records in batch.items():
                tracker = self.trackers.get(tp)
                if tracker is None:
                    tracker = self.trackers[tp] = OffsetTracker()
                i, end = 0, len(records)
                while i < end:
                    i = self._take(tracker, records, i)
                    if i < end:  # a record the fast path leaves alone: one at a time, then on
                        await self._deliver(tp, tracker, records[i])
                        i += 1
            if time.monotonic() >= next_commit:
                await self._commit()
                next_commit = time.monotonic() + cfg.commit_interval_seconds

    def _take(self, tracker: OffsetTracker, records: list[Any], i: int) -> int:
        """Queue ``records[i:]`` without awaiting (the common case, batch-wise): stop at the first record
        that needs more — undecodable, from the future, or no room in the queue — and return its index
        (``len(records)`` when all went). That record goes through :meth:`_deliver`, which does the same
        for one record and handles those cases; the events and counters are the same either way."""
        queue = self.queue
        room = queue.max_events - len(queue)
        end = min(len(records), i + room)
        if i >= end:
            return i
        decode = self._decode_value
        max_future = self._max_future
        name = self.name
        received = tracker.received
        put = queue.put_nowait
        on_receipt = self._commit_on_receipt
        now = time.time()
        start = i
        while i < end:
            record = records[i]
            value = record.value
            try:
                data = None if value is None else decode(value)  # None: a tombstone
            except (ValueError, UnicodeDecodeError):
                break
            timestamp = record.timestamp
            ts = timestamp / 1000.0
            if ts - now > max_future:
                break
            key = record.key
            meta: dict[str, Any] = {
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "timestamp": timestamp,
            }
            if record.headers:
                meta["headers"] = {
                    k: v.decode("utf-8", "replace") if v is not None else None for k, v in record.headers
                }
            ack = received(record.offset)
            if on_receipt:
                ack.release()  # the control run's bug (see _deliver)
            key_text = None if key is None else key.decode("utf-8", "replace")
            put(new_event(name, ts, now, key_text, data, meta, DATA, None if on_receipt else ack))
            i += 1
        if i > start:
            self.stats.received += i - start
            self.stats.last_event_at = now
        return i

    async def _deliver(self, tp: TopicPartition, tracker: OffsetTracker, record: Any) -> None:
        stats = self.stats
        stats.received += 1
        ack = tracker.received(record.offset)
        try:
            data = self._decode(record.value)
        except (ValueError, UnicodeDecodeError) as exc:
            await self._dead_letter(record, exc)
            ack.release()
            return
        now = time.time()
        ts = record.timestamp / 1000.0
        if ts - now > self._max_future:  # a producer's clock or unit gone wrong: would poison the watermark
            self.drop_future(ts, now, record.value or b"")
            future = ValueError(f"timestamp {record.timestamp} ms is in the future")
            await self._dead_letter(record, future, undecodable=False)
            ack.release()
            return
        # a key is always text here (bytes decoded), never a list or an object
        key = record.key.decode("utf-8", "replace") if record.key is not None else None
        meta: dict[str, Any] = {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp,
        }
        if record.headers:
            meta["headers"] = {
                k: v.decode("utf-8", "replace") if v is not None else None for k, v in record.headers
            }
        if self._commit_on_receipt:
            ack.release()  # the control run's bug: finished before any rule or tool saw it
        event = new_event(self.name, ts, now, key, data, meta, DATA, None if self._commit_on_receipt else ack)
        try:
            self.queue.put_nowait(event)
        except QueueFull:  # cannot happen while the pause threshold leaves room for a full poll
            await self.queue.put(event)
        stats.last_event_at = now

    def _decode(self, value: bytes | None) -> Any:
        if value is None:
            return None  # a tombstone
        return self._decode_value(value)

    async def _wait_for_room(self, seconds: float) -> None:
        """Stop reading while the queue is full: what aiokafka prefetched stays in its buffer (at most
        one fetch response per partition, bounded by ``max_partition_fetch_bytes``) and is read on
        without a re-fetch once the queue is down to the low-water mark."""
        if seconds <= 0:
            return
        self.waits += 1
        try:
            async with asyncio.timeout(seconds):
                await self.queue.wait_depth(self._low)
                if self.queue.closed:  # stopping: the queue drains, nothing to wake us
                    await asyncio.sleep(seconds)
        except TimeoutError:
            pass

    def _backpressure(self, consumer: AIOKafkaConsumer, poll_due: float) -> None:
        """Pause every partition when the queue stayed full for half of ``max_poll_interval`` (the
        consumer must poll to stay in its group, and polling a paused partition returns nothing; aiokafka
        drops what it had prefetched for it, read again on resume); resume below the low-water mark."""
        depth = len(self.queue)
        if not self.paused and depth >= self._high and time.monotonic() >= poll_due:
            self.paused = True
            self.pauses += 1
            consumer.pause(*consumer.assignment())
        elif self.paused and depth <= self._low:
            self.paused = False
            consumer.resume(*consumer.paused())

    async def _dead_letter(self, record: Any, exc: Exception, undecodable: bool = True) -> None:
        """Send ``record`` to the dead-letter topic (if set); an undecodable one is counted and logged here,
        other refusals (a timestamp in the future) by the caller."""
        error = f"{type(exc).__name__}: {exc}"[:500]
        if undecodable:
            self.stats.decode_errors += 1
            self._poison_log.hit(
                source=self.name,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                error=error,
            )
        producer = self._producer
        if producer is None or self.config.dead_letter_topic is None:
            return
        headers = [
            ("reflexd-error", error.encode()),
            ("reflexd-source", self.name.encode()),
            ("reflexd-topic", record.topic.encode()),
            ("reflexd-partition", str(record.partition).encode()),
            ("reflexd-offset", str(record.offset).encode()),
            *(record.headers or ()),
        ]
        try:
            async with asyncio.timeout(30):
                fut = await producer.send(
                    self.config.dead_letter_topic, record.value, key=record.key, headers=headers
                )
                await fut
        except (KafkaError, TimeoutError) as send_error:
            # not dead-lettered: keep the record unfinished by failing the session, so it is read again
            raise NotConnected(self.name, f"dead-letter send failed: {send_error!r}") from send_error
        self.dead_lettered += 1

    # -- offsets -----------------------------------------------------------------------------

    async def _commit(self, only: Iterable[TopicPartition] | None = None) -> None:
        consumer = self._consumer
        if consumer is None or self.observing:
            return
        chosen = (
            self.trackers if only is None else {tp: self.trackers[tp] for tp in only if tp in self.trackers}
        )
        offsets = {tp: c for tp, t in chosen.items() if (c := t.pending_commit()) is not None}
        if not offsets:
            return
        try:
            async with asyncio.timeout(10):
                await consumer.commit(offsets)
        except (KafkaError, TimeoutError) as exc:
            self.commit_failures += 1
            self._commit_log.hit(source=self.name, error=f"{type(exc).__name__}: {exc}")
            return
        self.commits += 1
        for tp, offset in offsets.items():
            chosen[tp].committed = offset

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        if not revoked:
            return  # the listener is also called before the first assignment
        self.rebalances += 1
        trackers = [self.trackers[tp] for tp in revoked if tp in self.trackers]
        dropped = self._drop_queued(trackers)
        deadline = time.monotonic() + self.config.revoke_drain_seconds
        while any(t.in_flight for t in trackers) and time.monotonic() < deadline:  # noqa: ASYNC110 - counters
            await asyncio.sleep(0.02)
        await self._commit(revoked)
        for tp in revoked:
            self.trackers.pop(tp, None)
        log.info(
            "partitions revoked",
            extra={
                "fields": {"source": self.name, "partitions": len(revoked), "dropped_from_queue": dropped}
            },
        )

    def _drop_queued(self, trackers: list[OffsetTracker]) -> int:
        """Mark partitions as no longer ours and take their undelivered records out of the queue.

        Their offsets stay uncommitted, so whoever owns the partitions next reads them again.
        """
        for tracker in trackers:
            tracker.revoked = True
        removed = self.queue.discard(lambda e: e.ack is not None and e.ack.tracker.revoked)
        by_tracker: dict[int, tuple[OffsetTracker, set[int]]] = {}
        for event in removed:
            ack = event.ack
            assert ack is not None  # the predicate above took only records with an ack
            by_tracker.setdefault(id(ack.tracker), (ack.tracker, set()))[1].add(ack.offset)
        for tracker, offsets in by_tracker.values():
            tracker.forget(offsets)
        return len(removed)

    def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        consumer = self._consumer
        if self.paused and consumer is not None and assigned:
            consumer.pause(*assigned)  # pause state does not survive a rebalance
        log.info("partitions assigned", extra={"fields": {"source": self.name, "partitions": len(assigned)}})

    # -- stop --------------------------------------------------------------------------------

    async def close(self) -> None:
        if self.stopping:
            return  # keep the consumer: finish() commits once the queue and the tools drained
        if self.observing:  # nothing to commit; what is queued stays (it is recorded), the next session
            self._keep_positions()  # resumes after it
            consumer, self._consumer = self._consumer, None
            await self._stop_clients(consumer)
            return
        await self._commit()
        self._drop_queued(list(self.trackers.values()))  # the next session reads them again
        self.trackers.clear()
        consumer, self._consumer = self._consumer, None
        await self._stop_clients(consumer)

    def _keep_positions(self) -> None:
        """An observer's next offset per partition: past every record received (queued ones included)."""
        for tp, tracker in self.trackers.items():
            last = tracker.last_received
            if last is not None:
                self._resume[tp] = last + 1

    async def finish(self) -> None:
        await self._commit()
        consumer, self._consumer = self._consumer, None
        await self._stop_clients(consumer)

    async def _stop_clients(self, consumer: AIOKafkaConsumer | None) -> None:
        producer, self._producer = self._producer, None
        for client in (consumer, producer):
            await stop_client(client, log, source=self.name)

    # -- introspection -----------------------------------------------------------------------

    def metric_samples(self) -> list[tuple[MetricSpec, float]]:
        s = self.extra_status()
        return [(spec, int(s[key])) for key, spec in _METRICS]

    def extra_status(self) -> dict[str, Any]:
        consumer = self._consumer
        return {
            "assigned_partitions": len(consumer.assignment()) if consumer is not None else 0,
            "paused": self.paused,
            "pauses": self.pauses,
            "read_waits": self.waits,
            "rebalances": self.rebalances,
            "commits": self.commits,
            "commit_failures": self.commit_failures,
            "dead_lettered": self.dead_lettered,
            "in_flight_records": sum(t.in_flight for t in self.trackers.values()),
        }


# -- registry entry (daemon/registry.py lists SPEC) ----------------------------------------------------


def _factory(name: str, config: KafkaSourceConfig, ctx: BuildContext) -> KafkaSource:
    return KafkaSource(name, config)


def _summary(c: KafkaSourceConfig) -> list[tuple[str, Any]]:
    return [
        ("bootstrap_servers", c.bootstrap_servers),
        ("topics" if c.topics else "pattern", c.topics or c.pattern),
        ("group_id", c.group_id),
        ("value_format", c.value_format),
        ("dead_letter_topic", c.dead_letter_topic),
        ("queue", KafkaSource.queue_summary(c)),
    ]


_S = ("source",)
#: The kafka source's own metrics (``SPEC.metrics``), each with its key in ``extra_status()``.
_METRICS: tuple[tuple[str, MetricSpec], ...] = (
    (
        "assigned_partitions",
        MetricSpec("reflexd_kafka_assigned_partitions", "gauge", "Partitions assigned.", _S),
    ),
    (
        "paused",
        MetricSpec("reflexd_kafka_paused", "gauge", "1 while partitions are paused (queue full).", _S),
    ),
    (
        "read_waits",
        MetricSpec(
            "reflexd_kafka_read_waits_total",
            "counter",
            "Times reading stopped until the queue had room (fetched records kept).",
            _S,
        ),
    ),
    (
        "pauses",
        MetricSpec(
            "reflexd_kafka_pauses_total",
            "counter",
            "Times the partitions were paused (the queue stayed full for half of max_poll_interval).",
            _S,
        ),
    ),
    ("rebalances", MetricSpec("reflexd_kafka_rebalances_total", "counter", "Partition revocations.", _S)),
    ("commits", MetricSpec("reflexd_kafka_commits_total", "counter", "Offset commits.", _S)),
    (
        "commit_failures",
        MetricSpec("reflexd_kafka_commit_failures_total", "counter", "Failed offset commits.", _S),
    ),
    (
        "dead_lettered",
        MetricSpec(
            "reflexd_kafka_dead_lettered_total", "counter", "Records sent to the dead-letter topic.", _S
        ),
    ),
    (
        "in_flight_records",
        MetricSpec("reflexd_kafka_in_flight_records", "gauge", "Records received, not yet finished.", _S),
    ),
)

SPEC = ComponentSpec(
    "source",
    "kafka",
    KafkaSourceConfig,
    _factory,
    _summary,
    "Kafka topics in a consumer group, at least once.",
    {
        "type": "kafka",
        "bootstrap_servers": "localhost:9092",
        "topics": ["orders"],
        "group_id": "reflexd",
        "dead_letter_topic": "orders.dlq",
    },
    metrics=tuple(spec for _, spec in _METRICS),
)
