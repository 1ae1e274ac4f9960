"""Acknowledgement of records that were promised at-least-once delivery (Kafka).

A record is *finished* when the dispatcher has shown it to every rule and every tool call
it triggered has ended (succeeded, or failed for good). Each record carries an :class:`Ack`
in ``event.ack``: the dispatcher holds it while the rules run, the tool runner holds
it once per call; the last release marks the record's offset finished in its partition's
:class:`OffsetTracker`, which knows the last contiguous finished offset — the only thing that
may be committed.
"""

from __future__ import annotations

from collections import deque

__all__ = ["Ack", "OffsetTracker"]


class OffsetTracker:
    """Offsets of one partition in arrival order; ``committable`` = last contiguous finished + 1."""

    __slots__ = ("_finished", "_inflight", "committable", "committed", "revoked")

    def __init__(self) -> None:
        self._inflight: deque[int] = deque()
        self._finished: set[int] = set()
        self.committable: int | None = None  # next offset to read once everything before is finished
        self.committed: int | None = None  # last value committed to the group
        self.revoked = False  # the partition was taken away: its queued records are skipped

    def received(self, offset: int) -> Ack:
        self._inflight.append(offset)
        return Ack(self, offset)

    def finish(self, offset: int) -> None:
        inflight = self._inflight
        if inflight and inflight[0] == offset:
            inflight.popleft()
            self.committable = offset + 1
            finished = self._finished
            while inflight and inflight[0] in finished:
                done = inflight.popleft()
                finished.discard(done)
                self.committable = done + 1
        else:
            self._finished.add(offset)

    def forget(self, offsets: set[int]) -> None:
        """Drop records that will never be dispatched (their partition was revoked); never commits them."""
        if offsets:
            self._inflight = deque(o for o in self._inflight if o not in offsets)
            self._finished -= offsets

    @property
    def last_received(self) -> int | None:
        """The highest offset received so far (None before the first)."""
        if self._inflight:
            return self._inflight[-1]
        return None if self.committable is None else self.committable - 1

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def pending_commit(self) -> int | None:
        """The offset to commit now, or None when nothing new finished since the last commit."""
        c = self.committable
        return c if c is not None and c != self.committed else None


class Ack:
    """The hold count of one record; finishing it at zero."""

    __slots__ = ("holds", "offset", "tracker")

    def __init__(self, tracker: OffsetTracker, offset: int) -> None:
        self.tracker = tracker
        self.offset = offset
        self.holds = 1  # the dispatcher's hold, released after the rules have seen the record

    def hold(self) -> None:
        self.holds += 1

    def release(self) -> None:
        self.holds -= 1
        if self.holds == 0:
            self.tracker.finish(self.offset)
