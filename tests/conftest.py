"""Shared fixtures: real local feed servers and real daemons, always stopped at teardown."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import pytest

from daemon.config import AppConfig
from daemon.logs import THIRD_PARTY_LOGGERS, configure_logging
from daemon.supervisor import Daemon
from tests.kafka_broker import AnyKafkaBroker, ExternalKafkaBroker, KafkaBroker, delete_topics_on
from tests.servers import FeedServer

StartServer = Callable[..., Awaitable[FeedServer]]
StartDaemon = Callable[[AppConfig], Awaitable[Daemon]]


@pytest.fixture
def debug_log() -> Iterator[io.StringIO]:
    """The daemon's logging at debug level into a buffer; the loggers are restored afterwards."""
    names = ("reflexd", *THIRD_PARTY_LOGGERS)
    loggers = [logging.getLogger(n) for n in names]
    saved = [(list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    try:
        yield out
    finally:
        for logger, (handlers, level, propagate) in zip(loggers, saved, strict=True):
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


@pytest.fixture(autouse=True)
def _private_working_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in a folder of its own: relative paths (``./var/reflexd.db``, the journal that
    remembers which idempotency keys succeeded) never leak from one test or run into another."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture
async def feed_server() -> AsyncIterator[StartServer]:
    """``await feed_server(plans, reject=[...])`` → a started :class:`FeedServer`; all are stopped after the test."""
    started: list[FeedServer] = []

    async def start(*args: Any, **kwargs: Any) -> FeedServer:
        server = FeedServer(*args, **kwargs)
        started.append(server)
        return await server.start()

    try:
        yield start
    finally:
        for server in reversed(started):
            await server.stop()


@pytest.fixture
async def run_daemon() -> AsyncIterator[StartDaemon]:
    """``await run_daemon(config)`` → a started :class:`Daemon`; all are stopped after the test."""
    started: list[Daemon] = []

    async def start(config: AppConfig) -> Daemon:
        daemon = Daemon(config)
        started.append(daemon)
        await daemon.start()
        return daemon

    try:
        yield start
    finally:
        for daemon in reversed(started):
            await daemon.stop()


# -- Kafka: a real single-node KRaft broker (tests/kafka_broker.py) -----------------------------------------------

KafkaTopicFactory = Callable[..., Awaitable[str]]
KafkaBrokerFactory = Callable[..., KafkaBroker]


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnyKafkaBroker]:
    """The session's Kafka broker: started on first use (a run without Kafka tests starts none), stopped at the end.

    ``KAFKA_BOOTSTRAP_SERVERS=host:port`` → a handle on that broker instead (its lifecycle calls raise; tests that
    stop, kill or restart the broker use ``restartable_kafka_broker`` and are skipped). Missing jars or java fail the
    tests with the command to run (``make kafka-jars``); they are never skipped.
    """
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield ExternalKafkaBroker(external).wait_ready()
        return
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def restartable_kafka_broker(kafka_broker: AnyKafkaBroker) -> Iterator[KafkaBroker]:
    """The session broker for tests that stop, kill or restart it; running again after the test, whatever it did."""
    if not isinstance(kafka_broker, KafkaBroker):
        pytest.skip(kafka_broker.reason)
    try:
        yield kafka_broker
    finally:
        if not kafka_broker.running:
            kafka_broker.start()


@pytest.fixture
async def kafka_topic(
    kafka_broker: AnyKafkaBroker, request: pytest.FixtureRequest
) -> AsyncIterator[KafkaTopicFactory]:
    """``await kafka_topic(4)`` → the name of a new topic with 4 partitions, unique to this test (named after it).

    Keyword arguments: ``prefix`` (default: the test's name), ``config`` (topic configs, e.g. ``{"retention.ms":
    "1000"}``). Topics created on an external broker are deleted after the test.
    """
    created: list[str] = []

    async def create(
        partitions: int = 1, *, prefix: str | None = None, config: Mapping[str, str] | None = None
    ) -> str:
        name = await kafka_broker.create_topic(
            partitions=partitions, prefix=prefix or request.node.name, config=config
        )
        created.append(name)
        return name

    yield create
    if created and isinstance(kafka_broker, ExternalKafkaBroker):
        with contextlib.suppress(Exception):
            await delete_topics_on(kafka_broker.bootstrap, created)


@pytest.fixture
def kafka_broker_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBrokerFactory]:
    """``kafka_broker_factory(start=True, **KafkaBroker kwargs)`` → a broker of the test's own (own ports and data
    dir), for tests that must not disturb the session broker; all are stopped after the test."""
    brokers: list[KafkaBroker] = []

    def make(*, start: bool = True, **kwargs: Any) -> KafkaBroker:
        broker = KafkaBroker(tmp_path_factory.mktemp("kafka-own"), **kwargs)
        brokers.append(broker)
        return broker.start() if start else broker

    try:
        yield make
    finally:
        for broker in reversed(brokers):
            broker.stop()
