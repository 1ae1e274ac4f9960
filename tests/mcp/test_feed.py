"""The MCP feed (daemon/mcp.py) on its own: sequence numbers and cursors, one item per rule match, the
long-poll, watched resources, what is served (secrets out, acks never kept)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from daemon.agent_view import Shown
from daemon.config import load_config_text
from daemon.mcp import FIRE, NOTIFICATION, NOTIFICATIONS_URI, STATUS_URI, McpFeed, fires_uri
from daemon.registry import builtin_registry
from handlers.notifications import NotificationQueue
from streams.ack import Ack
from streams.call import CallContext
from streams.event import Event


def event(data: Any = None, *, source: str = "ticks", key: Any = "BTC", ack: Any = None) -> Event:
    return Event(source, 1.0, 1.0, key, {"p": 1} if data is None else data, {}, "data", ack)


def fire(feed: McpFeed, rule: str, ev: Event, *tools: str) -> None:
    """What a rule's submit does for one match: each call in order, numbered in its call_id."""
    submit = feed.recording(lambda tool, args, ctx: True)
    for index, tool in enumerate(tools):
        submit(tool, {"n": index}, CallContext(tool, rule, ev, f"{rule}:ref:{index}"))


def test_one_item_per_match_with_each_call_in_order() -> None:
    """A match that makes two calls is one fire holding both; the next match (even of the same event by
    another rule) is a new item; notifications are items too, numbered in the same sequence."""
    feed = McpFeed(10)
    queue = NotificationQueue()
    queue.add_listener(feed.noted)
    ev = event()
    fire(feed, "big", ev, "alert", "buy")
    queue.put("notify", "hello", {"a": 1}, rule="big", key="BTC")
    fire(feed, "other", ev, "alert")
    fire(feed, "big", ev, "alert")
    read = feed.after(0, 100)
    assert [(i.seq, i.type, i.rule) for i in read.items] == [
        (1, FIRE, "big"),
        (2, NOTIFICATION, "big"),
        (3, FIRE, "other"),
        (4, FIRE, "big"),
    ]
    assert [c.tool for c in read.items[0].calls] == ["alert", "buy"]
    assert read.next == 4 and feed.fires == 3 and feed.notifications == 1


def test_cursor_missed_items_and_a_cursor_from_an_earlier_process() -> None:
    """Past max_events the oldest go: a reader behind them is told how many it missed; a cursor above every
    number given (an earlier process's) reads from the start, flagged reset."""
    feed = McpFeed(10)
    for i in range(25):
        fire(feed, "r", event({"i": i}), "t")
    read = feed.after(3, 4)
    assert [i.seq for i in read.items] == [16, 17, 18, 19]
    assert read.missed == 12 and read.next == 19 and not read.reset
    assert feed.after(25, 10) == (([], 25, 0, False))
    stale = feed.after(500, 2)
    assert stale.reset and [i.seq for i in stale.items] == [16, 17] and stale.missed == 15
    assert [i.seq for i in feed.recent(3)] == [23, 24, 25]


async def test_wait_returns_at_once_at_the_first_item_or_empty_at_the_timeout() -> None:
    """The long-poll: items already after the cursor come back at once; otherwise the first one to arrive
    ends the wait (every waiter's); with none, it ends empty after its seconds; a close ends it too."""
    feed = McpFeed(10)
    fire(feed, "r", event(), "t")
    assert [i.seq for i in (await feed.wait(0, 5, 10)).items] == [1]

    waiters = [asyncio.create_task(feed.wait(1, 5, 10)) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)
    fire(feed, "r", event(), "t")
    results = await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert [[i.seq for i in r.items] for r in results] == [[2], [2], [2]]

    started = time.monotonic()
    empty = await feed.wait(2, 0.2, 10)
    assert empty.items == [] and empty.next == 2 and time.monotonic() - started >= 0.19

    pending = asyncio.create_task(feed.wait(2, 5, 10))
    await asyncio.sleep(0.05)
    feed.close()
    assert (await asyncio.wait_for(pending, 1)).items == []


