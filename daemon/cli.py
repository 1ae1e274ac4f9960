"""The ``reflexd`` command line: verbs → exit codes.

Exit codes: 0 clean stop, 1 anything else, 2 configuration or usage error, 3 startup failure, 141 the
reader of the output went away (``| head``).
"""

from __future__ import annotations

# before anything slow is imported: from here on a SIGHUP is remembered, not fatal (daemon.hangup)
from daemon import hangup  # isort: skip

import argparse
import asyncio
import contextlib
import importlib.metadata
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import orjson

from daemon.agent_cli import add_agent_parser, add_approvals_parser, run_agent, run_approvals
from daemon.agent_view import Shown, first_line
from daemon.completion import SHELLS, completion_script
from daemon.config import AppConfig, ComponentPlan, config_json_schema, load_config
from daemon.dlq import add_dlq_parser, run_dlq
from daemon.errors import ConfigError, StartupError
from daemon.journal_cli import add_journal_parser, run_journal
from daemon.logs import configure_logging, get_logger
from daemon.registry import Registry, builtin_registry
from daemon.rule_state import add_state_parser, run_state
from daemon.state import redact
from handlers.llm import LlmToolConfig
from streams.base import StartAt
from streams.decode import DecodeFields
from streams.rules.pipeline import plan_rule
from streams.rules.replay import (
    Fired,
    FiredFormat,
    Pacer,
    RecordResult,
    ReplayInput,
    is_record,
    merge_by_time,
    read_input,
    record_source,
    replay_rules,
)

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_CONFIG", "EXIT_OK", "EXIT_STARTUP", "main", "render_plan"]

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_STARTUP = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141: the reader of stdout went away (`| head`)

log = get_logger("cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reflexd", description="Reflexes for an AI agent: streams → rules → tools."
    )
    parser.add_argument("--version", action="version", version=f"reflexd {_version()}")
    # not required: with no verb, _main prints the help (usage and the verbs) and exits 2
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "-c", "--config", default="config.yaml", help="configuration file (default: ./config.yaml)"
        )
        return p

    with_config("run", "run the daemon")
    with_config(
        "reload",
        "validate the configuration (as check does) and ask the running daemon to reload it: "
        "SIGHUP to the process named by daemon.pid_file",
    )
    check = with_config(
        "check",
        "validate the configuration and what starting it needs (files, programs, imports, tool "
        "arguments) and print the plan; exit 2 on an error; nothing is sent",
    )
    check.add_argument(
        "--offline",
        action="store_true",
        help="skip the checks that need the network (none of the built-in ones does yet)",
    )
    with_config("tools", "list the configured tools with their argument schemas")
    replay = with_config(
        "replay",
        "run the rules over recorded JSONL in event time, deterministically, every tool in dry-run; "
        "print what would have fired",
    )
    replay.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="a recording made by `reflexd record`, or SOURCE=FILE: raw messages decoded as SOURCE "
        "decodes them (its key_field/time_field); several files are merged by event time",
    )
    replay.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="pace events at their event-time spacing divided by N (default 0: as fast as possible); "
        "the output does not depend on it",
    )
    replay.add_argument("--rule", action="append", metavar="NAME", help="replay only this rule (repeatable)")
    replay.add_argument(
        "--format", choices=("text", "jsonl"), default="text", help="text lines (default) or JSON lines"
    )
    record = with_config("record", "capture what a live source receives into the replay format (JSONL)")
    record.add_argument("source", metavar="SOURCE", help="name of a source in the configuration")
    record.add_argument("--out", required=True, metavar="FILE", help="recording to write (replaced)")
    record.add_argument(
        "--duration", type=float, metavar="S", help="stop after S seconds (default: until Ctrl-C or the end)"
    )
    record.add_argument(
        "--from",
        dest="start",
        metavar="WHERE",
        help="where a source that keeps a position (kafka) starts: latest (default: what arrives from now "
        "on), earliest, or a time (ISO-8601 with a zone, e.g. 2025-01-31T12:00:00Z, or epoch milliseconds). "
        "Kafka is read without the consumer group and nothing is committed: a running daemon loses nothing",
    )
    add_dlq_parser(with_config("dlq", "inspect and retry dead-lettered tool invocations"))
    add_state_parser(with_config("state", "the rules' saved state (cooldowns, windows, ...): list, clear"))
    add_journal_parser(
        with_config("journal", "recent tool invocations from the journal (redacted); -f follows it")
    )
    add_agent_parser(with_config("agent", "model runs: prompts, tool calls, answers, tokens (redacted)"))
    add_approvals_parser(
        with_config("approvals", "model-chosen calls waiting for a person: list, approve, reject")
    )
    with_config(
        "mcp",
        "stdio bridge to the running daemon's MCP endpoint (agent.mcp), for clients that start MCP "
        "servers as programs; only protocol frames on stdout",
    )
    verbs.add_parser("schema", help="print the JSON Schema of the configuration (for editors)")
    completion = verbs.add_parser(
        "completion",
        help="print a shell completion script (bash: `source <(reflexd completion bash)`)",
        description="print a completion script for the verbs, actions and flags; load it with "
        "`source <(reflexd completion bash)` (or zsh) in the shell's rc file",
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell")
    return parser


def _version() -> str:
    """The installed package's version (``unknown`` when run from a tree that is not installed)."""
    try:
        return importlib.metadata.version("reflexd")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None, registry: Registry | None = None) -> int:
    """Run one verb; its exit code. Output into a pipe whose reader went away (``reflexd dlq list |
    head``) ends the verb quietly with :data:`EXIT_BROKEN_PIPE`, as a shell reports it."""
    try:
        code = _main(argv, registry)
        sys.stdout.flush()  # here, not at the interpreter's exit, where a failure prints a traceback
    except BrokenPipeError:
        # the interpreter flushes stdout again at exit: point it at /dev/null so that cannot fail
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code


