"""Rebuilding the turns still open at the committed offset, from Kafka itself.

The service lets the runtime commit records as soon as they are assembled (holding a partition
until its turns end would stall it), except for the records that *end* a turn: their batch
returns only after the trace is exported (bounded by ``export_wait_ms``). So after a restart or
a rebalance, what the committed offset does not cover is re-delivered anyway, and what it does
cover is either exported or part of a turn that was still open. Those open turns are rebuilt
here: on assignment, the ``restore_window_records`` records before the group's committed offset
are read again by a separate, group-less consumer (manual assignment: it never joins the group)
and fed to the assembler with their output discarded (turns that finished inside the window
were exported before their end record was committed). Only offsets are used, never
``offsets_for_times`` (unreliable on the embedded broker).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from agentstream.schemas import Event
from agentstream.schemas.codec import decode_record
from agentstream.schemas.errors import AgentstreamError, RecordLocation
from agentstream.schemas.settings import KafkaSettings

log = logging.getLogger(__name__)


async def committed_offsets(
    settings: KafkaSettings, group_id: str, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """The group's committed offset of each partition (None: nothing committed)."""
    tps = list(partitions)
    admin = AIOKafkaAdminClient(**settings.admin_options())
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(group_id, partitions=tps)
    finally:
        await admin.close()
    result: dict[TopicPartition, int | None] = {}
    for tp in tps:
        meta = found.get(tp)
        result[tp] = meta.offset if meta is not None and meta.offset >= 0 else None
    return result


async def replay(
    settings: KafkaSettings,
    committed: dict[TopicPartition, int | None],
    *,
    window: int,
    timeout_s: float,
) -> AsyncIterator[tuple[TopicPartition, Event]]:
    """The decodable events of ``[committed - window, committed)`` of each partition, in offset
    order per partition. Gives up (logged: the restore is partial) after ``timeout_s``."""
    starts: dict[TopicPartition, int] = {
        tp: c for tp, c in committed.items() if c is not None and c > 0 and window > 0
    }
    if not starts:
        return
    options = settings.consumer_options()
    options["client_id"] = f"{settings.client_id}-tracing-restore"
    reader = AIOKafkaConsumer(group_id=None, **options)
    await reader.start()
    try:
        tps = list(starts)
        reader.assign(tps)
        begins = await reader.beginning_offsets(tps)
        pending: dict[TopicPartition, int] = {}
        for tp, end in starts.items():
            start = max(begins.get(tp, 0), end - window)
            if start < end:
                reader.seek(tp, start)
                pending[tp] = end
        for tp in tps:
            if tp not in pending:
                reader.pause(tp)
        deadline = time.monotonic() + timeout_s
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning(
                    "tracing restore: gave up after %.1f s, %d partitions unread (turns partial)",
                    timeout_s,
                    len(pending),
                )
                return
            batches = await reader.getmany(*pending, timeout_ms=int(min(remaining, 1.0) * 1000))
            for tp, records in batches.items():
                stop = pending.get(tp)
                if stop is None:
                    continue
                for record in records:
                    if record.offset >= stop:
                        break
                    where = RecordLocation(tp.topic, tp.partition, record.offset)
                    try:
                        event = decode_record(record.value, record.headers, where=where)
                    except AgentstreamError:
                        continue  # the live consumer dead-lettered it already
                    yield tp, event
                if await reader.position(tp) >= stop:
                    del pending[tp]
                    reader.pause(tp)
    finally:
        await reader.stop()
