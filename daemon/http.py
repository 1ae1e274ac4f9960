"""Ops HTTP server (aiohttp, on the daemon's loop): /healthz /readyz /metrics /status.

- ``/healthz``: 200 while the process serves requests (liveness).
- ``/readyz``: 200 when every source is connected and delivering within its idle timeout,
  503 otherwise, with the reason per source.
- ``/metrics``: Prometheus text format.
- ``/status``: JSON with sources, rules and tools. It never contains configuration values
  (URLs, headers, arguments), so secrets from the environment cannot leak through it.
- ``/kill-switch``: the order tools' kill switch. ``GET`` shows it, ``POST`` engages it (optional
  JSON body ``{"reason": "..."}``), ``DELETE`` releases what ``POST`` engaged (a kill-switch
  file, if present, keeps blocking). 404 when no tool has a kill switch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.errors import StartupError
from daemon.logs import get_logger
from daemon.telemetry import metrics_registry
from handlers.ccxt_order import KillSwitch

if TYPE_CHECKING:
    from daemon.supervisor import Daemon

__all__ = ["OpsServer"]

log = get_logger("http")


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
        app.router.add_get("/kill-switch", self._kill_switch_get)
        app.router.add_post("/kill-switch", self._kill_switch_post)
        app.router.add_delete("/kill-switch", self._kill_switch_delete)
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

    # -- kill switch ----------------------------------------------------------------------------

    def _switches(self) -> dict[str, KillSwitch]:
        out = {}
        for name, tool in self.daemon.tools.items():
            switch = getattr(tool, "kill_switch", None)
            if isinstance(switch, KillSwitch):
                out[name] = switch
        return out

    def _kill_switch_state(self, switches: dict[str, KillSwitch]) -> web.Response:
        states = {name: sw.state() for name, sw in switches.items()}
        return _json({"engaged": any(s["engaged"] for s in states.values()), "tools": states})

    async def _kill_switch_get(self, request: web.Request) -> web.Response:
        switches = self._switches()
        if not switches:
            return _json({"error": "no tool with a kill switch is configured"}, 404)
        return self._kill_switch_state(switches)

    async def _kill_switch_post(self, request: web.Request) -> web.Response:
        switches = self._switches()
        if not switches:
            return _json({"error": "no tool with a kill switch is configured"}, 404)
        reason = "engaged over HTTP"
        if request.can_read_body:
            if request.content_type != "application/json":
                return _json({"error": 'the body must be JSON: {"reason": "..."}'}, 415)
            try:
                body = orjson.loads(await request.content.read(4096))
            except orjson.JSONDecodeError:
                return _json({"error": "the body is not valid JSON"}, 400)
            if isinstance(body, dict) and isinstance(body.get("reason"), str) and body["reason"].strip():
                reason = body["reason"].strip()[:200]
        for switch in switches.values():
            switch.engage(reason)
        log.warning(
            "kill switch engaged: live orders are refused",
            extra={"fields": {"tools": sorted(switches), "reason": reason, "peer": request.remote}},
        )
        return self._kill_switch_state(switches)

    async def _kill_switch_delete(self, request: web.Request) -> web.Response:
        switches = self._switches()
        if not switches:
            return _json({"error": "no tool with a kill switch is configured"}, 404)
        for switch in switches.values():
            switch.release()
        still = sorted(name for name, sw in switches.items() if sw.blocking() is not None)
        log.warning(
            "kill switch released over HTTP",
            extra={
                "fields": {"tools": sorted(switches), "still_blocked_by_file": still, "peer": request.remote}
            },
        )
        return self._kill_switch_state(switches)
