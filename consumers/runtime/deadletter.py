"""Dead-letter records: the original record plus error headers.

The headers follow Kafka Connect's ``__connect.errors.*`` convention under our own prefix,
``agentstream.errors.``: where the record came from, which service and handler gave up,
the exception, when, after how many attempts and why. The original key, value and headers
are kept as they were, so ``agentstream dlq replay`` can send the record back unchanged.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agentstream.schemas.errors import BatchDeadLetter

from .record import Record

ERROR_PREFIX = "agentstream.errors."
REPLAYED_FROM = "agentstream.replayed.from"
REPLAYED_FOR = "agentstream.replayed.for"
"""First header of a record ``agentstream dlq replay`` sent back: the consumer group that
dead-lettered it. Only that group handles the record; every other group skips it (it had
handled the original already), so a replay never counts an event twice elsewhere."""
STACKTRACE_LIMIT = 8_192
MESSAGE_LIMIT = 2_048

H_TOPIC = ERROR_PREFIX + "topic"
H_PARTITION = ERROR_PREFIX + "partition"
H_OFFSET = ERROR_PREFIX + "offset"
H_SERVICE = ERROR_PREFIX + "service"
H_GROUP = ERROR_PREFIX + "group.id"
H_HANDLER = ERROR_PREFIX + "handler"
H_CLASS = ERROR_PREFIX + "exception.class.name"
H_MESSAGE = ERROR_PREFIX + "exception.message"
H_STACKTRACE = ERROR_PREFIX + "exception.stacktrace"
H_TIMESTAMP = ERROR_PREFIX + "timestamp"
H_ATTEMPTS = ERROR_PREFIX + "attempts"
H_REASON = ERROR_PREFIX + "reason"
H_VALUE_DROPPED = ERROR_PREFIX + "value.dropped"
"""Set (to the value's size in bytes) on a dead letter sent without its value: with it, it was
larger than a request may be (a record the topic took compressed). The original stays on its
topic, where the other error headers say."""


REASON_UNDECODABLE = "undecodable"
REASON_RETRIES_EXHAUSTED = "retries exhausted"

DECODE_HANDLER = "<decode>"
"""The handler name in dead letters of records that could not be decoded."""


def addressed(headers: Iterable[tuple[str, bytes]], group: str | None) -> list[tuple[str, bytes]]:
    """``headers`` of a replay for consumer ``group`` (:data:`REPLAYED_FOR` first, any older
    one dropped), or for every group without one."""
    kept = [(name, value) for name, value in headers if name != REPLAYED_FOR]
    return [(REPLAYED_FOR, group.encode()), *kept] if group else kept


def replay_target(headers: Any) -> str | None:
    """The consumer group a replay is addressed to, or None."""
    if headers and headers[0][0] == REPLAYED_FOR:
        return str(headers[0][1].decode("utf-8", "replace"))
    return None


def replayed_for_another(headers: Any, group: bytes) -> bool:
    """Whether a record is a replay addressed to a group other than ``group`` (the partition
    worker's hot loop inlines this test)."""
    return bool(headers) and headers[0][0] == REPLAYED_FOR and headers[0][1] != group


@dataclass(frozen=True)
class Failure:
    """Why one handler gave up on a record."""

    handler: str
    reason: str
    error: BaseException | None
    attempts: int

    @property
    def per_record(self) -> bool:
        """Whether the handler named the records it refuses (:class:`BatchDeadLetter`)."""
        return isinstance(self.error, BatchDeadLetter)

    def unknown_offsets(self, records: Iterable[Record]) -> set[int]:
        """Offsets a :class:`BatchDeadLetter` names that are not among ``records``."""
        if not isinstance(self.error, BatchDeadLetter):
            return set()
        return set(self.error.reasons) - {r.offset for r in records}

    def for_offset(self, offset: int) -> Failure | None:
        """This failure as it concerns the record at ``offset``: a :class:`BatchDeadLetter`
        names the records it refuses (None: that record is done), any other failure
        concerns every record."""
        if not isinstance(self.error, BatchDeadLetter):
            return self
        reason = self.error.reasons.get(offset)
        if reason is None:
            return None
        return Failure(self.handler, reason or "refused by the handler", self.error, self.attempts)


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - 20] + f"... [{len(text) - limit + 20} more]"


def error_headers(
    *,
    topic: str,
    partition: int,
    offset: int,
    service: str,
    group_id: str,
    failure: Failure,
    now_ms: int | None = None,
) -> list[tuple[str, bytes]]:
    error = failure.error
    if error is not None:
        cls = type(error)
        class_name = f"{cls.__module__}.{cls.__qualname__}"
        message = str(error)
        trace = "".join(traceback.format_exception(error))
    else:
        class_name = message = trace = ""
    values = [
        (H_TOPIC, topic),
        (H_PARTITION, str(partition)),
        (H_OFFSET, str(offset)),
        (H_SERVICE, service),
        (H_GROUP, group_id),
        (H_HANDLER, failure.handler),
        (H_CLASS, class_name),
        (H_MESSAGE, _truncate(message, MESSAGE_LIMIT)),
        (H_STACKTRACE, _truncate(trace, STACKTRACE_LIMIT)),
        (H_TIMESTAMP, str(now_ms if now_ms is not None else int(time.time() * 1000))),
        (H_ATTEMPTS, str(failure.attempts)),
        (H_REASON, _truncate(failure.reason, MESSAGE_LIMIT)),
    ]
    return [(name, value.encode("utf-8", "replace")) for name, value in values]


def original_headers(headers: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """``headers`` without error headers (a replayed record failing again gets fresh ones)."""
    return [(k, v) for k, v in headers if not k.startswith(ERROR_PREFIX)]
