"""What a metric is: the :class:`MetricSpec` every exported metric is declared with, once.

The code that exports a metric builds its family from the spec (name, type, labels, help), and
the metrics table of ``docs/operations.md`` is generated from the same specs
(``python -m daemon.reference --metrics``; a test fails when the table is stale). Where they are
declared:

- ``daemon/telemetry.py`` — the daemon's own (sources, queues, rules, tools, journal);
- the ``SPEC.metrics`` of a source or tool type — what that type adds (labelled by component);
- ``daemon/http.py`` — the ops server's.

A leaf module: it imports nothing of reflexd's own, so every layer can declare metrics.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

__all__ = ["MetricKind", "MetricSpec"]

MetricKind = Literal["counter", "gauge", "histogram"]


class MetricSpec(NamedTuple):
    """One exported metric."""

    name: str  # reflexd_<thing>_total for counters, _seconds for durations
    kind: MetricKind
    help: str  # the HELP line of /metrics
    labels: tuple[str, ...] = ()
    #: More for the documentation only (label values, links), Markdown; the table shows it after ``help``.
    doc: str = ""
