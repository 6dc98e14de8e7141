"""What a handler gets besides the event: where the record came from."""

from __future__ import annotations

import msgspec
from aiokafka.structs import TopicPartition

from agentstream.schemas import Event, RecordLocation, header
from agentstream.schemas.codec import Encoding, encoding_of


class Record(msgspec.Struct, frozen=True):
    """One consumed record, decoded (immutable). ``value`` is the record's bytes as they came
    (in :attr:`encoding`): what the envelope holds beyond this version's ``Event`` fields (a
    newer producer's) is only there."""

    event: Event
    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...]
    value: bytes = b""

    @property
    def encoding(self) -> Encoding:
        """The wire format of :attr:`value`, from the ``content-type`` header (JSON without)."""
        return encoding_of(header(self.headers, "content-type"), where=self.location)

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    @property
    def location(self) -> RecordLocation:
        return RecordLocation(self.topic, self.partition, self.offset)