def _main(argv: Sequence[str] | None, registry: Registry | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.verb != "run":  # only the daemon takes SIGHUP as a reload
        hangup.release()
    if args.verb is None:  # like git: the verbs, and a usage error's exit code (argparse's 2)
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    if args.verb == "completion":
        sys.stdout.write(completion_script(parser, args.shell))
        return EXIT_OK
    registry = registry or builtin_registry()
    if args.verb == "schema":
        sys.stdout.write(
            orjson.dumps(config_json_schema(registry), option=orjson.OPT_INDENT_2).decode() + "\n"
        )
        return EXIT_OK
    if args.verb == "mcp":  # reads only agent.mcp: other ${VAR}s need not be set in a client's env
        from daemon.mcp_bridge import run_bridge

        return run_bridge(args.config)
    try:
        check = args.verb == "check"
        config = load_config(
            args.config,
            registry,
            preflight=check or args.verb == "reload",
            offline=check and args.offline,
        )
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"reflexd: {len(exc.issues)} configuration error(s)", file=sys.stderr)
        return EXIT_CONFIG
    if args.verb == "check":
        sys.stdout.write(render_plan(config))
        return EXIT_OK
    if args.verb == "tools":
        return _tools(config)
    if args.verb == "reload":
        return _signal_reload(config)
    if args.verb == "dlq":
        return run_dlq(config, args)
    if args.verb == "state":
        return run_state(config.build_context().resolve(config.daemon.state_path), args)
    if args.verb == "journal":
        return run_journal(config, args)
    if args.verb == "agent":
        return run_agent(config, args)
    if args.verb == "approvals":
        return run_approvals(config, args)
    configure_logging(config.daemon.log_level, config.daemon.log_format)
    if args.verb == "replay":
        return _replay(config, args.files, args.speed, args.rule, args.format)
    if args.verb == "record":
        return _record(config, args.source, args.out, args.duration, args.start)
    try:
        return asyncio.run(serve(config, registry))
    except KeyboardInterrupt:  # pragma: no cover - signal handlers normally catch it
        return EXIT_ERROR


