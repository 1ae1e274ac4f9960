"""``exec`` tool: run a program with an argv list, never through a shell.

Each item of ``argv`` is its own template, rendered per call against the event (and the rule's
arguments as ``args``); the rendered list is handed as is to the loop's ``subprocess_exec``
(what ``asyncio.create_subprocess_exec`` uses: fork and exec, no shell). Nothing is ever
joined into one string, split, globbed or given to ``/bin/sh``, and the event's values are
never compiled as templates themselves. ``argv[0]`` (the program) is a literal, resolved once
at start.

Option injection. An item is *data-led* when it begins with a placeholder (``"{data.path}"``):
the event chooses its first character, so a value such as ``--output=/etc/passwd`` or ``-rf``
could be read as an option. With ``options_end: true`` (the default) the tool inserts ``--``
right before the first data-led item, so every such value arrives as a positional argument;
literal options after that point are refused in the configuration. With ``options_end:
false`` a data-led value starting with ``-`` (outside a literal ``--``) fails the call, unless
``allow_option_values: true``. Write option values attached (``--output={data.path}``); those
items begin with literal text, so the event cannot turn them into another option.

A value holding a NUL byte cannot be passed in argv or the environment: the call fails with a
non-retryable :class:`~daemon.errors.ToolError` (so do values that are not valid UTF-8 text,
and lists or mappings). ``None`` renders as ``""``; numbers and booleans with ``str()``.

Process tree. The child starts in a new session (``start_new_session``), so it leads its own
process group. When the call is cancelled (the runner's ``timeout_seconds``, or a shutdown),
the whole group gets ``SIGTERM``, then ``SIGKILL`` after ``kill_grace_seconds``; the child is
reaped by asyncio's child watcher. Processes still in the group when the program exits are
killed the same way: nothing a call started outlives it (a process that leaves the group with
``setsid`` escapes this; systemd's ``KillMode=control-group`` catches it on stop).

Output. stdout and stderr are read as they come, up to ``max_output_bytes`` each; the rest is
read and discarded (counted), so the child never blocks on a full pipe.

Environment. Only the names in ``env_allowlist`` are copied from the daemon's environment,
plus ``env`` (templates) and ``EVENT_ID`` / ``REFLEXD_CALL_ID`` (the idempotency key, the same
on every retry), ``REFLEXD_ATTEMPT``, ``REFLEXD_TOOL`` and ``REFLEXD_RULE``.

``REFLEXD_DISABLE_EXEC=1`` in the daemon's environment makes every exec tool refuse to start.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from daemon.errors import ExpressionError, StartupError, ToolError
from daemon.logs import get_logger
from handlers.base import CallContext, Tool, ToolConfig
from streams.component import BuildContext, ComponentSpec, PreflightContext, Problem
from streams.event import Event
from streams.expressions import compile_template
from streams.rules.row import make_row

__all__ = [
    "DISABLE_ENV",
    "RESERVED_ENV",
    "SPEC",
    "ArgvBuilder",
    "ExecFailed",
    "ExecTool",
    "ExecToolConfig",
    "find_program",
]

log = get_logger("tool.exec")

DISABLE_ENV = "REFLEXD_DISABLE_EXEC"
"""Set to 1 (or true/yes/on) in the daemon's environment to refuse to start any exec tool."""
RESERVED_ENV = frozenset({"EVENT_ID", "REFLEXD_CALL_ID", "REFLEXD_ATTEMPT", "REFLEXD_TOOL", "REFLEXD_RULE"})
"""Variables the tool sets itself on every call."""
TEMPLATE_NAMES = ("args",)
"""Names a template may use besides the event's fields: the rule's rendered arguments."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DRAIN_SECONDS = 1.0  # for the pipes' end of file once the group is gone (a setsid() escapee may hold them)
_STDERR_IN_ERROR = 300


def _placeholder_prefix(text: str) -> tuple[str, bool]:
    """The literal text before the first placeholder (braces unescaped), and whether there is one."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "{}" and text.startswith(c + c, i):
            out.append(c)
            i += 2
            continue
        if c == "{":
            return "".join(out), True
        out.append(c)
        i += 1
    return "".join(out), False


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in {"1", "true", "yes", "on"}


