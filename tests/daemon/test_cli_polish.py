"""CLI polish: --version, no verb, the README's commands, replay's render errors, python modules next
to the configuration, shell completion."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.config import load_config
from daemon.registry import builtin_registry
from handlers.base import CallContext
from streams.event import Event

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def reflexd(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


# -- --version, no verb -----------------------------------------------------------------------------


def test_version_prints_the_installed_package_version() -> None:
    """`reflexd --version` prints the version of the installed reflexd package and exits 0."""
    result = reflexd("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"reflexd {importlib.metadata.version('reflexd')}"


def test_no_verb_prints_the_verbs_and_exits_2() -> None:
    """`reflexd` alone prints the usage and every verb (on stderr), exit 2 as a usage error."""
    result = reflexd()
    assert result.returncode == 2
    assert result.stderr.startswith("usage: reflexd")
    for verb in ("run", "check", "replay", "record", "tools", "dlq", "agent", "approvals", "schema", "completion"):
        assert re.search(rf"^\s+{verb}\b", result.stderr, re.MULTILINE), verb


# -- the README's commands --------------------------------------------------------------------------


def readme_commands() -> list[str]:
    """Every `reflexd ...` command the README shows, in code blocks and inline code."""
    text = README.read_text()
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL):
        found += [line.strip() for line in block.splitlines() if line.strip().startswith("reflexd ")]
    for span in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.DOTALL)):
        if span.startswith("reflexd "):
            found.append(span)
    return found


def help_of(*words: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stopped:
        main([*words, "--help"])
    assert stopped.value.code == 0
    return out.getvalue()


def test_readme_commands_use_verbs_and_flags_the_parser_has() -> None:
    """Each verb, dlq action and flag of every `reflexd ...` command in the README is in that verb's --help."""
    commands = readme_commands()
    assert len(commands) >= 10, commands
    top = help_of()
    for command in commands:
        words = command.split()[1:]
        if words[0].startswith("-"):  # reflexd --version
            assert words[0] in top, command
            continue
        verb = words[0]
        assert re.search(rf"^\s+{verb}\b", top, re.MULTILINE), f"{command}: no verb {verb}"
        helps = [help_of(verb)]
        if verb in ("dlq", "agent", "approvals"):  # dlq list|replay|purge: each action's own flags
            actions = words[1].split("|")
            helps = [help_of(verb, action) for action in actions]
        for flag in (w.strip("[]").split("=")[0] for w in words if w.strip("[").startswith("-")):
            for text in helps:
                assert re.search(rf"(^|[\s,]){re.escape(flag)}\b", text), f"{command}: no flag {flag}"
    assert any(c.startswith("reflexd completion ") for c in commands)


