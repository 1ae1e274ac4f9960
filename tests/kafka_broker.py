"""A real single-node Apache Kafka (KRaft, broker + controller in one JVM) for tests and local development.

The broker runs from the jars that ``scripts/kafka-jars.sh`` (``make kafka-jars``) copies from Maven Central into
``.cache/kafka-<version>/``; only ``java`` (17+) is needed at test time. Lifecycle calls are synchronous (subprocess
management is), with ``a*`` twins that run them in a worker thread so an async test's event loop keeps running.

    broker = KafkaBroker(tmp_path).start()      # free loopback ports, formatted data dir, waits until ready
    topic = await broker.create_topic(partitions=4)
    broker.restart()                            # same ports, same data dir: committed data survives
    broker.kill(); broker.start()               # kill -9, then recover
    broker.stop()

``python -m tests.kafka_broker`` runs the same broker in the foreground (``make kafka``: 127.0.0.1:9092).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

log = logging.getLogger("tests.kafka_broker")

ROOT = Path(__file__).resolve().parents[1]
KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
POM = KAFKA_DIR / "pom.xml"
LOG4J2_CONFIG = KAFKA_DIR / "log4j2.properties"
READY_LINE = b"Kafka Server started"
_STACK_FRAME = re.compile(r"\s+at |\s+\.\.\. \d+ more")
NODE_ID = 1

# Measured on the 2-core dev machine (idle / under load average 2-6): format 0.8 / 1.0-2.0 s, launch to ready
# 1.8 / 2.2-4.2 s (3.2 s on the very first JVM run), restart 1.9 / 2.9-4.3 s, restart after kill -9 4.7 / 5.4-6.8 s,
# stop 0.3-0.5 s. The start deadline is 10x the worst of these (KAFKA_START_TIMEOUT overrides it).
START_TIMEOUT_S = float(os.environ.get("KAFKA_START_TIMEOUT", "60"))
STOP_TIMEOUT_S = 30.0

JVM_FLAGS = (
    "-Xms256m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:ParallelGCThreads=2",
    "-XX:ConcGCThreads=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)

# Rendered into <work dir>/server.properties; ``overrides`` replace or add keys.
SERVER_PROPERTIES: dict[str, str] = {
    "process.roles": "broker,controller",
    "node.id": str(NODE_ID),
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
    # Topics are created explicitly with their partition count (create_topic); a misspelt topic name then fails
    # loudly instead of silently creating a 1-partition topic.
    "auto.create.topics.enable": "false",
    "num.partitions": "1",
    # one node: replication factor 1 everywhere
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    # test speed-ups: no 3 s delay before the first rebalance, 1-partition internal topics, short session timeouts
    "group.initial.rebalance.delay.ms": "0",
    "group.min.session.timeout.ms": "1000",
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.num.partitions": "1",
    "share.coordinator.state.topic.num.partitions": "1",
    # After a kill -9 the restarted controller still holds the old broker registration and refuses the new one until
    # that session expires: 9 s by default (measured restart 11.7 s), 3 s here (restart ~4.7 s). The heartbeat runs
    # inside one JVM, so 6 missed 500 ms heartbeats would take a multi-second stall.
    "broker.session.timeout.ms": "3000",
    "broker.heartbeat.interval.ms": "500",
    # retention: default retention (7 days), but checked every 5 s and deleted 1 s later, so a test that sets a
    # short retention.ms on its topic sees it applied quickly
    "log.retention.check.interval.ms": "5000",
    "log.segment.delete.delay.ms": "1000",
    # 2-core machine
    "num.network.threads": "2",
    "num.io.threads": "2",
    "background.threads": "2",
    "num.recovery.threads.per.data.dir": "1",
    "group.coordinator.threads": "1",
    "log.cleaner.threads": "1",
    "log.cleaner.dedupe.buffer.size": "2097152",
}

T = TypeVar("T")


class BrokerError(RuntimeError):
    """The broker could not be started or controlled."""


class BrokerControlUnsupported(BrokerError):
    """Start/stop/kill/restart asked of a broker this harness does not run (``KAFKA_BOOTSTRAP_SERVERS``)."""


def kafka_version(pom: Path = POM) -> str:
    """The Kafka version pinned in tests/kafka/pom.xml (the single source of truth)."""
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", pom.read_text())
    if match is None:
        raise BrokerError(f"no <kafka.version> in {pom}")
    return match.group(1)


def default_jars_dir() -> Path:
    """``$KAFKA_JARS_DIR``, else ``.cache/kafka-<version>`` in the repository."""
    env = os.environ.get("KAFKA_JARS_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return ROOT / ".cache" / f"kafka-{kafka_version()}"


def find_java() -> str:
    """``$JAVA``, else ``$JAVA_HOME/bin/java``, else ``java`` on PATH."""
    for candidate in (os.environ.get("JAVA"), _java_home_java(), shutil.which("java")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError("no java (17+) found: install a JDK or set JAVA / JAVA_HOME")


def _java_home_java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    return str(Path(home) / "bin" / "java") if home else None


def check_jars(jars_dir: Path) -> None:
    """Raise with the command to run when the jar set is missing or incomplete."""
    version = kafka_version()
    if not (jars_dir / f"kafka_2.13-{version}.jar").is_file() or not any(jars_dir.glob("log4j-core-*.jar")):
        raise BrokerError(
            f"Kafka {version} jars not found in {jars_dir}: run `make kafka-jars` "
            "(scripts/kafka-jars.sh: Maven copies them from Maven Central once, ~45 MB)"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def new_cluster_id() -> str:
    """A random cluster id in Kafka's form (22-character URL-safe base64 UUID), without launching a JVM.

    Never one starting with ``-``: ``kafka-storage format -t -x…`` reads it as an option and fails (1 id in 64)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def unique_name(prefix: str = "t") -> str:
    """A fresh, valid topic or group name: ``<prefix>-<10 hex digits>`` (the prefix is sanitised)."""
    clean = re.sub(r"[^a-zA-Z0-9._-]+", "-", prefix).strip("-.")[:80] or "t"
    return f"{clean}-{uuid.uuid4().hex[:10]}"


