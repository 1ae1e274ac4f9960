"""Reload (daemon.reload, Daemon.reload): only what changed restarts; an invalid file changes nothing.

In-process daemons against a real WebSocket feed (tests/servers.FeedServer) and real file tools; the
configuration is a file on disk that the test rewrites, read back the way SIGHUP reads it
(``load_config(..., preflight=True)``). The SIGHUP and ``reflexd reload`` paths of a real process
are in tests/daemon/test_reload_process.py, Kafka in tests/daemon/test_reload_kafka.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from daemon.config import AppConfig, load_config
from daemon.registry import builtin_registry
from daemon.supervisor import Daemon
from tests.conftest import StartDaemon
from tests.servers import FeedServer, Plan, wait_for


def write_config(path: Path, url: str, tmp: Path, rules: dict[str, str], extra_tools: str = "") -> None:
    """A websocket feed, a file tool per rule (out_<rule>.jsonl), and the rules given as YAML bodies."""
    tools = "".join(f"  out_{name}: {{type: file, path: {tmp / f'out_{name}.jsonl'}}}\n" for name in rules)
    body = "".join(f"  {name}: {text}\n" for name, text in rules.items())
    path.write_text(
        f"""daemon:
  http: {{listen: "127.0.0.1:0"}}
  state_path: {tmp / "state.db"}
  shutdown_timeout_seconds: 5
sources:
  feed:
    type: websocket
    url: "{url}"
    key_field: k
    reconnect: {{initial_seconds: 0.05, max_seconds: 0.1}}
