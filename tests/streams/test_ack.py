"""Offset tracking: only the last contiguous finished offset is ever committable."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.ack import OffsetTracker


def test_out_of_order_finishes_commit_only_the_contiguous_prefix() -> None:
    """Finishing 2 before 1 does not make 3 committable; finishing 1 then makes 3 (= 2 + 1) committable."""
    t = OffsetTracker()
    acks = [t.received(o) for o in range(5)]
    acks[0].release()
    acks[2].release()
    assert t.committable == 1
    acks[1].release()
    assert t.committable == 3 and t.in_flight == 2


def test_tool_holds_delay_the_finish() -> None:
    """A record with running tool calls is finished only when the last call releases it."""
    t = OffsetTracker()
    ack = t.received(10)
    ack.hold()
    ack.hold()
    ack.release()  # the dispatcher is done
    ack.release()
    assert t.committable is None
    ack.release()
    assert t.committable == 11


def test_gaps_in_offsets_are_fine() -> None:
    """Compacted topics skip offsets: contiguity is by arrival, not by offset arithmetic."""
    t = OffsetTracker()
    a, b = t.received(5), t.received(9)
    b.release()
    a.release()
    assert t.committable == 10


def test_pending_commit_reports_only_news() -> None:
    """pending_commit is None until something new finished after the last commit."""
    t = OffsetTracker()
    t.received(0).release()
    assert t.pending_commit() == 1
    t.committed = 1
    assert t.pending_commit() is None


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 60), seed=st.integers(0, 2**32 - 1))
def test_committable_never_passes_an_unfinished_offset(n: int, seed: int) -> None:
    """For any finishing order, committable never exceeds the lowest unfinished offset (F4 invariant)."""
    rng = random.Random(seed)
    t = OffsetTracker()
    acks = [t.received(o * 2) for o in range(n)]  # even offsets: gaps on purpose
    order = list(range(n))
    rng.shuffle(order)
    done: set[int] = set()
    for i in order:
        acks[i].release()
        done.add(i)
        lowest_unfinished = min((j for j in range(n) if j not in done), default=None)
        if lowest_unfinished is None:
            assert t.committable == (n - 1) * 2 + 1
        elif t.committable is not None:
            assert t.committable <= lowest_unfinished * 2
    assert t.in_flight == 0
