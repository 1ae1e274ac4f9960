"""The notification queue: what happened while no model was looking, handed to the next model call.

In real daemons (scripted servers through the real SDKs): fed by the notify tool, drained into one
message before each model call, in sequence order, bounded with drops counted, coalescing repeats of
one (rule, key) while unread. Unit tests of :class:`handlers.notifications.NotificationQueue`.
"""

from __future__ import annotations

import asyncio
import time

from handlers.agent import NOTIFICATIONS_HEADER
from handlers.notifications import NotificationQueue
from tests.agent import test_loop as harness
from tests.agent.scripted import Reply
from tests.agent.test_gate import metric
from tests.agent.test_loop import StartStage, notifications, probe, user_texts
from tests.servers import wait_for

provider = harness.provider  # the fixtures of the shared harness
model = harness.model
stage = harness.stage

#: ``t: note`` events go to the notify tool, ``t: ask`` ones to the model.
RULES = {
    "escalate": {
        "from": ["feed"],
        "where": "data.t == 'ask'",
        "then": [{"tool": "analyst", "args": {"prompt": "BTC at {data.p}"}}],
    },
    "notes": {
        "from": ["feed"],
        "where": "data.t == 'note'",
        "then": [{"tool": "note", "args": {"text": "note {data.n}", "fields": {"n": "{data.n}"}}}],
    },
}


async def test_drained_into_one_message_before_each_model_call_in_sequence_order(stage: StartStage) -> None:
    st = await stage(
        llm={"tools": ["buy", "look"]},
        tools={"note": {"type": "notify"}, "buy": probe(hold=True), "look": probe()},
        rules=RULES,
    )
    queue = st.daemon.notifications
    await st.send("K1", t="note", n=1)
    await st.send("K2", t="note", n=2)
    await wait_for(lambda: queue.last_seq == 2)
    st.model.script(
        Reply.tool_calls(("buy", {"symbol": "BTC"})),
        Reply.tool_calls(("look", {"symbol": "BTC"})),
        Reply.text("seen"),
    )
    await st.send("BTC", t="ask", p=1)
    await wait_for(lambda: len(st.tool("buy").calls) == 1, what="the held buy")
    await st.send("K3", t="note", n=3)
    await st.send("K3", t="note", n=4)  # the same (rule, key), unread: coalesced into seq 3
    await st.send("K5", t="note", n=5)
    await wait_for(lambda: queue.put_count == 5)
    st.tool("buy").release.set()
    await st.answers(1)

    first, second, third = st.model.requests
    assert user_texts(st.provider, first)[0] == "BTC at 1"  # the prompt, then the notifications
    (items_1,) = notifications(st.provider, first)
    assert [(i["seq"], i["kind"], i["rule"], i["key"], i["text"], i["fields"]) for i in items_1] == [
        (1, "notify", "notes", "K1", "note 1", {"n": 1}),
        (2, "notify", "notes", "K2", "note 2", {"n": 2}),
    ]
    old, items_2 = notifications(st.provider, second)  # the first stays in the history; one new message
    assert old == items_1
    assert [(i["seq"], i["key"], i["text"], i.get("repeats")) for i in items_2] == [
        (3, "K3", "note 4", 2),
        (4, "K5", "note 5", None),
    ]
    assert notifications(st.provider, third) == [items_1, items_2]  # nothing new: no new message
    assert queue.stats() == {"queued": 4, "last_seq": 4, "put": 5, "coalesced": 1, "dropped": 0}
    if st.provider == "openai":  # its own user message, right after the tool results of its round
        roles = [m["role"] for m in second["messages"]]
        assert roles == ["system", "user", "user", "assistant", "tool", "user"]
    else:  # a text block after the tool_result blocks of the same user turn
        turn = second["messages"][-1]
        assert [b["type"] for b in turn["content"]] == ["tool_result", "text"]
        assert turn["content"][1]["text"].startswith(NOTIFICATIONS_HEADER)