tools:
{tools}{extra_tools}rules:
{body}"""
    )


def loader(path: Path) -> Callable[[], AppConfig]:
    registry = builtin_registry()
    return lambda: load_config(path, registry, preflight=True)


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


COOL = "{from: feed, where: \"data.n > 0\", cooldown_seconds: 300, then: [{tool: out_cool, args: {n: '{data.n}'}}]}"
ECHO = "{from: feed, then: [{tool: out_echo, args: {n: '{data.n}'}}]}"


async def started(run_daemon: StartDaemon, path: Path) -> Daemon:
    return await run_daemon(load_config(path, builtin_registry()))


async def test_an_unchanged_reload_touches_nothing(run_daemon: StartDaemon, tmp_path: Path) -> None:
    """Reloading the same file: the same source, rule and tool objects go on; the feed's connection is
    not reopened, no gap event; the cooldown that suppressed before the reload still suppresses."""
    async with FeedServer(Plan()) as server:
        path = tmp_path / "config.yaml"
        write_config(path, server.url, tmp_path, {"cool": COOL, "echo": ECHO})
        daemon = await started(run_daemon, path)
        await wait_for(
            lambda: len(server.connections) == 1 and daemon.sources["feed"].stats.state == "connected"
        )
        await server.broadcast('{"k": "a", "n": 1}')
        await wait_for(lambda: len(lines(tmp_path / "out_echo.jsonl")) == 1, what="the first event")
        objects = (
            daemon.sources["feed"],
            daemon.rules["cool"],
            daemon.rules["echo"],
            daemon.tools["out_cool"],
        )
        report = await daemon.reload(loader(path))
        assert report["result"] == "unchanged", report
        assert report["rules"]["kept"] == ["cool", "echo"]
        assert (
            daemon.sources["feed"],
            daemon.rules["cool"],
            daemon.rules["echo"],
            daemon.tools["out_cool"],
        ) == objects
        await server.broadcast('{"k": "a", "n": 2}')  # within the cooldown of key a: suppressed
        await wait_for(lambda: len(lines(tmp_path / "out_echo.jsonl")) == 2, what="the second event")
        assert [r["args"]["n"] for r in lines(tmp_path / "out_cool.jsonl")] == [1]
        assert daemon.rules["cool"].stats.suppressed == 1
        assert len(server.connections) == 1 and server.connections[0].closed_at is None
        assert daemon.sources["feed"].stats.gaps == 0 and daemon.sources["feed"].stats.connects == 1
        assert daemon.reloads == {"applied": 0, "unchanged": 1, "failed": 0}


async def test_one_changed_rule_restarts_only_that_rule(run_daemon: StartDaemon, tmp_path: Path) -> None:
    """Changing one rule's `where`: that rule is a new object (fresh state), the other rule keeps its
    cooldown, the source keeps its connection and sees every event once; the log says what changed."""
    async with FeedServer(Plan()) as server:
        path = tmp_path / "config.yaml"
        write_config(path, server.url, tmp_path, {"cool": COOL, "echo": ECHO})
        daemon = await started(run_daemon, path)
        await wait_for(lambda: daemon.sources["feed"].stats.state == "connected")
        await server.broadcast('{"k": "a", "n": 1}')
        await wait_for(lambda: len(lines(tmp_path / "out_echo.jsonl")) == 1)
        cool, echo, tool = daemon.rules["cool"], daemon.rules["echo"], daemon.tools["out_echo"]
        changed_echo = ECHO.replace("{from: feed,", '{from: feed, where: "data.n != 99",')
        write_config(path, server.url, tmp_path, {"cool": COOL, "echo": changed_echo})
        report = await daemon.reload(loader(path))
        assert report["result"] == "applied", report
        assert report["rules"] == {"added": [], "changed": ["echo"], "removed": [], "kept": ["cool"]}
        assert report["sources"]["kept"] == ["feed"] and report["tools"]["kept"] == ["out_cool", "out_echo"]
        assert daemon.rules["cool"] is cool and daemon.rules["echo"] is not echo
        assert daemon.tools["out_echo"] is tool
        for n in (2, 99, 3):
            await server.broadcast(orjson.dumps({"k": "a", "n": n}).decode())
        await wait_for(lambda: daemon.sources["feed"].stats.received == 4, what="every event")
        await wait_for(lambda: len(lines(tmp_path / "out_echo.jsonl")) == 3, what="the new rule's fires")
        assert [r["args"]["n"] for r in lines(tmp_path / "out_echo.jsonl")] == [1, 2, 3]
        assert [r["args"]["n"] for r in lines(tmp_path / "out_cool.jsonl")] == [1]  # cooldown kept
        assert daemon.rules["cool"].stats.suppressed == 3
        assert daemon.rules["echo"].stats.seen == 3  # the new rule saw the events after the reload
        assert len(server.connections) == 1 and daemon.sources["feed"].stats.gaps == 0


async def test_a_rule_changed_only_in_then_keeps_its_state_and_a_changed_definition_starts_fresh(
    run_daemon: StartDaemon, tmp_path: Path
) -> None:
    """A reload that changes only a rule's `then` (an argument) keeps its cooldown: the rule is rebuilt
    and takes its predecessor's state; one that changes its `where` starts with none."""
    async with FeedServer(Plan()) as server:
        path = tmp_path / "config.yaml"
        write_config(path, server.url, tmp_path, {"cool": COOL})
        daemon = await started(run_daemon, path)
        await wait_for(lambda: daemon.sources["feed"].stats.state == "connected")
        await server.broadcast('{"k": "a", "n": 1}')
        await wait_for(lambda: len(lines(tmp_path / "out_cool.jsonl")) == 1)
        new_args = COOL.replace("args: {n: '{data.n}'}", "args: {n: '{data.n}', v: 2}")
        write_config(path, server.url, tmp_path, {"cool": new_args})
        assert (await daemon.reload(loader(path)))["rules"]["changed"] == ["cool"]
        await server.broadcast('{"k": "a", "n": 2}')
        await wait_for(lambda: daemon.rules["cool"].stats.seen == 1)
        assert len(lines(tmp_path / "out_cool.jsonl")) == 1  # still cooling down: state taken over
        new_where = new_args.replace('where: "data.n > 0"', 'where: "data.n > 1"')
        write_config(path, server.url, tmp_path, {"cool": new_where})
        assert (await daemon.reload(loader(path)))["rules"]["changed"] == ["cool"]
        await server.broadcast('{"k": "a", "n": 3}')
        await wait_for(lambda: len(lines(tmp_path / "out_cool.jsonl")) == 2)  # fresh: it fires again


async def test_added_removed_and_changed_tools(run_daemon: StartDaemon, tmp_path: Path) -> None:
    """A tool whose config changed is a new object that gets the calls from then on; a removed rule
    and its tool stop; an added rule and tool start; the kept tool keeps its counters."""
    async with FeedServer(Plan()) as server:
        path = tmp_path / "config.yaml"
        write_config(path, server.url, tmp_path, {"cool": COOL, "echo": ECHO})
        daemon = await started(run_daemon, path)
        await wait_for(lambda: daemon.sources["feed"].stats.state == "connected")
        await server.broadcast('{"k": "a", "n": 1}')
        await wait_for(lambda: len(lines(tmp_path / "out_echo.jsonl")) == 1)
        old_echo_tool = daemon.tools["out_echo"]
        moved = tmp_path / "moved.jsonl"
        text = path.read_text().replace(f"path: {tmp_path / 'out_echo.jsonl'}", f"path: {moved}")
        text = text.replace(
            "  cool: " + COOL + "\n", "  fresh: " + COOL.replace("out_cool", "out_fresh") + "\n"
        )
        text = text.replace(
            "  out_cool:", f"  out_fresh: {{type: file, path: {tmp_path / 'fresh.jsonl'}}}\n  old_cool:"
        )
        text = text.replace("  old_cool: {type: file, path: " + str(tmp_path / "out_cool.jsonl") + "}\n", "")
        path.write_text(text)
        report = await daemon.reload(loader(path))
        assert report["result"] == "applied", report
        assert report["tools"] == {
            "added": ["out_fresh"],
            "changed": ["out_echo"],
            "removed": ["out_cool"],
            "kept": [],
        }
        assert report["rules"] == {"added": ["fresh"], "changed": [], "removed": ["cool"], "kept": ["echo"]}
        assert set(daemon.tools) >= {"out_echo", "out_fresh"} and "out_cool" not in daemon.runner.tools
        assert daemon.runner.tools["out_echo"] is not old_echo_tool
        await server.broadcast('{"k": "a", "n": 2}')
        await wait_for(lambda: len(lines(moved)) == 1 and len(lines(tmp_path / "fresh.jsonl")) == 1)
        assert len(lines(tmp_path / "out_echo.jsonl")) == 1  # the old tool got nothing after the reload
        assert "cool" not in daemon.status()["rules"] and "fresh" in daemon.status()["rules"]


