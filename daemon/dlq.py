"""``reflexd dlq list | replay | purge``: inspect and retry dead-lettered tool invocations.

A replay runs the invocation through the same tool runner as the daemon (timeout, retries,
journal) with its original idempotency key; a key that already succeeded is not run again.
A replayed entry that succeeds leaves the list; one that fails again stays, marked failed.
The daemon may keep running meanwhile (SQLite WAL allows a second process).

Arguments are stored redacted when the letter is written (:mod:`daemon.state`), so ``list``
prints them as stored, whatever the configuration says now. A replay renders the redacted
ones again — only those — from the stored event with the current configuration's template of
the same rule's call (:func:`restore_args`): a rotated secret is sent with its new value, and
an entry whose rule or argument is no longer configured is not replayed (it stays, said on
stderr). Letters written before the state had schema 1 hold their arguments in clear: ``list``
redacts them by the current configuration (secret-looking names, and the ``${VAR}`` arguments
of any rule calling the same tool), and a replay sends them as they are.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from typing import Any

import orjson

from daemon.agent_state import AgentState
from daemon.config import AppConfig
from daemon.errors import StartupError
from daemon.logs import hide_secrets
from daemon.state import DeadLetter, Journal, StateStore, redact
from handlers.base import CallContext, CallReply, Tool
from handlers.host import RunnerHost
from handlers.notifications import NotificationQueue
from handlers.runner import ToolRunner
from streams.event import event_from_record
from streams.expressions import compile_template
from streams.rules.pipeline import plan_rule

__all__ = ["add_dlq_parser", "restore_args", "run_dlq"]

EXIT_OK, EXIT_ERROR = 0, 1


def add_dlq_parser(dlq: argparse.ArgumentParser) -> None:
    verbs = dlq.add_subparsers(dest="dlq_verb", required=True, metavar="ACTION")
    listing = verbs.add_parser("list", help="list dead-lettered invocations")
    listing.add_argument("--tool", help="only this tool")
    listing.add_argument("--all", action="store_true", help="include entries already replayed successfully")
    listing.add_argument(
        "--json", action="store_true", help="one JSON object per line, with arguments (redacted)"
    )
    replay = verbs.add_parser(
        "replay", help="run dead-lettered invocations again, with the same idempotency key"
    )
    replay.add_argument("ids", nargs="*", type=int, metavar="ID", help="entries to replay")
    replay.add_argument("--all", action="store_true", help="replay every entry (of --tool)")
    replay.add_argument("--tool", help="only this tool")
    purge = verbs.add_parser(
        "purge", help="delete dead-lettered invocations (asks on a terminal; --yes otherwise)"
    )
    purge.add_argument("--tool", help="only this tool")
    purge.add_argument("-y", "--yes", action="store_true", help="delete without asking")
    # `reflexd dlq list -c FILE` as well as `reflexd dlq -c FILE list`
    for action in (listing, replay, purge):
        action.add_argument("-c", "--config", default=argparse.SUPPRESS, help="configuration file")


def run_dlq(config: AppConfig, args: argparse.Namespace) -> int:
    path = config.build_context().resolve(config.daemon.state_path)
    if not path.exists():
        print(f"reflexd: no state at {path} (nothing was ever dead-lettered)", file=sys.stderr)
        return EXIT_OK if args.dlq_verb != "replay" else EXIT_ERROR
    try:
        store = StateStore(path).open()
    except StartupError as exc:  # unreadable, or written by a newer reflexd
        print(f"reflexd dlq: {exc.reason}", file=sys.stderr)
        return EXIT_ERROR
    try:
        if args.dlq_verb == "list":
            return _list(config, store, args.tool, args.all, args.json)
        if args.dlq_verb == "purge":
            return _purge(store, args.tool, args.yes)
        if not args.ids and not args.all:
            print("reflexd dlq replay: give entry IDs or --all", file=sys.stderr)
            return EXIT_ERROR
        if not args.ids:
            return asyncio.run(_replay(config, store, store.dead_letters(tool=args.tool)))
        letters = _chosen(store, args.tool, args.ids)
        return EXIT_ERROR if letters is None else asyncio.run(_replay(config, store, letters))
    finally:
        store.close()


def _chosen(store: StateStore, tool: str | None, ids: list[int]) -> list[DeadLetter] | None:
    """The entries ``ids`` still to deliver; None (said on stderr) if one of them does not exist
    (or is not of ``tool``): nothing is replayed then. Entries an earlier replay delivered are
    skipped, with a note."""
    wanted = set(ids)
    found = [d for d in store.dead_letters(tool=tool, include_replayed=True) if d.id in wanted]
    unknown = sorted(wanted - {d.id for d in found})
    if unknown:
        of_tool = f" of tool {tool!r}" if tool else ""
        listed = ", ".join(map(str, unknown))
        print(
            f"reflexd dlq replay: no dead-lettered invocation with ID {listed}{of_tool}"
            " (see `reflexd dlq list --all`); nothing replayed",
            file=sys.stderr,
        )
        return None
    done = [d.id for d in found if d.replay_outcome == "succeeded"]
    if done:
        print(
            f"reflexd dlq replay: {', '.join(map(str, done))} already delivered by an earlier replay;"
            " skipped",
            file=sys.stderr,
        )
    return [d for d in found if d.replay_outcome != "succeeded"]


def _purge(store: StateStore, tool: str | None, yes: bool) -> int:
    """Delete the entries (of ``tool``): with ``--yes``, or after a yes on the terminal."""
    up_to = None
    if not yes:
        letters = store.dead_letters(tool=tool, include_replayed=True)
        n = len(letters)
        up_to = letters[-1].id if letters else 0  # what was counted: not one the daemon adds meanwhile
        what = f"{n} dead-lettered invocation(s)" + (f" of tool {tool!r}" if tool else "")
        if n and not sys.stdin.isatty():
            print(f"reflexd dlq purge: would delete {what}; give --yes to do it", file=sys.stderr)
            return EXIT_ERROR
        if n:
            sys.stderr.write(f"delete {what}? [y/N] ")
            sys.stderr.flush()
            if sys.stdin.readline().strip().lower() not in ("y", "yes"):
                print("reflexd dlq purge: nothing deleted", file=sys.stderr)
                return EXIT_ERROR
    n = store.purge_dead_letters(tool=tool, up_to=up_to)
    print(f"purged {n} dead-lettered invocation(s)")
    return EXIT_OK


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _secrets_by_tool(config: AppConfig) -> dict[str, frozenset[str]]:
    """Per tool: the argument names any rule fills from ``${VAR}`` (for letters stored in clear)."""
    out: dict[str, frozenset[str]] = {}
    for (_rule, tool), names in config.secret_arguments().items():
        out[tool] = out.get(tool, frozenset()) | names
    return out


def _list(config: AppConfig, store: StateStore, tool: str | None, everything: bool, as_json: bool) -> int:
    letters = store.dead_letters(tool=tool, include_replayed=everything)
    legacy: dict[str, frozenset[str]] | None = None
    for d in letters:
        if as_json:
            args = d.args  # redacted when it was written
            if d.redacted is None:  # written before schema 1, in clear: the best the config can say
                legacy = _secrets_by_tool(config) if legacy is None else legacy
                args = redact(args, legacy.get(d.tool, frozenset()))
            record: dict[str, Any] = {
                "id": d.id,
                "key": d.key,
                "rule": d.rule,
                "tool": d.tool,
                "args": args,
                "redacted": d.redacted,
                "error": d.error,
                "attempts": d.attempts,
                "failed_at": _when(d.failed_at),
                "replayed_at": _when(d.replayed_at),
                "replay_outcome": d.replay_outcome,
            }
            sys.stdout.write(orjson.dumps(record, default=repr).decode() + "\n")
        else:
            error = (d.error or "").splitlines()[0][:80] if d.error else ""
            replayed = f" replay={d.replay_outcome}" if d.replay_outcome else ""
            head = f"{d.id:>6} {_when(d.failed_at)} {d.tool} rule={d.rule} attempts={d.attempts}"
            print(f"{head}{replayed}  {error}")
    if not as_json:
        print(f"{len(letters)} dead-lettered invocation(s)")
    return EXIT_OK


def restore_args(config: AppConfig, letter: DeadLetter) -> dict[str, Any] | str:
    """The arguments to replay ``letter`` with: as stored, with each argument that was redacted
    when it was written rendered again from the stored event by the current configuration's
    template of the same rule's call (the call index is the last part of the idempotency key).
    A string says why that cannot be done (the rule, the call or the argument is gone)."""
    if not letter.redacted:  # nothing hidden, or stored in clear before schema 1
        return letter.args
    hidden = ", ".join(letter.redacted)
    rule = config.rules.get(letter.rule or "")
    if rule is None:
        return (
            f"argument(s) {hidden} were redacted when it was dead-lettered, and rule {letter.rule!r}"
            " is no longer configured (renamed? give it its old name back to replay)"
        )
    index = letter.key.rpartition(":")[2]
    calls = [c for c in rule.then if c.tool == letter.tool]
    if index.isdigit() and int(index) < len(rule.then) and rule.then[int(index)].tool == letter.tool:
        calls = [rule.then[int(index)]]
    if len(calls) != 1:
        return f"rule {letter.rule!r} no longer has one call of tool {letter.tool!r} to render {hidden} from"
    missing = [name for name in letter.redacted if name not in calls[0].args]
    if missing:
        return f"rule {letter.rule!r} no longer sets argument(s) {', '.join(missing)} of tool {letter.tool!r}"
    template = {name: calls[0].args[name] for name in letter.redacted}
    try:
        render = compile_template(template, plan_rule(rule).names)
        rendered = render(event_from_record(letter.event))  # type: ignore[arg-type]
    except Exception as exc:
        return f"argument(s) {hidden} cannot be rendered again from the stored event: {type(exc).__name__}"
    return {**letter.args, **rendered}


async def _replay(config: AppConfig, store: StateStore, letters: list[DeadLetter]) -> int:
    hide_secrets(config.secret_texts)
    ctx = config.build_context()
    tools: dict[str, Tool] = {}
    for name in sorted({d.tool for d in letters}):
        plan = config.tools.get(name)
        if plan is None:
            print(
                f"reflexd dlq replay: tool {name!r} is no longer configured; its entries stay",
                file=sys.stderr,
            )
            continue
        built = plan.spec.factory(name, plan.config, ctx)
        assert isinstance(built, Tool)
        tools[name] = built
    for name in list(tools):  # the tools an llm tool's model may call are built too (not replayed)
        refs = config.tools[name].spec.tool_refs
        for _, ref in refs(config.tools[name].config) if refs is not None else ():
            if ref not in tools and ref in config.tools:
                ref_plan = config.tools[ref]
                tools[ref] = ref_plan.spec.factory(ref, ref_plan.config, ctx)
    runnable: list[tuple[DeadLetter, dict[str, Any]]] = []
    secrets = dict(config.secret_arguments())
    for d in letters:
        if d.tool not in tools:
            continue
        args = restore_args(config, d)
        if isinstance(args, str):
            print(f"reflexd dlq replay: entry {d.id} not replayed: {args}; it stays", file=sys.stderr)
            continue
        runnable.append((d, args))
        if d.redacted:  # the replay's journal row hides what the letter hid
            key = (d.rule, d.tool)
            secrets[key] = secrets.get(key, frozenset()) | frozenset(d.redacted)
    journal = Journal(store)
    runner = ToolRunner(tools, journal=journal, secret_args=secrets)
    # what tools that work through others need (an llm tool's run resumes from the state file; an
    # answer has no rules to reach here: it stays in the run)
    RunnerHost(runner, NotificationQueue(), AgentState(store, journal)).attach_all()
    await journal.start()
    await runner.start()
    loop = asyncio.get_running_loop()
    pending: list[tuple[DeadLetter, asyncio.Future[CallReply]]] = []
    try:
        for d, args in runnable:
            done: asyncio.Future[CallReply] = loop.create_future()
            call = CallContext(d.tool, d.rule, event_from_record(d.event), d.key)
            runner.submit(d.tool, args, call, done=done, dead_letter=False)
            pending.append((d, done))
            if runner.full:
                await runner.wait_for_room()
        outcomes = [reply.outcome for reply in await asyncio.gather(*(fut for _, fut in pending))]
    finally:
        await runner.stop(config.daemon.shutdown_timeout_seconds)
        await journal.stop()
    failed = 0
    for (d, _), outcome in zip(pending, outcomes, strict=True):
        ok = outcome in ("succeeded", "duplicate")
        store.mark_replayed(d.id, "succeeded" if ok else "failed")
        failed += not ok
        print(f"{d.id:>6} {d.tool}: {'delivered' if outcome == 'succeeded' else outcome}")
    print(f"replayed {len(pending)}: {len(pending) - failed} ok, {failed} failed")
    return EXIT_OK if failed == 0 and len(runnable) == len(letters) else EXIT_ERROR
