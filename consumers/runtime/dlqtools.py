"""Inspecting and replaying dead letters (``agentstream dlq``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.structs import TopicPartition

from agentstream.schemas import header
from agentstream.schemas.admin import start_client
from agentstream.schemas.settings import KafkaSettings

from .deadletter import (
    H_GROUP,
    H_HANDLER,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_SERVICE,
    H_TOPIC,
    H_VALUE_DROPPED,
    REPLAYED_FROM,
    addressed,
    original_headers,
)
from .reader import read_topics
from .replay import Window, read_windows

log = logging.getLogger("agentstream.consumers.runtime")


def _text(headers: Any, name: str) -> str:
    value = header(headers, name)
    return value.decode("utf-8", "replace") if value is not None else ""


@dataclass(frozen=True)
class DeadLetterInfo:
    """One dead letter, as ``dlq list`` shows it."""

    partition: int
    offset: int
    timestamp_ms: int
    service: str
    group_id: str
    handler: str
    reason: str
    topic: str
    original_partition: int
    original_offset: int
    type: str
    record: Any

    @classmethod
    def of(cls, record: Any) -> DeadLetterInfo:
        h = record.headers
        return cls(
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            service=_text(h, H_SERVICE),
            group_id=_text(h, H_GROUP),
            handler=_text(h, H_HANDLER),
            reason=_text(h, H_REASON),
            topic=_text(h, H_TOPIC),
            original_partition=_int(h, H_PARTITION),
            original_offset=_int(h, H_OFFSET),
            type=_text(h, "ce_type") or "?",
            record=record,
        )

    @property
    def is_dead_letter(self) -> bool:
        """Whether the record says where it came from (the DLQ may hold what another
        producer wrote there)."""
        return bool(self.topic)

    def unreplayable(self) -> str | None:
        """Why this letter cannot be sent back, or None."""
        if not self.is_dead_letter:
            return "no origin (not a dead letter agentstream wrote)"
        dropped = _text(self.record.headers, H_VALUE_DROPPED)
        if dropped:
            return (
                f"sent without its value ({dropped} bytes, too large for the dead-letter "
                f"topic): the original is at {self.topic}[{self.original_partition}]@"
                f"{self.original_offset}"
            )
        return None

    @property
    def ref(self) -> str:
        """How ``dlq show``/``replay --offset`` name it: ``partition:offset``."""
        return f"{self.partition}:{self.offset}"

    def line(self) -> str:
        when = datetime.fromtimestamp(self.timestamp_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        origin = f"{self.topic}[{self.original_partition}]@{self.original_offset}"
        if not self.is_dead_letter:
            origin = "(no origin: not a dead letter agentstream wrote)"
        fields = (self.ref, when, self.service, self.handler, self.type, origin, self.reason)
        return "\t".join(fields)


def _int(headers: Any, name: str) -> int:
    """A header's integer, or -1 when absent or not one (another producer wrote the DLQ)."""
    text = _text(headers, name)
    try:
        return int(text) if text else -1
    except ValueError:
        return -1


async def dead_letters(
    settings: KafkaSettings, *, service: str | None = None
) -> AsyncGenerator[DeadLetterInfo, None]:
    """Every dead letter (of ``service``, if given) up to the end the DLQ had when the read
    began, as it is read: a DLQ of millions is never held in memory."""
    records = read_topics(settings, [settings.routing().dlq], start="beginning", follow=False)
    async with contextlib.aclosing(records):
        async for record in records:
            info = DeadLetterInfo.of(record)
            if service is None or info.service == service:
                yield info


async def dead_letter_at(
    settings: KafkaSettings, partition: int, offset: int
) -> DeadLetterInfo | None:
    """The dead letter at ``partition:offset`` of the DLQ, read there directly; None when no
    record has that offset (past the end, or gone with retention). A partition the DLQ does
    not have is a :class:`ConfigurationError`."""
    tp = TopicPartition(settings.routing().dlq, partition)
    records = read_windows(settings, {tp: Window(offset, offset + 1)}, name="dlq")
    async with contextlib.aclosing(records):
        async for record in records:
            if record.offset == offset:
                return DeadLetterInfo.of(record)
    return None


def replay_headers(info: DeadLetterInfo, dlq_topic: str) -> list[tuple[str, bytes]]:
    """The original headers, without error headers, plus where the replay came from and,
    first, the group it is for (the one that dead-lettered it; see :data:`REPLAYED_FOR`)."""
    kept = [(k, v) for k, v in original_headers(info.record.headers) if k != REPLAYED_FROM]
    source = (REPLAYED_FROM, f"{dlq_topic}[{info.partition}]@{info.offset}".encode())
    return addressed([*kept, source], info.group_id or None)


async def replay(
    settings: KafkaSettings, letters: AsyncIterable[DeadLetterInfo] | Iterable[DeadLetterInfo]
) -> AsyncGenerator[tuple[DeadLetterInfo, int, int], None]:
    """Send each dead letter's original key, value and headers back to its topic, one at a
    time, as ``letters`` come; yields ``(letter, partition, offset)`` of each record once
    acknowledged, so a caller can tell how far a replay that failed got."""
    producer = AIOKafkaProducer(**settings.producer_options())
    await start_client(producer, settings.client_options())
    try:
        dlq = settings.routing().dlq
        async for info in _each(letters):
            why = info.unreplayable()
            if why is not None:
                log.warning("dlq %s: not replayed: %s", info.ref, why)
                continue
            meta = await producer.send_and_wait(
                info.topic,
                info.record.value,
                key=info.record.key,
                headers=replay_headers(info, dlq),
                timestamp_ms=info.timestamp_ms if info.timestamp_ms >= 0 else None,  # original's
            )
            yield info, meta.partition, meta.offset
    finally:
        await producer.stop()


async def _each(
    items: AsyncIterable[DeadLetterInfo] | Iterable[DeadLetterInfo],
) -> AsyncGenerator[DeadLetterInfo, None]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
