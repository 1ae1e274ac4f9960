"""Prometheus metrics, collected at scrape time from the components' plain counters.

Nothing on the per-event path touches prometheus-client: sources, queues, rules and the
tool runner keep integers, and :class:`DaemonCollector` turns them into metric families
when ``/metrics`` is scraped.

Every metric is declared once, as a :class:`~streams.metrics.MetricSpec`: the daemon's own
below (:data:`DAEMON_METRICS`), a source or tool type's in its ``SPEC.metrics``, the ops
server's in ``daemon/http.py``. The families are built from those specs, and so is the table
in ``docs/operations.md`` (``python -m daemon.reference --metrics docs/operations.md``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from daemon.mcp import McpFeed
from daemon.state import Journal
from handlers.notifications import NotificationQueue
from handlers.runner import DURATION_BUCKETS, ToolRunner
from streams.base import Source
from streams.metrics import MetricSpec
from streams.rules.pipeline import Rule

__all__ = ["DAEMON_METRICS", "MCP_METRICS", "DaemonCollector", "Observed", "metrics_registry"]


class Observed(Protocol):
    """What the metrics read of a running daemon (:class:`daemon.supervisor.Daemon` is one): this
    module needs no import of the supervisor, which imports the ops server, which imports this."""

    sources: dict[str, Source]
    rules: dict[str, Rule]
    runner: ToolRunner
    journal: Journal | None
    notifications: NotificationQueue
    mcp_feed: McpFeed | None  # agent.mcp configured: the MCP server's feed and counters
    reloads: dict[str, int]  # configuration reloads by result

    def readiness(self) -> tuple[bool, dict[str, str]]: ...


_S = ("source",)

UP = MetricSpec("reflexd_up", "gauge", "1 while the daemon runs.")
READY = MetricSpec("reflexd_ready", "gauge", "1 when every source is ready.")

EVENTS_RECEIVED = MetricSpec("reflexd_events_received_total", "counter", "Messages received, by source.", _S)
EVENTS_DROPPED = MetricSpec(
    "reflexd_events_dropped_total",
    "counter",
    "Events dropped, by source and reason.",
    ("source", "reason"),
    "`reason`: `queue_full_oldest`, `queue_full_newest`, `decode_error` (also a key that is a list or "
    "an object), `future_time` (event time beyond `max_future_seconds`, see [rules.md](rules.md#time))",
)
SOURCE_CONNECTED = MetricSpec("reflexd_source_connected", "gauge", "1 while a session is connected.", _S)
SOURCE_CONNECTS = MetricSpec("reflexd_source_connects_total", "counter", "Sessions that connected.", _S)
SOURCE_RECONNECTS = MetricSpec(
    "reflexd_source_reconnects_total", "counter", "Sessions attempted after the first.", _S
)
SOURCE_GAPS = MetricSpec("reflexd_source_gaps_total", "counter", "Gap events emitted after reconnects.", _S)
EVENTS_FILTERED = MetricSpec(
    "reflexd_events_filtered_total",
    "counter",
    "Messages the source's `where:` filter dropped before the rules (intentional, not errors), by source.",
    _S,
)
SOURCE_ERRORS = MetricSpec(
    "reflexd_source_errors_total",
    "counter",
    "Source errors, by reason.",
    ("source", "reason"),
    "`reason`: `connect`, `http_<status>`, `idle_timeout`, `message_too_big`, `redirect`; ccxt sources "
    "also `stall`, `ws_closed`, `symbol_stopped`, `unexpected` and the exchange's error kind "
    "(`rate_limited`, `request_timeout`, `exchange_not_available`, `network`, `exchange_error`)",
)
SOURCE_LAST_EVENT_AGE = MetricSpec(
    "reflexd_source_last_event_age_seconds", "gauge", "Seconds since the last event.", _S
)
QUEUE_DEPTH = MetricSpec("reflexd_queue_depth", "gauge", "Events waiting in the source queue.", _S)
QUEUE_CAPACITY = MetricSpec("reflexd_queue_capacity", "gauge", "max_events of the source queue.", _S)
QUEUE_HIGH_WATER = MetricSpec("reflexd_queue_high_water", "gauge", "Deepest the source queue has been.", _S)

_R = ("rule",)
#: (attribute of :class:`~streams.rules.stats.RuleStats`, its metric)
RULE_METRICS: tuple[tuple[str, MetricSpec], ...] = (
    ("seen", MetricSpec("reflexd_rule_events_total", "counter", "Events the rule looked at.", _R)),
    ("matched", MetricSpec("reflexd_rule_matched_total", "counter", "Events whose `where` was true.", _R)),
    (
        "errors",
        MetricSpec(
            "reflexd_rule_errors_total", "counter", "Events dropped because an expression raised.", _R
        ),
    ),
    (
        "late",
        MetricSpec(
            "reflexd_rule_late_total",
            "counter",
            "Events behind the watermark, dropped by time-driven steps.",
            _R,
        ),
    ),
    (
        "suppressed",
        MetricSpec("reflexd_rule_suppressed_total", "counter", "Matches muted by cooldown or throttle.", _R),
    ),
    (
        "evicted",
        MetricSpec("reflexd_rule_evicted_total", "counter", "Per-key states forgotten at max_keys.", _R),
    ),
    (
        "overflow",
        MetricSpec(
            "reflexd_rule_overflow_total",
            "counter",
            "Events dropped from a full window or reorder buffer.",
            _R,
        ),
    ),
    ("fired", MetricSpec("reflexd_rule_fired_total", "counter", "Times the rule fired its tool calls.", _R)),
)

_T = ("tool",)
TOOL_CALLS = MetricSpec("reflexd_tool_calls_total", "counter", "Tool calls started.", _T)
TOOL_FAILURES = MetricSpec(
    "reflexd_tool_failures_total",
    "counter",
    "Tool calls that failed for good.",
    _T,
    "Retries exhausted, or not retryable.",
)
TOOL_TIMEOUTS = MetricSpec(
    "reflexd_tool_timeouts_total", "counter", "Tool call attempts that timed out.", _T, "(`timeout_seconds`)"
)
TOOL_RETRIES = MetricSpec("reflexd_tool_retries_total", "counter", "Tool call attempts after the first.", _T)
TOOL_DEDUPLICATED = MetricSpec(
    "reflexd_tool_deduplicated_total", "counter", "Calls skipped: key already succeeded.", _T
)
TOOL_DEAD_LETTERED = MetricSpec(
    "reflexd_tool_dead_lettered_total", "counter", "Calls parked in the dead-letter queue.", _T
)
TOOL_SHORT_CIRCUITED = MetricSpec(
    "reflexd_tool_short_circuited_total", "counter", "Calls refused: circuit open.", _T
)
TOOL_CIRCUIT_STATE = MetricSpec(
    "reflexd_tool_circuit_state", "gauge", "Circuit breaker: 0 closed, 1 open, 2 half-open.", _T
)
TOOL_REJECTED = MetricSpec("reflexd_tool_rejected_total", "counter", "Tool calls refused (backlog full).", _T)
TOOL_IN_FLIGHT = MetricSpec("reflexd_tool_in_flight", "gauge", "Tool calls running.", _T)
TOOL_PENDING = MetricSpec("reflexd_tool_pending", "gauge", "Tool calls waiting for a slot.", _T)
TOOL_DURATION = MetricSpec("reflexd_tool_duration_seconds", "histogram", "Tool call duration.", _T)
TOOL_SCREENED = MetricSpec(
    "reflexd_tool_screened_total",
    "counter",
    "Tool calls settled before they were queued, by outcome.",
    ("tool", "outcome"),
    "An llm tool's escalations turned away: `deduplicated`, `over_budget` (their events go to the "
    "notification queue).",
)

NOTIFICATIONS_QUEUED = MetricSpec(
    "reflexd_notifications_queued", "gauge", "Items in the notification queue.", ()
)
NOTIFICATIONS_PUT = MetricSpec(
    "reflexd_notifications_total",
    "counter",
    "Items put in the notification queue (coalesced repeats too).",
    (),
)
NOTIFICATIONS_DROPPED = MetricSpec(
    "reflexd_notifications_dropped_total",
    "counter",
    "Notification items evicted (queue full) before a reader took them.",
    (),
)

JOURNAL_DROPPED = MetricSpec(
    "reflexd_journal_dropped_total", "counter", "Journal rows dropped: writer fell behind.", ()
)
JOURNAL_WRITE_ERRORS = MetricSpec(
    "reflexd_journal_write_errors_total",
    "counter",
    "Journal batches that failed to write.",
    (),
    "Disk full, …",
)
JOURNAL_BACKLOG = MetricSpec(
    "reflexd_journal_backlog",
    "gauge",
    "Journal rows waiting for the writer.",
    (),
    "It keeps up when this stays near one batch.",
)

MCP_CALLS = MetricSpec(
    "reflexd_mcp_calls_total",
    "counter",
    "Tool calls made over MCP, by tool and outcome.",
    ("tool", "outcome"),
    "A configured tool's outcome is the runner's (`succeeded`, `failed`, `duplicate`, `dead_lettered`, "
    "`rejected`, ...) or `awaiting_approval`; `invalid`: refused arguments; wait_for_events: `events` "
    "or `timed_out`.",
)
MCP_REFUSED = MetricSpec(
    "reflexd_mcp_refused_total",
    "counter",
    "MCP requests refused, by reason.",
    ("reason",),
    "`host` (421), `origin` (403), `token_missing`, `token_wrong` (401), `throttled` (429)",
)
MCP_EVENTS = MetricSpec(
    "reflexd_mcp_events_total",
    "counter",
    "Events recorded for MCP clients, by type.",
    ("type",),
    "`fire` (a rule matched and made its calls), `notification` (an item of the notification queue)",
)
MCP_PUSHES = MetricSpec(
    "reflexd_mcp_pushes_total",
    "counter",
    "notifications/resources/updated sent to subscribers (both protocol generations).",
    (),
)
MCP_SUBSCRIPTIONS = MetricSpec(
    "reflexd_mcp_subscriptions",
    "gauge",
    "Open MCP subscriptions: resources/subscribe (per session and resource), subscriptions/listen streams.",
    (),
)
RELOADS = MetricSpec(
    "reflexd_reloads_total",
    "counter",
    "Configuration reloads (SIGHUP, `reflexd reload`, `daemon.watch_config`), by result.",
    ("result",),
    "`applied`, `unchanged` (the file was valid and equal), `failed` (invalid, or a new component "
    "could not start: the daemon runs on the previous configuration; /status `config.last_reload` says why)",
)

MCP_METRICS = (MCP_CALLS, MCP_REFUSED, MCP_EVENTS, MCP_PUSHES, MCP_SUBSCRIPTIONS)

#: The daemon's own metrics, in the order /metrics shows them (a source type's follow the sources').
DAEMON_METRICS: tuple[MetricSpec, ...] = (
    UP,
    READY,
    EVENTS_RECEIVED,
    EVENTS_DROPPED,
    SOURCE_CONNECTED,
    SOURCE_CONNECTS,
    SOURCE_RECONNECTS,
    SOURCE_GAPS,
    EVENTS_FILTERED,
    SOURCE_ERRORS,
    SOURCE_LAST_EVENT_AGE,
    QUEUE_DEPTH,
    QUEUE_CAPACITY,
    QUEUE_HIGH_WATER,
    *(spec for _, spec in RULE_METRICS),
    TOOL_CALLS,
    TOOL_FAILURES,
    TOOL_TIMEOUTS,
    TOOL_RETRIES,
    TOOL_DEDUPLICATED,
    TOOL_DEAD_LETTERED,
    TOOL_SHORT_CIRCUITED,
    TOOL_CIRCUIT_STATE,
    TOOL_REJECTED,
    TOOL_IN_FLIGHT,
    TOOL_PENDING,
    TOOL_DURATION,
    TOOL_SCREENED,
    NOTIFICATIONS_QUEUED,
    NOTIFICATIONS_PUT,
    NOTIFICATIONS_DROPPED,
    JOURNAL_DROPPED,
    JOURNAL_WRITE_ERRORS,
    JOURNAL_BACKLOG,
    RELOADS,
    *MCP_METRICS,
)


def _counter(spec: MetricSpec) -> CounterMetricFamily:
    assert spec.kind == "counter", spec.name
    return CounterMetricFamily(spec.name, spec.help, labels=list(spec.labels))


def _gauge(spec: MetricSpec) -> GaugeMetricFamily:
    assert spec.kind == "gauge", spec.name
    return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))


class DaemonCollector(Collector):
    """Reads a running daemon at scrape time."""

    def __init__(self, daemon: Observed) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        d = self.daemon
        now = time.time()
        up = _gauge(UP)
        up.add_metric([], 1)
        ready = _gauge(READY)
        ready.add_metric([], 1 if d.readiness()[0] else 0)
        yield up
        yield ready
        yield from self._sources(d, now)
        yield from self._rules(d)
        yield from self._tools(d)
        yield from self._notifications(d)
        journal = d.journal
        if journal is not None:
            dropped = _counter(JOURNAL_DROPPED)
            dropped.add_metric([], journal.dropped)
            errors = _counter(JOURNAL_WRITE_ERRORS)
            errors.add_metric([], journal.write_errors)
            backlog = _gauge(JOURNAL_BACKLOG)
            backlog.add_metric([], journal.backlog)
            yield from (dropped, errors, backlog)
        reloads = _counter(RELOADS)
        for result, count in d.reloads.items():
            reloads.add_metric([result], count)
        yield reloads
        if d.mcp_feed is not None:
            yield from self._mcp(d.mcp_feed)

    def _sources(self, d: Observed, now: float) -> Iterator[Metric]:
        received = _counter(EVENTS_RECEIVED)
        dropped = _counter(EVENTS_DROPPED)
        connected = _gauge(SOURCE_CONNECTED)
        connects = _counter(SOURCE_CONNECTS)
        reconnects = _counter(SOURCE_RECONNECTS)
        gaps = _counter(SOURCE_GAPS)
        filtered = _counter(EVENTS_FILTERED)
        errors = _counter(SOURCE_ERRORS)
        age = _gauge(SOURCE_LAST_EVENT_AGE)
        depth = _gauge(QUEUE_DEPTH)
        capacity = _gauge(QUEUE_CAPACITY)
        high = _gauge(QUEUE_HIGH_WATER)
        for name, src in d.sources.items():
            s, q = src.stats, src.queue
            received.add_metric([name], s.received)
            dropped.add_metric([name, "queue_full_oldest"], q.evicted)
            dropped.add_metric([name, "queue_full_newest"], q.rejected)
            dropped.add_metric([name, "decode_error"], s.decode_errors)
            dropped.add_metric([name, "future_time"], s.future)
            connected.add_metric([name], 1 if s.state == "connected" else 0)
            connects.add_metric([name], s.connects)
            reconnects.add_metric([name], s.reconnect_attempts)
            gaps.add_metric([name], s.gaps)
            filtered.add_metric([name], s.filtered)
            for reason, count in sorted(s.errors.items()):
                errors.add_metric([name, reason], count)
            if s.last_event_at is not None:
                age.add_metric([name], max(0.0, now - s.last_event_at))
            depth.add_metric([name], len(q))
            capacity.add_metric([name], q.max_events)
            high.add_metric([name], q.high_water)
        yield from (
            received,
            dropped,
            connected,
            connects,
            reconnects,
            gaps,
            filtered,
            errors,
            age,
            depth,
            capacity,
            high,
        )
        yield from self._source_specific(d)

    def _source_specific(self, d: Observed) -> Iterator[Metric]:
        """Metrics a source type adds (its ``SPEC.metrics``, e.g. Kafka pauses and commits), one
        family per metric, labelled by source."""
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for name, src in d.sources.items():
            for spec, value in src.metric_samples():
                fam = families.get(spec.name)
                if fam is None:
                    fam = families[spec.name] = _counter(spec) if spec.kind == "counter" else _gauge(spec)
                fam.add_metric([name], value)
        yield from families.values()

    def _notifications(self, d: Observed) -> Iterator[Metric]:
        q = d.notifications
        queued, put, dropped = (
            _gauge(NOTIFICATIONS_QUEUED),
            _counter(NOTIFICATIONS_PUT),
            _counter(NOTIFICATIONS_DROPPED),
        )
        queued.add_metric([], len(q))
        put.add_metric([], q.put_count)
        dropped.add_metric([], q.dropped)
        yield from (queued, put, dropped)

    def _mcp(self, feed: McpFeed) -> Iterator[Metric]:
        stats = feed.stats
        calls, refused, events, pushes = (
            _counter(MCP_CALLS),
            _counter(MCP_REFUSED),
            _counter(MCP_EVENTS),
            _counter(MCP_PUSHES),
        )
        for (tool, outcome), count in sorted(stats.calls.items()):
            calls.add_metric([tool, outcome], count)
        for reason in ("host", "origin", "token_missing", "token_wrong", "throttled"):
            refused.add_metric([reason], stats.refused[reason])
        events.add_metric(["fire"], feed.fires)
        events.add_metric(["notification"], feed.notifications)
        pushes.add_metric([], stats.pushes)
        subscriptions = _gauge(MCP_SUBSCRIPTIONS)
        subscriptions.add_metric([], stats.subscriptions)
        yield from (calls, refused, events, pushes, subscriptions)

    def _rules(self, d: Observed) -> Iterator[Metric]:
        families = [(field, _counter(spec)) for field, spec in RULE_METRICS]
        for name, rule in d.rules.items():
            for field, fam in families:
                fam.add_metric([name], getattr(rule.stats, field))
        yield from (fam for _, fam in families)

    def _tools(self, d: Observed) -> Iterator[Metric]:
        calls = _counter(TOOL_CALLS)
        failures = _counter(TOOL_FAILURES)
        timeouts = _counter(TOOL_TIMEOUTS)
        retries = _counter(TOOL_RETRIES)
        dedup = _counter(TOOL_DEDUPLICATED)
        dlq = _counter(TOOL_DEAD_LETTERED)
        shorted = _counter(TOOL_SHORT_CIRCUITED)
        circuit = _gauge(TOOL_CIRCUIT_STATE)
        rejected = _counter(TOOL_REJECTED)
        in_flight = _gauge(TOOL_IN_FLIGHT)
        pending = _gauge(TOOL_PENDING)
        duration = HistogramMetricFamily(
            TOOL_DURATION.name, TOOL_DURATION.help, labels=list(TOOL_DURATION.labels)
        )
        screened = _counter(TOOL_SCREENED)
        for name, (_tool, s, waiting) in d.runner.lanes().items():
            calls.add_metric([name], s.calls)
            failures.add_metric([name], s.failures)
            timeouts.add_metric([name], s.timeouts)
            retries.add_metric([name], s.retries)
            dedup.add_metric([name], s.deduplicated)
            dlq.add_metric([name], s.dead_lettered)
            shorted.add_metric([name], s.short_circuited)
            circuit.add_metric([name], d.runner.breaker(name).code)
            rejected.add_metric([name], s.rejected)
            in_flight.add_metric([name], s.in_flight)
            pending.add_metric([name], waiting)
            cumulative = 0
            buckets = []
            for bound, count in zip((*DURATION_BUCKETS, float("inf")), s.buckets, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            duration.add_metric([name], buckets, s.duration_sum)
            for outcome, count in sorted(s.screened_by.items()):
                screened.add_metric([name, outcome], count)
        yield from (
            calls,
            failures,
            timeouts,
            retries,
            dedup,
            dlq,
            shorted,
            circuit,
            rejected,
            in_flight,
            pending,
        )
        yield duration
        yield screened
        yield from self._tool_specific(d)

    def _tool_specific(self, d: Observed) -> Iterator[Metric]:
        """Metrics a tool type adds (its ``SPEC.metrics``, e.g. the llm tool's runs by outcome),
        labelled by tool and then the spec's other labels."""
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for name, (tool, _stats, _waiting) in d.runner.lanes().items():
            for spec, labels, value in tool.metric_samples():
                fam = families.get(spec.name)
                if fam is None:
                    fam = families[spec.name] = _counter(spec) if spec.kind == "counter" else _gauge(spec)
                fam.add_metric([name, *labels], value)
        yield from families.values()


def metrics_registry(daemon: Observed) -> CollectorRegistry:
    """A fresh registry holding only this daemon's metrics (tests build their own)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    return registry