async def test_watched_uris_are_marked_changed_and_others_cost_nothing() -> None:
    """A fire changes its rule's fires and the status, a notification the notifications and the status;
    only watched URIs are reported to the pusher, which wakes once for several changes."""
    feed = McpFeed(10)
    fire(feed, "big", event(), "t")  # nothing watched: nothing marked
    feed.watch(fires_uri("big"))
    feed.watch(NOTIFICATIONS_URI)
    changes = asyncio.create_task(feed.changes())
    await asyncio.sleep(0.01)
    assert not changes.done()
    fire(feed, "other", event(), "t")  # not watched
    await asyncio.sleep(0.01)
    assert not changes.done()
    fire(feed, "big", event(), "t")
    queue = NotificationQueue()
    queue.add_listener(feed.noted)
    queue.put("notify", "x")
    assert await asyncio.wait_for(changes, 1) == {fires_uri("big"), NOTIFICATIONS_URI}  # one wake
    queue.put("notify", "y")
    assert await asyncio.wait_for(feed.changes(), 1) == {NOTIFICATIONS_URI}
    feed.watch(STATUS_URI)
    feed.unwatch(fires_uri("big"))
    fire(feed, "big", event(), "t")
    assert await asyncio.wait_for(feed.changes(), 1) == {STATUS_URI}
    feed.close()
    assert await asyncio.wait_for(feed.changes(), 1) == set()


def test_served_items_hide_secrets_and_never_keep_the_ack(tmp_path: Any) -> None:
    """A fire's arguments filled from ${VAR} and secret-looking fields are *** as /status and reflexd
    agent show them; an event's delivery ack is dropped when recorded (the latest event's too)."""
    config = load_config_text(
        """\
sources: {ticks: {type: replay, path: x.jsonl}}
tools: {alert: {type: log}}
rules: {big: {from: ticks, then: [{tool: alert, args: {text: "hi", key: "${KEY}"}}]}}
""",
        builtin_registry(),
        env={"KEY": "k-secret-123456"},
        base_dir=tmp_path,
    )
    feed = McpFeed(10)
    ack = Ack.__new__(Ack)
    ev = event({"p": 1, "password": "hunter2", "note": "k-secret-123456"}, ack=ack)
    submit = feed.recording(lambda tool, args, ctx: True)
    submit("alert", {"text": "hi", "key": "k-secret-123456"}, CallContext("alert", "big", ev, "big:r:0"))
    feed.saw(ev)
    [item] = feed.after(0, 10).items
    assert item.event is not None and item.event.ack is None and feed.latest["ticks"].ack is None
    served = McpFeed.render(item, Shown(config))
    assert served["calls"] == [{"tool": "alert", "args": {"text": "hi", "key": "***"}, "accepted": True}]
    assert served["event"]["data"] == {"p": 1, "password": "***", "note": "***"}
    assert "k-secret-123456" not in repr(served)


def test_a_big_event_is_served_cut() -> None:
    """An event whose data is longer than 4000 characters as JSON is served cut, with a marker."""
    feed = McpFeed(10)
    fire(feed, "r", event({"blob": "x" * 10_000}), "t")
    shown = McpFeed.render(feed.after(0, 1).items[0], _Plain())
    assert isinstance(shown["event"]["data"], str) and "…[truncated" in shown["event"]["data"]
    assert len(shown["event"]["data"]) < 4100


class _Plain:
    def value(self, value: Any, names: Any = ()) -> Any:
        return value

    def args(self, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        return args


@pytest.mark.parametrize("calls", [1, 3])
def test_recording_adds_no_item_when_no_rule_fires(calls: int) -> None:
    """The feed records what the rules submit, nothing else: a daemon whose rules never match has an
    empty feed however many events its sources read (the latest event per source is one dict entry)."""
    feed = McpFeed(10)
    for i in range(1000):
        feed.saw(event({"i": i}))
    assert feed.last_seq == 0 and len(feed.latest) == 1
    fire(feed, "r", event(), *["t"] * calls)
    assert feed.last_seq == 1 and len(feed.after(0, 10).items[0].calls) == calls
