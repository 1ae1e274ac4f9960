"""The exec tool: argv built per item (never a shell), option injection, process-group kill, output cap, env."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import handlers.exec as exec_module
from daemon.errors import StartupError, ToolError
from daemon.registry import BuildContext
from handlers.base import CallContext
from handlers.exec import SPEC, ArgvBuilder, ExecFailed, ExecTool, ExecToolConfig
from handlers.runner import ToolRunner
from streams.event import Event
from tests.servers import wait_for

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
RECORDER = str(Path(__file__).with_name("argv_recorder.py"))
REC = [PY, "-S", "-I", RECORDER]  # the recorder program, as an argv prefix
SPAWNED_EXAMPLES = 200  # one real process each (~20-40 ms): the 10,000-example property runs on the builder
FAST_RETRY = {"max_attempts": 3, "initial_seconds": 0.01, "max_seconds": 0.05}
PR_SET_CHILD_SUBREAPER = 36

# Values an attacker would put in an event: shell syntax, quoting, globbing, options, templates.
CORPUS = [
    "",
    " ",
    "a b",
    "  lead",
    "trail  ",
    "semi;colon",
    "; rm -rf ~",
    "a|b",
    "a && b",
    "a & b",
    "$(id)",
    "`id`",
    "${HOME}",
    "$HOME",
    "'single'",
    '"double"',
    "it's",
    'say "hi"',
    "back\\slash",
    "\\$(id)",
    "new\nline",
    "\r\n",
    "tab\there",
    "*",
    "*.py",
    "~",
    "~root",
    "> /tmp/x",
    "< /etc/passwd",
    "2>&1",
    "{{7*7}}",
    "{data.a}",
    "{7*7}",
    "%(x)s",
    "%s%n",
    "hi --icon=/etc/shadow 'x y'",
    "--output=/etc/passwd",
    "-rf",
    "-",
    "--",
    "--help",
    "-5",
    "é",
    "日本語",
    "🦀",
    "\u202etxt.exe",
    "\u0085",
    "\x1b[31mred",
    "\x7f",
    "a\x01b",
    "#comment",
    "!event",
    "?",
    "[a-z]",
    "a=b",
    "\\",
    "$",
    "\"'\"'`$(",
]
SPECIAL = [*";|&$()`\n\r\t ><*~'\"\\\0-{}=#!?[]%", "$(id)", "`id`", "${HOME}", "{{7*7}}", "--", "-rf"]
UNICODE = st.characters(codec="utf-8")  # any code point UTF-8 can encode (no lone surrogates); NUL included
TEXT = st.one_of(
    st.lists(st.one_of(st.sampled_from(SPECIAL), UNICODE), max_size=12).map("".join),
    st.text(UNICODE, max_size=20),
    st.sampled_from(CORPUS),
)
SCALAR = st.one_of(TEXT, TEXT, TEXT, st.integers(), st.floats(), st.booleans(), st.none())
# argv with options before and after the first data-led item, an attached option value, and escaped braces
TEMPLATE_ARGV = ["prog", "-v", "--mode=x{data.a}", "{data.a}", "x={data.a}", "{args.b}", "lit {{a}}"]


def event(data: Any = None, key: Any = "k") -> Event:
    return Event("src", 1.0, 1.0, key, {} if data is None else data, {})


def ctx(ev: Event | None = None, call_id: str = "rule:1:0", attempt: int = 1) -> CallContext:
    return CallContext("x", "rule", ev if ev is not None else event(), call_id, attempt)


def cfg(argv: list[str], **kw: Any) -> ExecToolConfig:
    return ExecToolConfig(type="exec", argv=argv, **kw)


async def started(argv: list[str], **kw: Any) -> ExecTool:
    tool = ExecTool("x", cfg(argv, **kw))
    await tool.start()
    return tool


def as_text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value)


def expected_argv(a: Any, b: Any, options_end: bool) -> list[bytes] | str:
    """What TEMPLATE_ARGV must become, computed independently: the list, or "NUL" / "option" for a refusal."""
    ta, tb = as_text(a), as_text(b)
    if "\0" in ta:  # first seen in argv[2] (an attached option value: not guarded)
        return "NUL"
    if not options_end and ta.startswith("-"):
        return "option"
    if not options_end and tb.startswith("-"):
        return "option"
    if "\0" in tb:
        return "NUL"
    end = ["--"] if options_end else []
    items = ["prog", "-v", "--mode=x" + ta, *end, ta, "x=" + ta, tb, "lit {a}"]
    return [item.encode() for item in items]


def outcome(builder: ArgvBuilder, a: Any, b: Any) -> list[bytes] | str:
    try:
        return builder.build(event({"a": a}), {"b": b})
    except ToolError as exc:
        assert not exc.retryable, exc
        return "NUL" if "NUL byte" in exc.reason else "option" if "option" in exc.reason else exc.reason


def recorded(result: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(result["stdout"])
    return record


def cmdline(record: dict[str, Any]) -> list[bytes]:
    return [bytes.fromhex(item) for item in record["cmdline"]]


# -- S1: the argv builder, 10,000 generated values -------------------------------------------------------------


def test_s1_builder_renders_each_item_exactly_over_10000_values() -> None:
    """≥ 10,000 generated values (shell syntax, quotes, newlines, unicode, NUL, numbers) become exactly the expected argv."""
    guarded = ArgvBuilder("x", cfg(TEMPLATE_ARGV, options_end=False))
    ended = ArgvBuilder("x", cfg(TEMPLATE_ARGV))
    seen: Counter[str] = Counter()

    @settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(a=SCALAR, b=SCALAR)
    def check(a: Any, b: Any) -> None:
        seen["examples"] += 1
        for mark in (";", "|", "&", "$(", "`", "\n", " ", "*", "~", "'", '"', "\0"):
            if mark in as_text(a) + as_text(b):
                seen[mark] += 1
        if any(ord(c) > 127 for c in as_text(a) + as_text(b)):
            seen["non-ascii"] += 1
        if as_text(a).startswith("-") or as_text(b).startswith("-"):
            seen["leading -"] += 1
        assert outcome(ended, a, b) == expected_argv(a, b, options_end=True)
        assert outcome(guarded, a, b) == expected_argv(a, b, options_end=False)

    check()
    assert seen["examples"] >= 10_000
    for mark in (";", "|", "&", "$(", "`", "\n", " ", "*", "~", "'", '"', "\0", "non-ascii", "leading -"):
        assert seen[mark] >= 100, (mark, seen)  # the generator really exercised every class


def test_s1_nul_is_refused_not_truncated() -> None:
    """A NUL byte (cannot exist in argv or env) fails the call, non-retryable, naming the item."""
    builder = ArgvBuilder("x", cfg(["prog", "x{data.a}"], env={"V": "{data.a}"}))
    for render in (builder.build, builder.environment):
        with pytest.raises(ToolError) as info:
            render(event({"a": "ok\0--evil"}), {})
        assert not info.value.retryable and "NUL byte" in info.value.reason


def test_s1_unencodable_and_structured_values_are_refused() -> None:
    """A lone surrogate (not UTF-8) or a list/mapping value fails the call with a clear, non-retryable error."""
    builder = ArgvBuilder("x", cfg(["prog", "{data.a}"]))
    for value, reason in (
        ("\ud800", "not valid UTF-8"),
        ([1, 2], "rendered to a list"),
        ({"k": 1}, "a dict"),
    ):
        with pytest.raises(ToolError) as info:
            builder.build(event({"a": value}), {})
        assert not info.value.retryable and reason in info.value.reason


# -- S1: the real program receives exactly that argv -----------------------------------------------------------


def test_s1_recorder_receives_exactly_the_rendered_argv() -> None:
    """200 generated value pairs: the bytes the kernel hands the program equal the expected argv; its parent is us."""
    loop = asyncio.new_event_loop()
    argv = [*REC, "{data.a}", "x={data.a}", "{args.b}"]
    no_nul = SCALAR.map(lambda v: v.replace("\0", "") if isinstance(v, str) else v)
    count = 0
    try:
        tool = ExecTool("x", cfg(argv, max_output_bytes=1 << 20))
        loop.run_until_complete(tool.start())

        @settings(max_examples=SPAWNED_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(a=no_nul, b=no_nul)
        def check(a: Any, b: Any) -> None:
            nonlocal count
            count += 1
            expected = [s.encode() for s in (*REC, "--", as_text(a), "x=" + as_text(a), as_text(b))]
            record = recorded(loop.run_until_complete(tool.call({"b": b}, ctx(event({"a": a})))))
            assert cmdline(record) == expected
            assert record["ppid"] == os.getpid() and record["parent_exe"] == os.path.realpath(PY)
            assert record["exe"] == os.path.realpath(PY) and record["pid"] == record["sid"] == record["pgid"]

        check()
    finally:
        loop.close()
    assert count >= SPAWNED_EXAMPLES


async def test_s1_fixed_corpus_arrives_literally_in_one_call() -> None:
    """Every corpus value (shell syntax, templates, options, control chars) is one argument, byte for byte."""
    argv = [*REC, *(f"{{args.v{i}}}" for i in range(len(CORPUS)))]
    tool = await started(argv, max_output_bytes=1 << 20)
    args = {f"v{i}": v for i, v in enumerate(CORPUS)}
    record = recorded(await tool.call(args, ctx()))
    assert cmdline(record) == [s.encode() for s in (*REC, "--", *CORPUS)]
    assert record["ppid"] == os.getpid()


DRIVER = """\
import asyncio, json, sys
from handlers.base import CallContext
from handlers.exec import ExecTool, ExecToolConfig
from streams.event import Event
values, recorder, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
argv = [sys.executable, "-S", "-I", recorder, "{data.v}", "x={data.v}"]
async def main():
    tool = ExecTool("x", ExecToolConfig(type="exec", argv=argv, env={"RECORDER_OUT": out}))
    await tool.start()
    for i, v in enumerate(values):
        await tool.call({}, CallContext("x", "r", Event("s", 0.0, 0.0, None, {"v": v}, {}), "r:%d:0" % i))
