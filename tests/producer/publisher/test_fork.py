"""A publisher inherited through ``os.fork()`` (gunicorn ``--preload``, multiprocessing's
fork): its sender thread stays in the parent, so the child must be told, not lose events."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from support.samples import sample_event

from agentstream.consumers.broker import free_port
from agentstream.producer.publisher import KafkaPublisher
from agentstream.producer.spool import Spool
from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.settings import KafkaSettings


def test_a_publisher_inherited_through_fork_refuses_instead_of_losing_events(
    kafka_settings: KafkaSettings,
) -> None:
    publisher = KafkaPublisher(kafka_settings, redact=None)
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: say what publish() and flush() did, then leave at once
            outcome: list[str] = []
            calls: list[Callable[[], object]] = [
                lambda: publisher.publish(sample_event("tool.called", 1)),
                lambda: publisher.flush(1),
            ]
            for call in calls:
                try:
                    call()
                    outcome.append("returned")
                except ConfigurationError as exc:
                    outcome.append(str(exc))
            os.write(write, json.dumps(outcome).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            outcome = json.loads(pipe.read())
        assert os.waitpid(pid, 0)[1] == 0
        assert len(outcome) == 2
        for said in outcome:
            assert said.startswith(
                f"this KafkaPublisher was created in process {os.getpid()}, before os.fork()"
            ), said
        publisher.publish(sample_event("tool.called", 2))  # the parent's goes on
        assert publisher.flush(30)
        assert publisher.stats().delivered == 1
    finally:
        publisher.close(5)


def test_a_forked_child_does_not_keep_the_parents_spool_locked(tmp_path: Path) -> None:
    """The child inherited the spool's locked file: while any child lived (a pool worker that
    never publishes), the next process took another slot and left the parent's records."""
    dead = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    publisher = KafkaPublisher(dead, redact=None, spool_dir=tmp_path)
    for i in range(10):
        publisher.publish(sample_event("tool.called", i))
    pid = os.fork()
    if pid == 0:  # the child: lives on without touching the publisher
        time.sleep(30)
        os._exit(0)
    try:
        publisher.close(0.5)  # the broker is down: the events go to the spool
        spool = Spool(tmp_path, max_bytes=2**20)
        try:
            assert spool.directory == tmp_path and spool.unread == 10
        finally:
            spool.close()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
