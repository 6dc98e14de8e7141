"""Running consumers in tests: in-process (a background task) and as ``agentstream consume``
subprocesses, plus reading topics and committed offsets back. Every wait is a condition
polled against a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka.structs import ConsumerRecord, TopicPartition

from agentstream.consumers.broker import free_port
from agentstream.consumers.runtime import EventConsumer, ServiceSettings, replay
from agentstream.consumers.runtime.replay import partitions_of, read_to_end
from agentstream.schemas import Event
from agentstream.schemas.settings import KafkaSettings

POLL = 0.02


def service_settings(base: KafkaSettings, **overrides: Any) -> ServiceSettings:
    """ServiceSettings on ``base``'s broker and topics, tuned for quick tests."""
    fields = {
        "bootstrap_servers": base.bootstrap_servers,
        "topic_prefix": base.topic_prefix,
        "linger_ms": 1,
        "fetch_max_wait_ms": 100,
        "commit_interval_ms": 100,
        "handler_retries": 2,
        "handler_retry_backoff_ms": 1,
        "handler_retry_max_backoff_ms": 5,
        "drain_timeout_ms": 10_000,
        **overrides,
    }
    return ServiceSettings(**fields)


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], *, timeout: float = 20.0, what: str = ""
) -> None:
    """Poll ``predicate`` (sync or async) until true; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s: {what or predicate!r}")
        await asyncio.sleep(POLL)


@contextlib.asynccontextmanager
async def running_consumer(
    consumer: EventConsumer, *, timeout: float = 30.0
) -> AsyncIterator[EventConsumer]:
    """Run ``consumer`` in a background task until the block ends; enter once it is ready
    (partitions assigned). Leaving stops it (drain, commit, leave the group)."""
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        deadline = time.monotonic() + timeout
        while not consumer.ready:
            if task.done():
                task.result()
                raise RuntimeError("the consumer stopped before partitions were assigned")
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumer {consumer.service} not ready within {timeout} s")
            await asyncio.sleep(POLL)
        yield consumer
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=consumer.settings.drain_timeout_ms / 1000 + 15)


async def read_records(
    settings: KafkaSettings, topic: str, count: int, *, timeout: float = 20.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """The records of ``topic`` (all partitions, no consumer group), once at least ``count``
    are there; more are returned if more were there (so ``[one] = ...`` also checks that
    no unexpected record came)."""
    tps = await partitions_of(settings, topic)
    found: list[ConsumerRecord[bytes, bytes]] = []
    deadline = time.monotonic() + timeout
    while True:
        found = [r async for r in read_to_end(settings, tps, name="test-read")]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"expected {count} records on {topic}, got {len(found)}")
        await asyncio.sleep(POLL)


async def committed_offsets(
    settings: KafkaSettings, group_id: str, topics: list[str] | None = None
) -> dict[TopicPartition, int]:
    """The offsets ``group_id`` committed on ``topics`` (default: the prefix's five topics),
    as the group coordinator reports them; partitions without a commit are left out."""
    tps = [
        tp
        for t in topics or settings.routing().all_topics()
        for tp in await partitions_of(settings, t)
    ]
    found = await replay.committed_offsets(settings, group_id, tps)
    return {tp: offset for tp, offset in found.items() if offset is not None}


TESTS_DIR = Path(__file__).resolve().parents[1]


async def http_get(port: int, path: str, *, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """A minimal GET: status and body."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def rss_bytes(pid: int) -> int | None:
    """Resident set size of process ``pid`` (Linux ``/proc``), None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class ServiceProcess:
    """``agentstream consume <service>`` in a subprocess, on a free HTTP port, its output in
    :meth:`log`. Used by the tests and the benchmarks (``benchmarks/_common.py``).

    Use as a context manager (killed on exit if still running). :meth:`wait_ready` polls
    ``/readyz``; :meth:`metric` reads ``/metrics``; :meth:`terminate` sends SIGTERM and returns
    the exit code; :meth:`close` is SIGTERM then, after ``timeout``, ``kill -9`` (synchronous);
    :meth:`kill` is ``kill -9``.
    """

    def __init__(
        self,
        service: str,
        settings: KafkaSettings,
        *options: str,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.service = service
        self.port = free_port()
        self.command = [
            sys.executable,
            "-m",
            "agentstream.consumers.cli",
            "consume",
            service,
            "--bootstrap-servers",
            settings.bootstrap_servers,
            "--topic-prefix",
            settings.topic_prefix,
            "--http-host",
            "127.0.0.1",
            "--http-port",
            str(self.port),
            *options,
        ]
        path = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "PYTHONPATH": path, **(env or {})}
        self.log_path = Path(tempfile.mkdtemp(dir=log_dir)) / "service.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.service} was not started"
        return self.process.pid

    def poll(self) -> int | None:
        """The exit code, or None while running (or not started)."""
        return None if self.process is None else self.process.poll()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.service} exited with {self.process.returncode}:\n{self.log()}"
                )
            with contextlib.suppress(OSError, IndexError, ValueError):
                status, _ = await http_get(self.port, "/readyz")
                if status == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.service} not ready within {timeout} s:\n{self.log()}")
            await asyncio.sleep(0.05)

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code (waits without blocking the event loop)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.service} still running after {timeout} s:\n{self.log()}")
            await asyncio.sleep(0.05)
        return self.process.returncode

    async def metric(self, name: str) -> float:
        """Sum of every sample of ``name`` on this process's ``/metrics``."""
        _, body = await http_get(self.port, "/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def close(self, timeout: float = 30.0) -> None:
        """SIGTERM and wait (blocking) up to ``timeout`` s for the exit, then ``kill -9``."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """``kill -9``: no drain, no commit, no leave."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    async def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM and assert a clean exit (code 0)."""
        code = await self.terminate(timeout)
        assert code == 0, f"{self.service} exited with {code}:\n{self.log()}"


@contextlib.asynccontextmanager
async def service_process(
    service: str, settings: KafkaSettings, *options: str, env: dict[str, str] | None = None
) -> AsyncIterator[ServiceProcess]:
    """Run ``agentstream consume <service>`` until the block ends: entered once /readyz
    answers 200; left with SIGTERM and an asserted exit 0 (killed if anything went wrong)."""
    process = ServiceProcess(service, settings, *options, env=env).start()
    try:
        await process.wait_ready()
        yield process
        if process.process is not None and process.process.poll() is None:
            await process.stop()
    finally:
        process.kill()


async def first_line_then_close(*args: str) -> tuple[int, bytes, str]:
    """Run ``agentstream ARGS`` as ``| head -1`` would: read its first line, close the pipe;
    its exit code, that line and its stderr."""

    def run() -> tuple[int, bytes, str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "agentstream.consumers.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.readline()
        process.stdout.close()  # what `head -1` does once it has its line
        code = process.wait(60)
        with process.stderr:
            return code, first, process.stderr.read().decode()

    return await asyncio.to_thread(run)


def recording_consumer(
    settings: ServiceSettings, service: str, pattern: str = "*"
) -> tuple[EventConsumer, list[str]]:
    """A consumer whose one handler, on ``pattern``, records the ids of the events it gets."""
    consumer = EventConsumer(settings, service=service)
    handled: list[str] = []

    @consumer.subscribe(pattern)
    async def record(event: Event) -> None:
        handled.append(event.event_id)

    return consumer, handled
