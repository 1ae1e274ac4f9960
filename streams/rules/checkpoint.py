"""A rule's state as a value: what survives a restart (or a reload that restarts the rule).

A running rule's state is its steps' per-key state (each step kind saves its own, beside its
operator: :meth:`~streams.rules.spec.StepContext.keep`) and its event clock's position. A
:class:`RuleSnapshot` holds them with the rule's :func:`fingerprint`: a snapshot is restored only
into a rule with the same fingerprint — the same definition of what it matches and keeps — so a
changed rule starts fresh.

The bytes (:meth:`RuleSnapshot.dumps`, :func:`load_snapshot`) are a pickle, made on the event loop
(that is the copy: the steps change their state with the next event) and read back by an
unpickler that only builds the few classes rule state holds (events, rows, window states,
deques): a state file edited by someone else cannot make the daemon run code. An event's
delivery acknowledgement (a Kafka ack, a transport handle) is left out.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel

from streams.event import Event

__all__ = ["FORMAT", "RuleSnapshot", "fingerprint", "load_snapshot"]

FORMAT = 1
"""Layout of the snapshots; part of the fingerprint, so a new layout starts every rule fresh."""

#: The classes a snapshot may hold (besides lists, tuples, dicts, sets, numbers, text, bytes).
_ALLOWED = frozenset(
    {
        ("streams.event", "Event"),
        ("streams.rules.row", "Row"),
        ("streams.rules.aggregates", "_window_state"),
        ("streams.rules.checkpoint", "RuleSnapshot"),
        ("collections", "deque"),
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "complex"),
        ("builtins", "slice"),
        ("copyreg", "_reconstructor"),
        ("builtins", "object"),
        ("datetime", "datetime"),
        ("datetime", "date"),
        ("datetime", "time"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
        ("decimal", "Decimal"),
    }
)


def fingerprint(config: BaseModel) -> str:
    """What a rule's state depends on (``config``: its RuleConfig), hashed: its sources, kinds,
    ``where``, steps, cooldown, lateness and ``max_keys`` — not its ``then`` (new arguments or
    tools do not make the cooldowns and windows wrong), plus the snapshot :data:`FORMAT`."""
    shape = config.model_dump(mode="json", by_alias=True, exclude={"then"})
    text = orjson.dumps({"format": FORMAT, "rule": shape}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(text).hexdigest()[:32]


@dataclass
class RuleSnapshot:
    """One rule's state: its fingerprint, its clock's position and each step's state by label."""

    fingerprint: str
    clock: tuple[float, float, float] | None
    steps: dict[str, Any] = field(default_factory=dict)
    #: labels of steps whose state could not be kept (``not_kept`` kinds): they start empty
    lost: list[str] = field(default_factory=list)

    @property
    def keys(self) -> int:
        """Entries held across the steps (keys, values, pending items): the size that matters."""
        return sum(len(state) for state in self.steps.values() if isinstance(state, list))

    def dumps(self) -> bytes:
        buffer = io.BytesIO()
        with _no_collection():
            _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(self)
        return buffer.getvalue()


@contextlib.contextmanager
def _no_collection() -> Iterator[None]:
    """The cyclic collector off while a snapshot is built or read: hundreds of thousands of new
    containers set it off again and again (100k windows: 0.2 s to read with it off, 4 s on)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        """An event is saved without its ack (called for few objects: not for numbers, text, lists,
        tuples or dicts)."""
        if isinstance(obj, Event) and obj.ack is not None:
            return type(obj), (*obj[:7], None, *obj[8:])  # a row's fields come after the ack
        return NotImplemented


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"rule state may not hold {module}.{name}")
        return super().find_class(module, name)


def load_snapshot(data: bytes) -> RuleSnapshot:
    """The snapshot :meth:`RuleSnapshot.dumps` made; raises ``pickle.UnpicklingError`` (or
    another exception) for anything else."""
    with _no_collection():
        snapshot = _Unpickler(io.BytesIO(data)).load()
    if not isinstance(snapshot, RuleSnapshot):
        raise pickle.UnpicklingError(f"not a rule snapshot: {type(snapshot).__name__}")
    return snapshot
