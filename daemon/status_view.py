"""What ``/status`` shows of a rule's last fire and a tool's last error, and the status page.

Both come from the hot path as raw references (the event a rule fired on, the error text a tool
raised), recorded only when a rule fires or a call fails for good; they are turned into what may be
shown here, when ``/status`` is read: secrets from ``${VAR}`` replaced by ``***`` wherever they
occur, secret-looking names hidden (:class:`daemon.agent_view.Shown`), cut to a bounded size.

The status page (``status_page.html`` beside this module, served by the ops server at ``GET /``)
is one static file with inline CSS and JavaScript: it polls ``/status`` and shows it with
``textContent`` only, so a payload with markup in it is shown as text.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import orjson

from daemon.agent_view import Shown, first_line, format_when
from streams.event import Event

__all__ = ["SAMPLE_CHARS", "last_error_shown", "last_fire_shown", "status_page", "texts_shown"]

#: Most characters of a fire's sample (its JSON text, cut with ``…``).
SAMPLE_CHARS = 300
#: Most characters of a tool's last error (its first line).
ERROR_CHARS = 200


def last_fire_shown(shown: Shown, last_fire: tuple[float, Event] | None, now: float) -> dict[str, Any] | None:
    """``{"at", "age_seconds", "sample"}``: when the rule last fired and on what (source, key, data;
    redacted, as one JSON text of at most :data:`SAMPLE_CHARS`)."""
    if last_fire is None:
        return None
    at, event = last_fire
    value = shown.value({"source": event.source, "key": event.key, "data": event.data})
    text = orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    if len(text) > SAMPLE_CHARS:
        text = text[: SAMPLE_CHARS - 1] + "…"
    return {"at": format_when(at), "age_seconds": round(max(0.0, now - at), 3), "sample": text}


def last_error_shown(shown: Shown, last_error: tuple[float, str] | None, now: float) -> dict[str, Any] | None:
    """``{"at", "age_seconds", "error"}``: a tool's newest failure, its first line with the secrets
    replaced (before it is cut, so no part of a secret is left)."""
    if last_error is None:
        return None
    at, error = last_error
    return {
        "at": format_when(at),
        "age_seconds": round(max(0.0, now - at), 3),
        "error": first_line(shown.text(error), ERROR_CHARS),
    }


def texts_shown(shown: Shown, value: Any) -> Any:
    """``value`` (a status document) with every secret text in its strings replaced; names are kept
    (``tokens_in`` is a counter, not a secret)."""
    if isinstance(value, str):
        return shown.text(value)
    if isinstance(value, dict):
        return {k: texts_shown(shown, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [texts_shown(shown, v) for v in value]
    return value


@cache
def status_page() -> bytes:
    """The page's HTML (read once)."""
    return resources.files("daemon").joinpath("status_page.html").read_bytes()
