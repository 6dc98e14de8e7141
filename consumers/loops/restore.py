"""Rebuilding detector state after an assignment, from Kafka itself.

When the group hands a partition to this process, the records just before the group's
committed offset are read again by a separate, group-less consumer (manual assignment, so it
never joins or disturbs the group) and fed to the detector with alerts suppressed: their
findings were alerted by whoever processed them. Only offsets are used (the group's committed
offsets, the partition's beginning and end), never ``offsets_for_times``, so this works the
same on Apache Kafka and on the embedded broker.

The tail of the alerts topic is read the same way to learn which alerts were published but
whose triggering record was not committed (a crash between the two): they are not published
again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord, TopicPartition

from agentstream.schemas import header
from agentstream.schemas.settings import KafkaSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Window:
    """Offsets ``[start, stop)`` of one partition to read again; ``stop=None``: up to the
    partition's end, judged by a fetch that brings nothing more."""

    start: int
    stop: int | None

    def __bool__(self) -> bool:
        return self.stop is None or self.stop > self.start


async def group_offsets(
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


def _reader(settings: KafkaSettings, name: str) -> AIOKafkaConsumer:
    options = settings.consumer_options()
    options["client_id"] = f"{settings.client_id}-{name}"
    return AIOKafkaConsumer(group_id=None, **options)


async def read_windows(
    settings: KafkaSettings,
    windows: Mapping[TopicPartition, Window],
    *,
    timeout_s: float = 30.0,
) -> AsyncIterator[ConsumerRecord]:
    """Every record of each window, in offset order per partition. Stops at ``timeout_s``
    (logged: the restore is then partial). ``end_offsets`` is not used to bound the reads (the
    embedded broker can understate it).

    A window with a ``stop`` is complete when a record at ``stop - 1`` (or a position at
    ``stop``) was reached; one without, when a whole fetch round brought nothing at all."""
    wanted = {tp: w for tp, w in windows.items() if w}
    if not wanted:
        return
    consumer = _reader(settings, "loops-restore")
    await consumer.start()
    try:
        consumer.assign(list(wanted))
        pending: dict[TopicPartition, int | None] = {}
        for tp, window in wanted.items():
            consumer.seek(tp, window.start)
            pending[tp] = window.stop
        deadline = time.monotonic() + timeout_s
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning(
                    "restore: gave up after %.1f s with %d partitions unread (state partial)",
                    timeout_s,
                    len(pending),
                )
                return
            batches = await consumer.getmany(*pending, timeout_ms=int(min(remaining, 0.5) * 1000))
            for tp, stop in list(pending.items()):
                records = batches.get(tp)
                if records:
                    for record in records:
                        if stop is not None and record.offset >= stop:
                            break
                        yield record
                    done = stop is not None and records[-1].offset + 1 >= stop
                elif stop is None:
                    done = not batches  # an idle round: every partition is at its end
                else:  # a gap up to `stop` (compaction, control records)?
                    done = await consumer.position(tp) >= stop
                if done:
                    del pending[tp]
                    consumer.pause(tp)
    finally:
        await consumer.stop()


async def partitions_of(settings: KafkaSettings, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic`` (none when it does not exist)."""
    admin = AIOKafkaAdminClient(**settings.admin_options())
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(
        TopicPartition(topic, p["partition"])
        for t in described
        if t.get("topic") == topic and not t.get("error_code")
        for p in t.get("partitions", ())
    )


async def recent_ids_from(
    settings: KafkaSettings, topic: str, source: str, window: int, *, timeout_s: float = 10.0
) -> list[str]:
    """``ce_id`` of the last ``window`` records of every partition of ``topic`` published by
    ``source`` (read from the headers, nothing decoded)."""
    if window <= 0:
        return []
    tps = await partitions_of(settings, topic)
    if not tps:
        return []
    probe = _reader(settings, "loops-alerts-probe")
    await probe.start()
    try:
        probe.assign(tps)
        begins = await probe.beginning_offsets(tps)
        ends = await probe.end_offsets(tps)
    finally:
        await probe.stop()
    # The end offset only places the start: the embedded broker can report less than the true
    # end (the last batch's base offset + 1), so reading goes on until nothing more comes.
    windows = {tp: Window(max(begins[tp], ends[tp] - window), None) for tp in tps}
    wanted = source.encode()
    ids = []
    async for record in read_windows(settings, windows, timeout_s=timeout_s):
        if header(record.headers, "ce_source") == wanted:
            event_id = header(record.headers, "ce_id")
            if event_id is not None:
                ids.append(event_id.decode())
    return ids