def test_readme_puts_reflexd_on_the_path_after_the_two_setup_commands() -> None:
    """The set-up block has exactly the two make commands, then the venv activation line makes `reflexd` found."""
    text = README.read_text()
    setup = text.split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", setup, re.DOTALL)
    commands = [line.split("#")[0].strip() for line in blocks[0].splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    assert ". .venv/bin/activate" in blocks[1]
    # what the activation puts on PATH: the console script pip installed next to this interpreter
    assert (Path(sys.executable).parent / "reflexd").exists()
    script = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -e '.[dev]'" in script and "VENV   ?= .venv" in script


# -- replay: render errors --------------------------------------------------------------------------


def test_replay_summary_counts_render_errors_and_names_the_argument(tmp_path: Path) -> None:
    """A replay whose template fails on some events says how many calls were skipped, naming rule and argument."""
    (tmp_path / "c.yaml").write_text(
        textwrap.dedent(
            """\
            sources:
              feed: {type: replay, path: t.jsonl, time_field: T}
            tools:
              note: {type: log}
            rules:
              big_trade:
                from: feed
                then: [{tool: note, args: {who: "{data.s}", order: {text: "p={data['p']}"}}}]
            """
        )
    )
    (tmp_path / "t.jsonl").write_text('{"T":1000,"s":"a"}\n{"T":2000,"s":"b","p":3}\n{"T":3000,"s":"c"}\n')
    result = reflexd("replay", "-c", "c.yaml", "t.jsonl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1  # the one event with a price
    assert "2 render error(s), call(s) skipped (first: rule big_trade, argument order.text: KeyError 'p')" in (
        result.stderr
    )


# -- python tool: modules next to the configuration -------------------------------------------------


async def test_python_tool_imports_a_module_from_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`function: mytools:fn` imports mytools.py from the configuration's folder, without PYTHONPATH."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # the test's additions go away with it
    monkeypatch.chdir(ROOT)  # the configuration is elsewhere
    folder = tmp_path / "conf"
    folder.mkdir()
    module = f"mytools_{os.getpid()}"
    (folder / f"{module}.py").write_text("def double(args, event):\n    return args['n'] * 2\n")
    (folder / "replay.jsonl").write_text("")
    (folder / "config.yaml").write_text(
        textwrap.dedent(
            f"""\
            daemon: {{http: null}}
            sources:
              feed: {{type: replay, path: replay.jsonl}}
            tools:
              calc: {{type: python, function: "{module}:double"}}
            rules:
              each: {{from: feed, then: [{{tool: calc, args: {{n: 1}}}}]}}
            """
        )
    )
    config = load_config(str(folder / "config.yaml"), builtin_registry())
    plan = config.tools["calc"]
    tool = plan.spec.factory("calc", plan.config, config.build_context())
    await tool.start()
    try:
        event = Event("feed", 1.0, 1.0, None, {}, {})
        assert await tool.call({"n": 21}, CallContext("calc", "each", event, "each:1:0")) == 42
    finally:
        await tool.stop()
        sys.modules.pop(module, None)


# -- shell completion -------------------------------------------------------------------------------


def complete(script: Path, line: str) -> list[str]:
    """What bash completes for ``line`` (a trailing space starts a new word) with ``script`` sourced."""
    words = line.split()
    if line.endswith(" "):
        words.append("")
    program = (
        f"source {script}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_reflexd_complete\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion_is_valid_and_completes_verbs_actions_and_flags(tmp_path: Path) -> None:
    """`reflexd completion bash` passes `bash -n` and, sourced in bash, completes verbs, dlq actions, flags, choices."""
    result = reflexd("completion", "bash")
    assert result.returncode == 0, result.stderr
    script = tmp_path / "reflexd.bash"
    script.write_text(result.stdout)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert complete(script, "reflexd dl") == ["dlq"]
    assert complete(script, "reflexd dlq ") == ["list", "replay", "purge"]
    assert complete(script, "reflexd dlq purge --y") == ["--yes"]
    assert complete(script, "reflexd replay --format ") == ["text", "jsonl"]
    assert complete(script, "reflexd record --o") == ["--out"]
    assert complete(script, "reflexd completion ") == ["bash", "zsh"]
    assert complete(script, "reflexd ag") == ["agent"]
    assert complete(script, "reflexd agent ") == ["runs", "show"]
    assert complete(script, "reflexd agent runs --") == ["--help", "--tool", "--limit", "--json", "--config"]
    assert complete(script, "reflexd approvals ") == ["list", "approve", "reject"]
    assert complete(script, "reflexd approvals approve --n") == ["--note"]
    assert complete(script, "reflexd --v") == ["--version"]


def test_zsh_completion_loads_bashcompinit_and_registers_the_same_function() -> None:
    """`reflexd completion zsh` is the bash function run through zsh's bashcompinit; an unknown shell is refused."""
    zsh = reflexd("completion", "zsh")
    bash = reflexd("completion", "bash")
    assert zsh.returncode == 0
    assert zsh.stdout.startswith("autoload -U +X bashcompinit && bashcompinit\n")
    assert zsh.stdout.rstrip().endswith("complete -o filenames -F _reflexd_complete reflexd")
    assert "'dlq') subs='list replay purge'" in zsh.stdout or "dlq) subs='list replay purge'" in zsh.stdout
    assert bash.stdout.split("\n", 2)[2] in zsh.stdout
    fish = reflexd("completion", "fish")
    assert fish.returncode == 2 and "invalid choice" in fish.stderr
