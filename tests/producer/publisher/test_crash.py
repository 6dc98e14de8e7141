"""The issue's crash check: a producer process is SIGKILLed with events in its spool; a new
process on the same spool directory delivers all of them (at-least-once: none lost)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from support.samples import sample_event

from agentstream.consumers.broker import EmbeddedBroker, free_port
from agentstream.producer.publisher import KafkaPublisher, exit_on_sigterm
from agentstream.producer.spool import Spool
from agentstream.schemas import Event
from agentstream.schemas.admin import TopicSpec, ensure_topics
from agentstream.schemas.codec import decode_record
from agentstream.schemas.settings import KafkaSettings

TESTS = Path(__file__).resolve().parents[2]

# Publishes to a broker that is down, waits until everything is in the spool, says which
# events it published, then waits to be killed.
CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[4])
from support.samples import sample_event
from agentstream.producer.publisher import KafkaPublisher
from agentstream.schemas.settings import KafkaSettings

bootstrap, spool_dir, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
first = int(sys.argv[5])  # where this worker's event ids start
settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix="crash")
publisher = KafkaPublisher(settings, spool_dir=spool_dir, redact=None, instance_id="doomed")
ids = []
for i in range(first, first + count):
    event = sample_event("tool.called" if i % 3 else "llm.token", i)
    event.session_id = f"session-{i % 9}"
    event.source = ""
    publisher.publish(event)
    ids.append(event.event_id)
while publisher.stats().spooled < count:
    time.sleep(0.01)
print(json.dumps(ids), flush=True)
time.sleep(600)
"""


async def spool_then_kill(port: int, spool_dir: Path, counts: list[int]) -> set[str]:
    """One child publisher per count on ``spool_dir``, the broker at ``port`` down: each
    spools its events (ids numbered on from the previous child's), says which, and is
    killed with SIGKILL. Returns every id published."""
    command = [sys.executable, "-c", CHILD, f"127.0.0.1:{port}", str(spool_dir)]
    firsts = [sum(counts[:k]) for k in range(len(counts))]
    children = [
        subprocess.Popen(
            [*command, str(count), str(TESTS), str(first)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        for count, first in zip(counts, firsts, strict=True)
    ]
    published: set[str] = set()
    try:
        for child in children:
            assert child.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)
            published |= set(json.loads(line))
    finally:
        for child in children:
            child.send_signal(signal.SIGKILL)
            child.wait()
            if child.stdout is not None:
                child.stdout.close()
    assert [child.returncode for child in children] == [-signal.SIGKILL] * len(children)
    assert len(published) == sum(counts)
    return published


async def broker_back(broker_factory: type[EmbeddedBroker], port: int) -> KafkaSettings:
    broker = broker_factory(port=port)
    broker.start()
    await broker.wait_ready()
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic_prefix="crash")
    await ensure_topics(settings.admin_options(), settings.routing(), TopicSpec(partitions=3))
    return settings


