"""SIGHUP is a reload request, never a reason to die — from the moment the command line is imported.

Python's default for SIGHUP is to end the process, and logrotate's usual ``postrotate`` sends it.
The ``reflexd`` command line imports this module before anything slow, so a SIGHUP that arrives
while the interpreter imports the rest, reads the configuration or builds the components is
remembered here (:func:`take`) and becomes a reload once the daemon runs. ``serve`` then hands
the signal to the event loop, and gives it back to this handler when it returns. Only the few
milliseconds of the interpreter's own start, before this import, still have the default.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

__all__ = ["install", "release", "take"]

_requested = False


def _remember(signum: int, frame: FrameType | None) -> None:
    global _requested
    _requested = True


def install() -> None:
    """Remember SIGHUP instead of dying (in the main thread; elsewhere signals cannot be set)."""
    try:
        signal.signal(signal.SIGHUP, _remember)
    except ValueError:  # not the main thread (the command line run inside a test's thread)
        pass


def release() -> None:
    """Give SIGHUP its default back (a verb other than ``run``: closing the terminal ends it, as it
    ends any command); one remembered meanwhile is delivered again now, with that default."""
    try:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    except ValueError:  # not the main thread: install() could not set it either
        return
    if take():
        os.kill(os.getpid(), signal.SIGHUP)


def take() -> bool:
    """Whether a SIGHUP arrived since the last call."""
    global _requested
    requested, _requested = _requested, False
    return requested


install()
