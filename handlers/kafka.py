"""``kafka`` tool (aiokafka producer): publish the rendered arguments as a JSON record.

``acks=all`` with the idempotent producer, so broker retries never duplicate a record within
one producer session. Every send and the producer's stop are bounded by timeouts (the
idempotent producer can otherwise wait forever while brokers are gone). The tool batches: the
runner hands it up to ``max_batch`` queued calls at once, it queues them all in the producer
and the runner waits for their futures in order, so many sends are in flight (up to
``concurrency``) without a task wake-up per record. A producer that cannot start (broker down)
does not stop the daemon: calls fail as retryable until it starts.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import Any, ClassVar, cast

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    UnknownProducerId,
)
from aiokafka.partitioner import DefaultPartitioner
from pydantic import Field

from daemon.errors import ToolError
from daemon.logs import get_logger
from handlers.base import CallContext, StartedCalls, Tool, ToolConfig
from streams.component import BuildContext, ComponentSpec
from streams.expressions import compile_template
from streams.kafka_client import KafkaSecurityConfig, client_options, stop_client
from streams.tracing import TRACEPARENT

__all__ = ["SPEC", "KafkaTool", "KafkaToolConfig"]

log = get_logger("tool.kafka")

#: The producer's max_request_size (aiokafka's default, set explicitly): a larger record is refused
#: on its own before it could fail the batch it would share with other calls.
MAX_RECORD_BYTES = 1 << 20

_partitioner = DefaultPartitioner()


def _failed(exc: BaseException) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_exception(exc)
    return fut


def _written(fut: asyncio.Future[Any], sent: asyncio.Future[Any]) -> None:
    """Resolve a batch's calls with ``{"partition", "base_offset"}`` once the broker has the batch."""
    if fut.done():
        return
    if sent.cancelled():
        fut.cancel()
    elif (exc := sent.exception()) is not None:
        fut.set_exception(exc)
    else:
        meta = sent.result()
        fut.set_result({"partition": meta.partition, "base_offset": meta.offset})


#: Errors after which this producer instance cannot be used again, but a new one can.
PRODUCER_STATE_ERRORS = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, ProducerClosed)


class KafkaToolConfig(ToolConfig):
    """Produces one record per call."""

    template_fields: ClassVar[frozenset[str]] = frozenset({"key", "headers"})

    bootstrap_servers: str | list[str] = Field(description="host:port, or a list of them.")
    topic: str = Field(description="Topic to write to.")
    key: str | None = Field(None, description="Record key; may hold `{expression}` placeholders.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Record headers; values may be templates."
    )
    linger_ms: int = Field(
        5,
        ge=0,
        le=1000,
        description="The producer's batching delay, kept for compatibility: the tool hands the producer "
        "complete batches (every queued call, up to `max_batch`) that go out at once, so no record waits.",
    )
    batch_bytes: int = Field(
        256 * 1024,
        ge=1024,
        le=16 << 20,
        description="Most bytes in one partition batch of the producer; keep it at most the broker's "
        "message.max.bytes (1 MiB by default), which refuses a larger batch whole.",
    )
    max_batch: int = Field(
        256, ge=1, le=10_000, description="Most queued calls handed to the producer at once."
    )
    start_timeout_seconds: float = Field(10.0, gt=0, description="Budget for connecting the producer.")
    security: KafkaSecurityConfig = Field(
        default_factory=KafkaSecurityConfig, description="TLS and SASL settings for the brokers."
    )