def _check_template(text: str, label: str) -> None:
    """Compile one configured template; a config error names the item and the column."""
    try:
        compile_template(text, TEMPLATE_NAMES)
    except ExpressionError as exc:
        where = f"column {exc.column}: " if exc.column else ""
        raise ValueError(f"{label}: {where}{exc.reason}") from None


class ExecToolConfig(ToolConfig):
    """Runs a program with an argv list (no shell)."""

    template_fields: ClassVar[frozenset[str]] = frozenset({"argv", "env"})

    argv: list[str] = Field(
        min_length=1,
        description="Program and arguments; each item is its own template (`{expression}`; the rule's "
        "arguments are `args`). The program (first item) is literal. Never split, never a shell.",
    )
    cwd: str | None = Field(
        None, description="Working directory; relative to the configuration file's folder (the default)."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables; values may be templates."
    )
    env_allowlist: list[str] = Field(
        default_factory=lambda: ["PATH", "LANG", "LC_ALL", "TZ"],
        description="Variables copied from the daemon's environment; nothing else is inherited.",
    )
    max_output_bytes: int = Field(
        65_536,
        ge=0,
        le=16 * 1024 * 1024,
        description="stdout and stderr kept per stream; the rest is dropped.",
    )
    options_end: bool = Field(
        True,
        description="Insert `--` before the first item that begins with a placeholder, so event values "
        "are always positional arguments, never options.",
    )
    allow_option_values: bool = Field(
        False,
        description="With options_end false: allow an item that begins with a placeholder to render to "
        "a value starting with `-` (otherwise the call fails).",
    )
    ok_exit_codes: list[int] = Field(default_factory=lambda: [0], description="Exit codes that mean success.")
    retry_exit_codes: list[int] = Field(
        default_factory=list,
        description="Exit codes that mean try again (retryable failure); others fail for good. A signal "
        "death is -N (e.g. -9).",
    )
    kill_grace_seconds: float = Field(
        1.0, gt=0, le=60, description="Between SIGTERM and SIGKILL of the process group."
    )

    @field_validator("argv")
    @classmethod
    def _check_argv(cls, argv: list[str]) -> list[str]:
        program, templated = _placeholder_prefix(argv[0])
        if templated:
            raise ValueError("the program (argv[0]) must be literal: an event must never choose what runs")
        if not program.strip():
            raise ValueError("the program (argv[0]) is empty")
        for i, item in enumerate(argv):
            if "\0" in item:
                raise ValueError(f"argv[{i}] holds a NUL byte")
            _check_template(item, f"argv[{i}]")
        return argv

    @field_validator("env")
    @classmethod
    def _check_env(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            if name in RESERVED_ENV:
                raise ValueError(f"{name} is set by the tool itself")
            if "\0" in value:
                raise ValueError(f"env {name} holds a NUL byte")
            _check_template(value, f"env {name}")
        return env

    @field_validator("env_allowlist")
    @classmethod
    def _check_allowlist(cls, names: list[str]) -> list[str]:
        for name in names:
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
        return names

    @model_validator(mode="after")
    def _check_options_end(self) -> ExecToolConfig:
        if not self.options_end:
            return self
        first = _first_data_led(self.argv)
        if first is None:
            return self
        for i in range(first + 1, len(self.argv)):
            prefix, _ = _placeholder_prefix(self.argv[i])
            if prefix.startswith("-"):
                raise ValueError(
                    f"argv[{i}] {self.argv[i]!r} comes after `--` (inserted before argv[{first}], the first "
                    "item that begins with a placeholder) and would be read as a positional; move options "
                    "before it, or set options_end: false"
                )
        return self


def _first_data_led(argv: list[str]) -> int | None:
    """Index of the first item that begins with a placeholder, unless a literal ``--`` comes before it."""
    for i, item in enumerate(argv[1:], start=1):
        prefix, templated = _placeholder_prefix(item)
        if not templated and prefix == "--":
            return None  # the configuration ends the options itself
        if templated and not prefix:
            return i
    return None


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool | int | float):
        return str(value)
    raise TypeError(f"rendered to a {type(value).__name__}; an argument must be a string, number or bool")


def _encode(tool: str, what: str, value: str) -> bytes:
    if "\0" in value:
        raise ToolError(tool, f"{what} holds a NUL byte, which cannot be passed to a program")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ToolError(tool, f"{what} is not valid UTF-8 text ({exc.reason})") from None


