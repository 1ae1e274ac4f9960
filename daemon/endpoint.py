"""What the configurations of reflexd's two HTTP servers share: a listen address, a bearer token, the
host names accepted besides the listen address.

The ops server (``daemon.http: {listen, token, allowed_hosts}``) and the MCP server
(``agent.mcp: {listen, token, allowed_hosts}``) validate these fields the same way; the rules live
here, below both configuration models, so neither imports the other.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from pydantic import SecretStr

__all__ = ["MIN_TOKEN_CHARS", "bearer_token", "host_names", "is_loopback", "parse_listen"]

MIN_TOKEN_CHARS = 16
_HOST_NAME_RE = re.compile(r"^(\*|[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?|\[?[0-9A-Fa-f:.]+\]?)$")


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) → (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError("must look like host:port, e.g. 127.0.0.1:9108")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError("port must be between 0 and 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def is_loopback(host: str) -> bool:
    """True for a loopback address (127.0.0.0/8, ``::1``) or ``localhost``; a wildcard is not one."""
    name = host.lower().strip("[]").rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def bearer_token(value: Any) -> Any:
    """A ``token:`` field's value checked before it becomes a SecretStr: None or empty (from
    ``${VAR:-}``) is no token; otherwise at least :data:`MIN_TOKEN_CHARS` printable ASCII characters
    without spaces (it travels in an HTTP header). The messages never contain the value."""
    if value is None or isinstance(value, SecretStr):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a string (quote it)")
    if value == "":
        return None
    if len(value) < MIN_TOKEN_CHARS:
        raise ValueError(f"is shorter than {MIN_TOKEN_CHARS} characters")
    if not value.isascii() or not value.isprintable() or value != value.strip() or " " in value:
        raise ValueError("must be printable ASCII without spaces (it travels in an HTTP header)")
    return value


def host_names(value: list[str]) -> list[str]:
    """An ``allowed_hosts:`` list: host names or IP addresses (or ``*``), without scheme, port or path."""
    for name in value:
        if not _HOST_NAME_RE.match(name):
            raise ValueError(f"{name!r} is not a host name or IP address (no scheme, port or path)")
    return value
