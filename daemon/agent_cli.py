"""``reflexd agent runs | show`` and ``reflexd approvals list | approve | reject``.

Both read the state file the configuration names (``daemon.state_path``) through
:class:`daemon.agent_state.AgentState`, beside a running daemon if there is one (SQLite's WAL lets
both work). Everything printed goes through :class:`daemon.agent_view.Shown`: secrets from the
environment and secret-looking argument values are ``***``.

An approval decided here is executed by the running daemon within ``agent.approvals_poll_seconds``
(or at its next start), once, through its tool runner with the call's idempotency key. A proposal
is decided once: deciding it again changes nothing and exits 1.

Exit codes as ``reflexd dlq``: 0 done (also listing a state file that does not exist yet: nothing
was recorded), 1 the run or approval asked for is not there, decided already, or the state cannot
be read, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from typing import Any

import orjson

from daemon.agent_state import AgentState, DecisionError
from daemon.agent_view import Shown, first_line, format_age, format_when
from daemon.config import AppConfig
from daemon.errors import StartupError
from daemon.state import StateStore

__all__ = ["add_agent_parser", "add_approvals_parser", "run_agent", "run_approvals"]

EXIT_OK, EXIT_ERROR = 0, 1


def _config_flag(parser: argparse.ArgumentParser) -> None:
    """``reflexd agent runs -c FILE`` as well as ``reflexd agent -c FILE runs``."""
    parser.add_argument("-c", "--config", default=argparse.SUPPRESS, help="configuration file")


def add_agent_parser(agent: argparse.ArgumentParser) -> None:
    actions = agent.add_subparsers(dest="agent_verb", required=True, metavar="ACTION")
    runs = actions.add_parser("runs", help="the newest model runs, oldest first")
    runs.add_argument("--tool", metavar="T", help="only runs of this llm tool")
    runs.add_argument("--limit", type=int, default=20, metavar="N", help="at most N runs (default 20)")
    runs.add_argument("--json", action="store_true", help="one JSON object per line")
    show = actions.add_parser(
        "show", help="one run with its whole conversation: prompt, tool calls and results, answer"
    )
    show.add_argument("run_id", metavar="RUN_ID", help="a run's id (see `reflexd agent runs`)")
    show.add_argument("--json", action="store_true", help="one JSON object")
    for action in (runs, show):
        _config_flag(action)


def add_approvals_parser(approvals: argparse.ArgumentParser) -> None:
    actions = approvals.add_subparsers(dest="approvals_verb", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="proposals waiting for a decision")
    listing.add_argument("--all", action="store_true", help="also those decided already, with their outcome")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    approve = actions.add_parser(
        "approve", help="approve a proposal: the running daemon makes the call once, within a second or so"
    )
    reject = actions.add_parser("reject", help="reject a proposal: the call is never made")
    for action in (approve, reject):
        action.add_argument(
            "id", type=int, metavar="ID", help="the proposal's id (see `reflexd approvals list`)"
        )
        action.add_argument("--note", metavar="TEXT", help="why (kept with the decision)")
    for action in (listing, approve, reject):
        _config_flag(action)


def _state(config: AppConfig, verb: str, *, needed: bool) -> AgentState | int:
    """The agent's state, or the exit code after saying why there is none. ``needed``: a missing file
    is an error (a run or approval was asked for), not an empty list."""
    code = EXIT_ERROR if needed else EXIT_OK
    if not config.daemon.journal.enabled:
        print(
            f"reflexd {verb}: the journal is off (daemon.journal.enabled: false), so agent runs and "
            "approvals are not recorded",
            file=sys.stderr,
        )
        return code
    path = config.build_context().resolve(config.daemon.state_path)
    if not path.exists():
        print(f"reflexd {verb}: no state at {path} (nothing was recorded yet)", file=sys.stderr)
        return code
    try:
        return AgentState(StateStore(path).open())
    except StartupError as exc:  # unreadable, or written by a newer reflexd
        print(f"reflexd {verb}: {exc.reason}", file=sys.stderr)
        return EXIT_ERROR


def _json_line(record: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(record, default=repr).decode() + "\n")


def _key(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else orjson.dumps(value, default=repr).decode()


# -- reflexd agent ---------------------------------------------------------------------------------


def run_agent(config: AppConfig, args: argparse.Namespace) -> int:
    if args.agent_verb == "runs" and args.limit < 1:
        print("reflexd agent runs: --limit must be at least 1", file=sys.stderr)
        return EXIT_ERROR
    state = _state(config, "agent", needed=args.agent_verb == "show")
    if isinstance(state, int):
        return state
    shown = Shown(config)
    try:
        if args.agent_verb == "runs":
            return _runs(state, shown, args.tool, args.limit, args.json)
        return _show(state, shown, args.run_id, args.json)
    finally:
        state.store.close()


def _runs(state: AgentState, shown: Shown, tool: str | None, limit: int, as_json: bool) -> int:
    runs = state.runs(tool=tool, limit=limit)
    for run in runs:
        record = shown.run(run)
        if as_json:
            _json_line(record)
            continue
        latency = _latency(record["latency_seconds"])
        said = record["answer"] if record["answer"] is not None else record["error"]
        print(
            f"{run.run_id}  {record['started']}  {run.tool} rule={run.rule or '-'} key={_key(record['key'])}"
            f"  {record['outcome']} rounds={run.rounds} tokens={run.tokens_in}/{run.tokens_out} {latency}"
            f"  {first_line(said, 80)}".rstrip()
        )
    if not as_json:
        of = f" of {tool}" if tool else ""
        print(f"{len(runs)} run(s){of}" + (" (the newest; --limit for more)" if len(runs) == limit else ""))
    return EXIT_OK


def _show(state: AgentState, shown: Shown, run_id: str, as_json: bool) -> int:
    run = state.run(run_id)
    if run is None:
        print(f"reflexd agent show: no run {run_id!r} (see `reflexd agent runs`)", file=sys.stderr)
        return EXIT_ERROR
    record = shown.run(run, messages=True)
    approvals = [shown.approval(a) for a in state.approvals(status=None) if a.run_id == run.run_id]
    if as_json:
        _json_line({**record, "approvals": approvals})
        return EXIT_OK
    latency = _latency(record["latency_seconds"])
    out = [
        f"run {run.run_id}  tool {run.tool}  rule {run.rule or '-'}  key {_key(record['key'])}",
        f"started {record['started']}  ended {record['ended'] or '-'}  latency {latency}  outcome "
        f"{record['outcome']}  rounds {run.rounds}  tokens {run.tokens_in} in / {run.tokens_out} out",
    ]
    for i, message in enumerate(record["messages"], 1):
        out.extend(_message_lines(i, message))
    if record["answer"] is not None:
        out.append(f"answer: {_indented(record['answer'])}")
    if record["error"] is not None:
        out.append(f"error: {_indented(record['error'])}")
    for a in approvals:
        decided = f" by {a['decided_by']}" if a["decided_by"] else ""
        result = f" → {a['outcome']}" if a["outcome"] else ""
        out.append(f"approval {a['id']}: {a['tool']} {_args(a['args'])} {a['status']}{decided}{result}")
    print("\n".join(out))
    return EXIT_OK


def _latency(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}s"


def _args(args: Any) -> str:
    return orjson.dumps(args, default=repr).decode()


def _indented(text: str) -> str:
    return text.replace("\n", "\n      ")


def _message_lines(i: int, message: dict[str, Any]) -> list[str]:
    role = message.get("role", "?")
    content = message.get("content") or ""
    if role == "tool":
        call = f"{message.get('name', '?')} ({message.get('tool_call_id', '?')})"
        return [f"[{i}] tool {call}: {_indented(content)}"]
    lines = [f"[{i}] {role}: {_indented(content)}" if content else f"[{i}] {role}:"]
    for call in message.get("tool_calls") or ():
        name, call_id = call.get("name", "?"), call.get("id", "?")
        lines.append(f"      calls {name} ({call_id}) {call.get('arguments', '')}")
    return lines


# -- reflexd approvals -----------------------------------------------------------------------------


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container) and no LOGNAME/USER
        return f"uid {os.getuid()}"


def run_approvals(config: AppConfig, args: argparse.Namespace) -> int:
    verb = args.approvals_verb
    state = _state(config, "approvals", needed=verb != "list")
    if isinstance(state, int):
        return state
    shown = Shown(config)
    try:
        if verb == "list":
            return _list(state, shown, args.all, args.json)
        return _decide(config, state, shown, args.id, verb == "approve", args.note)
    finally:
        state.store.close()


def _list(state: AgentState, shown: Shown, everything: bool, as_json: bool) -> int:
    now = time.time()
    approvals = state.approvals(status=None if everything else "pending")
    for a in approvals:
        record = shown.approval(a, now)
        if as_json:
            _json_line(record)
            continue
        status = f"{a.status:<9} " if everything else ""
        after = ""
        if a.decided_by:
            after = f" by={a.decided_by}" + (f" outcome={a.outcome}" if a.outcome else "")
        reasoning = first_line(record["reasoning"], 80)
        print(
            f"{a.id:>6} {status}{a.llm} → {a.tool} {_args(record['args'])}  run={a.run_id}"
            f" rule={a.rule or '-'} age={format_age(now - a.created)}{after}"
            + (f"  {reasoning}" if reasoning else "")
        )
    if not as_json:
        print(f"{len(approvals)} approval(s)" if everything else f"{len(approvals)} pending approval(s)")
    return EXIT_OK


def _decide(
    config: AppConfig, state: AgentState, shown: Shown, approval_id: int, approve: bool, note: str | None
) -> int:
    verb = "approve" if approve else "reject"
    try:
        decided = state.decide(approval_id, approve, by=f"cli:{_user()}", note=note)
    except DecisionError:
        found = state.approval(approval_id)
        if found is None:
            print(
                f"reflexd approvals {verb}: no approval {approval_id} (see `reflexd approvals list --all`)",
                file=sys.stderr,
            )
        else:
            when = f" at {format_when(found.decided_at)}" if found.decided_at is not None else ""
            by = f" by {found.decided_by}" if found.decided_by else ""
            print(
                f"reflexd approvals {verb}: approval {approval_id} is {found.status} already{by}{when}; "
                "nothing changed",
                file=sys.stderr,
            )
        return EXIT_ERROR
    call = f"{decided.tool} {_args(shown.args(decided.tool, decided.args))}"
    if approve:
        poll = config.agent.approvals_poll_seconds
        print(
            f"approved {approval_id}: {call}; the running daemon makes the call within {poll:g} s "
            "(or at its next start), once"
        )
    else:
        print(f"rejected {approval_id}: {call} is not made")
    return EXIT_OK
