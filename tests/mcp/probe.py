"""A ``python`` tool for tests/mcp/test_lazy_import.py: writes which modules the daemon process has loaded."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def modules(args: dict[str, Any], event: Any) -> dict[str, bool]:
    """Write {"mcp": ..., "uvicorn": ..., "daemon.mcp_server": ...} (loaded or not) to ``args["path"]``."""
    loaded = {name: name in sys.modules for name in ("mcp", "uvicorn", "starlette", "daemon.mcp_server")}
    Path(args["path"]).write_text(repr(loaded))
    return loaded