asyncio.run(main())
"""


def test_s1_strace_shows_no_shell_and_nothing_but_the_configured_program(tmp_path: Path) -> None:
    """Under `strace -f -e trace=execve`, a daemon process running the corpus + 40 random values execs only the program."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed: the execve trace cannot be taken")
    rng = random.Random(20240611)
    alphabet = [c for c in SPECIAL if c != "\0"] + ["é", "日", "🦀", "a", "b", "Z", "0"]
    values = CORPUS + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16))) for _ in range(40)]
    trace, out = tmp_path / "trace.txt", tmp_path / "records.jsonl"
    cmd = [strace, "--seccomp-bpf", "-f", "-qq", "-e", "trace=execve", "-o", str(trace)]
    cmd += [PY, "-c", DRIVER, json.dumps(values), RECORDER, str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = trace.read_text().splitlines()
    programs = [line.split('execve("', 1)[1].split('"', 1)[0] for line in lines if 'execve("' in line]
    assert programs == [PY] * (1 + len(values)), Counter(programs)  # the driver itself, then one per call
    assert not any(Path(p).name in {"sh", "bash", "dash", "zsh", "busybox"} for p in programs)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [[s.encode() for s in (PY, "-S", "-I", RECORDER, "--", v, "x=" + v)] for v in values]
    assert [cmdline(r) for r in records] == expected


# -- S2: option injection ---------------------------------------------------------------------------------------

OPTION_VALUES = ["--output=/etc/passwd", "-rf", "-r", "--output", "-x", "--help"]


@pytest.mark.parametrize("value", OPTION_VALUES)
async def test_s2_option_values_arrive_as_positionals_after_double_dash(value: str) -> None:
    """With options_end (default) an option-like value is a positional after `--`: argparse parses 0 options."""
    tool = await started([*REC, "{args.v}"], env={"RECORDER_ARGPARSE": "1"})
    record = recorded(await tool.call({"v": value}, ctx()))
    assert cmdline(record)[-2:] == [b"--", value.encode()]
    assert record["parsed"] == {"output": None, "r": False, "f": False, "rest": [value], "unknown": []}


@pytest.mark.parametrize("value", OPTION_VALUES)
async def test_s2_without_options_end_option_values_are_refused(value: str, tmp_path: Path) -> None:
    """With options_end false, a data-led value starting with '-' fails (non-retryable) before anything runs."""
    out = tmp_path / "ran"
    tool = await started([*REC, "{args.v}"], options_end=False, env={"RECORDER_OUT": str(out)})
    with pytest.raises(ToolError) as info:
        await tool.call({"v": value}, ctx())
    assert not info.value.retryable and "option" in info.value.reason
    assert not out.exists()


async def test_s2_control_allow_option_values_lets_argparse_see_options() -> None:
    """Control run: with the guard switched off the same values ARE parsed as options (the check can fail)."""
    tool = await started(
        [*REC, "{args.a}", "{args.b}"],
        options_end=False,
        allow_option_values=True,
        env={"RECORDER_ARGPARSE": "1"},
    )
    record = recorded(await tool.call({"a": "--output=/etc/passwd", "b": "-rf"}, ctx()))
    assert record["parsed"]["output"] == "/etc/passwd" and record["parsed"]["r"] and record["parsed"]["f"]


async def test_s2_attached_option_value_stays_one_argument() -> None:
    """`--output={args.p}` is written by the config: the event only fills its value, in the same argument."""
    tool = await started([*REC, "--output={args.p}"], env={"RECORDER_ARGPARSE": "1"})
    record = recorded(await tool.call({"p": "x -rf --output=/etc/passwd"}, ctx()))
    assert cmdline(record)[-1] == b"--output=x -rf --output=/etc/passwd"
    assert record["parsed"] == {
        "output": "x -rf --output=/etc/passwd",
        "r": False,
        "f": False,
        "rest": [],
        "unknown": [],
    }


def test_s2_config_rules_for_options_end() -> None:
    """A literal `--` in the config is respected (no second one); options after the inserted `--` are refused."""
    own = ArgvBuilder("x", cfg(["prog", "-v", "--", "{data.a}"]))
    assert own.build(event({"a": "-rf"}), {}) == [b"prog", b"-v", b"--", b"-rf"]
    guarded_after_own = ArgvBuilder("x", cfg(["prog", "--", "{data.a}"], options_end=False))
    assert guarded_after_own.build(event({"a": "-rf"}), {}) == [b"prog", b"--", b"-rf"]
    with pytest.raises(ValidationError, match="would be read as a positional"):
        cfg(["prog", "{data.a}", "--force"])
    cfg(["prog", "{data.a}", "--force"], options_end=False)  # the author's choice: then values are guarded


def test_config_is_validated() -> None:
    """argv[0] must be literal; bad templates, NULs, reserved or invalid env names are configuration errors."""
    bad: list[tuple[dict[str, Any], str]] = [
        ({"argv": ["{data.prog}", "x"]}, "must be literal"),
        ({"argv": []}, "at least 1 item"),
        ({"argv": ["prog", "{data.a"]}, "never closed"),
        ({"argv": ["prog", "a\0b"]}, "NUL"),
        ({"argv": ["prog"], "env": {"EVENT_ID": "x"}}, "set by the tool"),
        ({"argv": ["prog"], "env": {"A-B": "x"}}, "not a valid environment variable name"),
        ({"argv": ["prog"], "env_allowlist": ["A B"]}, "not a valid environment variable name"),
        ({"argv": ["prog"], "env": {"A": "{nope("}}, "env A"),
    ]
    for fields, reason in bad:
        with pytest.raises(ValidationError, match=reason):
            ExecToolConfig(type="exec", **fields)


# -- S4: timeout kills the whole process group, no orphans ------------------------------------------------------

CHILD = """\
import os, signal, subprocess, sys, time
pidfile, mode, grandchild = sys.argv[1:4]
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
g = subprocess.Popen([sys.executable, "-c", grandchild, mode])
with open(pidfile + ".tmp", "w") as f:
    f.write("%d %d" % (os.getpid(), g.pid))
os.rename(pidfile + ".tmp", pidfile)
time.sleep(60)
"""
GRANDCHILD = """\
import signal, sys, time
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(60)
"""


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Orphans are reparented to this process while the test runs (PID 1 here does not reap), so they can be reaped."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip(f"prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def alive(pid: int, *, orphan: bool = False) -> bool:
    """True if ``pid`` exists and is not a zombie. An orphan (reparented to us, the subreaper) is reaped first.

    The tool's own child is never waited for here: asyncio's child watcher reaps it.
    """
    if orphan:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def session_members(sid: int) -> list[int]:
    """Every process (zombies included) whose session id is ``sid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                if int(fields[3]) == sid:
                    found.append(int(entry.name))
    return found


@pytest.mark.usefixtures("subreaper")
@pytest.mark.parametrize("mode", ["plain", "stubborn"])
async def test_s4_timeout_kills_the_whole_group_no_orphans(mode: str, tmp_path: Path) -> None:
    """Runner timeout → the child and its grandchild (even ignoring SIGTERM) are gone; reported as a timeout."""
    pidfile = tmp_path / "pids"
    tool = ExecTool(
        "x",
        cfg(
            [PY, "-c", CHILD, str(pidfile), mode, GRANDCHILD],
            timeout_seconds=0.5,
            kill_grace_seconds=0.3,
            retry={"max_attempts": 1},
        ),
    )
    runner = ToolRunner({"x": tool})
    await runner.start()
    begun = time.monotonic()
    runner.submit("x", {}, ctx())
    await wait_for(lambda: runner.stats("x").failures == 1, within=5)
    elapsed = time.monotonic() - begun
    await runner.stop(2)
    child, grandchild = map(int, pidfile.read_text().split())
    await wait_for(lambda: not alive(child) and not alive(grandchild, orphan=True), within=2)
    await wait_for(lambda: not exists(child) and not exists(grandchild), within=2)
    assert session_members(child) == []
    assert runner.stats("x").timeouts == 1
    assert elapsed <= 0.5 + 0.3 + 4.0, elapsed  # timeout + grace + generous slack for a loaded CI machine


@pytest.mark.usefixtures("subreaper")
async def test_s4_control_killing_only_the_child_leaves_an_orphan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control run: signalling the child alone (not its group) leaves the grandchild alive — the check can fail."""

    def leader_only(pgid: int, sig: signal.Signals) -> bool:
        try:
            os.kill(pgid, sig)
        except ProcessLookupError:
            return False
        return True

    monkeypatch.setattr(exec_module, "_signal_group", leader_only)
    pidfile = tmp_path / "pids"
    tool = await started([PY, "-c", CHILD, str(pidfile), "plain", GRANDCHILD], kill_grace_seconds=0.3)
    task = asyncio.create_task(tool.call({}, ctx()))
    await wait_for(pidfile.exists, within=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    child, grandchild = map(int, pidfile.read_text().split())
    try:
        await wait_for(lambda: not alive(child), within=2)
        assert alive(grandchild, orphan=True) and session_members(child) == [grandchild]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(grandchild, signal.SIGKILL)
        await wait_for(lambda: not alive(grandchild, orphan=True), within=2)


def processes_with(token: str) -> list[int]:
    """Live processes whose command line holds ``token``."""
    found = []
    needle = token.encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            with contextlib.suppress(OSError):
                if needle in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


async def test_cancelled_at_any_point_leaves_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelling a call at any point — mid-spawn or running — leaves no process of it behind."""
    late_kills: list[bool] = []
    original = ExecTool._kill_late_spawn

    def counting(self: ExecTool, spawn: Any) -> None:
        late_kills.append(not spawn.cancelled() and spawn.exception() is None)
        original(self, spawn)

    monkeypatch.setattr(ExecTool, "_kill_late_spawn", counting)
    token = f"reflexd-test-{os.getpid()}-{time.monotonic_ns()}"
    tool = await started([PY, "-c", "import time; time.sleep(60)", token], kill_grace_seconds=0.3)
    for yields in (0, 1, 2, 3, 5, 8, 13, 30):
        task = asyncio.create_task(tool.call({}, ctx()))
        for _ in range(yields):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    task = asyncio.create_task(tool.call({}, ctx()))
    await wait_for(lambda: bool(processes_with(token)), within=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await tool.stop()
    await wait_for(lambda: processes_with(token) == [], within=3, what=lambda: str(processes_with(token)))
    assert any(late_kills)  # the mid-spawn path (program started after the call was cancelled) was exercised


@pytest.mark.usefixtures("subreaper")
async def test_leftovers_are_ended_when_the_program_exits() -> None:
    """A background process left holding stdout does not hang the call; it is killed with its group."""
    code = (
        "import subprocess, sys\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(g.pid)\n"
    )
    tool = await started([PY, "-c", code], kill_grace_seconds=0.3)
    begun = time.monotonic()
    result = await tool.call({}, ctx())
    assert time.monotonic() - begun < 2.0 and result["exit_code"] == 0
    leftover = int(result["stdout"])
    await wait_for(lambda: not alive(leftover, orphan=True), within=2)


# -- S5: output cap ---------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_s5_output_is_capped_and_the_child_never_blocks() -> None:
    """32 MiB on each stream: 64 KiB kept per stream, the rest drained and counted; RSS grows < 20 MiB."""
    size = 32 << 20
    code = "import sys\nn = int(sys.argv[1])\nsys.stdout.buffer.write(b'o' * n)\nsys.stderr.buffer.write(b'e' * n)\n"
    tool = await started([PY, "-c", code, str(size)], timeout_seconds=30)
    before = rss_bytes()
    result = await tool.call({}, ctx())
    grown = rss_bytes() - before
    assert result["exit_code"] == 0
    assert result["stdout"] == "o" * 65_536 and result["stderr"] == "e" * 65_536
    assert result["stdout_truncated"] and result["stderr_truncated"]
    assert result["stdout_bytes"] == size == result["stderr_bytes"]
    assert grown < 20 << 20, grown


async def test_output_is_decoded_with_replacement() -> None:
    """Output that is not UTF-8 is decoded with U+FFFD; short output is not marked truncated."""
    tool = await started([PY, "-c", "import sys; sys.stdout.buffer.write(bytes([255, 254]) + b' ok')"])
    result = await tool.call({}, ctx())
    assert (
        result["stdout"] == "\ufffd\ufffd ok"
        and not result["stdout_truncated"]
        and result["stdout_bytes"] == 5
    )


# -- S6: environment, working directory --------------------------------------------------------------------------


async def test_s6_environment_is_allowlisted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A canary secret in the daemon's environment is invisible to the child; only allowlisted keys pass."""
    canary = "canary-" + os.urandom(16).hex()
    monkeypatch.setenv("REFLEXD_TEST_CANARY", canary)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", canary)
    monkeypatch.setenv("TZ", "UTC")
    tool = await started(REC, env={"SYMBOL": "{data.s}", "SIDE": "{args.side}"})
    record = recorded(await tool.call({"side": "buy"}, ctx(event({"s": "BTC $(id)"}), call_id="r:ev:0")))
    environ = record["environ"]
    assert canary not in json.dumps(environ)
    reserved = {"EVENT_ID", "REFLEXD_CALL_ID", "REFLEXD_ATTEMPT", "REFLEXD_TOOL", "REFLEXD_RULE"}
    assert set(environ) <= {"PATH", "LANG", "LC_ALL", "TZ", "SYMBOL", "SIDE"} | reserved
    assert environ["TZ"] == "UTC" and environ["SYMBOL"] == "BTC $(id)" and environ["SIDE"] == "buy"
    assert environ["EVENT_ID"] == environ["REFLEXD_CALL_ID"] == "r:ev:0" and environ["REFLEXD_ATTEMPT"] == "1"
    assert environ["REFLEXD_TOOL"] == "x" and environ["REFLEXD_RULE"] == "rule"
    opened = await started(REC, env_allowlist=["REFLEXD_TEST_CANARY"])
    assert recorded(await opened.call({}, ctx()))["environ"]["REFLEXD_TEST_CANARY"] == canary


async def test_cwd_is_the_configured_folder(tmp_path: Path) -> None:
    """cwd is used as given; a relative one resolves against the configuration folder; a missing one fails start."""
    (tmp_path / "sub").mkdir()
    tool = await started(REC, cwd=str(tmp_path))
    assert recorded(await tool.call({}, ctx()))["cwd"] == str(tmp_path)
    relative = ExecTool("x", cfg(REC, cwd="sub"), base_dir=tmp_path)
    await relative.start()
    assert recorded(await relative.call({}, ctx()))["cwd"] == str(tmp_path / "sub")
    default = ExecTool("x", cfg(REC), base_dir=tmp_path)
    await default.start()
    assert recorded(await default.call({}, ctx()))["cwd"] == str(tmp_path)
    with pytest.raises(StartupError, match="not a folder"):
        await ExecTool("x", cfg(REC, cwd="missing"), base_dir=tmp_path).start()


# -- exit codes, retries, idempotency key -----------------------------------------------------------------------


async def test_non_zero_exit_is_a_failure_with_the_output() -> None:
    """Exit code ≠ 0 → ExecFailed (not retryable by default) carrying the result; ok_exit_codes widens success."""
    tool = await started(REC, env={"RECORDER_EXIT": "3", "RECORDER_STDERR": "boom"})
    with pytest.raises(ExecFailed) as info:
        await tool.call({}, ctx())
    assert not info.value.retryable and "exit code 3" in info.value.reason and "boom" in info.value.reason
    assert info.value.result["exit_code"] == 3 and info.value.result["stderr"] == "boom"
    lenient = await started(REC, env={"RECORDER_EXIT": "3"}, ok_exit_codes=[0, 3])
    assert (await lenient.call({}, ctx()))["exit_code"] == 3


async def test_death_by_signal_is_reported() -> None:
    """A program killed by a signal fails with the signal's name and exit_code -N."""
    tool = await started([PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    with pytest.raises(ExecFailed) as info:
        await tool.call({}, ctx())
    assert "killed by SIGKILL" in info.value.reason and info.value.result["exit_code"] == -9


@pytest.mark.parametrize(("exit_code", "attempts"), [(75, 3), (3, 1)])
async def test_retry_exit_codes_retry_with_the_same_event_id(
    exit_code: int, attempts: int, tmp_path: Path
) -> None:
    """Only retry_exit_codes are retried; every attempt sees the same EVENT_ID and its own REFLEXD_ATTEMPT."""
    out = tmp_path / "records.jsonl"
    tool = ExecTool(
        "x",
        cfg(
            REC,
            env={"RECORDER_OUT": str(out), "RECORDER_EXIT": str(exit_code)},
            retry_exit_codes=[75],
            retry=FAST_RETRY,
        ),
    )
    runner = ToolRunner({"x": tool})
    await runner.start()
    runner.submit("x", {}, ctx(call_id="rule:ev-7:0"))
    await wait_for(lambda: runner.stats("x").failures == 1, within=10)
    await runner.stop(2)
    envs = [json.loads(line)["environ"] for line in out.read_text().splitlines()]
    assert runner.stats("x").attempts == attempts == len(envs)
    assert {e["EVENT_ID"] for e in envs} == {"rule:ev-7:0"}
    assert [e["REFLEXD_ATTEMPT"] for e in envs] == [str(i) for i in range(1, attempts + 1)]


async def test_render_errors_are_not_retryable() -> None:
    """A template that cannot render (missing field, no event) fails the call for good; args work without event."""
    tool = await started([*REC, "{data.missing}"])
    with pytest.raises(ToolError) as info:
        await tool.call({}, ctx())
    assert not info.value.retryable and "argv[4]" in info.value.reason
    args_only = await started([*REC, "{args.v}"])
    result = await args_only.call({"v": "x"}, CallContext("x", None, None, "llm:1"))
    assert cmdline(recorded(result))[-1] == b"x"


# -- start: switch, program lookup; the registry spec ------------------------------------------------------------


async def test_disable_switch_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """REFLEXD_DISABLE_EXEC=1 makes every exec tool refuse to start; 0 does not."""
    monkeypatch.setenv("REFLEXD_DISABLE_EXEC", "1")
    with pytest.raises(StartupError, match="REFLEXD_DISABLE_EXEC"):
        await started(REC)
    monkeypatch.setenv("REFLEXD_DISABLE_EXEC", "0")
    await started(REC)


async def test_program_is_resolved_at_start(tmp_path: Path) -> None:
    """A bare name is looked up in the allowlisted PATH; a missing or non-executable program fails start."""
    tool = await started(["true"])
    assert tool.program == shutil.which("true")
    assert (await tool.call({}, ctx()))["exit_code"] == 0
    (tmp_path / "script").write_text("#!/bin/sh\n")
    for argv in (["no-such-program-reflexd"], [str(tmp_path / "script")], ["./missing"]):
        with pytest.raises(StartupError, match="not found or not executable"):
            await ExecTool("x", cfg(argv), base_dir=tmp_path).start()


def test_spec_example_builds() -> None:
    """The registry spec's example validates and builds an ExecTool; its summary names the program."""
    config = SPEC.config_model.model_validate(dict(SPEC.example))
    tool = SPEC.factory("x", config, BuildContext(ROOT))
    assert isinstance(tool, ExecTool) and dict(SPEC.summary(config))["program"] == "logger"
    assert tool.builder.build(event({"s": "-BTC", "q": 1}), {}) == [
        b"logger",
        b"-t",
        b"reflexd",
        b"--",
        b"-BTC traded 1",
    ]
