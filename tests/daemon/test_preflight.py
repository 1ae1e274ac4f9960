"""``reflexd check`` catches what ``reflexd run`` would fail on (issue 15, point 2), and ``run`` exits 3
when a source's first connect fails for good."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.preflight import schema_problems
from handlers.ccxt_order import CcxtOrderTool
from handlers.python import import_problem

ROOT = Path(__file__).resolve().parents[2]


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent(text))
    code = main(["check", "-c", str(config), *extra])
    out = capsys.readouterr()
    return code, (out.err + out.out).replace(f"{tmp_path}/", "")


def test_check_reports_every_startup_problem_with_the_schema_errors_in_one_round(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing replay file, an exec program not found, a python function that does not import, a
    file tool and a state_path under a regular file, and a literal argument against the tool's schema
    are each reported as file:line path: reason, with a schema error, exit 2."""
    (tmp_path / "plain").write_text("not a folder")
    code, text = check(
        tmp_path,
        """\
        daemon: {http: null, state_path: plain/state.db}
        sources:
          feed: {type: replay, path: missing.jsonl, time_field: T}
        tools:
          run: {type: exec, argv: [no-such-program-reflexd, "{data.x}"]}
          py: {type: python, function: "no_such_module_reflexd:fn"}
          out: {type: file, path: plain/sub/alerts.jsonl}
          order: {type: ccxt_order, exchange: binance, allowed_symbols: [BTC/USDT], max_notional: 100}
          bad: {type: log, levle: info}
        rules:
          buy:
            from: feed
            then:
              - tool: order
                args: {symbol: BTC/USDT, side: bye, amount: 1, price: "{data.p}"}
        """,
        capsys,
    )
    assert code == 2
    lines = text.splitlines()
    expected = [
        "c.yaml:1 daemon.state_path: cannot create folder",
        "c.yaml:3 sources.feed.path: ",
        "c.yaml:5 tools.run.argv[0]: program 'no-such-program-reflexd' not found or not executable",
        "c.yaml:6 tools.py.function: cannot import 'no_such_module_reflexd'",
        "c.yaml:7 tools.out.path: cannot create folder",
        "c.yaml:9 tools.bad.levle: unknown key",
        "c.yaml:15 rules.buy.then[0].args.side: must be one of: buy, sell",
    ]
    for start in expected:
        assert any(line.startswith(start) for line in lines), (start, text)
    assert "missing.jsonl: no such file" in text
    assert "reflexd: 7 configuration error(s)" in text


def test_check_passes_a_configuration_that_can_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No false alarm: an existing file, a program found, a function that imports, writable paths
    (created by nobody: check creates nothing) and arguments that fit the schema pass, with --offline too."""
    (tmp_path / "trades.jsonl").write_text('{"T": 1}\n')
    config = f"""\
        daemon: {{http: null, state_path: var/new/state.db}}
        sources:
          feed: {{type: replay, path: trades.jsonl, time_field: T}}
        tools:
          run: {{type: exec, argv: ["{sys.executable}", "-c", "pass", "{{data.x}}"]}}
          py: {{type: python, function: "json:dumps"}}
          out: {{type: file, path: var/out/alerts.jsonl}}
          order: {{type: ccxt_order, exchange: binance, allowed_symbols: [BTC/USDT], max_notional: 100}}
        rules:
          buy:
            from: feed
            steps: [{{set: {{move: "float(data.T) * 2"}}}}]
            then:
              - tool: order
                args: {{symbol: BTC/USDT, side: "{{data.side}}", amount: 1, price: "{{move}}"}}
        """
    for extra in ((), ("--offline",)):
        code, text = check(tmp_path, config, capsys, *extra)
        assert code == 0, text
    assert not (tmp_path / "var").exists()


def test_exec_program_that_is_not_executable_fails_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An exec argv[0] path that exists without the execute bit is reported, as start() would refuse it."""
    script = tmp_path / "notify.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    code, text = check(
        tmp_path,
        """\
        sources:
          feed: {type: replay, path: c.yaml}
        tools:
          run: {type: exec, argv: [./notify.sh], cwd: no-such-folder}
        """,
        capsys,
    )
    assert code == 2
    assert "c.yaml:4 tools.run.argv[0]: program './notify.sh' not found or not executable" in text
    assert "tools.run.cwd: working directory" in text


