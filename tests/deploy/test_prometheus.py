"""deploy/prometheus and deploy/grafana against the real thing: promtool checks the rules, a real Prometheus
server (Debian's package, installed by scripts/prometheus.sh from `make test`) scrapes a running daemon and
answers a query for a reflexd series, and every metric the Grafana dashboard queries is one a live /metrics
serves."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from daemon.config import load_config_text
from daemon.reference import render_metrics
from daemon.registry import builtin_registry
from daemon.supervisor import Daemon
from tests.conftest import StartDaemon
from tests.kafka_broker import free_port
from tests.servers import wait_for

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "reflexd.json"
METRIC = re.compile(r"\breflexd_[a-z0-9_]+\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:  # never skipped: `make test` installs it
        pytest.fail(f"{name} is not installed: run scripts/prometheus.sh (Debian's prometheus package)")
    return path


def config_text(tmp_path: Path) -> str:
    """A daemon with a busy source, a rule that fires often, a tool with durations, the journal on."""
    return f"""
daemon:
  http: {{listen: "127.0.0.1:0"}}
  state_path: {tmp_path / "state.db"}
  shutdown_timeout_seconds: 5
sources:
  trades:
    type: replay
    path: {ROOT / "data" / "sample-trades.jsonl"}
    time_field: T
    key_field: s
    speed: 50
    loop: true
tools:
  out: {{type: file, path: {tmp_path / "out.jsonl"}}}
rules:
  big:
    from: trades
    where: "float(data.q) > 0.01"
    then:
      - tool: out
        args: {{symbol: "{{data.s}}", qty: "{{data.q}}"}}
"""


@pytest.fixture
async def daemon(tmp_path: Path, run_daemon: StartDaemon) -> Daemon:
    d = await run_daemon(load_config_text(config_text(tmp_path), builtin_registry()))
    await wait_for(
        lambda: d.rules["big"].stats.fired > 0 and d.runner.lanes()["out"][1].calls > 0,
        within=10,
        what="the rule fired and the tool was called",
    )
    return d


async def served_names(port: int) -> set[str]:
    """Metric names in a live /metrics: every sample's name (a histogram's _bucket/_sum/_count series), and
    every family the endpoint declares (`# TYPE`) — a labelled counter such as reflexd_source_errors_total has
    no sample until its first error, and a panel over it shows "no data" until then, rightly."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def declared_names() -> set[str]:
    """Every metric a reflexd can serve (the daemon's, each component type's, the ops server's)."""
    names = set(re.findall(r"^\| `(reflexd_[a-z0-9_]+)`", render_metrics(builtin_registry()), re.M))
    return names | {n + s for n in names for s in HISTOGRAM_SUFFIXES}


def rule_exprs() -> Iterator[tuple[str, str]]:
    doc = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def dashboard_exprs() -> list[tuple[str, str]]:
    doc = orjson.loads(DASHBOARD.read_bytes())
    out = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            out.append((f"variable {var['name']}", var["definition"]))
    return out


def test_promtool_accepts_the_rules_and_the_scrape_config() -> None:
    promtool = _binary("promtool")
    rules = subprocess.run(
        [promtool, "check", "rules", str(PROMETHEUS_DIR / "rules.yml")], capture_output=True, text=True
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS" in rules.stdout
    config = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")], capture_output=True, text=True
    )
    assert config.returncode == 0, config.stdout + config.stderr


