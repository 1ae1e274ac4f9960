"""Prometheus metrics, collected at scrape time from the components' plain counters.

Nothing on the per-event path touches prometheus-client: sources, queues, rules and the
tool runner keep integers, and :class:`DaemonCollector` turns them into metric families
when ``/metrics`` is scraped.

=====================================================  ===========================================
metric                                                  meaning
=====================================================  ===========================================
reflexd_up / reflexd_ready                              process up; every source ready
reflexd_events_received_total{source}                   messages received from the peer
reflexd_events_dropped_total{source,reason}             queue_full_oldest, queue_full_newest,
                                                        decode_error, future_time
reflexd_source_connected{source}                        1 while a session is connected
reflexd_source_connects_total{source}                   sessions that connected
reflexd_source_reconnects_total{source}                 sessions attempted after the first
reflexd_source_gaps_total{source}                       gap events emitted
reflexd_source_errors_total{source,reason}              connect, http_<status>, idle_timeout,
                                                        message_too_big
reflexd_source_last_event_age_seconds{source}           seconds since the last event
reflexd_queue_depth / _capacity / _high_water{source}   bounded queue in front of the rules
reflexd_rule_events_total{rule}                         events the rule looked at
reflexd_rule_matched_total{rule}                        `where` was true
reflexd_rule_errors_total{rule}                         an expression raised (event dropped)
reflexd_rule_late_total{rule}                           behind the watermark (dropped)
reflexd_rule_suppressed_total{rule}                     muted by cooldown or throttle
reflexd_rule_evicted_total{rule}                        per-key state forgotten at max_keys
reflexd_rule_overflow_total{rule}                       dropped from a full window / reorder buffer
reflexd_rule_fired_total{rule}                          fired its tool calls
reflexd_tool_calls_total{tool}                          calls started
reflexd_tool_failures_total{tool}                       calls that failed for good (after retries)
reflexd_tool_timeouts_total{tool}                       attempts that timed out
reflexd_tool_retries_total{tool}                        attempts after the first
reflexd_tool_rejected_total{tool}                       calls refused: backlog over its bound
reflexd_tool_in_flight{tool} / reflexd_tool_pending     running / waiting calls
reflexd_tool_duration_seconds{tool}                     histogram of call durations
reflexd_journal_dropped_total / _write_errors_total      journal rows the writer could not keep / write
reflexd_journal_backlog                                 journal rows waiting for the writer
reflexd_ccxt_*{source}                                  ccxt sources: backfills, backfilled, duplicates,
                                                        recycles, stalls (totals), symbols_stopped
reflexd_kafka_*{source}                                 Kafka sources: assigned_partitions, paused,
                                                        pauses_total, rebalances_total, commits_total,
                                                        commit_failures_total, dead_lettered_total,
                                                        in_flight_records
=====================================================  ===========================================
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from handlers.runner import DURATION_BUCKETS

if TYPE_CHECKING:
    from daemon.supervisor import Daemon

__all__ = ["DaemonCollector", "metrics_registry"]


def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class DaemonCollector(Collector):
    """Reads a running :class:`~daemon.supervisor.Daemon` at scrape time."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        d = self.daemon
        now = time.time()
        up = _gauge("reflexd_up", "1 while the daemon runs.", [])
        up.add_metric([], 1)
        ready = _gauge("reflexd_ready", "1 when every source is ready.", [])
        ready.add_metric([], 1 if d.readiness()[0] else 0)
        yield up
        yield ready
        yield from self._sources(d, now)
        yield from self._rules(d)
        yield from self._tools(d)
        journal = d.journal
        if journal is not None:
            dropped = _counter(
                "reflexd_journal_dropped_total", "Journal rows dropped: writer fell behind.", []
            )
            dropped.add_metric([], journal.dropped)
            errors = _counter(
                "reflexd_journal_write_errors_total", "Journal batches that failed to write.", []
            )
            errors.add_metric([], journal.write_errors)
            backlog = _gauge("reflexd_journal_backlog", "Journal rows waiting for the writer.", [])
            backlog.add_metric([], journal.backlog)
            yield from (dropped, errors, backlog)

    def _sources(self, d: Daemon, now: float) -> Iterator[Metric]:
        received = _counter("reflexd_events_received_total", "Messages received, by source.", ["source"])
        dropped = _counter(
            "reflexd_events_dropped_total", "Events dropped, by source and reason.", ["source", "reason"]
        )
        connected = _gauge("reflexd_source_connected", "1 while a session is connected.", ["source"])
        connects = _counter("reflexd_source_connects_total", "Sessions that connected.", ["source"])
        reconnects = _counter(
            "reflexd_source_reconnects_total", "Sessions attempted after the first.", ["source"]
        )
        gaps = _counter("reflexd_source_gaps_total", "Gap events emitted after reconnects.", ["source"])
        errors = _counter("reflexd_source_errors_total", "Source errors, by reason.", ["source", "reason"])
        age = _gauge("reflexd_source_last_event_age_seconds", "Seconds since the last event.", ["source"])
        depth = _gauge("reflexd_queue_depth", "Events waiting in the source queue.", ["source"])
        capacity = _gauge("reflexd_queue_capacity", "max_events of the source queue.", ["source"])
        high = _gauge("reflexd_queue_high_water", "Deepest the source queue has been.", ["source"])
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
            errors,
            age,
            depth,
            capacity,
            high,
        )
        yield from self._source_specific(d)

    def _source_specific(self, d: Daemon) -> Iterator[Metric]:
        """Metrics a source type adds (e.g. Kafka pauses and commits), one family per name."""
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for name, src in d.sources.items():
            for metric, kind, doc, value in src.metric_samples():
                family = families.get(metric)
                if family is None:
                    make = _counter if kind == "counter" else _gauge
                    family = families[metric] = make(metric, doc, ["source"])
                family.add_metric([name], value)
        yield from families.values()

    def _rules(self, d: Daemon) -> Iterator[Metric]:
        fields = {
            "seen": ("reflexd_rule_events_total", "Events the rule looked at."),
            "matched": ("reflexd_rule_matched_total", "Events whose `where` was true."),
            "errors": ("reflexd_rule_errors_total", "Events dropped because an expression raised."),
            "late": ("reflexd_rule_late_total", "Events behind the watermark, dropped by time-driven steps."),
            "suppressed": ("reflexd_rule_suppressed_total", "Matches muted by cooldown or throttle."),
            "evicted": ("reflexd_rule_evicted_total", "Per-key states forgotten at max_keys."),
            "overflow": (
                "reflexd_rule_overflow_total",
                "Events dropped from a full window or reorder buffer.",
            ),
            "fired": ("reflexd_rule_fired_total", "Times the rule fired its tool calls."),
        }
        families = {f: _counter(n, doc, ["rule"]) for f, (n, doc) in fields.items()}
        for name, rule in d.rules.items():
            for f, family in families.items():
                family.add_metric([name], getattr(rule.stats, f))
        yield from families.values()

    def _tools(self, d: Daemon) -> Iterator[Metric]:
        calls = _counter("reflexd_tool_calls_total", "Tool calls started.", ["tool"])
        failures = _counter("reflexd_tool_failures_total", "Tool calls that failed for good.", ["tool"])
        timeouts = _counter("reflexd_tool_timeouts_total", "Tool call attempts that timed out.", ["tool"])
        retries = _counter("reflexd_tool_retries_total", "Tool call attempts after the first.", ["tool"])
        dedup = _counter("reflexd_tool_deduplicated_total", "Calls skipped: key already succeeded.", ["tool"])
        dlq = _counter("reflexd_tool_dead_lettered_total", "Calls parked in the dead-letter queue.", ["tool"])
        shorted = _counter("reflexd_tool_short_circuited_total", "Calls refused: circuit open.", ["tool"])
        circuit = _gauge(
            "reflexd_tool_circuit_state", "Circuit breaker: 0 closed, 1 open, 2 half-open.", ["tool"]
        )
        rejected = _counter("reflexd_tool_rejected_total", "Tool calls refused (backlog full).", ["tool"])
        in_flight = _gauge("reflexd_tool_in_flight", "Tool calls running.", ["tool"])
        pending = _gauge("reflexd_tool_pending", "Tool calls waiting for a slot.", ["tool"])
        duration = HistogramMetricFamily(
            "reflexd_tool_duration_seconds", "Tool call duration.", labels=["tool"]
        )
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


def metrics_registry(daemon: Daemon) -> CollectorRegistry:
    """A fresh registry holding only this daemon's metrics (tests build their own)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    return registry
