"""The ``reflexd`` command line: verbs → exit codes.

Exit codes: 0 clean stop, 1 anything else, 2 configuration error, 3 startup failure.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import orjson

from daemon.config import AppConfig, ComponentPlan, config_json_schema, load_config
from daemon.errors import ConfigError, StartupError
from daemon.logs import configure_logging, get_logger
from daemon.registry import BuildContext, Registry, builtin_registry

__all__ = ["EXIT_CONFIG", "EXIT_OK", "EXIT_STARTUP", "main", "render_plan"]

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_STARTUP = 0, 1, 2, 3

log = get_logger("cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reflexd", description="Reflexes for an AI agent: streams → rules → tools."
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "-c", "--config", default="config.yaml", help="configuration file (default: ./config.yaml)"
        )
        return p

    with_config("run", "run the daemon")
    with_config("check", "validate the configuration and print the plan; exit 2 on an error")
    with_config("tools", "list the configured tools with their argument schemas")
    verbs.add_parser("schema", help="print the JSON Schema of the configuration (for editors)")
    return parser


def main(argv: Sequence[str] | None = None, registry: Registry | None = None) -> int:
    args = _parser().parse_args(argv)
    registry = registry or builtin_registry()
    if args.verb == "schema":
        sys.stdout.write(
            orjson.dumps(config_json_schema(registry), option=orjson.OPT_INDENT_2).decode() + "\n"
        )
        return EXIT_OK
    try:
        config = load_config(args.config, registry)
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
    configure_logging(config.daemon.log_level, config.daemon.log_format)
    try:
        return asyncio.run(serve(config))
    except KeyboardInterrupt:  # pragma: no cover - signal handlers normally catch it
        return EXIT_ERROR


async def serve(config: AppConfig) -> int:
    """Run until SIGTERM/SIGINT; a second SIGINT forces the stop."""
    from daemon.supervisor import Daemon

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main_task = asyncio.current_task()
    assert main_task is not None
    state = {"sigint": 0, "forced": False}

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

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        try:
            daemon = Daemon(config)
            await daemon.start()
        except StartupError as exc:
            log.error("startup failed", extra={"fields": {"component": exc.component, "reason": exc.reason}})
            return EXIT_STARTUP
        try:
            await stop.wait()
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
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGINT)


def _tools(config: AppConfig) -> int:
    ctx = BuildContext(config.base_dir)
    out: list[dict[str, Any]] = []
    for name, plan in config.tools.items():
        tool = plan.spec.factory(name, plan.config, ctx)
        out.append(tool.schema())  # type: ignore[union-attr]
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
    config: AppConfig, section: str, plans: dict[str, ComponentPlan], used: set[str], unused_note: str
) -> list[str]:
    lines = []
    for name, plan in plans.items():
        fields = " ".join(
            f"{k}={_value(config, (section, name, k), v)}" for k, v in plan.spec.summary(plan.config)
        )
        unused = f"  ({unused_note})" if name not in used else ""
        lines.append(f"  {name} [{plan.spec.type}] {fields}{unused}")
    return lines


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
        parts = [f"from {', '.join(rule.from_)}"]
        if rule.where:
            parts.append(f"where {rule.where}")
        if rule.cooldown_seconds:
            cooldown = _value(config, ("rules", name, "cooldown_seconds"), rule.cooldown_seconds)
            parts.append(f"cooldown {cooldown}s per key")
        if rule.kinds != ["data"]:
            parts.append(f"kinds {', '.join(rule.kinds)}")
        calls = ", ".join(c.tool for c in rule.then)
        lines.append(f"  {name}: {'; '.join(parts)} → {calls}")
    lines.append("tools")
    lines.extend(_component_lines(config, "tools", config.tools, used_tools, "no rule calls it"))
    text = "\n".join(lines) + "\n"
    if out is not None:
        out.write(text)
    return text


if __name__ == "__main__":  # pragma: no cover
    logging.captureWarnings(True)
    sys.exit(main())