async def test_bounded_drops_the_oldest_and_counts_them(stage: StartStage) -> None:
    st = await stage(
        tools={"note": {"type": "notify"}}, rules=RULES, agent={"notifications": {"max_items": 3}}
    )
    for n in range(1, 6):
        await st.send(f"K{n}", t="note", n=n)
    queue = st.daemon.notifications
    await wait_for(lambda: queue.last_seq == 5)
    assert queue.stats()["dropped"] == 2
    assert metric(st.daemon, "reflexd_notifications_dropped_total") == 2
    assert metric(st.daemon, "reflexd_notifications_total") == 5
    assert metric(st.daemon, "reflexd_notifications_queued") == 3
    assert st.daemon.status()["notifications"]["dropped"] == 2
    await st.send("BTC", t="ask", p=1)
    await st.answers(1)
    ((items),) = notifications(st.provider, st.model.requests[0])
    assert [(i["seq"], i["text"]) for i in items] == [(3, "note 3"), (4, "note 4"), (5, "note 5")]


async def test_coalesce_off_keeps_every_repeat(stage: StartStage) -> None:
    st = await stage(
        tools={"note": {"type": "notify", "max_text_chars": 10}},
        rules=RULES,
        agent={"notifications": {"coalesce": False}},
    )
    await st.send("K", t="note", n="1-this-text-is-long")
    await st.send("K", t="note", n=2)
    await wait_for(lambda: st.daemon.notifications.last_seq == 2)
    await st.send("BTC", t="ask", p=1)
    await st.answers(1)
    ((items),) = notifications(st.provider, st.model.requests[0])
    assert [i["text"] for i in items] == ["note 1-thi…", "note 2"]  # cut to max_text_chars


# -- NotificationQueue, alone --------------------------------------------------------------------------


def test_each_reader_takes_every_item_once_in_order() -> None:
    q = NotificationQueue(10)
    q.put("notify", "before any reader", rule="r", key=0)
    q.add_reader("a")
    q.add_reader("late", from_start=True)
    for n in (1, 2):
        q.put("notify", f"n{n}", rule="r", key=n)
    assert [i.text for i in q.drain("a")] == ["n1", "n2"]  # from when it was added
    assert q.drain("a") == []
    q.put("notify", "n3", rule="r", key=3)
    assert [i.text for i in q.drain("a")] == ["n3"]
    assert [i.seq for i in q.drain("late")] == [1, 2, 3, 4]
    assert [i.seq for i in q.since(2)] == [3, 4]
    assert q.since(4) == [] and q.last_seq == 4 and len(q) == 4


def test_coalescing_rules() -> None:
    q = NotificationQueue(10)
    q.add_reader("a")
    first = q.put("notify", "one", {"v": 1}, rule="r", key="BTC", ts=1.0)
    assert q.put("notify", "two", {"v": 2}, rule="r", key="BTC", ts=2.0) == first  # unread: merged
    assert q.put("notify", "x", rule="r", key="ETH") != first  # another key
    assert q.put("notify", "x", rule="other", key="BTC") != first  # another rule
    assert q.put("deduplicated", "x", rule="r", key="BTC") != first  # another kind
    assert q.put("notify", "x", key="BTC") != first  # no rule: never merged
    bg = q.put("background", "a finished", rule="r")
    assert q.put("background", "b finished", rule="r") == bg + 1  # results are never merged
    ap = q.put("approval", "call 1", rule="r")
    assert q.put("approval", "call 2", rule="r") == ap + 1
    merged = q.drain("a")[0]
    assert (merged.seq, merged.text, merged.fields, merged.ts, merged.repeats) == (
        first,
        "two",
        {"v": 2},
        2.0,
        2,
    )
    assert merged.as_dict()["repeats"] == 2
    # read: the next repeat is a new item
    assert q.put("notify", "three", rule="r", key="BTC") == q.last_seq > first
    assert q.stats()["coalesced"] == 1