def _signal_reload(config: AppConfig) -> int:
    """``reflexd reload``: the file is valid (checked like ``check`` before this); SIGHUP the process
    ``daemon.pid_file`` names. The daemon validates it again itself and keeps running on the old
    one if it has become invalid since (its log and /status say so)."""
    if config.daemon.pid_file is None:
        print(
            "reflexd: daemon.pid_file is not set, so the running daemon cannot be found; set it, or send "
            "SIGHUP to the process yourself (systemctl reload reflexd)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    path = config.build_context().resolve(config.daemon.pid_file)
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except FileNotFoundError:
        print(f"reflexd: {path}: no such file (is the daemon running?)", file=sys.stderr)
        return EXIT_ERROR
    except ValueError:
        print(f"reflexd: {path}: not a process id", file=sys.stderr)
        return EXIT_ERROR
    except ProcessLookupError:
        print(f"reflexd: {path}: process {pid} is not running (a stale pid file)", file=sys.stderr)
        return EXIT_ERROR
    except PermissionError:
        print(f"reflexd: {path}: not allowed to signal process {pid}", file=sys.stderr)
        return EXIT_ERROR
    print(f"reload requested: SIGHUP sent to process {pid}; the daemon's log and /status tell the outcome")
    return EXIT_OK


def _write_pid_file(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(path)


def _remove_pid_file(path: Path) -> None:
    """Only if it still names this process (a second daemon may have taken it over)."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()


async def _watch_config(file: str, wanted: asyncio.Event, interval: float = 1.0) -> None:
    """``daemon.watch_config``: a reload when the file's size or modification time changes (polled:
    no inotify dependency, and it also sees a file replaced by a rename, as editors and ConfigMaps do)."""

    def stamp() -> tuple[int, int] | None:
        try:
            st = os.stat(file)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    last = stamp()
    while True:
        await asyncio.sleep(interval)
        now = stamp()
        if now is not None and now != last:
            log.info("configuration file changed; reloading", extra={"fields": {"file": file}})
            wanted.set()
        if now is not None:
            last = now


async def serve(config: AppConfig, registry: Registry | None = None) -> int:
    """Run until SIGTERM/SIGINT; a second SIGINT forces the stop. SIGHUP reloads the configuration
    file (:meth:`daemon.supervisor.Daemon.reload`), during the start too: once running."""
    from daemon.supervisor import Daemon

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload_wanted = asyncio.Event()
    main_task = asyncio.current_task()
    assert main_task is not None
    state = {"sigint": 0, "forced": False}
    daemon: Daemon | None = None
    registry = registry or builtin_registry()

    def on_sigterm() -> None:
        log.info("SIGTERM received; stopping")
        stop.set()

    def on_sigint() -> None:
        state["sigint"] += 1
        if state["sigint"] == 1:
            log.info("SIGINT received; stopping (again to force)")
            stop.set()
        else:
            state["forced"] = True
            main_task.cancel()

    def on_sighup() -> None:
        if stop.is_set():
            log.info("SIGHUP received while stopping; ignored")
        elif daemon is None or daemon.state != "running":
            log.info("SIGHUP received while starting; reloading once running")
            reload_wanted.set()
        else:
            log.info("SIGHUP received; reloading the configuration")
            reload_wanted.set()

    async def reloads(running: Daemon) -> None:
        def load() -> AppConfig:
            return load_config(config.file, registry, preflight=True)

        while True:
            await reload_wanted.wait()
            reload_wanted.clear()
            if stop.is_set():
                return
            try:
                await running.reload(load)
            except Exception:  # never expected: reload reports its own failures
                log.exception("reload failed unexpectedly")

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_signal_handler(signal.SIGINT, on_sigint)
    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    if hangup.take():  # arrived while the command line started
        on_sighup()
    pid_file = config.build_context().resolve(config.daemon.pid_file) if config.daemon.pid_file else None
    helpers: list[asyncio.Task[None]] = []
    try:
        if pid_file is not None:
            try:
                _write_pid_file(pid_file)
            except OSError as exc:
                log.error(
                    "startup failed",
                    extra={"fields": {"component": "daemon.pid_file", "reason": f"{pid_file}: {exc}"}},
                )
                return EXIT_STARTUP
        try:
            daemon = Daemon(config)
            await daemon.start()
        except StartupError as exc:
            log.error("startup failed", extra={"fields": {"component": exc.component, "reason": exc.reason}})
            return EXIT_STARTUP
        reloader = asyncio.create_task(reloads(daemon), name="reflexd:reload")
        helpers.append(reloader)
        if config.daemon.watch_config:
            helpers.append(
                asyncio.create_task(_watch_config(config.file, reload_wanted), name="reflexd:watch-config")
            )
        try:
            await stop.wait()
            for task in helpers:
                if task is not reloader:
                    task.cancel()
            reload_wanted.set()  # the reloader ends; a reload in progress first ends (within its budget)
            await asyncio.gather(*helpers, return_exceptions=True)
            await daemon.stop()
        except asyncio.CancelledError:
            if state["forced"]:
                log.error("forced stop: in-flight work abandoned")
                return EXIT_ERROR
            raise
        return EXIT_OK
    except Exception:
        log.exception("daemon failed")
        return EXIT_ERROR
    finally:
        for task in helpers:
            task.cancel()
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGHUP)
        hangup.install()  # removing the loop's handler restored the default, which kills
        if pid_file is not None:
            _remove_pid_file(pid_file)


class _InputError(Exception):
    """A replay input that cannot be used; the message says why."""


def _first_value(path: Path, lines: int = 20) -> Any:
    """The first JSON value among the first ``lines`` non-empty lines of ``path`` (None if none)."""
    with path.open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                return orjson.loads(line)
            except orjson.JSONDecodeError:
                lines -= 1
                if lines <= 0:
                    return None
    return None


def _replay_input(config: AppConfig, spec: str) -> ReplayInput:
    source: str | None = None
    text = spec
    name, sep, rest = spec.partition("=")
    if sep and name in config.sources:
        source, text = name, rest
    elif sep and not Path(spec).exists():
        known = ", ".join(config.sources)
        raise _InputError(f"{spec}: no source named {name!r} (sources: {known})")
    path = Path(text)
    if not path.is_file():
        raise _InputError(f"{text}: no such file")
    if source is None:
        if is_record(_first_value(path)):
            return ReplayInput(path, max_future=_max_future(config))
        ctx = config.build_context()
        for candidate, plan in config.sources.items():
            cfg = plan.config
            configured = cfg.replay_file() if isinstance(cfg, DecodeFields) else None
            if configured and ctx.resolve(configured).resolve() == path.resolve():
                source = candidate
                break
        else:
            raise _InputError(
                f"{text}: not a reflexd recording (lines with source, ts and data); "
                f"to replay raw messages write SOURCE={text} (sources: {', '.join(config.sources)})"
            )
    cfg = config.sources[source].config
    if not isinstance(cfg, DecodeFields) or not cfg.time_field:
        raise _InputError(
            f"{text}: source {source!r} has no time_field, and a replay needs event times "
            "(record the source with `reflexd record`, or set its time_field)"
        )
    return ReplayInput(
        path,
        source,
        key_field=cfg.key_field,
        time_field=cfg.time_field,
        time_unit=cfg.time_unit,
        max_future=_max_future(config),
        where=cfg.compiled_where(),
    )


def _max_future(config: AppConfig) -> dict[str, float | None]:
    """Each source's event-time bound, applied by a replay to its events (against the file's progress)."""
    return {name: plan.config.max_future_seconds for name, plan in config.sources.items()}


def _replay(config: AppConfig, specs: Sequence[str], speed: float, only: list[str] | None, fmt: str) -> int:
    """``reflexd replay``: rules over recordings in event time; tools are never called."""
    rules = config.rules
    if only:
        unknown = [name for name in only if name not in rules]
        if unknown:
            print(f"reflexd: no rule named {', '.join(unknown)} (rules: {', '.join(rules)})", file=sys.stderr)
            return EXIT_ERROR
        rules = {name: rule for name, rule in rules.items() if name in only}
    if speed < 0:
        print("reflexd: --speed must be 0 (as fast as possible) or positive", file=sys.stderr)
        return EXIT_ERROR
    try:
        inputs = [_replay_input(config, spec) for spec in specs]
    except _InputError as exc:
        print(f"reflexd: {exc}", file=sys.stderr)
        return EXIT_ERROR
    out = sys.stdout
    started = time.monotonic()
    closed = False  # the reader went away (`reflexd replay ... | head`): stop writing, quietly
    secrets = config.secret_arguments()  # arguments from ${VAR}: printed as *** (so are secret names)
    none: frozenset[str] = frozenset()
    models = _model_tools(config)  # llm tools: their prompts are reported, no model is called
    prompts = dict.fromkeys(models, 0)

    formatted = FiredFormat(fmt)
    last: list[Any] = [None, None, None]  # the previous call's arguments, secret names, arguments shown

    def report(fired: Fired) -> None:
        nonlocal closed
        if fired.tool in prompts:
            prompts[fired.tool] += 1
        if closed:
            return
        args, hidden = fired.args, secrets.get((fired.rule, fired.tool), none)
        if args is not last[0] or hidden != last[1]:  # rules of a shared group share their arguments
            last[:] = args, hidden, redact(args, hidden)
        shown = fired if last[2] is args else fired._replace(args=last[2])
        try:
            out.write(formatted(shown) + "\n")
            if speed:
                out.flush()
        except BrokenPipeError:
            closed = True

    try:
        result = replay_rules(
            rules,
            config.sources,
            merge_by_time(read_input(i) for i in inputs),
            report,
            pace=Pacer(speed) if speed else None,
        )
    except OSError as exc:
        print(f"reflexd: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    try:
        out.flush()
    except BrokenPipeError:
        closed = True
    if closed:  # keep the interpreter's final flush from failing again
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    took = time.monotonic() - started
    err = sys.stderr
    print(
        f"reflexd: replayed {result.events} events from {len(inputs)} file(s) in {took:.2f}s; "
        f"{result.fired} tool call(s) would have been made (dry run: no tool was called)",
        file=err,
    )
    for item in inputs:
        if item.bad_lines:
            print(f"  {item.path}: {item.bad_lines} line(s) skipped, first: {item.first_error}", file=err)
        if item.filtered:
            print(f"  {item.path}: {item.filtered} message(s) filtered by the source's where:", file=err)
        if item.future:
            print(
                f"  {item.path}: {item.future} event(s) dropped: event time more than max_future_seconds "
                f"ahead of the recording, first: {item.first_future}",
                file=err,
            )
    for source, count in sorted(result.skipped.items()):
        print(f"  {count} event(s) of source {source!r} skipped: not in the configuration", file=err)
    for name, rule in result.rules.items():
        st = rule.stats
        answers = [src for src in rule.config.from_ if src in models and src not in config.sources]
        unfed = f" (reads the answers of {', '.join(answers)}: none in a replay)" if answers else ""
        print(
            f"  rule {name}: seen {st.seen}, fired {st.fired}, errors {st.errors}, late {st.late}, "
            f"suppressed {st.suppressed}{unfed}",
            file=err,
        )
    for name, line in models.items():
        sent = f"{prompts[name]} prompt(s) shown as its calls, none sent (dry run: no model is called)"
        print(f"  llm tool {name}: {sent}; {line}", file=err)
    render_errors = sum(rule.stats.render_errors for rule in result.rules.values())
    if render_errors:  # calls skipped: an argument template raised; the earliest sample named
        samples = [rule.first_render_error for rule in result.rules.values() if rule.first_render_error]
        first = f" (first: {min(samples, key=lambda s: s[0])[1]})" if samples else ""
        print(f"  {render_errors} render error(s), call(s) skipped{first}", file=err)
    return EXIT_OK


def _model_tools(config: AppConfig) -> dict[str, str]:
    """Per llm tool, what a replay says of it instead of calling its model: the model, its system
    prompt (its first line; secrets hidden) and the tools the model could call."""
    shown = Shown(config)
    out = {}
    for name, plan in config.tools.items():
        cfg = plan.config
        if not isinstance(cfg, LlmToolConfig):
            continue
        system = "***" if config.is_secret(("tools", name, "system")) else shown.text(first_line(cfg.system))
        could = [
            t + (" (needs approval)" if t in cfg.require_approval else "")
            + (" (background)" if t in cfg.background_tools else "")
            for t in cfg.tools
        ]
        model = "***" if config.is_secret(("tools", name, "model")) else cfg.model
        out[name] = (
            f"model {model}, system prompt {system!r}, the model could call: {', '.join(could) or 'no tool'}"
        )
    return out


def parse_start(text: str | None) -> StartAt | None:
    """``--from``: ``earliest``, ``latest``, epoch milliseconds, or an ISO-8601 time with a zone."""
    if text is None:
        return None
    word = text.strip().lower()
    if word in ("earliest", "latest"):
        return "earliest" if word == "earliest" else "latest"
    if word.isdigit():
        return int(word)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--from {text!r}: expected latest, earliest, epoch milliseconds or an ISO-8601 time "
            "(2025-01-31T12:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"--from {text!r}: say which zone the time is in (append Z for UTC, or +02:00)")
    return int(moment.timestamp() * 1000)


def _record(config: AppConfig, name: str, out_path: str, duration: float | None, start: str | None) -> int:
    """``reflexd record``: one source, its events written as a recording; the source reads as an
    observer (``Source.observe_only``): a Kafka source joins no group and commits nothing."""
    plan = config.sources.get(name)
    if plan is None:
        print(f"reflexd: no source named {name!r} (sources: {', '.join(config.sources)})", file=sys.stderr)
        return EXIT_ERROR
    if duration is not None and duration <= 0:
        print("reflexd: --duration must be positive", file=sys.stderr)
        return EXIT_ERROR
    source = plan.spec.factory(name, plan.config, config.build_context())
    try:
        source.observe_only(parse_start(start))
    except ValueError as exc:
        print(f"reflexd: {exc}", file=sys.stderr)
        return EXIT_ERROR
    started = time.monotonic()
    try:
        with open(out_path, "wb") as out:
            result = asyncio.run(_record_until_stopped(source, out, duration))
    except OSError as exc:
        print(f"reflexd: cannot write {out_path}: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    took = time.monotonic() - started
    print(
        f"reflexd: recorded {result.events} event(s) ({result.gaps} gap(s)) from {name} into {out_path} "
        f"in {took:.1f}s",
        file=sys.stderr,
    )
    if result.error is not None:
        print(f"reflexd: source {name} failed: {result.error}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


async def _record_until_stopped(source: Any, out: BinaryIO, duration: float | None) -> RecordResult:
    """Record until ``duration``, SIGINT/SIGTERM, or the end of the source."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await record_source(source, out, duration=duration, stop=stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _tools(config: AppConfig) -> int:
    ctx = config.build_context()
    out: list[dict[str, Any]] = []
    for name, plan in config.tools.items():
        tool = plan.spec.factory(name, plan.config, ctx)
        out.append(tool.schema())
    sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    return EXIT_OK


