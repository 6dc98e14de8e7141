"""Rebuilding the turns still open at the committed offset, from Kafka itself.

The service lets the runtime commit records as soon as they are assembled (holding a partition
until its turns end would stall it), except for the records that *end* a turn: their batch
returns only after the trace is exported (bounded by ``export_wait_ms``). So after a restart or
a rebalance, what the committed offset does not cover is re-delivered anyway, and what it does
cover is either exported or part of a turn that was still open. Those open turns are rebuilt
here: on assignment, the ``restore_window_records`` records before the group's committed offset
are read again by a separate, group-less consumer (:mod:`agentstream.consumers.runtime.replay`:
manual assignment, it never joins the group) and fed to the assembler with their output
discarded (turns that finished inside the window were exported before their end record was
committed). Only offsets are used, never ``offsets_for_times`` (unreliable on the embedded
broker).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiokafka.structs import TopicPartition

from agentstream.consumers.runtime.replay import Window, read_window_events
from agentstream.schemas import Event
from agentstream.schemas.settings import KafkaSettings


async def replay(
    settings: KafkaSettings,
    committed: dict[TopicPartition, int | None],
    *,
    window: int,
    timeout_s: float,
    group_id: str,
) -> AsyncIterator[tuple[TopicPartition, Event, int, int]]:
    """The decodable events of ``[committed - window, committed)`` of each partition, in offset
    order per partition, each with its record's timestamp (ms) and offset. Gives up (logged:
    the restore is partial) after ``timeout_s``."""
    windows = {
        tp: Window(max(0, c - window), c)
        for tp, c in committed.items()
        if c is not None and c > 0 and window > 0
    }
    async for record, event in read_window_events(
        settings, windows, timeout_s=timeout_s, name="tracing-restore", group_id=group_id
    ):
        yield TopicPartition(record.topic, record.partition), event, record.timestamp, record.offset