async def test_an_invalid_reload_keeps_the_old_config_and_status_says_so(
    run_daemon: StartDaemon, tmp_path: Path
) -> None:
    """A file with an error: nothing changes, the events keep flowing through the old rules; /status
    shows the failed reload with the file:line error, the old hash; the metric counts it; a valid
    reload after it applies and moves the hash."""
    async with FeedServer(Plan()) as server:
        path = tmp_path / "config.yaml"
        write_config(path, server.url, tmp_path, {"echo": ECHO})
        daemon = await started(run_daemon, path)
        await wait_for(lambda: daemon.sources["feed"].stats.state == "connected")
        first_hash, first_loaded = daemon.config_hash, daemon.loaded_at
        assert first_hash is not None and len(first_hash) == 64
        good = path.read_text()
        path.write_text(good.replace("then: [{tool: out_echo", "then: [{tool: nowhere"))
        report = await daemon.reload(loader(path))
        assert report["result"] == "failed"
        assert any(f"{path}:" in e and "nowhere" in e for e in report["errors"]), report["errors"]
        rule = daemon.rules["echo"]
        await server.broadcast('{"k": "a", "n": 1}')
        await wait_for(lambda: len(lines(tmp_path / "out_echo.jsonl")) == 1, what="the old rule still fires")
        assert daemon.rules["echo"] is rule
        assert daemon.http is not None
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{daemon.http.port}"
            async with http.get(base + "/status") as r:
                config = (await r.json())["config"]
            async with http.get(base + "/metrics") as r:
                metrics = await r.text()
        assert config["hash"] == first_hash and config["loaded_at"] == first_loaded
        assert config["reloads"] == {"applied": 0, "unchanged": 0, "failed": 1}
        assert config["last_reload"]["result"] == "failed" and "nowhere" in config["last_reload"]["errors"][0]
        assert 'reflexd_reloads_total{result="failed"} 1.0' in metrics
        path.write_text(good.replace("then: [{tool: out_echo", "where: 'data.n > 1', then: [{tool: out_echo"))
        report = await daemon.reload(loader(path))
        assert report["result"] == "applied" and daemon.config_hash != first_hash
        assert daemon.loaded_at > first_loaded


async def test_daemon_settings_are_not_applied_live(run_daemon: StartDaemon, tmp_path: Path) -> None:
    """A changed daemon: key (the ops listener, the state file) is named in the report and the log,
    and the running values are kept; the rest of the file is applied."""
    async with FeedServer(Plan()) as server:
        path = tmp_path / "config.yaml"
        write_config(path, server.url, tmp_path, {"echo": ECHO})
        daemon = await started(run_daemon, path)
        assert daemon.http is not None
        port = daemon.http.port
        text = path.read_text().replace('listen: "127.0.0.1:0"', 'listen: "127.0.0.1:1"')
        text = text.replace(str(tmp_path / "state.db"), str(tmp_path / "other.db"))
        path.write_text(text.replace("then: [{tool: out_echo", "where: 'true', then: [{tool: out_echo"))
        report = await daemon.reload(loader(path))
        assert report["result"] == "applied"
        assert report["not_applied"] == ["daemon.http", "daemon.state_path"]
        assert report["rules"]["changed"] == ["echo"]
        assert daemon.config.daemon.state_path == str(tmp_path / "state.db")
        assert daemon.http.port == port and not (tmp_path / "other.db").exists()


