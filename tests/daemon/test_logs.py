"""Logging: JSON lines by default, a console format, and rate-limited repeats."""

from __future__ import annotations

import io
import logging

import orjson

from daemon.logs import RateLimitedLog, configure_logging, get_logger


def test_json_format_is_one_object_per_line_with_fields() -> None:
    """The default format writes one JSON object per line carrying the structured fields."""
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    get_logger("t").info("hello", extra={"fields": {"source": "feed", "n": 3}})
    get_logger("t").debug("hidden")
    (line,) = out.getvalue().splitlines()
    rec = orjson.loads(line)
    assert rec["msg"] == "hello" and rec["level"] == "info" and rec["logger"] == "reflexd.t"
    assert rec["source"] == "feed" and rec["n"] == 3


def test_console_format_is_readable() -> None:
    """The console format shows time, level, logger, message and key=value fields."""
    out = io.StringIO()
    configure_logging("debug", "console", stream=out)
    get_logger("t").warning("careful", extra={"fields": {"source": "feed"}})
    line = out.getvalue().strip()
    assert "WARNING" in line and "reflexd.t: careful" in line and "source=feed" in line


def test_configure_logging_is_idempotent() -> None:
    """Configuring twice keeps a single reflexd handler (no duplicated lines)."""
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    configure_logging("info", "json", stream=out)
    get_logger("t").info("once")
    assert len(out.getvalue().splitlines()) == 1


def test_rate_limited_log_logs_first_then_summarises() -> None:
    """Repeats inside the interval are held back and reported as a count with the next line."""
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    limited = RateLimitedLog(get_logger("t"), "bad frame", level=logging.WARNING, interval=3600)
    for i in range(100):
        limited.hit(sample=i)
    assert len(out.getvalue().splitlines()) == 1 and limited.suppressed == 99
    limited._last -= 7200  # the interval has passed
    limited.hit(sample=100)
    last = orjson.loads(out.getvalue().splitlines()[-1])
    assert last["sample"] == 100 and last["suppressed_since_last"] == 99


def teardown_module() -> None:
    root = logging.getLogger("reflexd")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.propagate = True
    root.setLevel(logging.NOTSET)
