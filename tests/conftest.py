"""Shared fixtures: real local feed servers and real daemons, always stopped at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from daemon.config import AppConfig
from daemon.supervisor import Daemon
from tests.servers import FeedServer

StartServer = Callable[..., Awaitable[FeedServer]]
StartDaemon = Callable[[AppConfig], Awaitable[Daemon]]


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
