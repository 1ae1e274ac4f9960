"""Reconnection, owned by the engine: one loop for every source type.

A source only knows how to ``connect()``, ``read()`` until the connection ends, and
``close()``; it never retries by itself. :class:`Reconnector` runs sessions forever:

- a failed attempt (or a session that ended before ``healthy_after_seconds``) waits an
  exponential backoff with jitter, capped at ``max_seconds`` (tenacity; :func:`backoff_delay`);
- the backoff resets only after a session stayed connected ``healthy_after_seconds`` — a
  server that accepts and closes at once therefore cannot cause a hot reconnect loop;
- ``source.classify_error(exc)`` says whether an error is retryable; a fatal one stops the
  source with its reason (shown by ``/readyz`` and ``/status``);
- after every reconnect a ``gap`` event is queued, carrying the outage duration;
- every attempt is counted and logged (rate-limited).

The backoff itself — :class:`~streams.backoff.BackoffPolicy` and :func:`~streams.backoff.backoff_delay`
— lives in :mod:`streams.backoff`, the one policy a tool's ``retry:`` shares.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, stop_never

from daemon.errors import EndOfStream
from daemon.logs import RateLimitedLog, get_logger
from streams.backoff import ReconnectConfig, backoff_delay
from streams.base import Source
from streams.event import GAP, Event

__all__ = ["Reconnector"]

log = get_logger("reconnect")


class _Retry(Exception):
    """A failed attempt (``session_seconds`` None) or a session that ended before it became healthy."""

    def __init__(self, cause: BaseException, session_seconds: float | None = None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.session_seconds = session_seconds


class _Fatal(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Reconnector:
    """Runs ``source`` session after session until cancelled or a fatal error."""

    def __init__(self, source: Source, cfg: ReconnectConfig, *, rng: random.Random | None = None) -> None:
        self.source = source
        self.cfg = cfg
        self._rng = rng or random.Random()
        self._attempt_log = RateLimitedLog(log, "connect attempt failed", level=logging.WARNING, interval=5.0)
        self._session_log = RateLimitedLog(log, "session ended", level=logging.WARNING, interval=5.0)
        self._disconnected_at: float | None = None
        self._outage_reason: str | None = None
        #: set once the first session's connect has an outcome (connected, failed, or ended)
        self.first_outcome = asyncio.Event()
        #: the error that stopped the source for good, if its first session ended so
        self.fatal: BaseException | None = None

    def _wait(self, state: RetryCallState) -> float:
        return backoff_delay(self.cfg, state.attempt_number, self._rng.random())

    def _before_sleep(self, state: RetryCallState) -> None:
        stats = self.source.stats
        delay = state.next_action.sleep if state.next_action else 0.0
        stats.state = "backoff"
        stats.next_attempt_in = delay
        exc = state.outcome.exception() if state.outcome else None
        cause = exc.cause if isinstance(exc, _Retry) else exc
        error = _describe(cause) if cause else None
        session = exc.session_seconds if isinstance(exc, _Retry) else None
        if session is None:  # it never connected
            self._attempt_log.hit(
                source=self.source.name,
                attempt=state.attempt_number,
                retry_in_seconds=round(delay, 3),
                error=error,
            )
        else:  # it was connected, then the session ended: not a failure to connect
            self._session_log.hit(
                f"session ended after {session:.1f} s",
                source=self.source.name,
                session_seconds=round(session, 3),
                error=error,
                attempt=state.attempt_number,
                retry_in_seconds=round(delay, 3),
            )

    async def run(self) -> None:
        """Run until cancelled; returns after a fatal error or exhausted attempts (state ``failed``)."""
        stop = stop_after_attempt(self.cfg.max_attempts) if self.cfg.max_attempts else stop_never
        stats = self.source.stats
        while True:
            retrying = AsyncRetrying(
                wait=self._wait,
                retry=retry_if_exception_type(_Retry),
                stop=stop,
                before_sleep=self._before_sleep,
                reraise=True,
                sleep=asyncio.sleep,
            )
            try:
                await retrying(self._session)
            except _Fatal as fatal:
                self._fail(f"fatal: {_describe(fatal.cause)}", fatal.cause)
                return
            except _Retry as gave_up:
                self._fail(
                    f"gave up after {self.cfg.max_attempts} attempts: {_describe(gave_up.cause)}",
                    gave_up.cause,
                )
                return
            if stats.state == "finished":
                return

    def _fail(self, reason: str, cause: BaseException) -> None:
        stats = self.source.stats
        stats.state = "failed"
        stats.last_error = reason
        log.error(
            "source stopped",
            extra={"fields": {"source": self.source.name, "reason": reason}},
            exc_info=cause if not isinstance(cause, asyncio.CancelledError) else None,
        )

    async def _session(self) -> None:
        try:
            await self._one_session()
        finally:
            self.first_outcome.set()

    async def _one_session(self) -> None:
        source = self.source
        stats = source.stats
        stats.attempts += 1
        if stats.attempts > 1:
            stats.reconnect_attempts += 1
        stats.state = "connecting"
        connected_at: float | None = None
        try:
            try:
                await source.connect()
                connected_at = time.monotonic()
                self.first_outcome.set()
                stats.connects += 1
                stats.state = "connected"
                stats.next_attempt_in = None
                stats.connected_since = time.time()
                if stats.connects > 1 or self._disconnected_at is not None:
                    log.info(
                        "reconnected", extra={"fields": {"source": source.name, "connects": stats.connects}}
                    )
                    await self._emit_gap()
                else:
                    log.info("connected", extra={"fields": {"source": source.name}})
                await source.read()
                reason: BaseException = ConnectionError("connection ended")
            finally:
                stats.connected_since = None
                await source.close()
        except asyncio.CancelledError:
            stats.state = "stopped"
            raise
        except Exception as exc:
            reason = exc
        if isinstance(reason, EndOfStream):
            stats.state = "finished"
            log.info("source finished", extra={"fields": {"source": source.name}})
            return
        stats.last_error = _describe(reason)
        stats.last_error_at = time.time()
        if connected_at is not None:
            stats.disconnects += 1
            self._disconnected_at = time.time()
            self._outage_reason = _describe(reason)
        if not source.classify_error(reason):
            if not self.first_outcome.is_set():  # it never connected: its configuration cannot work
                self.fatal = reason
            raise _Fatal(reason)
        session = None if connected_at is None else time.monotonic() - connected_at
        if session is not None and session >= self.cfg.healthy_after_seconds:
            log.info(
                f"session ended after {session:.1f} s; reconnecting",
                extra={
                    "fields": {
                        "source": source.name,
                        "session_seconds": round(session, 3),
                        "error": _describe(reason),
                    }
                },
            )
            return  # the outer loop starts a fresh AsyncRetrying: backoff reset
        raise _Retry(reason, session)

    async def _emit_gap(self) -> None:
        now = time.time()
        since = self._disconnected_at if self._disconnected_at is not None else now
        stats = self.source.stats
        stats.gaps += 1
        data = {
            "outage_seconds": round(now - since, 6),
            "reason": self._outage_reason,
            "reconnects": stats.connects - 1,
        }
        self._disconnected_at = None
        await self.source.queue.put(Event(self.source.name, now, now, None, data, {"gap": stats.gaps}, GAP))
