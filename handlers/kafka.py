"""``kafka`` tool (aiokafka producer): publish the rendered arguments as a JSON record.

``acks=all`` with the idempotent producer, so broker retries never duplicate a record within
one producer session. Every send and the producer's stop are bounded by timeouts (the
idempotent producer can otherwise wait forever while brokers are gone). Many sends are in
flight at once (one per concurrency slot), each awaited on its own future. A producer that
cannot start (broker down) does not stop the daemon: calls fail as retryable until it starts.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    UnknownProducerId,
)
from pydantic import Field

from daemon.errors import ToolError
from daemon.logs import get_logger
from handlers.base import CallContext, Tool, ToolConfig
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
    start_timeout_seconds: float = Field(10.0, gt=0, description="Budget for connecting the producer.")
    security: KafkaSecurityConfig = Field(default_factory=KafkaSecurityConfig)


class KafkaTool(Tool):
    type_name: ClassVar[str] = "kafka"
    description: ClassVar[str] = "Publish the arguments as one JSON record to a Kafka topic."
    args_schema: ClassVar[dict[str, Any]] = {"type": "object", "additionalProperties": True}
    default_concurrency: ClassVar[int | None] = 256
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

    async def call(self, args: dict[str, Any], ctx: CallContext) -> None:
        producer = await self._ensure_producer()
        event = ctx.event
        key: bytes | None = None
        if self._key is not None and event is not None:
            rendered = self._key(event)
            key = None if rendered is None else str(rendered).encode()
        headers = [("reflexd-call-id", ctx.call_id.encode())]
        if event is not None:
            headers.extend((k, str(render(event)).encode()) for k, render in self._headers)
        value = orjson.dumps(args, default=str)
        try:
            fut = await producer.send(self.config.topic, value, key=key, headers=headers)
            await fut  # the runner's timeout bounds the wait
        except PRODUCER_STATE_ERRORS as exc:
            # the idempotent producer's sequence state no longer matches the broker's (e.g. after a
            # broker restart lost it): this producer cannot send again; a fresh one can
            await self._reset(producer)
            raise ToolError(self.name, f"producer reset after {type(exc).__name__}", retryable=True) from exc
        except KafkaError as exc:
            retryable = bool(getattr(exc, "retriable", False)) or isinstance(exc, (OSError, TimeoutError))
            raise ToolError(
                self.name, f"send failed: {type(exc).__name__}: {exc}", retryable=retryable
            ) from exc

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