async def test_an_llm_tool_survives_a_reload_with_its_gate(run_daemon: StartDaemon, tmp_path: Path) -> None:
    """Agent parts across reloads, against the scripted model server (real HTTP, the openai SDK): a
    reload that adds an unrelated rule keeps the llm tool, its lane and its gate (a repeat of the same
    key within dedup_seconds is still deduplicated); one that changes the llm tool builds a new one
    whose answers still reach the rules through the same event source."""
    from tests.agent.scripted import ScriptedOpenAI
    from tests.agent.test_loop import config_text

    async with ScriptedOpenAI() as model, FeedServer(Plan()) as server:
        path = tmp_path / "config.yaml"
        path.write_text(
            config_text("openai", model.base_url, server.url, tmp_path, llm={"dedup_seconds": 300})
        )
        daemon = await started(run_daemon, path)
        await wait_for(lambda: daemon.sources["feed"].stats.state == "connected")
        await server.broadcast('{"s": "BTC", "p": 1}')
        routed = tmp_path / "routed.jsonl"
        await wait_for(lambda: len(lines(routed)) == 1, what="the first answer")
        analyst, answers = daemon.tools["analyst"], daemon.sources["analyst"]
        extra = {"more": {"from": ["feed"], "then": [{"tool": "routed", "args": {"text": "raw"}}]}}
        path.write_text(
            config_text(
                "openai", model.base_url, server.url, tmp_path, llm={"dedup_seconds": 300}, rules=extra
            )
        )
        report = await daemon.reload(loader(path))
        assert report["result"] == "applied" and report["tools"]["kept"] == ["routed", "analyst"]
        assert daemon.tools["analyst"] is analyst and daemon.runner.tools["analyst"] is analyst
        await server.broadcast('{"s": "BTC", "p": 2}')  # same key: the kept gate deduplicates it
        await wait_for(lambda: daemon.runner.stats("analyst").screened == 1, what="the deduplicated repeat")
        assert len(model.requests) == 1
        path.write_text(
            config_text(
                "openai",
                model.base_url,
                server.url,
                tmp_path,
                llm={"dedup_seconds": 300, "max_rounds": 3},
                rules=extra,
            )
        )
        report = await daemon.reload(loader(path))
        assert report["tools"]["changed"] == ["analyst"], report
        assert daemon.tools["analyst"] is not analyst and daemon.sources["analyst"] is answers
        await server.broadcast('{"s": "ETH", "p": 3}')
        await wait_for(
            lambda: len([r for r in lines(routed) if r["args"]["text"] == "done"]) == 2,
            what="the new tool's answer",
        )


async def test_watch_config_asks_for_a_reload_when_the_file_changes(tmp_path: Path) -> None:
    """daemon.watch_config's poller: nothing while the file stays as it is, a reload request once it is
    rewritten (also when replaced by a rename, as editors and ConfigMaps do)."""
    import asyncio

    from daemon.cli import _watch_config

    path = tmp_path / "config.yaml"
    path.write_text("a: 1\n")
    wanted = asyncio.Event()
    watcher = asyncio.create_task(_watch_config(str(path), wanted, interval=0.02))
    try:
        await asyncio.sleep(0.1)
        assert not wanted.is_set()
        path.write_text("a: 22\n")
        await wait_for(wanted.is_set, what="the reload request")
        wanted.clear()
        other = tmp_path / "new.yaml"
        other.write_text("a: 333\n")
        other.replace(path)
        await wait_for(wanted.is_set, what="the request after a rename")
    finally:
        watcher.cancel()


async def test_a_tool_that_cannot_start_fails_the_reload_and_changes_nothing(
    run_daemon: StartDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A valid file whose changed tool fails to start (here: its start raises): the reload is failed,
    the rule, tool and source that ran go on unchanged; the changed rule built meanwhile is dropped."""
    from daemon.errors import StartupError
    from handlers.file import FileTool

    async with FeedServer(Plan()) as server:
        path = tmp_path / "config.yaml"
        write_config(path, server.url, tmp_path, {"echo": ECHO})
        daemon = await started(run_daemon, path)
        await wait_for(lambda: daemon.sources["feed"].stats.state == "connected")
        rule, tool, source = daemon.rules["echo"], daemon.tools["out_echo"], daemon.sources["feed"]

        async def cannot_start(self: FileTool) -> None:
            raise StartupError(f"tool {self.name}", "the disk is gone")

        monkeypatch.setattr(FileTool, "start", cannot_start)
        text = path.read_text().replace(str(tmp_path / "out_echo.jsonl"), str(tmp_path / "new.jsonl"))
        path.write_text(text.replace(ECHO, ECHO.replace("{from: feed,", "{from: feed, where: 'true',")))
        report = await daemon.reload(loader(path))
        assert report["result"] == "failed" and "the disk is gone" in report["errors"][0]
        assert "partial" not in report
        assert (
            daemon.rules["echo"] is rule
            and daemon.tools["out_echo"] is tool
            and daemon.sources["feed"] is source
        )
        assert daemon.runner.tools["out_echo"] is tool
        await server.broadcast('{"k": "a", "n": 1}')
        await wait_for(lambda: len(lines(tmp_path / "out_echo.jsonl")) == 1, what="the old rule and tool")
