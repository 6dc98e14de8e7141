"""The publisher's small value types and the state its parts share.

* :class:`_Record` — one event on its way through the pipeline;
* :class:`_Lane` — the FIFO of one topic-partition (at most one batch in flight);
* :class:`_Ledger` — which publish indices are finished, for ``flush()``;
* :class:`_SpoolEntry` — a record as written to the disk spool;
* :class:`_PublisherState` — the attributes the caller side (:mod:`.publisher`), the sender
  (:mod:`._lanes`, :mod:`._sender`) and the spool bridge (:mod:`._overflow`) share.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from aiokafka import AIOKafkaProducer

from agentstream.schemas.codec import Encoding
from agentstream.schemas.errors import AgentstreamError
from agentstream.schemas.partitioner import KeyPartitioner
from agentstream.schemas.routing import Routing
from agentstream.schemas.settings import KafkaSettings
from agentstream.schemas.throttle import ThrottledLog

from .metrics import ProducerMetrics
from .spool import Spool, SpoolTicket

if TYPE_CHECKING:
    from ._headers import RecordFactory

log = logging.getLogger("agentstream.producer.publisher")
"""One logger for the whole publisher, whichever module of it logs."""

Redact = Callable[[dict[str, Any]], dict[str, Any]]
Overflow = Literal["drop", "block"]
HeaderFields = tuple[str, str, str, datetime, int, str, str, str]
"""event_id, type, source, timestamp, seq, session_id, agent_id, turn_id, as published."""
Pending = tuple[bytes, HeaderFields, float]
"""What ``publish()`` enqueues: value, header fields, publish time (epoch s). Its publish index
(in :class:`_Ledger`) is given when the sender takes it (:meth:`_Ledger.take`): one append is
then all that makes an event published, so an exception between two steps of ``publish()``
(a KeyboardInterrupt) cannot leave an index no record will ever finish."""

LOG_EVERY_S = 10.0
"""The publisher logs each kind of problem (connects, drops, spooling) at most this often."""


class _Record(msgspec.Struct, gc=False):
    """One event on its way: the encoded record and where it is in the pipeline.

    Not tracked by the garbage collector (``gc=False``; it never takes part in a reference
    cycle), and its headers are a tuple of ``(str, bytes)`` tuples, which the collector stops
    tracking too: tens of thousands of queued records then cost the collector's full passes
    nothing."""

    topic: str
    key: bytes
    value: bytes
    headers: Sequence[tuple[str, bytes]]
    created: float  # wall clock at publish()
    index: int  # publish order in this process; 0 = from an earlier process
    ticket: SpoolTicket | None = None  # set when read back from the spool
    partition: int = -1
    queued: float = 0.0  # monotonic time it entered a lane
    attempts: int = 0


class _SpoolEntry(msgspec.Struct, array_like=True):
    epoch: str
    index: int
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    created: float


_entry_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(_SpoolEntry)


class _Lane:
    """The FIFO of one topic-partition; at most one batch in flight."""

    __slots__ = ("bytes", "inflight", "partition", "queue", "retry_at", "topic")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.queue: deque[_Record] = deque()
        self.inflight: list[_Record] | None = None
        self.bytes = 0
        self.retry_at = 0.0


class _Ledger:
    """Which publish indices are finished, to answer "is everything up to N done?".

    One byte per open index, opened by the sender as it takes published records
    (:meth:`take`); :meth:`finish` says what ``_Lanes._finish`` does inline per batch."""

    def __init__(self) -> None:
        self.base = 1  # every index below base is finished
        self.flags = bytearray()

    def take(self, count: int) -> int:
        """Open ``count`` indices (records taken off the incoming queue); the first's."""
        first = self.base + len(self.flags)
        self.flags.extend(bytes(count))
        return first

    def last(self) -> int:
        """The newest index handed out."""
        return self.base + len(self.flags) - 1

    def finish(self, index: int) -> None:
        if index >= self.base:
            self.flags[index - self.base] = 1

    def advance(self) -> None:
        first_open = self.flags.find(0)
        done = len(self.flags) if first_open == -1 else first_open
        if done:
            del self.flags[:done]
            self.base += done


class _PublisherState:
    """The attributes of a :class:`~agentstream.producer.publisher.KafkaPublisher`, declared
    once for its parts (set in its ``__init__``). Fields marked *shared* are read and written
    by callers and the sender thread and are guarded by ``_lock``; the others belong to the
    sender thread."""

    settings: KafkaSettings
    _producer_options: dict[str, Any]  # producer_kwargs(settings), built once
    instance_id: str
    metrics: ProducerMetrics
    _epoch: str  # tells this process's spool records from older ones
    _routing: Routing
    _encoding: Encoding
    _max_record_bytes: int
    _overflow: Overflow
    _block_timeout: float
    _max_queue: int
    _spool_after: float
    _linger: float
    _batch_bytes: int
    _redact: Redact | None
    _spool: Spool | None
    _inherited: int  # shared: events left in the spool by an earlier process, not yet done
    _warn: ThrottledLog  # a line per kind at most every LOG_EVERY_S
    _error: ThrottledLog

    _lock: threading.Lock
    _cond: threading.Condition
    _incoming: deque[Pending]  # shared: published, not yet taken by the sender
    _in_memory: int  # shared
    _in_memory_bytes: int  # shared
    _max_queue_bytes: int
    _seq: int  # shared
    _ledger: _Ledger  # shared
    _stopped: threading.Event  # set by the sender thread as its last act
    _idle: bool  # shared: the sender sleeps long and wants a wake-up for new events
    _flushing: int  # shared
    _closed: bool  # shared
    _fatal: AgentstreamError | None  # shared

    _thread: threading.Thread
    _loop: asyncio.AbstractEventLoop | None
    _kick: asyncio.Event | None
    _producer: AIOKafkaProducer | None
    _connected: bool | None  # None until the first attempt finishes
    _partitioner: KeyPartitioner
    _factory: RecordFactory
    _lanes: dict[tuple[str, int], _Lane]
    _unrouted: deque[_Record]
    _held: deque[_Record]  # waiting for room in a full spool
    _spooling: bool
    _metadata_wanted: set[str]
    _counts: dict[str, int | None]
    _tasks: set[asyncio.Task[None]]
    _stopping: bool
    _starting: bool  # the sender awaits aiokafka's producer start()
