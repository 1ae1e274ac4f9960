"""Records how it was started: raw argv, parent, session, cwd, environment, and an argparse view.

Run as ``python -S -I argv_recorder.py ARGS...`` (stdlib only). Appends one JSON line to the
file named by ``RECORDER_OUT`` (stdout if unset), then writes ``RECORDER_STDERR`` to stderr and
exits with ``RECORDER_EXIT`` (default 0).

``cmdline`` is ``/proc/self/cmdline`` split at NUL, each item hex-encoded: the exact bytes the
kernel passed, with no decoding in between. ``parsed`` is what an argparse program with the
options ``--output``, ``-r`` and ``-f`` would have made of the arguments after the script
(only with ``RECORDER_ARGPARSE=1``: argparse is slow to import).
"""

import json
import os
import sys


def _argparse_view(args: list[str]) -> dict[str, object]:
    import argparse

    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("--output")
    parser.add_argument("-r", action="store_true")
    parser.add_argument("-f", action="store_true")
    parser.add_argument("rest", nargs="*")
    try:
        ns, unknown = parser.parse_known_args(args)
    except (argparse.ArgumentError, SystemExit) as exc:
        return {"error": str(exc)}
    return {"output": ns.output, "r": ns.r, "f": ns.f, "rest": ns.rest, "unknown": unknown}


def main() -> int:
    with open("/proc/self/cmdline", "rb") as f:
        raw = f.read()
    cmdline = raw.split(b"\0")[:-1]
    with open("/proc/self/environ", "rb") as f:
        environ = dict(
            item.decode("utf-8", "surrogateescape").partition("=")[::2]
            for item in f.read().split(b"\0")
            if item
        )
    ppid = os.getppid()
    record = {
        "cmdline": [item.hex() for item in cmdline],
        "pid": os.getpid(),
        "ppid": ppid,
        "sid": os.getsid(0),
        "pgid": os.getpgrp(),
        "exe": os.readlink("/proc/self/exe"),
        "parent_exe": os.readlink(f"/proc/{ppid}/exe"),
        "cwd": os.getcwd(),
        "environ": environ,
        "parsed": _argparse_view(sys.argv[1:]) if os.environ.get("RECORDER_ARGPARSE") == "1" else None,
    }
    line = (json.dumps(record) + "\n").encode()
    out = os.environ.get("RECORDER_OUT")
    if out:
        fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    else:
        sys.stdout.buffer.write(line)
    sys.stderr.write(os.environ.get("RECORDER_STDERR", ""))
    return int(os.environ.get("RECORDER_EXIT", "0"))


if __name__ == "__main__":
    sys.exit(main())
