"""``reflexd dlq list | replay | purge``: inspect and retry dead-lettered tool invocations.

A replay runs the invocation through the same tool runner as the daemon (timeout, retries,
journal) with its original idempotency key; a key that already succeeded is not run again.
A replayed entry that succeeds leaves the list; one that fails again stays, marked failed.
The daemon may keep running meanwhile (SQLite WAL allows a second process).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from typing import Any

import orjson

from daemon.config import AppConfig
from daemon.registry import BuildContext
from daemon.state import DeadLetter, Journal, StateStore, event_from_record, redact
from handlers.base import CallContext, Tool
from handlers.runner import ToolRunner

__all__ = ["add_dlq_parser", "run_dlq"]

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
    path = BuildContext(config.base_dir).resolve(config.daemon.state_path)
    if not path.exists():
        print(f"reflexd: no state at {path} (nothing was ever dead-lettered)", file=sys.stderr)
        return EXIT_OK if args.dlq_verb != "replay" else EXIT_ERROR
    store = StateStore(path).open()
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


def _list(config: AppConfig, store: StateStore, tool: str | None, everything: bool, as_json: bool) -> int:
    letters = store.dead_letters(tool=tool, include_replayed=everything)
    secrets = config.secret_arguments()
    for d in letters:
        if as_json:
            record: dict[str, Any] = {
                "id": d.id,
                "key": d.key,
                "rule": d.rule,
                "tool": d.tool,
                "args": redact(d.args, secrets.get((d.rule, d.tool), frozenset())),
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


async def _replay(config: AppConfig, store: StateStore, letters: list[DeadLetter]) -> int:
    ctx = BuildContext(config.base_dir)
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
    runnable = [d for d in letters if d.tool in tools]
    journal = Journal(store)
    runner = ToolRunner(tools, journal=journal, secret_args=config.secret_arguments())
    await journal.start()
    await runner.start()
    loop = asyncio.get_running_loop()
    pending: list[tuple[DeadLetter, asyncio.Future[str]]] = []
    try:
        for d in runnable:
            done: asyncio.Future[str] = loop.create_future()
            call = CallContext(d.tool, d.rule, event_from_record(d.event), d.key)
            runner.submit(d.tool, d.args, call, done=done, dead_letter=False)
            pending.append((d, done))
            if runner.full:
                await runner.wait_for_room()
        outcomes = await asyncio.gather(*(fut for _, fut in pending))
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