def test_the_alert_rules_fire_on_the_series_they_watch(tmp_path: Path) -> None:
    """promtool's unit tests: an open circuit, journal rows dropped, a failed reload and a full queue raise
    their alerts; a closed circuit and applied reloads raise none (so the rules are not merely valid, they mean what they say)."""
    tests = {
        "rule_files": [str(PROMETHEUS_DIR / "rules.yml")],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [
                    {"series": 'reflexd_tool_circuit_state{instance="a", tool="hook"}', "values": "1x10"},
                    {"series": 'reflexd_tool_circuit_state{instance="a", tool="quiet"}', "values": "0x10"},
                    {"series": 'reflexd_journal_dropped_total{instance="a"}', "values": "0 0 5 5 5 5"},
                    {
                        "series": 'reflexd_reloads_total{instance="a", result="applied"}',
                        "values": "1 1 2 2 2 2",
                    },
                    {
                        "series": 'reflexd_reloads_total{instance="a", result="failed"}',
                        "values": "0 0 0 1 1 1",
                    },
                    {
                        "series": 'reflexd_events_dropped_total{instance="a", source="feed", reason="queue_full_oldest"}',
                        "values": "0+10x60",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "2m",
                        "alertname": "ReflexdCircuitOpen",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical", "instance": "a", "tool": "hook"},
                                "exp_annotations": {
                                    "summary": "tool hook: circuit open, calls are refused and dead-lettered",
                                    "description": "After the target recovers, "
                                    "`reflexd dlq replay --all --tool hook`.",
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "1m",
                        "alertname": "ReflexdJournalDroppingRows",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical", "instance": "a"},
                                "exp_annotations": {
                                    "summary": "reflexd a: the journal loses rows",
                                    "description": "The writer fell behind or cannot write (disk full?): "
                                    "idempotency and crash recovery are weakened.",
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "1m",
                        "alertname": "ReflexdReloadFailed",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", "instance": "a", "result": "failed"},
                                "exp_annotations": {
                                    "summary": "reflexd a: a configuration reload failed; the old configuration "
                                    "still runs",
                                    "description": "`reflexd check -c FILE` shows the errors at file:line.",
                                },
                            }
                        ],
                    },
                    {"eval_time": "30s", "alertname": "ReflexdReloadFailed", "exp_alerts": []},
                    {
                        "eval_time": "12m",
                        "alertname": "ReflexdEventsDropped",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "instance": "a",
                                    "source": "feed",
                                    "reason": "queue_full_oldest",
                                },
                                "exp_annotations": {
                                    "summary": "source feed drops events (queue_full_oldest)",
                                    "description": "The queue is full: the rules or the tools do not keep "
                                    "up. Raise queue.max_events or find the slow step.",
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "rules_test.yml"
    path.write_text(yaml.safe_dump(tests))
    result = subprocess.run([_binary("promtool"), "test", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_watch_only_metrics_reflexd_declares() -> None:
    """A renamed metric would leave an alert that never fires: every reflexd_* name must be declared."""
    declared = declared_names()
    for name, expr in rule_exprs():
        unknown = set(METRIC.findall(expr)) - declared
        assert not unknown, f"alert {name} watches {sorted(unknown)}, which reflexd does not export"


@pytest.fixture
async def prometheus(tmp_path: Path, daemon: Daemon) -> AsyncIterator[str]:
    """A real Prometheus scraping ``daemon`` every second, with deploy/prometheus's job and rules; its URL."""
    assert daemon.http is not None
    shipped = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    job = next(j for j in shipped["scrape_configs"] if j["job_name"] == "reflexd")
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{daemon.http.port}"]
    job["scrape_interval"] = "1s"
    shipped["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    shipped["rule_files"] = [str(PROMETHEUS_DIR / "rules.yml")]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(shipped))
    port = free_port()
    log = os.open(tmp_path / "prometheus.log", os.O_WRONLY | os.O_CREAT, 0o600)
    proc = await asyncio.create_subprocess_exec(
        _binary("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log,
    )
    os.close(log)  # the child has its own copy
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_prometheus_scrapes_a_running_daemon_and_answers_for_its_series(
    prometheus: str, daemon: Daemon
) -> None:
    """The shipped job, pointed at a live daemon: Prometheus reports the target up, a query for the rule's
    fire counter comes back with the daemon's own labels and a value no larger than the daemon's counter
    now, and the shipped alert rules loaded and evaluate without error."""

    async def api(http: aiohttp.ClientSession, path: str, **params: str) -> Any:
        try:
            async with http.get(prometheus + path, params=params) as response:
                if response.status != 200:
                    return None
                return (await response.json())["data"]
        except aiohttp.ClientConnectionError:
            return None  # not listening yet

    async with aiohttp.ClientSession() as http:
        found: dict[str, Any] = {}

        async def series_came_back() -> bool:
            data = await api(http, "/api/v1/query", query='reflexd_rule_fired_total{job="reflexd"}')
            if data and data["result"]:
                found.update(data["result"][0])
                return True
            return False

        await wait_for(
            series_came_back, within=30, interval=0.2, what="reflexd_rule_fired_total in Prometheus"
        )
        assert found["metric"]["rule"] == "big" and found["metric"]["instance_name"] == "main"
        assert 0 < float(found["value"][1]) <= daemon.rules["big"].stats.fired

        up = await api(http, "/api/v1/query", query='up{job="reflexd"}')
        assert [r["value"][1] for r in up["result"]] == ["1"]

        # a histogram comes through as one: a p99 over the tool's duration buckets is a number
        async def quantile_is_a_number() -> bool:
            data = await api(
                http,
                "/api/v1/query",
                query="histogram_quantile(0.99, sum by (le) (rate(reflexd_tool_duration_seconds_bucket[10s])))",
            )
            return bool(data and data["result"] and data["result"][0]["value"][1] not in ("NaN", "+Inf"))

        await wait_for(quantile_is_a_number, within=30, interval=0.5, what="a p99 of the tool's duration")

        async def rules_evaluated() -> bool:
            data = await api(http, "/api/v1/rules")
            rules = [r for g in (data or {}).get("groups", []) for r in g["rules"]]
            return bool(rules) and all(r.get("lastEvaluation", "").startswith("20") for r in rules)

        await wait_for(rules_evaluated, within=30, interval=0.2, what="the alert rules evaluated")
        data = await api(http, "/api/v1/rules")
        rules = [r for g in data["groups"] for r in g["rules"]]
        assert {r["name"] for r in rules} == {name for name, _ in rule_exprs()}
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        firing = {r["name"] for r in rules if r["state"] != "inactive"}
        assert not firing & {"ReflexdDown", "ReflexdCircuitOpen", "ReflexdJournalDroppingRows"}, firing


async def test_every_dashboard_query_names_a_metric_a_live_daemon_serves(daemon: Daemon) -> None:
    """Parsed roughly: every reflexd_* name in every panel's expression (and the instance variable) is in
    a live /metrics; and the dashboard has the panels the issue asks for."""
    assert daemon.http is not None
    served = await served_names(daemon.http.port)
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    for title, expr in exprs:
        names = set(METRIC.findall(expr))
        assert names, f"panel {title!r} queries no reflexd metric: {expr}"
        missing = names - served
        assert not missing, f"panel {title!r} queries {sorted(missing)}, which /metrics does not serve"
    queried = {n for _, e in exprs for n in METRIC.findall(e)}
    for wanted in (
        "reflexd_events_received_total",
        "reflexd_events_dropped_total",
        "reflexd_rule_fired_total",
        "reflexd_tool_duration_seconds_bucket",
        "reflexd_tool_circuit_state",
        "reflexd_journal_dropped_total",
        "reflexd_reloads_total",
    ):
        assert wanted in queried
    doc = orjson.loads(DASHBOARD.read_bytes())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) and doc["uid"] == "reflexd"
