"""The error hierarchy shared by producers, consumers and services.

Like aiokafka's: one base class, :class:`AgentstreamError`, whose ``retriable`` flag
tells callers whether trying the same thing again can succeed. Messages say what was
expected, what came, and where (topic, partition, offset) when the error concerns a
record read from Kafka.

Control-flow exceptions let a consumer handler steer the runtime: :class:`SkipEvent` (the
record is done, nothing to retry), :class:`DeadLetter` (send the record to the dead-letter
topic now, without retries) and, from a batch handler, :class:`BatchDeadLetter` (send only
these records of the batch to the dead-letter topic; the others are done).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

import msgspec


class RecordLocation(msgspec.Struct, frozen=True):
    """Where a record came from, for error messages and dead-letter headers (a Struct: a
    batch handler may build one per record, six times cheaper than a frozen dataclass)."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class AgentstreamError(Exception):
    """Base class of every error agentstream raises on purpose."""

    retriable: bool = False

    def __init__(self, message: str, *, where: RecordLocation | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(f"{message} (at {where})" if where is not None else message)

    def at(self, where: RecordLocation) -> Self:
        """Return a copy of this error that names where the record came from."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        AgentstreamError.__init__(clone, self.message, where=where)
        return clone


def describe(exc: BaseException) -> str:
    """``"ClassName: message"`` for an error, once: aiokafka's errors already start their text
    with the class name, where Python's own (``OSError``, ``ValueError``) do not."""
    name = type(exc).__name__
    text = str(exc)
    if text.startswith("[Error ") and f"] {name}" in text:  # aiokafka: "[Error 2] Name: ..."
        text = text.split("] ", 1)[1]
    if text == name or text.startswith(f"{name}: "):
        return text
    return f"{name}: {text}" if text else name


class ConfigurationError(AgentstreamError):
    """A setting or argument cannot work (wrong value, missing dependency)."""


class BrokerUnavailableError(AgentstreamError):
    """The Kafka cluster did not answer in time."""

    retriable = True


# --- wire format -------------------------------------------------------------------------


class DecodeError(AgentstreamError):
    """A record's bytes could not be turned into an :class:`~agentstream.schemas.Event`."""


class MalformedRecordError(DecodeError):
    """The bytes are not a valid encoding (bad JSON or MessagePack, not an object, ...)."""


class UnknownContentTypeError(DecodeError):
    """The record's ``content-type`` header names an encoding agentstream does not speak."""


class EventTypeError(DecodeError):
    """The type tag is malformed, unknown (strict decoding) or disagrees with the headers."""


class PayloadValidationError(DecodeError):
    """The envelope or the ``data`` of a known type does not match its schema."""


class RecordTooLargeError(AgentstreamError):
    """An encoded event is larger than the configured maximum record size."""


# --- handler control flow ----------------------------------------------------------------


class SkipEvent(Exception):
    """Raised by a handler: this event is done, do not retry or dead-letter it."""


class DeadLetter(Exception):
    """Raised by a handler: send this record to the dead-letter topic now, without retries."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class BatchDeadLetter(Exception):
    """Raised by a batch handler once it has dealt with every other record of the batch
    (committed them to its store): send the records at these offsets to the dead-letter
    topic now, each with its reason, without retries; the rest of the batch is done.

    ``reasons`` maps a record's offset (in the batch's partition) to why it was refused.
    """

    def __init__(self, reasons: Mapping[int, str]) -> None:
        self.reasons: dict[int, str] = dict(reasons)
        shown = ", ".join(f"@{o}: {r}" for o, r in sorted(self.reasons.items())[:5])
        more = f" (+{len(self.reasons) - 5} more)" if len(self.reasons) > 5 else ""
        super().__init__(f"{len(self.reasons)} records refused: {shown}{more}")