class ArgvBuilder:
    """Renders the configured argv for one call: a list of byte strings, one per configured item.

    Pure (no I/O): the injection properties are tested on it directly.
    """

    def __init__(self, tool: str, config: ExecToolConfig) -> None:
        self.tool = tool
        argv = config.argv
        self._items = [compile_template(item, TEMPLATE_NAMES) for item in argv]
        # `--` goes before this index (None: nowhere)
        self._insert_at = _first_data_led(argv) if config.options_end else None
        guarded: list[bool] = []
        ended = False
        for item in argv:
            prefix, templated = _placeholder_prefix(item)
            if not templated and prefix == "--":
                ended = True
            guarded.append(templated and not prefix and not ended and not config.allow_option_values)
        # with options_end, every data-led item is after the inserted `--`: nothing to guard
        self._guarded = [False] * len(argv) if self._insert_at is not None else guarded
        self._env = [(name, compile_template(value, TEMPLATE_NAMES)) for name, value in config.env.items()]

    @staticmethod
    def row(event: Event | None, args: dict[str, Any]) -> Event:
        """What templates are rendered against: the event plus ``args`` (an empty event if there is none)."""
        if event is None:
            event = Event("", 0.0, 0.0, None, {}, {})
        return make_row(event, {"args": args})

    def build(self, event: Event | None, args: dict[str, Any]) -> list[bytes]:
        """The argv for one call; a non-retryable :class:`ToolError` for a value that cannot be used."""
        row = self.row(event, args)
        out: list[bytes] = []
        for i, render in enumerate(self._items):
            if i == self._insert_at:
                out.append(b"--")
            try:
                value = _text(render(row))
            except Exception as exc:
                raise ToolError(
                    self.tool, f"argv[{i}] cannot be rendered: {type(exc).__name__}: {exc}"
                ) from exc
            if self._guarded[i] and value.startswith("-"):
                raise ToolError(
                    self.tool,
                    f"argv[{i}] renders to a value starting with '-' ({value[:40]!r}), which the program "
                    "could read as an option; set options_end: true (or allow_option_values: true)",
                )
            out.append(_encode(self.tool, f"argv[{i}]", value))
        return out

    def environment(self, event: Event | None, args: dict[str, Any]) -> dict[bytes, bytes]:
        """The rendered ``env`` entries."""
        row = self.row(event, args)
        out: dict[bytes, bytes] = {}
        for name, render in self._env:
            try:
                value = _text(render(row))
            except Exception as exc:
                raise ToolError(
                    self.tool, f"env {name} cannot be rendered: {type(exc).__name__}: {exc}"
                ) from exc
            out[name.encode()] = _encode(self.tool, f"env {name}", value)
        return out


class ExecFailed(ToolError):
    """The program ran and failed (exit code not in ``ok_exit_codes``); ``result`` has its output."""

    def __init__(self, tool: str, reason: str, result: dict[str, Any], *, retryable: bool) -> None:
        super().__init__(tool, reason, retryable=retryable)
        self.result = result


class _Capture:
    """Keeps the first ``cap`` bytes of a stream and counts the rest."""

    __slots__ = ("buf", "cap", "total")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.buf = bytearray()
        self.total = 0

    def feed(self, chunk: bytes | bytearray) -> None:
        self.total += len(chunk)
        room = self.cap - len(self.buf)
        if room > 0:
            self.buf += chunk[:room]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.buf)

    def text(self) -> str:
        return self.buf.decode("utf-8", errors="replace")