class KafkaTool(Tool):
    type_name: ClassVar[str] = "kafka"
    description: ClassVar[str] = "Publish the arguments as one JSON record to a Kafka topic."
    args_schema: ClassVar[dict[str, Any]] = {"type": "object", "additionalProperties": True}
    default_concurrency: ClassVar[int | None] = 1024
    config: KafkaToolConfig

    def __init__(self, name: str, config: KafkaToolConfig) -> None:
        super().__init__(name, config)
        self._key = compile_template(config.key) if config.key is not None else None
        self._headers = [(k, compile_template(v)) for k, v in config.headers.items()]
        self._producer: AIOKafkaProducer | None = None
        self._starting: asyncio.Lock | None = None

    async def start(self) -> None:
        self._starting = asyncio.Lock()
        try:
            await self._ensure_producer()
        except ToolError as exc:
            log.warning(
                "kafka producer not started yet; calls retry",
                extra={"fields": {"tool": self.name, "error": exc.reason}},
            )

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        assert self._starting is not None, "tool not started"
        async with self._starting:
            if self._producer is not None:
                return self._producer
            cfg = self.config
            producer = AIOKafkaProducer(
                acks="all",
                enable_idempotence=True,
                linger_ms=cfg.linger_ms,
                max_batch_size=cfg.batch_bytes,
                max_request_size=MAX_RECORD_BYTES,
                request_timeout_ms=int(cfg.timeout_seconds * 1000),
                client_id=f"reflexd-{self.name}",
                **client_options(cfg.bootstrap_servers, cfg.security),
            )
            try:
                async with asyncio.timeout(cfg.start_timeout_seconds):
                    await producer.start()
            except (KafkaError, OSError, TimeoutError) as exc:
                await self._stop_producer(producer)
                raise ToolError(
                    self.name, f"producer cannot start: {type(exc).__name__}", retryable=True
                ) from exc
            self._producer = producer
            return producer

    @property
    def batch_limit(self) -> int:
        return self.config.max_batch

    async def call(self, args: dict[str, Any], ctx: CallContext) -> Any:
        started = await self.start_calls([(args, ctx)])
        try:
            return await started.futures[0]
        except Exception as exc:
            judged = await self.call_failed(exc, started.token)
            if judged is exc:
                raise
            raise judged from exc

    async def start_calls(self, calls: Sequence[tuple[dict[str, Any], CallContext]]) -> StartedCalls:
        """Queue one record per call; their futures resolve when the broker has them.

        The records are built into producer batches here (aiokafka's batch API) rather than sent
        one by one: keyed records go to their key's partition (the same hash as every Kafka
        client), the keyless ones of this batch to one partition chosen at random among the
        available ones (sticky, like the Java producer). A call's future is the future of the
        producer batch its record is in: the broker writes a batch whole or not at all.
        """
        producer = await self._ensure_producer()
        topic = self.config.topic
        try:
            partitions = sorted(await producer.partitions_for(topic))  # waits for the topic's metadata
        except KafkaError as exc:
            raise await self.call_failed(exc, producer) from exc
        available = sorted(producer.client.cluster.available_partitions_for_topic(topic)) or partitions
        render_key = self._key
        templated = self._headers
        futures: list[asyncio.Future[Any] | None] = [None] * len(calls)
        filling: dict[int, tuple[Any, list[int]]] = {}  # partition -> (its open producer batch, its calls)
        keyless: int | None = None
        for i, (args, ctx) in enumerate(calls):
            event = ctx.event
            key: bytes | None = None
            headers = [("reflexd-call-id", ctx.call_id.encode())]
            if ctx.trace is not None:  # tracing on: a consumer's spans join this attempt's trace
                headers.append((TRACEPARENT, ctx.trace.traceparent.encode()))
            try:
                if event is not None:
                    if render_key is not None:
                        rendered = render_key(event)
                        key = None if rendered is None else str(rendered).encode()
                    if templated:
                        headers.extend((k, str(render(event)).encode()) for k, render in templated)
                value = orjson.dumps(args, default=str)
            except Exception as exc:  # a template or the arguments cannot be rendered: this call only
                futures[i] = _failed(exc)
                continue
            size = len(value)
            if key is not None:
                size += len(key)
            for name, header in headers:
                size += len(name) + len(header)
            if size > MAX_RECORD_BYTES:
                futures[i] = _failed(
                    MessageSizeTooLargeError(f"record of {size} bytes, more than {MAX_RECORD_BYTES}")
                )
                continue
            if key is None:
                if keyless is None:
                    keyless = _partitioner(None, partitions, available)
                partition = keyless
            else:
                partition = _partitioner(key, partitions, available)
            open_batch = filling.get(partition)
            if open_batch is None:
                open_batch = filling[partition] = (producer.create_batch(), [])
            batch, members = open_batch
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:  # full
                await self._send_batch(producer, batch, topic, partition, members, futures)
                batch, members = filling[partition] = (producer.create_batch(), [])
                batch.append(key=key, value=value, timestamp=None, headers=headers)  # fits an empty batch
            members.append(i)
        for partition, (batch, members) in filling.items():
            await self._send_batch(producer, batch, topic, partition, members, futures)
        assert all(f is not None for f in futures)  # every call was refused alone or queued in a batch
        return StartedCalls(cast("list[asyncio.Future[Any]]", futures), producer)

    @staticmethod
    async def _send_batch(
        producer: AIOKafkaProducer,
        batch: Any,
        topic: str,
        partition: int,
        members: list[int],
        futures: list[asyncio.Future[Any] | None],
    ) -> None:
        batch.close()  # complete: sent without lingering (nothing else can join a batch of ours)
        try:
            sent = await producer.send_batch(batch, topic, partition=partition)
        except KafkaError as exc:  # not queued (producer closed, no room in time): these calls fail
            fut = _failed(exc)
        else:
            # the calls' result (journaled): where their batch was written, not aiokafka's metadata
            fut = asyncio.get_running_loop().create_future()
            sent.add_done_callback(functools.partial(_written, fut))
        for i in members:
            futures[i] = fut

    async def call_failed(self, exc: BaseException, token: Any) -> BaseException:
        if isinstance(exc, PRODUCER_STATE_ERRORS):
            # the idempotent producer's sequence state no longer matches the broker's (e.g. after a
            # broker restart lost it): this producer cannot send again; a fresh one can
            await self._reset(token)
            return ToolError(self.name, f"producer reset after {type(exc).__name__}", retryable=True)
        if isinstance(exc, KafkaError):
            # a record that expired in the producer (brokers away longer than the request timeout) is
            # worth sending again, though aiokafka does not mark KafkaTimeoutError retriable
            retryable = bool(getattr(exc, "retriable", False)) or isinstance(exc, KafkaTimeoutError)
            return ToolError(self.name, f"send failed: {type(exc).__name__}: {exc}", retryable=retryable)
        return exc

    async def _reset(self, producer: AIOKafkaProducer) -> None:
        if self._producer is producer:
            self._producer = None
            log.warning("kafka producer reset", extra={"fields": {"tool": self.name}})
            await self._stop_producer(producer)

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        await self._stop_producer(producer)

    async def _stop_producer(self, producer: AIOKafkaProducer | None) -> None:
        await stop_client(producer, log, tool=self.name)


# -- registry entry (daemon/registry.py lists SPEC) ----------------------------------------------------


def _factory(name: str, config: KafkaToolConfig, ctx: BuildContext) -> KafkaTool:
    return KafkaTool(name, config)


def _summary(c: KafkaToolConfig) -> list[tuple[str, Any]]:
    return [("bootstrap_servers", c.bootstrap_servers), ("topic", c.topic), *KafkaTool.common_summary(c)]


SPEC = ComponentSpec(
    "tool",
    "kafka",
    KafkaToolConfig,
    _factory,
    _summary,
    KafkaTool.description,
    {"type": "kafka", "bootstrap_servers": "localhost:9092", "topic": "alerts", "key": "{key}"},
)
