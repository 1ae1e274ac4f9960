"""Ops HTTP server (aiohttp, on the daemon's loop): /healthz /readyz /metrics /status.

- ``/healthz``: 200 while the process serves requests (liveness).
- ``/readyz``: 200 when every source is connected and delivering within its idle timeout,
  503 otherwise, with the reason per source.
- ``/metrics``: Prometheus text format.
- ``/status``: JSON with sources, rules and tools. It never contains configuration values
  (URLs, headers, arguments), so secrets from the environment cannot leak through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.errors import StartupError
from daemon.telemetry import metrics_registry

if TYPE_CHECKING:
    from daemon.supervisor import Daemon

__all__ = ["OpsServer"]


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


class OpsServer:
    """The ops endpoints of one daemon."""

    def __init__(self, daemon: Daemon, host: str, port: int) -> None:
        self.daemon = daemon
        self.host = host
        self.port = port
        self._metrics = metrics_registry(daemon)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_handler)
        app.router.add_get("/status", self._status)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError("http", f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from exc
        self._runner = runner
        server = site._server  # the bound port, when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, reasons = self.daemon.readiness()
        return _json({"ready": ready, "sources": reasons}, 200 if ready else 503)

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        body = generate_latest(self._metrics)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _status(self, request: web.Request) -> web.Response:
        return _json(self.daemon.status())