def run_coroutine_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``factory()`` to completion from sync code, also when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with ThreadPoolExecutor(1, thread_name_prefix="kafka-harness") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


async def wait_for_metadata(bootstrap: str, timeout: float = 10.0) -> dict[str, Any]:
    """Poll until the cluster answers a metadata request listing at least one broker; return the answer."""
    from aiokafka.admin import AIOKafkaAdminClient

    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                await admin.start()
                info: dict[str, Any] = await admin.describe_cluster()
            if info.get("brokers"):
                return info
            last = BrokerError(f"metadata lists no brokers yet: {info}")
        except Exception as exc:
            last = exc
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        await asyncio.sleep(0.1)
    raise BrokerError(f"{bootstrap} did not answer metadata within {timeout:.0f} s: {last!r}")


async def create_topic_on(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    *,
    replication_factor: int = 1,
    config: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> str:
    """Create ``name`` and wait until every partition has a leader in the broker's metadata; return the name."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import for_code

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            topic = NewTopic(name, partitions, replication_factor, topic_configs=dict(config or {}))
            response = await admin.create_topics([topic])
            for entry in response.topic_errors:
                topic_name, code, *detail = entry
                if code:
                    raise for_code(code)(f"create topic {topic_name!r}: {detail[0] if detail else ''}")
            while True:  # the controller has committed the topic; wait until this broker serves it
                (described,) = await admin.describe_topics([name])
                parts = described["partitions"]
                if (
                    described["error_code"] == 0
                    and len(parts) == partitions
                    and all(p["error_code"] == 0 and p["leader"] >= 0 for p in parts)
                ):
                    return name
                await asyncio.sleep(0.05)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def delete_topics_on(bootstrap: str, names: Sequence[str], timeout: float = 30.0) -> None:
    """Delete topics (best effort: unknown topics are ignored)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            await admin.delete_topics(list(names))
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def fetch_committed_offsets(bootstrap: str, group: str, timeout: float = 30.0) -> dict[Any, int]:
    """The group's committed offsets ``{TopicPartition: next offset to read}``, retried while its coordinator loads.

    Not ``AIOKafkaAdminClient.list_consumer_group_offsets()``: aiokafka 0.14 ignores OffsetFetch's top-level error
    code (v2+), so right after a broker restart, while the coordinator loads ``__consumer_offsets``, it returns ``{}``
    as if the group had committed nothing (``AIOKafkaConsumer.committed()`` likewise returns None then).
    """
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError, for_code
    from aiokafka.protocol.commit import OffsetFetchRequest
    from aiokafka.structs import TopicPartition

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            while True:
                try:
                    coordinator = await admin.find_coordinator(group)
                    response = await admin._send_request(OffsetFetchRequest(group, None), coordinator)
                    if getattr(response, "error_code", 0):
                        raise for_code(response.error_code)(f"offset fetch for group {group!r}")
                    offsets: dict[Any, int] = {}
                    for topic, partitions in response.topics:
                        for partition, offset, _metadata, code in partitions:
                            if code:
                                raise for_code(code)(
                                    f"offset fetch for group {group!r}: {topic}[{partition}]"
                                )
                            if offset >= 0:
                                offsets[TopicPartition(topic, partition)] = offset
                    return offsets
                except KafkaError as exc:
                    if not exc.retriable:
                        raise
                    await asyncio.sleep(0.1)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


class _Topics:
    """Topic and group helpers shared by the broker this harness runs and an external one."""

    unique_name = staticmethod(unique_name)

    @property
    def bootstrap(self) -> str:
        """``host:port[,host:port...]`` for ``bootstrap_servers``."""
        raise NotImplementedError

    async def create_topic(
        self,
        name: str | None = None,
        partitions: int = 1,
        *,
        config: Mapping[str, str] | None = None,
        prefix: str = "t",
    ) -> str:
        """Create a topic (a unique ``<prefix>-<hex>`` one when ``name`` is None; replication factor 1), wait until
        the broker serves all its partitions, and return its name."""
        return await create_topic_on(self.bootstrap, name or unique_name(prefix), partitions, config=config)

    def create_topic_sync(
        self,
        name: str | None = None,
        partitions: int = 1,
        *,
        config: Mapping[str, str] | None = None,
        prefix: str = "t",
    ) -> str:
        """:meth:`create_topic` for sync code (runs its own event loop, in a thread if this one has a loop)."""
        return run_coroutine_sync(lambda: self.create_topic(name, partitions, config=config, prefix=prefix))

    async def committed_offsets(self, group: str, timeout: float = 30.0) -> dict[Any, int]:
        """``{TopicPartition: next offset to read}`` committed by ``group`` (see :func:`fetch_committed_offsets`)."""
        return await fetch_committed_offsets(self.bootstrap, group, timeout)


class KafkaBroker(_Topics):
    """One single-node KRaft broker process on fixed loopback ports, with its data dir under ``work_dir``."""

    controllable = True

    def __init__(
        self,
        work_dir: Path | str,
        *,
        port: int = 0,
        controller_port: int = 0,
        host: str = "127.0.0.1",
        jars_dir: Path | str | None = None,
        java: str | None = None,
        heap: str = "512m",
        overrides: Mapping[str, object] | None = None,
        start_timeout: float = START_TIMEOUT_S,
        stop_timeout: float = STOP_TIMEOUT_S,
    ) -> None:
        """Ports 0 = pick free ones now; they are kept for the broker's lifetime (restarts reuse them)."""
        self.work_dir = Path(work_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.controller_port = controller_port or free_port(host)
        while self.controller_port == self.port:
            self.controller_port = free_port(host)
        self.jars_dir = Path(jars_dir).resolve() if jars_dir else default_jars_dir()
        self._java = java
        self.heap = heap
        self.overrides = {k: str(v) for k, v in (overrides or {}).items()}
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.data_dir = self.work_dir / "data"
        self.properties_path = self.work_dir / "server.properties"
        self.log_path = self.work_dir / "broker.log"
        self.timings: dict[str, float] = {}  # seconds of the last format / start / stop
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        _LIVE.add(self)

    # -- addresses and state ------------------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``host:port`` of the PLAINTEXT listener."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        return f"KafkaBroker({self.bootstrap}, pid={self.pid}, work_dir={str(self.work_dir)!r})"

    # -- configuration ------------------------------------------------------------------------------------------

    def server_properties(self) -> dict[str, str]:
        props = dict(SERVER_PROPERTIES)
        props.update(
            {
                "controller.quorum.voters": f"{NODE_ID}@{self.host}:{self.controller_port}",
                "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
                "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
                "log.dirs": str(self.data_dir),
            }
        )
        props.update(self.overrides)
        return props

    def write_properties(self) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"# written by tests/kafka_broker.py for {self.bootstrap}"]
        lines += [f"{key}={value}" for key, value in self.server_properties().items()]
        self.properties_path.write_text("\n".join(lines) + "\n")
        return self.properties_path

    def java_command(self, main_class: str, *args: str) -> list[str]:
        java = self._java or find_java()
        return [
            java,
            f"-Xmx{self.heap}",
            *JVM_FLAGS,
            f"-Dkafka.logs.dir={self.work_dir}",
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            "-cp",
            f"{self.jars_dir}/*",
            main_class,
            *args,
        ]

    @property
    def formatted(self) -> bool:
        return (self.data_dir / "meta.properties").is_file()

    def format(self) -> None:
        """Format the data dir (once: a formatted dir keeps its cluster id across restarts)."""
        check_jars(self.jars_dir)
        self.write_properties()
        if self.formatted:
            return
        t0 = time.monotonic()
        cmd = self.java_command(
            "kafka.tools.StorageTool",
            "format",
            "-t",
            new_cluster_id(),
            "-c",
            str(self.properties_path),
            "--ignore-formatted",
        )
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120, check=False)
        self.timings["format"] = time.monotonic() - t0
        if done.returncode != 0:
            raise BrokerError(
                f"kafka.tools.StorageTool format failed ({done.returncode}):\n{done.stdout.decode()}"
            )

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> Self:
        """Format if needed, launch ``kafka.Kafka``, and return once it logged "Kafka Server started" and answers
        metadata; on failure the process is killed and the error carries the tail of ``broker.log``."""
        if self.running:
            raise BrokerError(f"{self!r} is already running")
        self.format()
        self.starts += 1
        t0 = time.monotonic()
        with open(self.log_path, "ab") as out:
            offset = out.tell()
            out.write(f"=== tests/kafka_broker.py: start #{self.starts} on {self.bootstrap} ===\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                self.java_command("kafka.Kafka", str(self.properties_path)),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
            )
        try:
            self._wait_ready(offset, t0)
        except BaseException:
            self._terminate(kill=True)
            raise
        self.timings["start"] = time.monotonic() - t0
        log.info(
            "kafka broker ready on %s in %.2f s (pid %s)", self.bootstrap, self.timings["start"], self.pid
        )
        return self

    def _wait_ready(self, offset: int, t0: float) -> None:
        deadline = t0 + self.start_timeout
        proc = self._proc
        assert proc is not None
        while not self._log_has(READY_LINE, offset):
            if proc.poll() is not None:
                raise BrokerError(self._failure(f"exited with {proc.returncode} during startup", offset))
            if time.monotonic() > deadline:
                raise BrokerError(
                    self._failure(f'did not log "Kafka Server started" within {self.start_timeout} s', offset)
                )
            time.sleep(0.05)
        self.timings["started_line"] = time.monotonic() - t0
        try:
            remaining = max(1.0, deadline - time.monotonic())
            run_coroutine_sync(lambda: wait_for_metadata(self.bootstrap, remaining))
        except BrokerError as exc:
            raise BrokerError(self._failure(str(exc), offset)) from None

    def _log_has(self, needle: bytes, offset: int) -> bool:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return needle in f.read()
        except FileNotFoundError:
            return False

    def _failure(self, what: str, offset: int = 0) -> str:
        return (
            f"kafka broker {self.bootstrap} {what}; its log without stack frames (all of it: {self.log_path}):\n"
            f"{self.log_summary(offset)}"
        )

    def log_summary(self, offset: int = 0, lines: int = 40) -> str:
        """The last ``lines`` lines of broker.log from byte ``offset``, Java stack frames left out."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        kept = [line for line in text.splitlines() if not _STACK_FRAME.match(line)]
        return "\n".join(kept[-lines:])

    def log_tail(self, nbytes: int = 4096) -> str:
        """The last ``nbytes`` of broker.log (the JVM's stdout and stderr across all starts)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - nbytes))
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (controlled shutdown), wait up to ``timeout`` (default 30 s), then SIGKILL; return the exit code."""
        t0 = time.monotonic()
        code = self._terminate(kill=False, timeout=self.stop_timeout if timeout is None else timeout)
        self.timings["stop"] = time.monotonic() - t0
        return code

    def kill(self) -> int | None:
        """SIGKILL (kill -9): no controlled shutdown, no flush; the next start() recovers the logs."""
        return self._terminate(kill=True)

    def restart(self, *, hard: bool = False) -> Self:
        """Stop (or kill, ``hard=True``) and start again on the same ports and data dir."""
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start()

    def _terminate(self, *, kill: bool, timeout: float = STOP_TIMEOUT_S) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("kafka broker %s ignored SIGTERM for %.0f s: SIGKILL", self.bootstrap, timeout)
                proc.kill()
                proc.wait()
        return proc.returncode

    # async twins: the blocking part runs in a worker thread, so the test's event loop (and a daemon on it) runs on
    async def astart(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def astop(self, timeout: float | None = None) -> int | None:
        return await asyncio.to_thread(self.stop, timeout)

    async def akill(self) -> int | None:
        return await asyncio.to_thread(self.kill)

    async def arestart(self, *, hard: bool = False) -> Self:
        return await asyncio.to_thread(lambda: self.restart(hard=hard))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ExternalKafkaBroker(_Topics):
    """A handle on a broker this harness does not run (``KAFKA_BOOTSTRAP_SERVERS``): topics yes, lifecycle no."""

    controllable = False

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        self.reason = (
            f"KAFKA_BOOTSTRAP_SERVERS={bootstrap}: an external broker cannot be stopped, killed or restarted"
        )

    def __repr__(self) -> str:
        return f"ExternalKafkaBroker({self.bootstrap})"

    @property
    def bootstrap(self) -> str:
        return self._bootstrap

    @property
    def running(self) -> bool:
        return True

    def wait_ready(self, timeout: float = 30.0) -> Self:
        run_coroutine_sync(lambda: wait_for_metadata(self.bootstrap, timeout))
        return self

    def _unsupported(self, *_: object, **__: object) -> Any:
        raise BrokerControlUnsupported(self.reason)

    start = stop = kill = restart = astart = astop = akill = arestart = _unsupported


AnyKafkaBroker = KafkaBroker | ExternalKafkaBroker

_LIVE: weakref.WeakSet[KafkaBroker] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    """Never leave a broker JVM behind when the interpreter exits without stopping it."""
    for broker in list(_LIVE):
        if broker.running:
            broker.stop(timeout=10)


# -- foreground mode: `make kafka` ------------------------------------------------------------------------------


def _create_topic(bootstrap: str, name: str, partitions: int) -> int:
    """``make kafka-topic``: create ``name`` (replication factor 1) and wait until the broker serves it."""
    from aiokafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        asyncio.run(create_topic_on(bootstrap, name, partitions))
    except TopicAlreadyExistsError:
        print(f"topic {name!r} already exists on {bootstrap}", file=sys.stderr)
        return 0
    except (KafkaError, OSError, TimeoutError) as exc:
        print(f"cannot create topic {name!r} on {bootstrap}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"created topic {name!r} with {partitions} partition(s) on {bootstrap}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.kafka_broker",
        description="Run the test harness's single-node Kafka broker in the foreground (Ctrl-C stops it).",
    )
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--controller-port", type=int, default=9093)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "var" / "kafka", help="kept across runs")
    parser.add_argument("--fresh", action="store_true", help="delete the data dir first")
    parser.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE", help="server property"
    )
    parser.add_argument(
        "--create-topic", metavar="NAME", help="do not run a broker: create topic NAME on the one at --host:--port"
    )
    parser.add_argument("--partitions", type=int, default=1, help="partitions of --create-topic (default 1)")
    args = parser.parse_args(argv)
    if args.create_topic:
        return _create_topic(f"{args.host}:{args.port}", args.create_topic, args.partitions)
    overrides = dict(item.split("=", 1) for item in args.override)
    if args.fresh:
        shutil.rmtree(args.data_dir, ignore_errors=True)
    broker = KafkaBroker(
        args.data_dir,
        port=args.port,
        controller_port=args.controller_port,
        host=args.host,
        overrides=overrides,
    )
    try:
        broker.format()
    except BrokerError as exc:
        print(exc, file=sys.stderr)
        return 1
    cmd = broker.java_command("kafka.Kafka", str(broker.properties_path))
    print(
        f"kafka {kafka_version()} on {broker.bootstrap} (controller {args.host}:{args.controller_port}), "
        f"data in {broker.data_dir}; Ctrl-C stops it",
        file=sys.stderr,
        flush=True,
    )
    os.execv(cmd[0], cmd)  # replace this process: signals and console output go straight to the broker


if __name__ == "__main__":
    sys.exit(main())
