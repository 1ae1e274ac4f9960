"""The bounded queue holds at most max_events and accounts for every event it was offered."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.queue import BoundedQueue, QueueFull


def test_drop_oldest_keeps_newest() -> None:
    """drop_oldest evicts from the head so the newest events survive, and counts evictions."""
    q: BoundedQueue[int] = BoundedQueue(3, "drop_oldest")
    for i in range(5):
        assert q.put_nowait(i)
    assert list(q._items) == [2, 3, 4]
    assert q.evicted == 2 and q.rejected == 0 and q.high_water == 3


def test_drop_newest_keeps_oldest() -> None:
    """drop_newest refuses the incoming event and counts it."""
    q: BoundedQueue[int] = BoundedQueue(3, "drop_newest")
    results = [q.put_nowait(i) for i in range(5)]
    assert results == [True, True, True, False, False]
    assert list(q._items) == [0, 1, 2] and q.rejected == 2 and q.evicted == 0


def test_block_put_nowait_raises_without_dropping() -> None:
    """block never drops: put_nowait on a full queue raises and counts nothing as dropped."""
    q: BoundedQueue[int] = BoundedQueue(2, "block")
    q.put_nowait(1)
    q.put_nowait(2)
    with pytest.raises(QueueFull):
        q.put_nowait(3)
    assert q.stats()["dropped"] == {"queue_full_oldest": 0, "queue_full_newest": 0} and len(q) == 2


async def test_block_put_waits_for_room() -> None:
    """Under block, put() waits until the consumer makes room; nothing is lost."""
    q: BoundedQueue[int] = BoundedQueue(2, "block")
    producer = asyncio.create_task(_produce(q, 10))
    got: list[int] = []
    while len(got) < 10:
        got.extend(await q.get_batch(3))
        assert len(q) <= 2
    await producer
    assert got == list(range(10)) and q.high_water == 2


async def _produce(q: BoundedQueue[int], n: int) -> None:
    for i in range(n):
        await q.put(i)


async def test_close_drains_then_returns_empty() -> None:
    """After close() the consumer still gets what was queued, then an empty batch."""
    q: BoundedQueue[int] = BoundedQueue(10, "block")
    q.put_nowait(1)
    q.close()
    assert await q.get_batch() == [1]
    assert await q.get_batch() == []


async def test_close_wakes_waiting_consumer() -> None:
    """A consumer waiting on an empty queue wakes up when the queue is closed."""
    q: BoundedQueue[int] = BoundedQueue(10, "block")
    waiter = asyncio.create_task(q.get_batch())
    await asyncio.sleep(0)
    q.close()
    assert await asyncio.wait_for(waiter, 1) == []


@settings(max_examples=300, deadline=None)
@given(
    policy=st.sampled_from(["drop_oldest", "drop_newest"]),
    capacity=st.integers(1, 20),
    ops=st.lists(st.one_of(st.just("get"), st.integers(0, 1000)), max_size=200),
)
def test_accounting_invariant(policy: str, capacity: int, ops: list[object]) -> None:
    """offered = taken + dropped + depth, and depth never exceeds max_events, for any sequence."""
    q: BoundedQueue[object] = BoundedQueue(capacity, policy)  # type: ignore[arg-type]
    offered = taken = 0
    for op in ops:
        if op == "get":
            n = min(len(q), 5)
            for _ in range(n):
                q._items.popleft()
            q.taken += n
            taken += n
        else:
            q.put_nowait(op)
            offered += 1
        assert len(q) <= capacity
    assert q.put_total == offered
    assert offered == taken + q.evicted + q.rejected + len(q)