def test_python_function_is_imported_in_a_child_process(tmp_path: Path) -> None:
    """The user's module runs in another process (its pid is not ours), what it prints cannot spoil the
    verdict, an import that raises is reported with its error, and a missing attribute too."""
    marker = tmp_path / "pid"
    (tmp_path / "noisy_reflexd_mod.py").write_text(
        f"import os\nprint('null')\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\n"
        "raise RuntimeError('no token configured')\n"
    )
    why = import_problem("noisy_reflexd_mod:fn", tmp_path)
    assert why == "importing noisy_reflexd_mod:fn failed: RuntimeError: no token configured"
    assert marker.read_text() != str(os.getpid())
    assert "noisy_reflexd_mod" not in sys.modules
    (tmp_path / "fine_reflexd_mod.py").write_text("def fn(args, event):\n    return 1\n")
    assert import_problem("fine_reflexd_mod:fn", tmp_path) is None
    assert import_problem("fine_reflexd_mod:nope", tmp_path) == "module 'fine_reflexd_mod' has no attribute 'nope'"


def test_python_import_that_hangs_is_stopped(tmp_path: Path) -> None:
    """An import that never returns is bounded: reported after the timeout, the child killed."""
    (tmp_path / "slow_reflexd_mod.py").write_text("import time\ntime.sleep(60)\n")
    started = time.monotonic()
    why = import_problem("slow_reflexd_mod:fn", tmp_path, timeout=1.0)
    assert why == "importing slow_reflexd_mod:fn took more than 1 s (stopped)"
    assert time.monotonic() - started < 30


def test_literal_arguments_are_judged_and_placeholders_are_not() -> None:
    """Against ccxt_order's own schema: a bad enum, a wrong type, an unknown and a missing key are
    found; a value holding a placeholder is left to the event."""
    schema = CcxtOrderTool.args_schema
    found = dict(schema_problems(schema, {"symbol": "BTC/USDT", "side": "bye", "amount": True, "x": 1}))
    assert found[("side",)].startswith("must be one of: buy, sell")
    assert found[("amount",)].startswith("must be number or string")
    assert found[("x",)].startswith("unknown argument")
    assert found[()] == "missing price (required by the tool's argument schema)"
    ok = {"symbol": "{data.s}", "side": "{data.side}", "amount": "{data.q}", "price": 5}
    assert schema_problems(schema, ok) == []


def test_placeholder_naming_a_field_no_step_sets_fails_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``{move}`` with no step defining ``move`` is reported at the argument with its column."""
    code, text = check(
        tmp_path,
        """\
        sources:
          feed: {type: replay, path: c.yaml}
        tools:
          alert: {type: log}
        rules:
          r: {from: feed, then: [{tool: alert, args: {text: "moved {move}"}}]}
        """,
        capsys,
    )
    assert code == 2
    assert "c.yaml:6 rules.r.then[0].args.text: column 8: in placeholder {move}: unknown name 'move'" in text


def test_a_path_from_the_environment_is_not_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing replay file named by ${VAR} is reported without the value."""
    monkeypatch.setenv("REFLEXD_TEST_SECRET_FILE", "secret-name-4711.jsonl")
    code, text = check(
        tmp_path, "sources:\n  feed: {type: replay, path: '${REFLEXD_TEST_SECRET_FILE}'}\n", capsys
    )
    assert code == 2
    assert "sources.feed.path:" in text
    assert "secret-name-4711" not in text


def test_run_exits_3_when_a_replay_file_is_missing(tmp_path: Path) -> None:
    """The daemon does not report ready with a dead source: a first connect that fails for good is a
    startup failure, exit 3, with a line naming the source and why."""
    config = tmp_path / "c.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            daemon: {http: null, state_path: state.db}
            sources:
              feed: {type: replay, path: missing.jsonl}
            tools:
              note: {type: log}
            rules:
              each: {from: feed, then: [{tool: note, args: {text: hi}}]}
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "run", "-c", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 3, done.stderr
    assert '"msg": "ready"' not in done.stderr and "ready" not in done.stderr.replace("readyz", "")
    startup = [line for line in done.stderr.splitlines() if "startup failed" in line]
    assert startup and "source feed" in startup[0] and "missing.jsonl" in startup[0]
