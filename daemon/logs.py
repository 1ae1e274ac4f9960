"""Logging: JSON lines (default) or a console format, and a rate-limited logger.

Every log call passes structured fields as ``extra={"fields": {...}}``. The JSON formatter
writes one orjson-encoded object per line: ``ts``, ``level``, ``logger``, ``msg`` and the fields.

What is logged at which level:

=========  ==================================================================================
ERROR      a component stopped for good (fatal source error, tool crashed), shutdown overran
WARNING    a reconnect attempt failed, a decode error (first sample, then a summary), a tool
           call failed or timed out, an expression raised (sample + count)
INFO       start, ready, stop, connections made, each summary of suppressed repeats,
           the ``log`` tool's own lines
DEBUG      per-connection details (subscribe messages sent, close codes), a library's known
           transient errors (:class:`KnownTransients`; WARNING if one lasts 30 s)
=========  ==================================================================================

Per-event paths never log directly: they go through :class:`RateLimitedLog`, which logs the
first occurrence with a sample and then at most one summary per interval with the count of
what it held back.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import Any, Literal

import orjson

__all__ = [
    "ConsoleFormatter",
    "JsonFormatter",
    "KnownTransients",
    "RateLimitedLog",
    "configure_logging",
    "console_text",
    "get_logger",
    "hide_secrets",
    "scrub_secrets",
]

LogFormat = Literal["json", "console"]

THIRD_PARTY_LOGGERS = ("aiokafka", "websockets", "aiohttp", "ccxt", "mcp", "uvicorn", "sse_starlette")


class KnownTransients(logging.Filter):
    """Lowers to DEBUG what a library logs as ERROR but is a known, short-lived state: aiokafka's
    ``Group Coordinator Request failed: GroupCoordinatorNotAvailableError``, logged every retry while
    a fresh broker creates ``__consumer_offsets`` (or a coordinator moves). If it lasts longer than
    ``persist_seconds`` (a broker that can never host the group, e.g. an offsets replication factor
    above the broker count), one WARNING per ``persist_seconds`` says so."""

    #: (logger, message format, exception class names) of the known transients
    KNOWN: tuple[tuple[str, str, frozenset[str]], ...] = (
        (
            "aiokafka.consumer.group_coordinator",
            "Group Coordinator Request failed: %s",
            frozenset({"GroupCoordinatorNotAvailableError", "CoordinatorNotAvailableError"}),
        ),
    )

    def __init__(self, persist_seconds: float = 30.0) -> None:
        super().__init__()
        self.persist_seconds = persist_seconds
        self._since: float | None = None  # start of the current run of transients
        self._last = float("-inf")  # when the last one was seen
        self._warned = float("-inf")  # when the last WARNING was let through

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not self._known(record):
            return True
        now = time.monotonic()
        if self._since is None or now - self._last > 10.0:
            self._since = now  # a new run: the previous one ended (aiokafka retries every 0.1 s)
        self._last = now
        if now - self._since >= self.persist_seconds and now - self._warned >= self.persist_seconds:
            self._warned = now
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = f"{record.msg} (for {now - self._since:.0f} s)"
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger("reflexd").isEnabledFor(logging.DEBUG)

    def _known(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        names = {type(a).__name__ for a in args}
        return any(
            record.name == name and record.msg == msg and not names.isdisjoint(errors)
            for name, msg, errors in self.KNOWN
        )


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"reflexd.{name}")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


_ESCAPES = {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


def _escape_char(char: str) -> str:
    code = ord(char)
    if code in _ESCAPES:
        return _ESCAPES[code]
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def console_text(value: object) -> str:
    """``value`` as text for one console line: control and other non-printable characters (line
    breaks, escape sequences, U+2028, ...) become backslash escapes, so no value can start a new
    line or rewrite the terminal. Printable text is returned as is (one C-speed check)."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape_char(c) for c in text)