def _value(config: AppConfig, path: tuple[str | int, ...], value: Any) -> str:
    if config.is_secret(path):
        return "***"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return "null" if value is None else str(value)


def _component_lines(
    config: AppConfig,
    section: str,
    plans: dict[str, ComponentPlan],
    used: set[str],
    unused_note: str,
    notes: dict[str, str] | None = None,
) -> list[str]:
    lines = []
    for name, plan in plans.items():
        fields = " ".join(
            f"{k}={_value(config, (section, name, k), v)}" for k, v in plan.spec.summary(plan.config)
        )
        note = f"  ({unused_note})" if name not in used else ""
        if notes and name in notes:
            note = f"  ({notes[name]})"
        lines.append(f"  {name} [{plan.spec.type}] {fields}{note}")
    return lines


def _called_by_tools(config: AppConfig) -> dict[str, str]:
    """Per tool that other tools call (an llm tool's model): ``called by the model of analyst``."""
    callers: dict[str, list[str]] = {}
    for name, plan in config.tools.items():
        refs = plan.spec.tool_refs
        for _path, target in refs(plan.config) if refs is not None else ():
            callers.setdefault(target, []).append(name)
    return {
        target: f"called by the model{'s' if len(names) > 1 else ''} of {', '.join(names)}"
        for target, names in callers.items()
    }