def test_nothing_is_merged_while_no_reader_exists_or_with_coalesce_off() -> None:
    q = NotificationQueue(10)
    assert q.put("notify", "a", rule="r", key=1) != q.put("notify", "b", rule="r", key=1)
    off = NotificationQueue(10, coalesce=False)
    off.add_reader("a")
    assert off.put("notify", "a", rule="r", key=1) != off.put("notify", "b", rule="r", key=1)


def test_merged_only_while_every_reader_has_yet_to_take_it() -> None:
    q = NotificationQueue(10)
    q.add_reader("a")
    q.add_reader("b")
    seq = q.put("notify", "one", rule="r", key=1)
    q.drain("a")
    assert q.put("notify", "two", rule="r", key=1) == seq + 1  # a took it: a new item
    assert [i.text for i in q.drain("b")] == ["one", "two"]


def test_bounded_drop_oldest_counts_only_what_a_reader_missed() -> None:
    q = NotificationQueue(3)
    q.add_reader("a")
    for n in range(1, 4):
        q.put("notify", f"n{n}", rule="r", key=n)
    q.drain("a")
    q.put("notify", "n4", rule="r", key=4)  # evicts n1, which a had taken
    assert q.dropped == 0
    q.put("notify", "n5", rule="r", key=5)
    q.put("notify", "n6", rule="r", key=6)
    q.put("notify", "n7", rule="r", key=7)  # evicts n4, unread
    assert q.dropped == 1
    assert [i.text for i in q.drain("a")] == ["n5", "n6", "n7"]
    # an evicted item is no longer a coalescing target: its repeat is a new item
    q.put("notify", "again 1", rule="r", key=1)
    assert [i.text for i in q.since(0)] == ["n6", "n7", "again 1"]


def test_coalescing_finds_its_item_in_constant_time() -> None:
    """A queue of 50 000 unread items of distinct keys: a repeat still merges, without a scan."""
    q = NotificationQueue(100_000)
    q.add_reader("a")
    for n in range(50_000):
        q.put("notify", "x", rule="r", key=n)
    began = time.perf_counter()
    for _ in range(1000):
        q.put("notify", "again", rule="r", key=0)
    per_put = (time.perf_counter() - began) / 1000
    assert q.stats()["coalesced"] == 1000 and len(q) == 50_000
    print(f"coalescing put: {per_put * 1e6:.2f} µs with 50 000 unread items")


def test_unhashable_keys_are_queued_not_merged() -> None:
    q = NotificationQueue(10)
    q.add_reader("a")
    assert q.put("notify", "a", rule="r", key=["x"]) != q.put("notify", "b", rule="r", key=["x"])


async def test_wait_returns_at_the_first_item_or_after_the_time() -> None:
    q = NotificationQueue(10)
    assert await q.wait(0, 0.01) == []

    async def later() -> None:
        await asyncio.sleep(0.05)
        q.put("notify", "hello", rule="r", key=1)

    task = asyncio.create_task(later())
    items = await q.wait(0, 30)
    await task
    assert [i.text for i in items] == ["hello"]
    assert await q.wait(1, 0.01) == []
    assert [i.seq for i in await q.wait(0, 0)] == [1]


def test_a_reader_that_is_gone_no_longer_counts_drops_and_a_successor_keeps_the_cursor() -> None:
    """A tool removed by a reload stops being a reader (its unread items are not drops); a tool rebuilt
    under the same name takes over the cursor, and the old one's stop does not remove it."""
    from handlers.notifications import NotificationQueue

    q = NotificationQueue(2)
    old, new = object(), object()
    q.add_reader("analyst", owner=old)
    q.put("notify", "a")
    q.add_reader("analyst", owner=new)  # rebuilt: same cursor
    q.remove_reader("analyst", owner=old)  # the old tool stops afterwards
    assert [n.text for n in q.drain("analyst")] == ["a"]
    q.remove_reader("analyst", owner=new)  # removed for good
    for text in "bcd":
        q.put("notify", text)
    assert q.dropped == 0
