"""What a handler gets besides the event: where the record came from."""

from __future__ import annotations

import msgspec
from aiokafka.structs import TopicPartition

from agentstream.schemas import Event, RecordLocation


class Record(msgspec.Struct, frozen=True):
    """One consumed record, decoded (immutable)."""

    event: Event
    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...]

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    @property
    def location(self) -> RecordLocation:
        return RecordLocation(self.topic, self.partition, self.offset)