def _from_label(config: AppConfig, name: str) -> str:
    """A rule's source in the plan: a tool's events are named as such (an llm tool's answers)."""
    plan = config.tools.get(name)
    if name not in config.sources and plan is not None and plan.spec.emits_events:
        return f"{name} (answers of {plan.spec.type} tool)"
    return name


def _step_path(label: str) -> tuple[str | int, ...]:
    """``steps.2.window`` → ``("steps", 2)``."""
    head, _, rest = label.partition(".")
    index = rest.partition(".")[0]
    return (head, int(index)) if index.isdigit() else (head,)


def render_plan(config: AppConfig, out: TextIO | None = None) -> str:
    """What ``reflexd check`` prints: sources → rules → tools."""
    counts = f"{len(config.sources)} sources, {len(config.rules)} rules, {len(config.tools)} tools"
    lines = [f"{config.file}: ok — {counts}"]
    used_sources = {s for r in config.rules.values() for s in r.from_}
    used_tools = {c.tool for r in config.rules.values() for c in r.then}
    lines.append("sources")
    lines.extend(_component_lines(config, "sources", config.sources, used_sources, "no rule reads it"))
    lines.append("rules")
    for name, rule in config.rules.items():
        parts = [f"from {', '.join(_from_label(config, s) for s in rule.from_)}"]
        if rule.where:
            parts.append(f"where {_value(config, ('rules', name, 'where'), rule.where)}")
        for step in plan_rule(rule).steps:  # label "steps.<i>.<kind>"; a step holding ${VAR} text is masked
            secret = config.is_secret(("rules", name, *_step_path(step.label)))
            parts.append(f"{step.kind} ***" if secret else step.summary)
        if rule.cooldown_seconds:
            cooldown = _value(config, ("rules", name, "cooldown_seconds"), rule.cooldown_seconds)
            parts.append(f"cooldown {cooldown}s per key")
        if "kinds" in rule.model_fields_set:
            parts.append(f"kinds {', '.join(rule.kinds)}")
        if rule.allowed_lateness_seconds:
            lateness_path = ("rules", name, "allowed_lateness_seconds")
            lateness = _value(config, lateness_path, rule.allowed_lateness_seconds)
            parts.append(f"allowed lateness {lateness}s")
        calls = ", ".join(c.tool for c in rule.then)
        lines.append(f"  {name}: {'; '.join(parts)} → {calls}")
    lines.append("tools")
    called = {name: note for name, note in _called_by_tools(config).items() if name not in used_tools}
    mcp = config.agent.mcp
    for name in mcp.tools if mcp is not None else ():
        if name not in used_tools:
            called[name] = "; ".join(filter(None, (called.get(name), "called over MCP")))
    lines.extend(_component_lines(config, "tools", config.tools, used_tools, "no rule calls it", called))
    if mcp is not None:
        listen = _value(config, ("agent", "mcp", "listen"), mcp.listen)
        parts = [f"http://{listen}/mcp", f"auth={mcp.auth}", f"tools=[{', '.join(mcp.tools)}]"]
        if mcp.require_approval:
            parts.append(f"require_approval=[{', '.join(mcp.require_approval)}]")
        lines.append("mcp " + " ".join(parts) + " + wait_for_events, recent_events, status")
    text = "\n".join(lines) + "\n"
    if out is not None:
        out.write(text)
    return text


if __name__ == "__main__":  # pragma: no cover
    logging.captureWarnings(True)
    sys.exit(main())
