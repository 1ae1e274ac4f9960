"""The rule step kinds that ship with reflexd: one module each, registered in :data:`BUILTIN_STEPS`.

Each module (``where.py``, ``window.py``, ...) holds its step's config model, compile function,
runtime operator and ``SPEC`` (see :mod:`streams.rules.spec`). This list is the only place they
are named: the parsing of ``steps:``, the step names in messages, the JSON Schema, the reference
docs and the ``reflexd check`` plans are derived from it (or from a registry that extends it).
"""

from __future__ import annotations

from typing import Any

from streams.rules.spec import StepSpec
from streams.rules.steps.absence import SPEC as ABSENCE
from streams.rules.steps.changed import SPEC as CHANGED
from streams.rules.steps.cooldown import SPEC as COOLDOWN
from streams.rules.steps.crossing import SPEC as CROSSING
from streams.rules.steps.debounce import SPEC as DEBOUNCE
from streams.rules.steps.distinct import SPEC as DISTINCT
from streams.rules.steps.join_latest import SPEC as JOIN_LATEST
from streams.rules.steps.key import SPEC as KEY
from streams.rules.steps.sample import SPEC as SAMPLE
from streams.rules.steps.sequence import SPEC as SEQUENCE
from streams.rules.steps.set import SPEC as SET
from streams.rules.steps.throttle import SPEC as THROTTLE
from streams.rules.steps.where import SPEC as WHERE
from streams.rules.steps.window import SPEC as WINDOW

__all__ = ["BUILTIN_STEPS"]

BUILTIN_STEPS: tuple[StepSpec[Any], ...] = (
    WHERE,
    SET,
    KEY,
    WINDOW,
    CROSSING,
    CHANGED,
    DISTINCT,
    THROTTLE,
    DEBOUNCE,
    COOLDOWN,
    SAMPLE,
    SEQUENCE,
    JOIN_LATEST,
    ABSENCE,
)
"""The built-in step kinds, in the order the reference documents them."""
