"""The daemon: builds components from a validated config, starts and stops them in order.

Start downstream-first — ops server, tools (runner), rules, then sources — and report ready
once. Stop upstream-first within one budget (``shutdown_timeout_seconds``): sources stop
reading, their queues drain through the rules, the tool runner finishes queued and running
calls; whatever is still running when the budget is spent is cancelled and named in the log.
Every task belongs to the daemon; nothing runs unowned.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from reactivex.scheduler.eventloop import AsyncIOScheduler

from daemon import systemd
from daemon.agent_state import AgentState
from daemon.agent_view import Shown
from daemon.config import AppConfig
from daemon.errors import ConfigError, ShutdownTimeout, StartupError
from daemon.http import OpsServer
from daemon.logs import RateLimitedLog, get_logger, hide_secrets
from daemon.mcp import McpFeed
from daemon.reload import RELOAD_RESULTS, ReloadPlan, config_hash, plan_reload
from daemon.rule_state import RuleCheckpoints
from daemon.state import Journal, StateStore
from daemon.status_view import last_error_shown, last_fire_shown
from handlers.agent import cap_text
from handlers.agent_store import Approval
from handlers.base import CallContext, CallReply, Tool
from handlers.host import RunnerHost
from handlers.notifications import NotificationQueue
from handlers.runner import ToolRunner
from streams.base import Source
from streams.emitted import EmittedEvents
from streams.event import event_from_record
from streams.reconnect import Reconnector
from streams.rules.pipeline import Dispatcher, Rule

if TYPE_CHECKING:  # imported at start, only when agent.mcp is configured (the SDK is slow to import)
    from daemon.mcp_server import McpServer
    from daemon.tracing import OtelTracer

__all__ = ["Daemon"]

log = get_logger("daemon")

FINISH_GRACE_SECONDS = 3.0
#: While a graceful stop waits for work, it logs what is left this often.
STOP_PROGRESS_SECONDS = 2.0
#: How long the start waits for the sources' first connects before it reports ready anyway.
FIRST_CONNECT_WAIT_SECONDS = 5.0
#: How often a running daemon drops agent runs, usage and approvals past the journal's retention
#: (the start does it too).
AGENT_PRUNE_SECONDS = 3600.0

#: The cyclic collector's young-generation threshold while a daemon runs (CPython's default is
#: 700 allocations). Every event allocates a few containers that then wait in queues for some
#: milliseconds; at 700 the collector promotes them to the old generation, which then fills fast
#: enough to trigger full collections (each walking the whole heap) several times a second under
#: load: 40 % of the CPU in bench/kafka_pipeline.py. At 10,000 they mostly die young; at 50,000
#: (a Kafka record makes ~5 containers) bench/kafka_pipeline.py spends ~0 s in it instead of ~7 % of the CPU.
GC_YOUNG_THRESHOLD = 50_000


class _HeapTuning:
    """While at least one daemon runs: the objects built at start are frozen (full collections
    skip them; garbage among them waits for the unfreeze) and the young generation is larger.
    The last daemon to stop puts the collector back as it was."""

    running = 0
    saved: tuple[int, int, int] = (700, 10, 10)

    @classmethod
    def enter(cls) -> None:
        if cls.running == 0:
            cls.saved = gc.get_threshold()
            if cls.saved[0]:  # 0: the process turned automatic collection off; leave it so
                gc.set_threshold(max(GC_YOUNG_THRESHOLD, cls.saved[0]), cls.saved[1], cls.saved[2])
        cls.running += 1
        gc.freeze()

    @classmethod
    def leave(cls) -> None:
        cls.running -= 1
        if cls.running == 0:
            gc.unfreeze()
            gc.set_threshold(*cls.saved)


class Daemon:
    """One running reflexd."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        hide_secrets(config.secret_texts)  # no log line or stored error shows a ${VAR} value
        ctx = config.build_context()
        self.tools: dict[str, Tool] = {}
        for name, plan in config.tools.items():
            tool = plan.spec.factory(name, plan.config, ctx)
            assert isinstance(tool, Tool)
            self.tools[name] = tool
        self.sources: dict[str, Source] = {}
        for name, plan in config.sources.items():
            source = plan.spec.factory(name, plan.config, ctx)
            assert isinstance(source, Source)
            self.sources[name] = source
        self.store: StateStore | None = None
        self.journal: Journal | None = None
        journal_cfg = config.daemon.journal
        if journal_cfg.enabled:
            self.store = StateStore(
                ctx.resolve(config.daemon.state_path),
                retention_seconds=journal_cfg.retention_seconds,
                max_rows=journal_cfg.max_rows,
            )
            self.journal = Journal(self.store)
        self.runner = ToolRunner(self.tools, journal=self.journal, secret_args=config.secret_arguments())
        self.notifications = NotificationQueue.from_config(config.agent.notifications)
        self.agent_state = (
            AgentState(self.store, self.journal, config.secret_texts) if self.store is not None else None
        )
        self.rule_state: RuleCheckpoints | None = None  # the rules' state across restarts
        if config.daemon.checkpoint_seconds > 0:
            self.rule_state = RuleCheckpoints(
                self.store or StateStore(ctx.resolve(config.daemon.state_path)),
                config.daemon.checkpoint_seconds,
                self.journal.executor if self.journal is not None else None,
            )
        self.emitted: dict[str, EmittedEvents] = {}
        self._shown: tuple[AppConfig, Shown] | None = None  # built by the first status()
        for name, plan in config.tools.items():
            if plan.spec.emits_events:  # its events reach the rules as a source of the same name
                self.emitted[name] = self.sources[name] = EmittedEvents(name, plan.spec.type)
        self.host = RunnerHost(
            self.runner, self.notifications, self.agent_state, {n: s.emit for n, s in self.emitted.items()}
        )
        self.host.attach_all()
        # MCP (agent.mcp): the feed records fires and notifications; the server (daemon.mcp_server,
        # which imports the mcp SDK) is imported and built at start, only when configured
        self.mcp_feed: McpFeed | None = None
        self.mcp: McpServer | None = None
        # daemon.tracing: the rules' tracer (daemon.tracing imports the OpenTelemetry SDK only then)
        self.tracer: OtelTracer | None = None
        if config.daemon.tracing is not None:
            from daemon.tracing import start_tracing

            fields = {n: getattr(p.config, "trace_field", None) for n, p in config.sources.items()}
            self.tracer = start_tracing(config.daemon.tracing, {n: f for n, f in fields.items() if f})
        if config.agent.mcp is not None:
            self.mcp_feed = McpFeed(config.agent.mcp.max_events)
            self.notifications.add_listener(self.mcp_feed.noted)
        self.recovered = 0
        self.approvals_wake = asyncio.Event()
        self._approval_waits = RateLimitedLog(log, "approved call not queued: backlog full, trying again")
        self._approvals: asyncio.Task[None] | None = None
        self.rules: dict[str, Rule] = {}
        self._dispatchers: dict[str, Dispatcher] = {}
        self._submit: Callable[..., bool] = self.runner.submit
        self._scheduler: AsyncIOScheduler | None = None
        #: the file's SHA-256 and when it was loaded (a reload that applied moves both)
        self.config_hash = config_hash(config.file)
        self.loaded_at = time.time()
        #: reloads by result (applied, unchanged, failed) and the last one's report, for /status
        self.reloads: dict[str, int] = dict.fromkeys(RELOAD_RESULTS, 0)
        self.last_reload: dict[str, Any] | None = None
        self._reload_lock = asyncio.Lock()
        self._swapping = False
        self.http: OpsServer | None = None
        self.state = "created"  # created | starting | running | stopping | stopped
        self.stop_progress_seconds = STOP_PROGRESS_SECONDS
        self.started_at: float | None = None
        self._source_tasks: dict[str, asyncio.Task[None]] = {}
        self._dispatch_tasks: dict[str, asyncio.Task[None]] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self._heap_tuned = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start everything; raise StartupError (after undoing what started) if something cannot."""
        self.state = "starting"
        self.started_at = time.time()
        try:
            if self.config.daemon.http is not None:
                self.http = OpsServer(self, self.config.daemon.http)
                await self.http.start()
            if self.store is not None and self.journal is not None:
                self.store.open()
                await self.journal.start()
            await self.runner.start()
            await self._recover()
            if self.mcp_feed is not None and self.config.agent.mcp is not None:
                from daemon.mcp_server import McpServer

                self.mcp = McpServer(self, self.config.agent.mcp, self.mcp_feed)
                await self.mcp.start()
        except BaseException:
            await self._abort_start()
            raise
        self._scheduler = scheduler = AsyncIOScheduler(asyncio.get_running_loop())
        feed = self.mcp_feed
        self._submit = submit = self.runner.submit if feed is None else feed.recording(self.runner.submit)
        for name, rule_cfg in self.config.rules.items():
            self.rules[name] = Rule(name, rule_cfg, submit, scheduler, tracer=self.tracer)
        if self.rule_state is not None:  # before any event reaches a rule
            try:
                await self.rule_state.restore(self.rules)
            except BaseException:
                await self._abort_start()
                raise
            self.rule_state.start(self.rules)
        for name in self.sources:
            self._start_dispatch(name)
        reconnectors = {name: self._start_source(name) for name in self.sources}
        await self._first_connects(reconnectors)
        self.state = "running"
        _HeapTuning.enter()
        self._heap_tuned = True
        log.info(
            "ready",
            extra={
                "fields": {
                    "sources": len(self.sources),
                    "rules": len(self.rules),
                    "tools": len(self.tools),
                    "http": f"{self.http.host}:{self.http.port}" if self.http else None,
                    **({"mcp": f"{self.mcp.host}:{self.mcp.port}"} if self.mcp is not None else {}),
                }
            },
        )
        systemd.notify(f"READY=1\nSTATUS=running {len(self.sources)} sources, {len(self.rules)} rules")
        interval = systemd.watchdog_interval()
        if interval:
            self._watchdog = asyncio.create_task(self._ping_watchdog(interval), name="reflexd:watchdog")

    def _readers(self, source: str) -> list[Rule]:
        return [r for r in self.rules.values() if source in r.config.from_]

    def _start_dispatch(self, name: str) -> None:
        """The task feeding source ``name``'s queue to the rules that read it."""
        feed = self.mcp_feed
        dispatcher = self._dispatchers[name] = Dispatcher(
            self.sources[name], self._readers(name), self.runner, seen=feed.saw if feed is not None else None
        )
        self._dispatch_tasks[name] = asyncio.create_task(dispatcher.run(), name=f"reflexd:dispatch:{name}")

    def _start_source(self, name: str) -> Reconnector:
        source = self.sources[name]
        reconnector = Reconnector(source, source.config.reconnect)
        self._source_tasks[name] = asyncio.create_task(reconnector.run(), name=f"reflexd:source:{name}")
        return reconnector

    async def _first_connects(self, reconnectors: dict[str, Reconnector]) -> None:
        """Wait (at most :data:`FIRST_CONNECT_WAIT_SECONDS`) for each source's first connect to have an
        outcome; a source whose first connect failed for good (a replay file that is not there) can
        never work: undo the start and raise :class:`StartupError` naming it. A source still
        connecting, or retrying, does not hold the start back longer."""
        waits = [asyncio.create_task(r.first_outcome.wait()) for r in reconnectors.values()]
        if waits:
            try:
                await asyncio.wait(waits, timeout=FIRST_CONNECT_WAIT_SECONDS)
            finally:
                for task in waits:
                    task.cancel()
        failed = [(name, r.fatal) for name, r in reconnectors.items() if r.fatal is not None]
        if not failed:
            return
        name, cause = failed[0]
        await self._abandon()
        reason = getattr(cause, "reason", None) or str(cause) or type(cause).__name__
        raise StartupError(f"source {name}", reason)

    async def _recover(self) -> None:
        """Invocations a previous process left running are retried with their idempotency keys."""
        if self.store is None or self.journal is None:
            return
        secrets = self.config.secret_arguments()
        resumed: set[str] = set()
        for item in self.store.take_unfinished():
            event = event_from_record(item.event)
            if item.tool in self.tools:
                ctx = CallContext(item.tool, item.rule, event, item.key)
                if self.runner.submit(item.tool, item.args, ctx, screen=False):
                    self.recovered += 1
                    resumed.add(item.key)
                    continue
            await self.journal.dead_letter(
                item.key,
                item.rule,
                item.tool,
                item.args,
                item.event,
                "interrupted by a restart and could not be resumed (tool gone or backlog full)",
                item.attempts,
                secrets.get((item.rule, item.tool), frozenset()),
            )
        if self.recovered:
            log.info("resuming interrupted tool calls", extra={"fields": {"calls": self.recovered}})
        if self.agent_state is not None:
            self._settle_open_runs(resumed)
            self._approvals = asyncio.create_task(self._run_approvals(), name="reflexd:approvals")

    def _settle_open_runs(self, resumed: set[str]) -> None:
        """Agent runs a previous process left open: those whose llm call is being resumed (``resumed``:
        the keys of the calls the runner took back) go on from their journaled conversation; the
        others are marked ``interrupted`` and put in the notification queue, so the model hears of
        them at its next call."""
        assert self.agent_state is not None
        self.agent_state.prune(self.config.daemon.journal.retention_seconds)
        for run in self.agent_state.open_runs():
            if run.call_id in resumed:
                continue
            ended = self.agent_state.mark_interrupted(run, "the daemon stopped before the run ended")
            self.notifications.put(
                "interrupted",
                run.prompt,
                {"llm": run.tool, "run": run.run_id, "rounds": run.rounds},
                rule=run.rule,
                key=run.key,
            )
            log.warning(
                "agent run interrupted by a restart",
                extra={"fields": {"tool": ended.tool, "run": ended.run_id, "rule": ended.rule}},
            )

    async def _run_approvals(self) -> None:
        """Execute approved proposals (decided by ``reflexd approvals`` or the ops server), each once,
        through the runner with its idempotency key; the outcome goes to the notification queue.
        The first look also takes those a crash left executing (same key: the runner skips one that
        succeeded). Past runs and approvals are pruned here too, every :data:`AGENT_PRUNE_SECONDS`."""
        assert self.agent_state is not None
        state = self.agent_state
        poll = self.config.agent.approvals_poll_seconds
        after_restart = True
        pruned = time.monotonic()
        while True:
            try:
                taken = await state.take(after_restart=after_restart)
                after_restart = False  # those left executing are taken once by a process, not again
                for approval in taken:
                    self._execute(approval)
                for approval in await state.take_rejected():
                    self._rejected(approval)
                if time.monotonic() - pruned >= AGENT_PRUNE_SECONDS:
                    pruned = time.monotonic()
                    await state.tidy(self.config.daemon.journal.retention_seconds)
            except Exception:
                log.exception("reading approvals failed")
            self.approvals_wake.clear()
            try:
                async with asyncio.timeout(poll):
                    await self.approvals_wake.wait()
            except TimeoutError:
                pass

    def _execute(self, approval: Approval) -> None:
        assert self.agent_state is not None
        try:
            ctx = CallContext(approval.tool, approval.rule, event_from_record(approval.event), approval.key)
            future = self.host.call(approval.tool, approval.args, ctx)
        except Exception as exc:  # never expected: recorded, so that it is not left executing
            log.exception("approved call could not start", extra={"fields": {"approval": approval.id}})
            self.agent_state.executed(approval.id, "failed", None, f"could not start: {type(exc).__name__}")
            return
        log.info(
            "approved call running",
            extra={"fields": {"approval": approval.id, "tool": approval.tool, "run": approval.run_id}},
        )

        def ended(done: asyncio.Future[CallReply]) -> None:
            reply = done.result() if not done.cancelled() else CallReply("cancelled")
            if reply.outcome in ("rejected", "cancelled") and self.state == "stopping":
                return  # stays executing: taken again at the next start, with the same key
            assert self.agent_state is not None
            try:
                if reply.outcome == "rejected" and approval.tool in self.tools:
                    # the tool's backlog was full: the person's decision stands, tried again next look
                    self.agent_state.retry_later(approval.id)
                    self._approval_waits.hit(approval=approval.id, tool=approval.tool)
                    return
                self.agent_state.executed(approval.id, reply.outcome, reply.result, reply.error)
            except Exception:
                log.exception(
                    "recording an approved call failed", extra={"fields": {"approval": approval.id}}
                )
            fields: dict[str, Any] = {"approval": approval.id, "tool": approval.tool, "args": approval.args}
            if reply.result is not None:  # JSON text, as every tool result the model reads
                fields["result"] = cap_text(orjson.dumps(reply.result, default=repr).decode(), 2000)
            if reply.error:
                fields["error"] = reply.error.split("\n", 1)[0]
            self.notifications.put(
                "approval",
                f"approved call {approval.id} of {approval.tool}: {reply.outcome}",
                fields,
                rule=approval.rule,
            )

        future.add_done_callback(ended)

    def _rejected(self, approval: Approval) -> None:
        """A person rejected a proposal: the model hears of it at its next call (nothing was made)."""
        fields: dict[str, Any] = {"approval": approval.id, "tool": approval.tool, "args": approval.args}
        if approval.note:
            fields["note"] = approval.note
        self.notifications.put(
            "approval",
            f"proposed call {approval.id} of {approval.tool} was rejected by a person; it was not made",
            fields,
            rule=approval.rule,
        )

    async def _abort_start(self) -> None:
        if self._approvals is not None:
            self._approvals.cancel()
        if self.mcp is not None:
            await self.mcp.stop()
        try:
            await self.runner.stop(1.0)
        except ShutdownTimeout:
            pass
        await self._close_state()
        if self.http is not None:
            await self.http.stop()
        self.state = "stopped"

    async def _close_state(self) -> None:
        rule_state, self.rule_state = self.rule_state, None
        if rule_state is not None:  # the last checkpoint, while the state file is open
            await rule_state.stop(self.rules)
        journal, self.journal = self.journal, None
        if journal is not None and journal.running:
            await journal.stop()
        if self.store is not None:
            self.store.close()

    async def _ping_watchdog(self, interval: float) -> None:
        while True:
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def stop(self) -> list[str]:
        """Stop upstream-first within the shutdown budget; returns what had to be cancelled."""
        if self.state in ("stopping", "stopped"):
            return []
        self.state = "stopping"
        budget = self.config.daemon.shutdown_timeout_seconds
        deadline = time.monotonic() + budget
        systemd.notify("STOPPING=1")
        log.info("stopping", extra={"fields": {"budget_seconds": budget}})
        cancelled: list[str] = []
        progress = asyncio.create_task(self._report_stop_progress(deadline), name="stop progress")

        try:
            await self._stop_in_order(deadline, cancelled)
        except asyncio.CancelledError:
            # a forced stop (a second SIGINT): the work in flight is abandoned, but what the
            # components hold (HTTP sessions, connections, the state file) is still released
            await self._abandon()
            raise
        finally:
            progress.cancel()
            if self._heap_tuned:
                self._heap_tuned = False
                _HeapTuning.leave()
        self.state = "stopped"
        if cancelled:
            log.error(
                "shutdown budget exceeded",
                extra={"fields": {"budget_seconds": budget, "cancelled": cancelled}},
            )
        else:
            log.info(
                "stopped", extra={"fields": {"seconds": round(budget - (deadline - time.monotonic()), 3)}}
            )
        return cancelled

    async def _report_stop_progress(self, deadline: float) -> None:
        """Every :attr:`stop_progress_seconds` of a graceful stop, log the calls still queued or running
        per tool and the events still queued, so a long drain is not silent."""
        while True:
            await asyncio.sleep(self.stop_progress_seconds)
            tools = {
                name: stats.in_flight + pending
                for name, (_tool, stats, pending) in self.runner.lanes().items()
                if stats.in_flight + pending
            }
            events = sum(len(source.queue) for source in self.sources.values())
            calls = sum(tools.values())
            if not calls and not events:
                continue
            log.info(
                f"stopping: {calls} calls still running"
                + (f" (tools: {', '.join(f'{name} {n}' for name, n in tools.items())})" if tools else "")
                + (f", {events} events queued" if events else ""),
                extra={
                    "fields": {
                        "calls": calls,
                        "tools": tools,
                        "queued_events": events,
                        "budget_left_seconds": round(max(0.0, deadline - time.monotonic()), 1),
                    }
                },
            )

    async def _stop_in_order(self, deadline: float, cancelled: list[str]) -> None:
        """The graceful stop, within ``deadline``; what had to be cut is added to ``cancelled``."""
        if self._approvals is not None:
            self._approvals.cancel()
        # 1. sources stop reading (each session closes its connection on cancellation)
        for source in self.sources.values():
            source.begin_stop()
        for task in self._source_tasks.values():
            task.cancel()
        await self._wait(self._source_tasks, deadline, "source", cancelled)
        # 2. queues drain through the rules into the runner
        for source in self.sources.values():
            source.queue.close()
        await self._wait(self._dispatch_tasks, deadline, "queue of source", cancelled, count_left=True)
        # MCP clients are callers too: the server stops before the runner (long-polls return)
        if self.mcp is not None:
            await self.mcp.stop()
        # 3. tools finish their backlog and running calls
        try:
            await self.runner.stop(max(0.0, deadline - time.monotonic()))
        except ShutdownTimeout as exc:
            cancelled.extend(exc.cancelled)
        # 4. sources settle what the drained work allows (Kafka commits finished offsets);
        #    they get a short grace even when the budget is spent, since this loses nothing
        for name, source in self.sources.items():
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), FINISH_GRACE_SECONDS)):
                    await source.finish()
            except TimeoutError:
                cancelled.append(f"finishing source {name}")
        await self._close_state()
        for rule in self.rules.values():
            rule.dispose()
        if self.tracer is not None:  # the spans of the last calls go out (the SDK's export is blocking)
            await asyncio.to_thread(self.tracer.shutdown)
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.http is not None:
            await self.http.stop()

    async def _abandon(self) -> None:
        """What a forced stop still does, without waiting for work: cancel the source and dispatch
        tasks, stop the runner at once (cancelling its calls, then stopping every tool: the
        webhook tool's aiohttp session is closed there), write what the journal holds, close the
        ops server. Each step gets at most :data:`FINISH_GRACE_SECONDS`."""
        tasks = [*self._source_tasks.values(), *self._dispatch_tasks.values()]
        for extra in (self._watchdog, self._approvals):
            if extra is not None:
                tasks.append(extra)
        for task in tasks:
            task.cancel()
        steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("sources", lambda: asyncio.wait(tasks) if tasks else asyncio.sleep(0)),
            ("tools", lambda: self.runner.stop(0.0)),
            ("state", self._close_state),
        ]
        if self.http is not None:
            steps.append(("ops server", self.http.stop))
        if self.mcp is not None:
            steps.insert(1, ("mcp server", self.mcp.stop))
        for what, step in steps:
            try:
                async with asyncio.timeout(FINISH_GRACE_SECONDS):
                    await step()
            except (ShutdownTimeout, TimeoutError):
                pass  # named already, or nothing more to wait for
            except Exception:
                log.exception("closing after a forced stop failed", extra={"fields": {"step": what}})
        for rule in self.rules.values():
            rule.dispose()
        self.state = "stopped"

    async def _wait(
        self,
        tasks: dict[str, asyncio.Task[None]],
        deadline: float,
        what: str,
        cancelled: list[str],
        *,
        count_left: bool = False,
    ) -> None:
        """Wait for ``tasks`` until ``deadline``; cancel and name the ones still running."""
        if not tasks:
            return
        remaining = max(0.0, deadline - time.monotonic())
        _done, pending = await asyncio.wait(tasks.values(), timeout=remaining)
        for name, task in tasks.items():
            if task in pending:
                task.cancel()
                extra = ""
                if count_left and name in self.sources:
                    extra = f" ({len(self.sources[name].queue)} events left)"
                cancelled.append(f"{what} {name}{extra}")
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        for task in tasks.values():
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error(
                    "task failed", exc_info=task.exception(), extra={"fields": {"task": task.get_name()}}
                )

    # -- reload ------------------------------------------------------------------------------

    async def reload(self, load: Callable[[], AppConfig]) -> dict[str, Any]:
        """Read the configuration again with ``load`` (in a thread: it validates completely, as
        ``reflexd check`` does) and restart only what changed (:mod:`daemon.reload`). An invalid file
        changes nothing: its ``file:line`` errors are logged and the failure is counted and shown in
        /status. Reloads run one at a time; one asked for while the daemon is not running is refused.
        Returns the report /status shows as ``config.last_reload``."""
        async with self._reload_lock:
            started = time.monotonic()
            report: dict[str, Any] = {"at": time.time()}
            if self.state != "running":
                report.update(result="failed", errors=[f"the daemon is {self.state}"])
                return self._reloaded(report, started)
            try:
                new = await asyncio.to_thread(load)
                digest = await asyncio.to_thread(config_hash, new.file)
            except ConfigError as exc:
                report.update(result="failed", errors=[str(issue) for issue in exc.issues])
                return self._reloaded(report, started)
            except Exception as exc:  # the file went away, ...: the old configuration goes on
                report.update(result="failed", errors=[f"{type(exc).__name__}: {exc}"])
                return self._reloaded(report, started)
            plan = plan_reload(self.config, new)
            # daemon: and agent: are kept as they run (see daemon.reload); the rest is applied
            effective = dataclasses.replace(new, daemon=self.config.daemon, agent=self.config.agent)
            hide_secrets(self.config.secret_texts | new.secret_texts)  # calls in flight may hold the old ones
            if plan.not_applied:
                log.warning(
                    "reload: these settings apply only at a restart; the running values are kept",
                    extra={"fields": {"keys": plan.not_applied}},
                )
            report.update(
                {kind: getattr(plan, kind).as_dict() for kind in ("sources", "tools", "rules")},
                not_applied=plan.not_applied,
            )
            if not plan.touched:
                self.config, self.config_hash, self.loaded_at = effective, digest, time.time()
                report["result"] = "unchanged"
                return self._reloaded(report, started)
            self._swapping = False
            try:
                cut = await self._apply(plan, effective)
            except Exception as exc:
                if not self._swapping:  # a new component could not be built or started
                    log.exception("reload could not start a component; nothing changed")
                    report.update(result="failed", errors=[f"{type(exc).__name__}: {exc}"])
                    return self._reloaded(report, started)
                # never expected once the swap began: what ran until then is a mix of both files
                log.exception("reload failed part way; restart the daemon to run one configuration")
                report.update(result="failed", partial=True, errors=[f"{type(exc).__name__}: {exc}"])
                return self._reloaded(report, started)
            self.config, self.config_hash, self.loaded_at = effective, digest, time.time()
            report["result"] = "applied"
            if cut:
                report["cancelled"] = cut
            return self._reloaded(report, started)

    def _reloaded(self, report: dict[str, Any], started: float) -> dict[str, Any]:
        report["seconds"] = round(time.monotonic() - started, 4)
        result = report["result"]
        self.reloads[result] += 1
        self.last_reload = report
        if result == "failed":
            log.error(
                "reload failed; still running the previous configuration",
                extra={"fields": {"errors": report.get("errors", []), "config_hash": self.config_hash}},
            )
            for line in report.get("errors", []):
                log.error(f"reload: {line}")
            return report
        fields: dict[str, Any] = {"result": result, "seconds": report["seconds"], "hash": self.config_hash}
        for kind in ("sources", "tools", "rules"):
            for what, names in report[kind].items():
                if names and what != "kept":
                    fields[f"{kind}_{what}"] = names
            fields[f"{kind}_kept"] = len(report[kind]["kept"])
        log.info("reloaded" if result == "applied" else "reload: nothing changed", extra={"fields": fields})
        return report

    async def _apply(self, plan: ReloadPlan, new: AppConfig) -> list[str]:
        """Apply ``plan``: build and start what is new first (a failure there stops what it started and
        raises, with nothing else changed); then stop the removed and changed sources upstream-first
        (their queues drain through the running rules), route calls to the new tools, swap the
        rules, start the new sources, and let the replaced tools finish their calls within the
        shutdown budget. Returns what the budget had to cut."""
        deadline = time.monotonic() + self.config.daemon.shutdown_timeout_seconds
        ctx = new.build_context()
        tools: dict[str, Tool] = {}
        for name in (*plan.tools.added, *plan.tools.changed):
            tool_plan = new.tools[name]
            tool = tool_plan.spec.factory(name, tool_plan.config, ctx)
            assert isinstance(tool, Tool)
            tools[name] = tool
        sources: dict[str, Source] = {}
        for name in (*plan.sources.added, *plan.sources.changed):
            source_plan = new.sources[name]
            source = source_plan.spec.factory(name, source_plan.config, ctx)
            assert isinstance(source, Source)
            sources[name] = source
        emitted = {
            name: EmittedEvents(name, new.tools[name].spec.type)
            for name in tools
            if new.tools[name].spec.emits_events and name not in self.emitted
        }
        rules: dict[str, Rule] = {}
        started: list[Tool] = []
        try:
            for name in (*plan.rules.added, *plan.rules.changed):
                rules[name] = Rule(name, new.rules[name], self._submit, self._scheduler, tracer=self.tracer)
            for tool in tools.values():
                tool.attach(self.host)
                await tool.start()
                started.append(tool)
        except BaseException:
            for rule in rules.values():
                rule.dispose()
            for tool in reversed(started):
                try:
                    await tool.stop()
                except Exception:
                    log.exception("tool stop failed", extra={"fields": {"tool": tool.name}})
            raise
        cut: list[str] = []
        self._swapping = True  # from here on a failure leaves part of the new configuration applied
        # 1. sources that go or change stop reading; their queues drain through the running rules
        for name in (*plan.sources.removed, *plan.sources.changed):
            await self._stop_source(name, deadline, cut)
        # 2. calls go to the new tools from now on (the old ones finish theirs below)
        retired = []
        self.tools.update(tools)
        for tool in tools.values():
            old = await self.runner.put_tool(tool)
            if old is not None:
                retired.append(old)
        for name, events in emitted.items():
            self.emitted[name] = events
            self.sources[name] = events
        self.host.set_emitters({n: e.emit for n, e in self.emitted.items()})
        self.runner.set_secret_args(new.secret_arguments())
        # 3. the rules: every dispatcher switches between two events. A changed rule takes over its
        #    predecessor's state when its definition (all but `then`) is the same: a new argument or
        #    tool keeps the cooldowns; a changed definition starts fresh (no await until the swap)
        for name in plan.rules.changed:
            if not rules[name].restore(self.rules[name].snapshot()):
                log.info("reload: rule changed; its state starts fresh", extra={"fields": {"rule": name}})
        for name in (*plan.rules.removed, *plan.rules.changed):
            self.rules.pop(name).dispose()
        self.rules.update(rules)
        for name in emitted:
            self._start_dispatch(name)
        for name, dispatcher in self._dispatchers.items():
            dispatcher.set_rules(self._readers(name))
        # 4. new sources start
        for name, source in sources.items():
            self.sources[name] = source
            self._start_dispatch(name)
            self._start_source(name)
        # 5. the replaced and removed tools finish their calls (and an llm tool's events their rules)
        for name in plan.tools.removed:
            del self.tools[name]
            old = self.runner.take_tool(name)
            if old is not None:
                retired.append(old)
        for lane in retired:
            cut += await self.runner.retire(lane, max(0.0, deadline - time.monotonic()))
        for name in plan.tools.removed:
            if name in self.emitted:
                del self.emitted[name]
                self.host.set_emitters({n: e.emit for n, e in self.emitted.items()})
                await self._stop_source(name, deadline, cut)
        return cut

    async def _stop_source(self, name: str, deadline: float, cut: list[str]) -> None:
        """Stop one source as a shutdown does (reading, then its queue drained, then its finish)."""
        source = self.sources.pop(name)
        source.begin_stop()
        task = self._source_tasks.pop(name, None)
        if task is not None:
            task.cancel()
            await self._wait({name: task}, deadline, "source", cut)
        source.queue.close()
        dispatch = self._dispatch_tasks.pop(name, None)
        self._dispatchers.pop(name, None)
        if dispatch is not None:
            self.sources[name] = source  # named in the count of events left if the budget runs out
            try:
                await self._wait({name: dispatch}, deadline, "queue of source", cut, count_left=True)
            finally:
                del self.sources[name]
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), FINISH_GRACE_SECONDS)):
                await source.finish()
        except TimeoutError:
            cut.append(f"finishing source {name}")

    # -- introspection ----------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, str]]:
        """(ready, reason per source). Not ready while starting or stopping."""
        now = time.time()
        reasons: dict[str, str] = {}
        ready = self.state == "running"
        for name, source in self.sources.items():
            ok, reason = source.readiness(now)
            reasons[name] = reason
            ready = ready and ok
        if self.state != "running":
            reasons["daemon"] = self.state
        return ready, reasons

    def _status_shown(self) -> Shown:
        """What takes the secrets out of a fire's sample and an error (for the current configuration)."""
        shown = self._shown
        if shown is None or shown[0] is not self.config:
            shown = self._shown = (self.config, Shown(self.config))
        return shown[1]

    def status(self) -> dict[str, Any]:
        """Counters and states, never configuration values; a rule's last fire and a tool's last
        error are redacted (:mod:`daemon.status_view`)."""
        ready, reasons = self.readiness()
        shown, now = self._status_shown(), time.time()
        return {
            "state": self.state,
            "ready": ready,
            "config": {
                "file": self.config.file,
                "hash": self.config_hash,
                "loaded_at": self.loaded_at,
                "reloads": dict(self.reloads),
                "last_reload": self.last_reload,
            },
            "uptime_seconds": None if self.started_at is None else round(time.time() - self.started_at, 3),
            "journal": None
            if self.journal is None
            else {
                "dropped": self.journal.dropped,
                "write_errors": self.journal.write_errors,
                "backlog": self.journal.backlog,
            },
            "sources": {
                name: {
                    "type": s.type_name,
                    "ready": reasons[name],
                    **s.stats.as_dict(),
                    "queue": s.queue.stats(),
                    **s.extra_status(),
                }
                for name, s in self.sources.items()
            },
            "rules": {
                name: {
                    "from": r.config.from_,
                    **r.stats.as_dict(),
                    "last_fire": last_fire_shown(shown, r.last_fire, now),
                }
                for name, r in self.rules.items()
            },
            "notifications": self.notifications.stats(),
            **({"mcp": self.mcp.status()} if self.mcp is not None else {}),
            "tools": {
                name: {
                    "type": tool.type_name,
                    "calls": st.calls,
                    "succeeded": st.succeeded,
                    "failures": st.failures,
                    "timeouts": st.timeouts,
                    "deduplicated": st.deduplicated,
                    "dead_lettered": st.dead_lettered,
                    "short_circuited": st.short_circuited,
                    "screened": st.screened,
                    "circuit": self.runner.breaker(name).state,
                    "attempts": st.attempts,
                    "retries": st.retries,
                    "rejected": st.rejected,
                    "in_flight": st.in_flight,
                    "pending": pending,
                    "duration_p50_seconds": st.quantile(0.5),
                    "duration_p99_seconds": st.quantile(0.99),
                    "last_error": last_error_shown(shown, st.last_error, now),
                    **tool.extra_status(),
                }
                for name, (tool, st, pending) in self.runner.lanes().items()
            },
        }