class ConsoleFormatter(logging.Formatter):
    """Human-readable: time, level, logger, message, then key=value fields.

    One record is one line: the message, keys and values are escaped (:func:`console_text`). A
    traceback follows on lines indented by two spaces, so a line that starts at column 0 is
    always a record.
    """

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        message = record.getMessage()
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        if not (message.isprintable() and fields.isprintable()):  # rare: escape part by part
            message = console_text(message)
            fields = " ".join(f"{console_text(k)}={console_text(v)}" for k, v in _fields(record).items())
        line = f"{stamp} {record.levelname:<7} {record.name}: {message}"
        if fields:
            line = f"{line}  {fields}"
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line = line + "".join(f"\n  {console_text(part)}" for part in trace.splitlines())
        return line


class _Hidden:
    """The texts no log line may show (values from ``${VAR}``), replaced by ``***`` in each finished line,
    as written and as JSON escapes them. Set by :func:`hide_secrets`; empty: lines pass untouched."""

    forms: tuple[str, ...] = ()

    @classmethod
    def scrub(cls, line: str) -> str:
        for text in cls.forms:
            if text in line:
                line = line.replace(text, "***")
        return line


def hide_secrets(texts: Iterable[str]) -> None:
    """From now on, every line the reflexd handler writes has these texts replaced by ``***`` (a
    tool's error that quotes its secret argument, a traceback holding a key), and so does every
    text passed to :func:`scrub_secrets` (the errors the journal and the dead-letter queue store).
    Texts under 4 characters are not hidden (they would mask ordinary words)."""
    forms: set[str] = set()
    for text in texts:
        if len(text) >= 4:
            forms.add(text)
            forms.add(orjson.dumps(text).decode()[1:-1])  # as it appears inside a JSON string
            forms.add(console_text(text))
    _Hidden.forms = tuple(sorted(forms, key=len, reverse=True))  # a longer secret before one inside it


def scrub_secrets(text: str) -> str:
    """``text`` with the texts given to :func:`hide_secrets` replaced by ``***``."""
    return _Hidden.scrub(text) if _Hidden.forms else text


class _Scrubbing(logging.Formatter):
    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return scrub_secrets(self.inner.format(record))


def configure_logging(level: str = "info", fmt: LogFormat = "json", stream: Any = None) -> None:
    """Install one handler on the ``reflexd`` logger (idempotent); its lines never show the texts
    :func:`hide_secrets` was given."""
    root = logging.getLogger("reflexd")
    for handler in list(root.handlers):
        if getattr(handler, "_reflexd", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._reflexd = True  # type: ignore[attr-defined]
    handler.setFormatter(_Scrubbing(JsonFormatter() if fmt == "json" else ConsoleFormatter()))
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    # libraries we drive log through the same handler and format, warnings and up only
    for name in THIRD_PARTY_LOGGERS:
        lib = logging.getLogger(name)
        for old in list(lib.handlers):
            if getattr(old, "_reflexd", False):
                lib.removeHandler(old)
        lib.addHandler(handler)
        lib.setLevel(logging.WARNING)
        lib.propagate = False
    for name, _, _ in KnownTransients.KNOWN:  # on the logger itself: also seen by handlers tests add
        known = logging.getLogger(name)
        if not any(isinstance(f, KnownTransients) for f in known.filters):
            known.addFilter(KnownTransients())


class RateLimitedLog:
    """Logs the first occurrence of something with a sample, then a summary per interval.

    ``hit()`` is cheap when suppressed: one clock read and an integer increment.
    """

    __slots__ = ("_interval", "_last", "_level", "_logger", "_msg", "_suppressed")

    def __init__(
        self, logger: logging.Logger, msg: str, *, level: int = logging.WARNING, interval: float = 10.0
    ):
        self._logger = logger
        self._msg = msg
        self._level = level
        self._interval = interval
        self._last = float("-inf")
        self._suppressed = 0

    def hit(self, text: str | None = None, /, *, exc_info: Any = None, **fields: Any) -> None:
        """Count one occurrence; log it (as ``text`` if given, else the message, with ``exc_info``
        if given) unless held back."""
        now = time.monotonic()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        if self._suppressed:
            fields["suppressed_since_last"] = self._suppressed
            self._suppressed = 0
        self._last = now
        self._logger.log(self._level, text or self._msg, exc_info=exc_info, extra={"fields": fields})

    @property
    def suppressed(self) -> int:
        return self._suppressed