class _Child(asyncio.SubprocessProtocol):
    """Output as it arrives (capped, never paused: the child never blocks), and two events.

    ``exited``: the program itself has exited. ``closed``: both pipes reached end of file, so no
    process holds them any more. (``asyncio.subprocess.Process.wait`` waits for both at once,
    which cannot tell a finished program from one that left a background process behind.)
    """

    def __init__(self, cap: int, loop: asyncio.AbstractEventLoop) -> None:
        self.out = _Capture(cap)
        self.err = _Capture(cap)
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._open = {1, 2}

    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        (self.out if fd == 1 else self.err).feed(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open.discard(fd)
        if not self._open and not self.closed.done():
            self.closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


async def _within(seconds: float | None, *futures: asyncio.Future[None]) -> bool:
    """Wait up to ``seconds`` (None: forever) for every future, never cancelling them; True if all ended."""
    _, pending = await asyncio.wait(futures, timeout=seconds)
    return not pending


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to the process group; False if it has no member left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - the group id was reused by another user's process
        return False
    return True


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _search_path(config: ExecToolConfig) -> str:
    if "PATH" in config.env and "{" not in config.env["PATH"]:
        return config.env["PATH"]
    if "PATH" in config.env_allowlist and "PATH" in os.environ:
        return os.environ["PATH"]
    return os.defpath


def find_program(config: ExecToolConfig, base_dir: Path) -> tuple[str | None, str]:
    """``argv[0]`` resolved as :meth:`ExecTool.start` runs it: (its path, "") or (None, why not)."""
    program, _ = _placeholder_prefix(config.argv[0])
    if "/" in program:
        path = Path(program).expanduser()
        path = path if path.is_absolute() else base_dir / path
        found = str(path) if path.is_file() and os.access(path, os.X_OK) else None
    else:
        found = shutil.which(program, path=_search_path(config))
    return found, "" if found else f"program {program!r} not found or not executable"


class ExecTool(Tool):
    type_name: ClassVar[str] = "exec"
    description: ClassVar[str] = "Run a program with an argv list rendered from the event (never a shell)."
    args_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "description": "Values the argv and env templates read as `args.<name>`.",
        "additionalProperties": True,
    }
    config: ExecToolConfig

    def __init__(self, name: str, config: ExecToolConfig, base_dir: Path | None = None) -> None:
        super().__init__(name, config)
        self.base_dir = base_dir if base_dir is not None else Path.cwd()
        self.builder = ArgvBuilder(name, config)
        self.cwd = self._resolve(config.cwd) if config.cwd is not None else self.base_dir
        self.program: str | None = None  # resolved at start
        self._closing: set[asyncio.Task[None]] = set()  # programs of cancelled calls, being closed

    def _resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    async def start(self) -> None:
        component = f"tool {self.name}"
        if _truthy(os.environ.get(DISABLE_ENV)):
            raise StartupError(component, f"exec tools are disabled ({DISABLE_ENV} is set)")
        if not self.cwd.is_dir():
            raise StartupError(component, f"working directory {self.cwd} is not a folder")
        found, problem = find_program(self.config, self.base_dir)
        if found is None:
            raise StartupError(component, problem)
        self.program = found

    def environment(self, args: dict[str, Any], ctx: CallContext) -> dict[bytes, bytes]:
        """The child's whole environment: allowlisted names, ``env``, and the call's identity."""
        env: dict[bytes, bytes] = {}
        for name in self.config.env_allowlist:
            value = os.environb.get(name.encode())
            if value is not None:
                env[name.encode()] = value
        env.update(self.builder.environment(ctx.event, args))
        call_id = _encode(self.name, "call id", ctx.call_id)
        env[b"EVENT_ID"] = call_id
        env[b"REFLEXD_CALL_ID"] = call_id
        env[b"REFLEXD_ATTEMPT"] = str(ctx.attempt).encode()
        env[b"REFLEXD_TOOL"] = _encode(self.name, "tool name", self.name)
        if ctx.rule is not None:
            env[b"REFLEXD_RULE"] = _encode(self.name, "rule name", ctx.rule)
        return env

    async def call(self, args: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        program = self.program
        if program is None:
            raise RuntimeError(f"tool {self.name} is not started")
        argv = self.builder.build(ctx.event, args)
        env = self.environment(args, ctx)
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        cap = self.config.max_output_bytes
        spawn = asyncio.ensure_future(
            loop.subprocess_exec(
                lambda: _Child(cap, loop),
                *argv,
                executable=program,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.cwd,
                env=env,
                start_new_session=True,
            )
        )
        try:
            transport, child = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            spawn.add_done_callback(self._kill_late_spawn)  # it may still start: it must not outlive the call
            raise
        except OSError as exc:
            raise ToolError(self.name, f"cannot start {program}: {exc.strerror or exc}") from exc
        pgid = transport.get_pid()
        try:
            await _within(None, child.exited)
            await self._finish_group(pgid, child)
        except BaseException:  # cancelled (timeout, shutdown) or anything unexpected: end the whole tree
            await self._kill_group(pgid, child)
            raise
        finally:
            transport.close()
        returncode = transport.get_returncode()
        assert returncode is not None
        out, err = child.out, child.err
        result: dict[str, Any] = {
            "exit_code": returncode,
            "stdout": out.text(),
            "stderr": err.text(),
            "stdout_truncated": out.truncated,
            "stderr_truncated": err.truncated,
            "stdout_bytes": out.total,
            "stderr_bytes": err.total,
            "duration_seconds": round(time.monotonic() - started, 6),
        }
        if returncode in self.config.ok_exit_codes:
            return result
        how = f"killed by {_signal_name(returncode)}" if returncode < 0 else f"exit code {returncode}"
        tail = result["stderr"][-_STDERR_IN_ERROR:].strip()
        reason = f"{how}; stderr: {tail!r}" if tail else how
        raise ExecFailed(self.name, reason, result, retryable=returncode in self.config.retry_exit_codes)

    async def _finish_group(self, pgid: int, child: _Child) -> None:
        """The program exited: end whatever it left in its group, and read its pipes to the end."""
        if _signal_group(pgid, signal.SIGTERM):  # ESRCH in the usual case: the group is empty
            await _within(self.config.kill_grace_seconds, child.closed)
            _signal_group(pgid, signal.SIGKILL)
        await _within(_DRAIN_SECONDS, child.closed)

    def _kill_late_spawn(self, spawn: asyncio.Future[tuple[asyncio.SubprocessTransport, _Child]]) -> None:
        """A call was cancelled while its program was being started: kill the program once it exists."""
        if spawn.cancelled() or spawn.exception() is not None:
            return
        transport, child = spawn.result()
        _signal_group(transport.get_pid(), signal.SIGKILL)
        task = asyncio.ensure_future(self._close_after_exit(transport, child))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_after_exit(self, transport: asyncio.SubprocessTransport, child: _Child) -> None:
        # closing before the exit is known would make the transport poll() (reap) the child itself
        await _within(_DRAIN_SECONDS, child.exited, child.closed)
        transport.close()

    async def stop(self) -> None:
        if self._closing:
            await asyncio.wait(self._closing, timeout=_DRAIN_SECONDS + 1)

    async def _kill_group(self, pgid: int, child: _Child) -> None:
        """SIGTERM the group, SIGKILL it after the grace; still SIGKILLs if cancelled again meanwhile."""
        try:
            if _signal_group(pgid, signal.SIGTERM):
                await _within(self.config.kill_grace_seconds, child.exited, child.closed)
        finally:
            killed = _signal_group(pgid, signal.SIGKILL)
            log.warning(
                "exec call cancelled; process group ended",
                extra={"fields": {"tool": self.name, "pid": pgid, "sigkill_needed": killed}},
            )
            await _within(_DRAIN_SECONDS, child.exited, child.closed)


# -- registry entry (daemon/registry.py lists SPEC) ----------------------------------------------------


def _summary(c: ExecToolConfig) -> list[tuple[str, Any]]:
    return [
        ("program", c.argv[0]),
        ("arguments", len(c.argv) - 1),
        ("cwd", c.cwd or "(configuration folder)"),
        ("env", sorted(c.env)),
        ("env_allowlist", c.env_allowlist),
        ("options_end", c.options_end),
        ("max_output_bytes", c.max_output_bytes),
        *ExecTool.common_summary(c),
    ]


def _factory(name: str, config: ExecToolConfig, ctx: BuildContext) -> Tool:
    return ExecTool(name, config, base_dir=ctx.base_dir)


def _preflight(config: ExecToolConfig, ctx: PreflightContext) -> list[Problem]:
    """The program and the working directory ``start()`` looks for (``$PATH`` as the tool sees it)."""
    problems = []
    if config.cwd is not None and not ctx.resolve(config.cwd).is_dir():
        problems.append(Problem(("cwd",), f"working directory {ctx.resolve(config.cwd)} is not a folder"))
    found, problem = find_program(config, ctx.build.base_dir)
    if found is None:
        problems.append(Problem(("argv", 0), problem))
    return problems


SPEC = ComponentSpec(
    "tool",
    "exec",
    ExecToolConfig,
    _factory,
    _summary,
    "Run a program with an argv list, each item a template rendered from the event; never a shell. "
    "Timeout kills the whole process group; output capped; environment allowlist.",
    {
        "type": "exec",
        "argv": ["logger", "-t", "reflexd", "{data.s} traded {data.q}"],
        "timeout_seconds": 5,
    },
    preflight=_preflight,
)
