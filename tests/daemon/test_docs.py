"""Generated documentation stays in step with the code."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from daemon.config import load_config_text
from daemon.http import HTTP_METRICS, REFUSAL_REASONS, OpsServer
from daemon.reference import METRICS_BEGIN, METRICS_END, render_metrics, render_reference, with_metrics_table
from daemon.registry import builtin_registry
from daemon.supervisor import Daemon

ROOT = Path(__file__).resolve().parents[2]


def test_component_reference_is_current() -> None:
    """docs/components.md equals what the config models generate (run `make docs` after changing them)."""
    assert (ROOT / "docs" / "components.md").read_text() == render_reference(builtin_registry())


def test_component_reference_lists_every_key() -> None:
    """Every key of every registered type appears in the reference."""
    text = render_reference(builtin_registry())
    for kind in ("source", "tool"):
        for spec in builtin_registry().specs(kind):  # type: ignore[arg-type]
            assert f"### `type: {spec.type}`" in text
            for name, info in spec.config_model.model_fields.items():
                if name == "type":
                    continue
                assert f"| `{info.alias or name}` |" in text, (spec.type, name)


def _table_block(text: str) -> str:
    return text.partition(METRICS_BEGIN + "\n")[2].partition(METRICS_END)[0]


def test_metrics_table_is_current() -> None:
    """The metrics table in docs/operations.md equals what the declared metrics generate (run `make docs`
    after adding or changing a metric)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    assert _table_block(text) == render_metrics(builtin_registry())
    assert with_metrics_table(text, render_metrics(builtin_registry())) == text


def test_a_stale_metrics_table_is_rewritten_between_its_markers() -> None:
    """Regenerating replaces exactly the block between the markers (the prose around it stays), and a
    file without the markers is refused rather than silently left stale."""
    stale = f"# Ops\n\nintro\n{METRICS_BEGIN}\n| old | row |\n{METRICS_END}\n\n## Logs\n"
    fresh = with_metrics_table(stale, "| new |\n")
    assert fresh == f"# Ops\n\nintro\n{METRICS_BEGIN}\n| new |\n{METRICS_END}\n\n## Logs\n"
    try:
        with_metrics_table("# no markers\n", "| new |\n")
    except ValueError as exc:
        assert "markers are missing" in str(exc)
    else:
        raise AssertionError("a file without the markers was accepted")


async def test_metrics_table_lists_exactly_what_metrics_exports(tmp_path: Path) -> None:
    """Every metric family a daemon's /metrics serves — its own with the journal on and agent.mcp set, each
    registered source type's, the ops server's (reflexd_http_*) — is a row of the table with its type, labels and help, and
    every row is served: the table cannot miss a metric or list one that is gone."""
    registry = builtin_registry()
    sources = {f"s_{spec.type}": dict(spec.example) for spec in registry.specs("source")}
    config = {
        "daemon": {"http": {"listen": "127.0.0.1:0"}, "state_path": str(tmp_path / "state.db")},
        "agent": {"mcp": {"auth": "none"}},  # its metrics (reflexd_mcp_*) are served when it is configured
        "sources": sources,
        # the tool types that add metrics of their own (SPEC.metrics)
        "tools": {"t": {"type": "log"}, "model": {"type": "llm", "model": "m", "base_url": "http://127.0.0.1:9/v1"}},
    }
    cfg = load_config_text(orjson.dumps(config).decode(), registry, base_dir=tmp_path)
    daemon = Daemon(cfg)  # built, never started: no source connects anywhere, no model is called
    assert daemon.journal is not None and cfg.daemon.http is not None
    server = OpsServer(daemon, cfg.daemon.http)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{server.port}/metrics") as r:
            assert r.status == 200
            exposition = await r.text()
    finally:
        await server.stop()
    served = {}
    for fam in text_string_to_metric_families(exposition):
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        labels = {k for sample in fam.samples for k in sample.labels if k not in ("le",)}
        served[name] = (fam.type, fam.documentation, labels)
    rows = {}
    for line in render_metrics(registry).splitlines()[2:]:
        name, kind, labels, meaning = (cell.strip() for cell in line.strip("|").split(" | "))
        rows[name.strip("`")] = (kind, meaning, {x for x in labels.split(", ") if x})
    assert set(served) == set(rows)
    for name, (kind, help_text, labels) in served.items():
        row_kind, meaning, row_labels = rows[name]
        assert kind == row_kind and help_text in meaning, name
        assert labels <= row_labels, name  # a family with no samples shows no labels
    assert {"reflexd_http_refused_total", "reflexd_http_connections"} <= set(rows)
    assert served["reflexd_events_dropped_total"][2] == {"source", "reason"}


def test_every_refusal_and_drop_reason_is_documented() -> None:
    """The reasons the code counts under a `reason` label are named in the table (an added reason without
    its documentation fails here)."""
    table = render_metrics(builtin_registry())
    (refused,) = [spec for spec in HTTP_METRICS if spec.name == "reflexd_http_refused_total"]
    assert all(f"`{reason}`" in refused.doc for reason in REFUSAL_REASONS)
    dropped_row = next(line for line in table.splitlines() if "`reflexd_events_dropped_total`" in line)
    telemetry = (ROOT / "daemon" / "telemetry.py").read_text()
    counted = set(re.findall(r'dropped\.add_metric\(\[name, "(\w+)"\]', telemetry))
    assert counted == {"queue_full_oldest", "queue_full_newest", "decode_error", "future_time"}
    assert all(f"`{reason}`" in dropped_row for reason in counted)


def test_every_nested_mapping_has_its_table_and_no_type_shows_as_a_python_class() -> None:
    """Each key documented as a mapping with "see below" (Kafka's `security`, a tool's `circuit`, ...) has
    its own table of keys in the reference, and secrets read `string (secret)`, not `<class ...>`."""
    text = render_reference(builtin_registry())
    assert "<class" not in text
    assert "| `signing_secret` | string (secret) or null |" in text
    assert "| `token` | string (secret) or null |" in text
    for section in re.split(r"\n(?=#+ )", text):
        for key in re.findall(r"^\| `([^`]+)` \| [^|]* \| see below \|", section, re.M):
            assert f"\n`{key}`:\n" in section or re.search(rf"\n`[\w.]*\.{key}`:\n", section), key
    for key in ("protocol", "sasl_mechanism", "username", "password", "ssl_cafile"):
        assert f"| `{key}` |" in text, key
