"""A tiny real service for runtime tests: records every event it handles to a file.

Run as ``agentstream consume support.recording_service:RECORDER --record-file F`` (tests/
on PYTHONPATH). Lines are ``<phase> <event_id> <topic> <partition> <offset> <pid>`` with
phase ``start`` or ``done``; an event whose data has ``slow_ms`` is handled that slowly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from agentstream.consumers.runtime import EventConsumer, Record, ServiceSettings, ServiceSpec
from agentstream.schemas import Event


class RecorderSettings(ServiceSettings):
    record_file: str | None = None
    pattern: str = "tool.called"
    delay_ms: int = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--record-file", help="append handled events to this file")
    parser.add_argument("--pattern", help="subscription pattern (default tool.called)")
    parser.add_argument("--delay-ms", type=int, help="time each event takes")


@contextlib.asynccontextmanager
async def setup(consumer: EventConsumer, settings: RecorderSettings) -> AsyncIterator[None]:
    out = open(settings.record_file, "a") if settings.record_file else None  # noqa: SIM115
    pid = os.getpid()

    def write(phase: str, event: Event, record: Record) -> None:
        if out is not None:
            line = f"{phase} {event.event_id} {record.topic} {record.partition} {record.offset}"
            out.write(f"{line} {pid}\n")
            out.flush()

    @consumer.subscribe(settings.pattern, name="record")
    async def record(event: Event, record: Record) -> None:
        write("start", event, record)
        delay = int(event.data.get("slow_ms") or settings.delay_ms)
        if delay:
            await asyncio.sleep(delay / 1000)
        write("done", event, record)

    try:
        yield
    finally:
        if out is not None:
            out.close()


RECORDER = ServiceSpec(
    name="recorder",
    settings_class=RecorderSettings,
    setup=setup,
    description="records handled events to a file (tests)",
    add_arguments=add_arguments,
)
AUDITOR = ServiceSpec(
    name="auditor",
    settings_class=RecorderSettings,
    setup=setup,
    description="a second service with the same behaviour (tests)",
    add_arguments=add_arguments,
)
