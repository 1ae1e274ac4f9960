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
from collections.abc import Sequence
from typing import Any, ClassVar

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    UnknownProducerId,
)
from pydantic import Field

from daemon.errors import ToolError
from daemon.logs import get_logger
from handlers.base import CallContext, StartedCalls, Tool, ToolConfig
from streams.kafka import KafkaSecurityConfig, client_options
from streams.rules.expressions import compile_template

__all__ = ["KafkaTool", "KafkaToolConfig"]

log = get_logger("tool.kafka")

#: Errors after which this producer instance cannot be used again, but a new one can.
PRODUCER_STATE_ERRORS = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, ProducerClosed)


class KafkaToolConfig(ToolConfig):
    """Produces one record per call."""

    bootstrap_servers: str | list[str] = Field(description="host:port, or a list of them.")
    topic: str = Field(description="Topic to write to.")
    key: str | None = Field(None, description="Record key; may hold `{expression}` placeholders.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Record headers; values may be templates."
    )
    linger_ms: int = Field(5, ge=0, le=1000, description="Batching delay of the producer.")
    batch_bytes: int = Field(
        256 * 1024, ge=1024, le=16 << 20, description="Most bytes in one partition batch of the producer."
    )
    max_batch: int = Field(
        256, ge=1, le=10_000, description="Most queued calls handed to the producer at once."
    )
    start_timeout_seconds: float = Field(10.0, gt=0, description="Budget for connecting the producer.")
    security: KafkaSecurityConfig = Field(default_factory=KafkaSecurityConfig)


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

    async def call(self, args: dict[str, Any], ctx: CallContext) -> None:
        started = await self.start_calls([(args, ctx)])
        try:
            await started.futures[0]
        except Exception as exc:
            raise await self.call_failed(exc, started.token) from exc

    async def start_calls(self, calls: Sequence[tuple[dict[str, Any], CallContext]]) -> StartedCalls:
        """Queue one record per call in the producer; its futures resolve when the broker has them."""
        producer = await self._ensure_producer()
        send = producer.send
        topic = self.config.topic
        render_key = self._key
        templated = self._headers
        futures: list[asyncio.Future[Any]] = []
        for args, ctx in calls:
            event = ctx.event
            key: bytes | None = None
            headers = [("reflexd-call-id", ctx.call_id.encode())]
            if event is not None:
                if render_key is not None:
                    rendered = render_key(event)
                    key = None if rendered is None else str(rendered).encode()
                if templated:
                    headers.extend((k, str(render(event)).encode()) for k, render in templated)
            try:
                futures.append(await send(topic, orjson.dumps(args, default=str), key=key, headers=headers))
            except (KafkaError, TypeError, ValueError) as exc:  # refused before queuing (too large, ...)
                failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                failed.set_exception(exc)
                futures.append(failed)
        return StartedCalls(futures, producer)

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
        if producer is None:
            return
        try:
            async with asyncio.timeout(10):
                await producer.stop()
        except Exception as exc:
            log.warning(
                "kafka producer stop failed", extra={"fields": {"tool": self.name, "error": repr(exc)}}
            )