async def delivered(
    consume: Callable[..., Awaitable[list[Any]]], settings: KafkaSettings, count: int
) -> list[Event]:
    """What reached the two topics the children publish to (a third of it tokens)."""
    routing = settings.routing()
    records = await consume(settings, routing.events, count * 2 // 3)
    records += await consume(settings, routing.tokens, count // 3)
    return [decode_record(r.value, r.headers) for r in records]


@pytest.mark.slow
async def test_a_killed_producer_spool_is_delivered_by_the_next_process(
    tmp_path: Path,
    broker_factory: type[EmbeddedBroker],
    consume: Callable[..., Awaitable[list[Any]]],
) -> None:
    port = free_port()
    spool_dir = tmp_path / "spool"
    count = 600
    published = await spool_then_kill(port, spool_dir, [count])
    settings = await broker_back(broker_factory, port)
    successor = KafkaPublisher(settings, spool_dir=spool_dir, redact=None)
    try:
        assert successor.stats().spool_pending == count
        assert await asyncio.to_thread(successor.flush, 30)
    finally:
        await asyncio.to_thread(successor.close, 5)
    events = await delivered(consume, settings, count)
    assert {e.event_id for e in events} == published  # duplicates would be allowed
    assert {e.source for e in events} == {"doomed"}
    assert successor.stats().delivered >= count


@pytest.mark.slow
async def test_workers_sharing_a_spool_dir_are_killed_and_one_successor_delivers_all(
    tmp_path: Path,
    broker_factory: type[EmbeddedBroker],
    consume: Callable[..., Awaitable[list[Any]]],
) -> None:
    """Three workers of a pre-forking server, one spool_dir: each takes a slot of its own
    (before, all but the first were refused at start), all are killed, and the server comes
    back with one worker: it delivers every event, the other two slots' too."""
    port = free_port()
    spool_dir = tmp_path / "spool"
    published = await spool_then_kill(port, spool_dir, [200, 200, 200])
    assert sorted(p.name for p in spool_dir.iterdir() if p.is_dir()) == ["process-1", "process-2"]
    settings = await broker_back(broker_factory, port)
    successor = KafkaPublisher(settings, spool_dir=spool_dir, redact=None)
    try:
        assert await asyncio.to_thread(successor.flush, 30)
        assert successor.stats().delivered >= 600
    finally:
        await asyncio.to_thread(successor.close, 5)
    assert {e.event_id for e in await delivered(consume, settings, 600)} == published


# Publishes to a live broker with a linger longer than the test: the events wait in memory
# when the SIGTERM comes, as in any pod stopped mid-batch.
TERMINATED = """
import json, sys, time
sys.path.insert(0, sys.argv[3])
from support.samples import sample_event
from agentstream.producer import exit_on_sigterm
from agentstream.producer.publisher import KafkaPublisher
from agentstream.schemas.settings import KafkaSettings

settings = KafkaSettings(
    bootstrap_servers=sys.argv[1], topic_prefix=sys.argv[2], linger_ms=60_000,
    max_batch_size=1_000_000,
)
installed = exit_on_sigterm()
publisher = KafkaPublisher(settings, redact=None)
ids = []
for i in range(200):
    event = sample_event("tool.called", 10_000 + i)
    event.session_id = f"session-{i % 7}"
    publisher.publish(event)
    ids.append(event.event_id)
said = {"installed": installed, "ids": ids, "delivered": publisher.stats().delivered}
print(json.dumps(said), flush=True)
time.sleep(600)
"""


async def test_a_sigterm_delivers_what_is_queued_with_exit_on_sigterm(
    broker_factory: type[EmbeddedBroker],
    unique_name: str,
    consume: Callable[..., Awaitable[list[Any]]],
) -> None:
    """Kubernetes stops a pod with SIGTERM, and Python's own SIGTERM ends the process without
    exit handlers: the events still in memory were lost at every rollout."""
    broker = broker_factory()
    broker.start()
    await broker.wait_ready()
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic_prefix=unique_name)
    await ensure_topics(settings.admin_options(), settings.routing(), TopicSpec(partitions=3))
    child = subprocess.Popen(
        [sys.executable, "-c", TERMINATED, broker.bootstrap_servers, unique_name, str(TESTS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)
        said = json.loads(line)
        assert said["installed"] is True and said["delivered"] == 0  # all still in memory
        child.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(child.wait, 30) == 128 + signal.SIGTERM
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    records = await consume(settings, settings.routing().events, 200)
    assert {decode_record(r.value, r.headers).event_id for r in records} == set(said["ids"])


def test_exit_on_sigterm_leaves_a_handler_that_is_there_alone() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, lambda *_: None)  # the application's own
        assert exit_on_sigterm() is False
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        assert exit_on_sigterm() is True
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


# Publishes to a broker that is down (kept in memory: no spooling before close), then closes:
# close() spools everything; the test's SIGTERM comes while it waits for the sender to do so.
CLOSING = """
import sys, time
sys.path.insert(0, sys.argv[3])
from support.samples import sample_event
from agentstream.producer.publisher import KafkaPublisher, exit_on_sigterm
from agentstream.schemas.settings import KafkaSettings

settings = KafkaSettings(bootstrap_servers=sys.argv[1], topic_prefix="closing")
publisher = KafkaPublisher(settings, spool_dir=sys.argv[2], redact=None, spool_after_ms=600_000,
                           max_queue_events=10**6, max_queue_bytes=2**31)
exit_on_sigterm()
for i in range(int(sys.argv[4])):
    publisher.publish(sample_event("tool.called", i))
print("closing", flush=True)
publisher.close(timeout=0)
"""


@pytest.mark.slow
def test_a_sigterm_during_close_lets_the_spool_be_written_whole(tmp_path: Path) -> None:
    """The signal cut close()'s wait for the sender; the exit handler's close() returned at
    once (closed already), and the process ended while the sender was writing the spool:
    tens of thousands of events neither spooled nor counted."""
    count = 150_000
    command = [sys.executable, "-c", CLOSING, f"127.0.0.1:{free_port()}", str(tmp_path),
               str(TESTS), str(count)]  # fmt: skip
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"closing\n"
        time.sleep(0.2)  # close() waits for the sender, which is spooling
        child.send_signal(signal.SIGTERM)
        assert child.wait(60) == 128 + signal.SIGTERM
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    spool = Spool(tmp_path, max_bytes=2**31)
    try:
        assert spool.unread == count
    finally:
        spool.close()


class _Interrupt(BaseException):
    """What a signal handler raises in the agent (KeyboardInterrupt's kind)."""


def test_interrupts_inside_publish_leave_flush_working(kafka_settings: KafkaSettings) -> None:
    """An agent that cancels its turn on Ctrl-C and goes on: a signal landing between two
    steps of publish() left a publish index no record would finish, so every later flush()
    and close() waited out its whole timeout."""
    publisher = KafkaPublisher(kafka_settings, redact=None)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if frame is not None and frame.f_code.co_filename.endswith("publisher.py"):
            raise _Interrupt  # inside publish() only (not in a finalizer pytest would report)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    stop = threading.Event()

    def interrupter() -> None:
        for _ in range(300):
            time.sleep(0.002)
            os.kill(os.getpid(), signal.SIGUSR1)
        stop.set()

    returned = interrupted = 0
    try:
        threading.Thread(target=interrupter, daemon=True).start()
        while not stop.is_set():
            try:
                while not stop.is_set():
                    publisher.publish(sample_event("tool.called", returned))
                    returned += 1
            except _Interrupt:
                interrupted += 1
        time.sleep(0.1)  # a signal still in flight
        assert interrupted > 50
        assert publisher.flush(20)
    finally:
        signal.signal(signal.SIGUSR1, previous)
        publisher.close(5)
