"""The one error tree of reflexd.

::

    ReflexdError
    ├── ConfigError            bad configuration; carries ConfigIssue(file, line, path, reason) items
    ├── StartupError           a component could not start (port in use, file not writable, ...)
    ├── SourceError            raised by a source; ``.source`` names it
    │   ├── NotConnected       the peer could not be reached or dropped us
    │   ├── EndOfStream        a finite source (replay without loop) reached its end
    │   ├── DecodeError        one message could not be decoded (counted, never fatal)
    │   └── IdleTimeout        no data for ``idle_timeout_seconds``
    ├── RuleError              a rule could not be built
    │   └── ExpressionError    an expression or template failed to compile; ``.column`` is 1-based
    ├── ToolError              a tool invocation failed; ``.retryable``, ``.retry_after`` (seconds)
    └── ShutdownTimeout        the shutdown budget ran out; ``.cancelled`` names what was cut off

Third-party exceptions (websockets, aiohttp, ...) are mapped to these at the module edge
and chained with ``raise ... from exc``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "DecodeError",
    "EndOfStream",
    "ExpressionError",
    "IdleTimeout",
    "NotConnected",
    "ReflexdError",
    "RuleError",
    "ShutdownTimeout",
    "SourceError",
    "StartupError",
    "ToolError",
]


class ReflexdError(Exception):
    """Root of every error reflexd raises on purpose."""


@dataclass(frozen=True)
class ConfigIssue:
    """One configuration problem, printable as ``file:line path: reason``."""

    file: str
    line: int | None
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where} {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"


class ConfigError(ReflexdError):
    """The configuration is invalid. ``issues`` lists every problem found, in file order."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line or 0, i.path))
        super().__init__("\n".join(str(i) for i in self.issues))


class StartupError(ReflexdError):
    """A component failed to start; the daemon exits with code 3."""

    def __init__(self, component: str, reason: str) -> None:
        self.component = component
        self.reason = reason
        super().__init__(f"{component}: {reason}")


class SourceError(ReflexdError):
    """Raised by a source. ``retryable`` tells the engine whether to reconnect."""

    retryable = True

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"source {source}: {reason}")


class NotConnected(SourceError):
    """The peer could not be reached, refused us, or dropped the connection."""

    def __init__(self, source: str, reason: str, *, retryable: bool = True) -> None:
        super().__init__(source, reason)
        self.retryable = retryable


class EndOfStream(SourceError):
    """A finite source has delivered everything it had."""

    retryable = False


class DecodeError(SourceError):
    """One message could not be decoded; the source counts it and goes on."""


class IdleTimeout(SourceError):
    """No data arrived within ``idle_timeout_seconds``; the engine reconnects."""

    def __init__(self, source: str, idle_seconds: float) -> None:
        super().__init__(source, f"no data for {idle_seconds:g}s")
        self.idle_seconds = idle_seconds


class RuleError(ReflexdError):
    """A rule could not be built."""


class ExpressionError(RuleError):
    """An expression or template is invalid. ``column`` is 1-based within the text."""

    def __init__(self, text: str, reason: str, column: int | None = None) -> None:
        self.text = text
        self.reason = reason
        self.column = column
        where = f" (column {column})" if column is not None else ""
        super().__init__(f"{reason}{where}")


class ToolError(ReflexdError):
    """A tool invocation failed.

    ``retryable``: trying again may help (a 5xx, a timeout, a dropped connection).
    ``retry_after``: the peer asked to wait this many seconds first (e.g. HTTP ``Retry-After``).
    ``permanent``: a configuration problem (a refused address, a target that is gone): every call
    fails the same way until the configuration changes; the reason says it all (no traceback logged).
    """

    def __init__(
        self,
        tool: str,
        reason: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        permanent: bool = False,
    ) -> None:
        self.tool = tool
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after
        self.permanent = permanent
        super().__init__(f"tool {tool}: {reason}")


class ShutdownTimeout(ReflexdError):
    """The shutdown budget ran out; ``cancelled`` names the tasks that were cut off."""

    def __init__(self, budget_seconds: float, cancelled: list[str]) -> None:
        self.budget_seconds = budget_seconds
        self.cancelled = cancelled
        super().__init__(
            f"shutdown budget of {budget_seconds:g}s exceeded; cancelled: {', '.join(cancelled)}"
        )
