"""The Kafka path of the producer: one :class:`KafkaPublisher` per process.

``publish()`` runs on the caller's thread and only stamps, redacts, encodes and enqueues; a
background thread runs its own asyncio loop with an aiokafka producer and does the rest:

* **Partitioning** — key = :func:`~agentstream.schemas.codec.record_key` (the session), partition
  = Kafka's default partitioner (:mod:`.partitioner`), passed explicitly to aiokafka, so Java and
  librdkafka producers put a session on the same partition.
* **Lanes** — one FIFO per topic-partition with at most one batch in flight. A batch that fails
  with a retriable error goes back to the head of its lane, so later events of that partition
  never overtake it: per-session order holds across retries. Batches are built with aiokafka's
  batch API (``create_batch``/``send_batch``), ``linger_ms`` and ``max_batch_size`` apply per lane.
* **Spool** — with ``spool_dir``, events overflow to disk (:mod:`.spool`) when the broker cannot
  be reached, when an event has waited ``spool_after_ms`` without being acknowledged (a slow or
  dead broker), or when half of ``max_queue_events`` is in use. From then on every new event goes
  to the spool, behind the ones already there; once the broker acknowledges again the spool is
  read back in order, and publishing goes direct again when the spool is empty. A process that
  finds a spool left by an earlier one delivers it first.
* **Overflow** — memory holds at most ``max_queue_events`` events. When it is full (and the spool
  is full or absent), ``overflow="drop"`` drops the new event, ``overflow="block"`` makes
  ``publish()`` wait up to ``block_timeout_ms`` for room and then drops it; either way the event
  is counted in ``agentstream_producer_events_dropped_total{reason}`` and logged (rate-limited).

Delivery is at-least-once for spooled events (one read but not acknowledged before a crash is
sent again) and for events in flight when the process closes during an outage (they are
spooled). Events still only in memory when the process is killed are lost: the window is
bounded by ``spool_after_ms``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerClosed,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
    UnknownError,
    UnsupportedVersionError,
)
from prometheus_client import CollectorRegistry

from agentstream.schemas.codec import encode_event, event_headers, record_key
from agentstream.schemas.envelope import Event
from agentstream.schemas.errors import AgentstreamError, ConfigurationError, RecordTooLargeError
from agentstream.schemas.ids import new_instance_id
from agentstream.schemas.settings import KafkaSettings

from .metrics import ProducerMetrics, ProducerStats
from .partitioner import KeyPartitioner
from .spool import FsyncPolicy, Spool, SpoolTicket

__all__ = ["KafkaPublisher", "producer_kwargs"]

log = logging.getLogger(__name__)

Redact = Callable[[dict[str, Any]], dict[str, Any]]
Overflow = Literal["drop", "block"]

_TICK = 0.1
_MAX_CONNECT_BACKOFF = 5.0
_LOG_EVERY = 10.0
_MAX_ATTEMPTS_UNKNOWN_ERROR = 5
"""A batch failing with an error that is neither known-retriable nor known-permanent (such as
the embedded broker's UNKNOWN while it restarts) is retried this many times, then failed."""
_PERMANENT_ERRORS = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    UnsupportedVersionError,
    ProducerClosed,
)


def producer_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments of the ``AIOKafkaProducer`` the publisher runs (all from settings:
    connection, PLAINTEXT/SSL/SASL_PLAINTEXT/SASL_SSL with PLAIN or SCRAM, acks, compression,
    batch size, idempotence)."""
    return settings.producer_options()


class _Record:
    """One event on its way: the encoded record and where it is in the pipeline."""

    __slots__ = (
        "attempts",
        "created",
        "headers",
        "index",
        "key",
        "partition",
        "queued",
        "ticket",
        "topic",
        "value",
    )

    def __init__(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]],
        created: float,
        index: int,
        ticket: SpoolTicket | None = None,
    ) -> None:
        self.topic = topic
        self.key = key
        self.value = value
        self.headers = headers
        self.created = created  # wall clock at publish()
        self.index = index  # publish order in this process; 0 = from an earlier process
        self.ticket = ticket  # set when read back from the spool
        self.partition = -1
        self.queued = 0.0  # monotonic time it entered a lane
        self.attempts = 0


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
    """Which publish indices are finished, to answer "is everything up to N done?"."""

    def __init__(self) -> None:
        self.base = 1  # every index below base is finished
        self.flags = bytearray()

    def add(self) -> int:
        self.flags.append(0)
        return self.base + len(self.flags) - 1

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


class _RateLimitedLog:
    def __init__(self, level: int) -> None:
        self.level = level
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, key: str, message: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -_LOG_EVERY) < _LOG_EVERY:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += f" ({suppressed} similar messages suppressed)"
        log.log(self.level, message, *args, exc_info=exc_info)


class KafkaPublisher:
    """One per process, shared by EventBus and AuditEmitter. Owns a background thread running
    its own asyncio loop with an aiokafka producer, so ``publish()`` works from any thread, with
    or without a running loop. See the module docstring for ordering, spool and overflow."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        spool_dir: str | Path | None = None,
        spool_max_bytes: int = 256 * 2**20,
        overflow: Overflow = "drop",
        block_timeout_ms: int = 1_000,
        fsync: FsyncPolicy = "interval",
        max_queue_events: int = 100_000,
        registry: CollectorRegistry | None = None,
        redact: Redact | Literal["default"] | None = "default",
        instance_id: str | None = None,
        spool_after_ms: int = 1_000,
    ) -> None:
        if overflow not in ("drop", "block"):
            raise ConfigurationError(f"expected overflow 'drop' or 'block', got {overflow!r}")
        if fsync not in ("always", "interval", "never"):
            raise ConfigurationError(
                f"expected fsync 'always', 'interval' or 'never', got {fsync!r}"
            )
        if max_queue_events < 1:
            raise ConfigurationError(f"expected max_queue_events >= 1, got {max_queue_events}")
        self.settings = settings
        self.instance_id = instance_id or new_instance_id()
        self._epoch = new_instance_id()  # tells this process's spool records from older ones
        self._routing = settings.routing()
        self._encoding = settings.encoding
        self._max_record_bytes = settings.max_request_size
        self._overflow = overflow
        self._block_timeout = block_timeout_ms / 1000
        self._max_queue = max_queue_events
        self._spool_after = spool_after_ms / 1000
        self._linger = settings.linger_ms / 1000
        self._batch_bytes = settings.max_batch_size
        if redact == "default":
            from .redact import DEFAULT_REDACTOR

            self._redact: Redact | None = DEFAULT_REDACTOR
        else:
            self._redact = redact

        self._spool = (
            Spool(spool_dir, max_bytes=spool_max_bytes, fsync=fsync)
            if spool_dir is not None
            else None
        )
        self._inherited = self._spool.unread if self._spool is not None else 0
        self.metrics = ProducerMetrics(
            registry,
            in_memory=lambda: self._in_memory,
            spool_pending=lambda: self._spool.unread if self._spool is not None else 0,
            spool_bytes=lambda: self._spool.size_bytes if self._spool is not None else 0,
            spool_corrupt=lambda: self._spool.corrupt if self._spool is not None else 0,
        )
        self._warn = _RateLimitedLog(logging.WARNING)
        self._error = _RateLimitedLog(logging.ERROR)

        # Shared between callers and the sender thread, guarded by _cond.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._incoming: deque[_Record] = deque()
        self._in_memory = 0
        self._seq = 0
        self._ledger = _Ledger()
        self._idle = False  # the sender sleeps long and wants a wake-up for new events
        self._flushing = 0
        self._closed = False
        self._fatal: AgentstreamError | None = None

        # Sender-thread state.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick: asyncio.Event | None = None
        self._producer: AIOKafkaProducer | None = None
        self._connected: bool | None = None  # None until the first attempt finishes
        self._partitioner = KeyPartitioner()
        self._lanes: dict[tuple[str, int], _Lane] = {}
        self._unrouted: deque[_Record] = deque()
        self._held: deque[_Record] = deque()  # waiting for room in a full spool
        self._spooling = self._spool is not None and self._spool.unread > 0
        self._metadata_wanted: set[str] = set()
        self._counts: dict[str, int | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._thread_main,
            args=(ready,),
            name=f"agentstream-publisher-{self.instance_id[:8]}",
            daemon=True,
        )
        self._thread.start()
        ready.wait()
        atexit.register(self._close_at_exit)

    # === caller side ===========================================================================

    def publish(self, event: Event) -> None:
        """Stamp, redact, encode and enqueue ``event``; never waits on the network.

        Thread-safe. Stamps ``event.source`` (when empty) with :attr:`instance_id` and
        ``event.seq`` with this publisher's next sequence number. An event that cannot be
        encoded or is larger than ``max_request_size`` is dropped, counted and logged, never
        raised: telemetry must not break the agent. Raises only after a fatal configuration
        error (for example ``enable_idempotence`` on a broker without InitProducerId).
        """
        with self._lock:
            if self._fatal is not None:
                raise self._fatal
            self.metrics.emitted += 1
            if self._closed:
                self._drop(event, "closed")
                return
            if self._in_memory >= self._max_queue and not self._make_room():
                return
            self._seq += 1
            event.seq = self._seq
            if not event.source:
                event.source = self.instance_id
            try:
                wire = self._redacted(event)
                value = encode_event(wire, self._encoding, max_bytes=self._max_record_bytes)
            except RecordTooLargeError as exc:
                self._drop(event, "too_large", str(exc))
                return
            except Exception as exc:
                self._drop(event, "unencodable", repr(exc))
                return
            record = _Record(
                self._routing.topic_for(event.type),
                record_key(event) or b"",
                value,
                event_headers(wire, self._encoding),
                time.time(),
                self._ledger.add(),
            )
            self._incoming.append(record)
            self._in_memory += 1
            if self._idle:  # otherwise the sender picks it up within linger_ms
                self._idle = False
                self._wake()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event published so far (and any left in the spool by an earlier
        process) is acknowledged, or given up for good (failed or dropped: counted and logged),
        as Kafka's ``flush()`` does; False when ``timeout`` seconds pass first. Any thread."""
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError("flush() cannot run on the publisher's own thread")
        with self._lock:
            target = self._ledger.last()
            if self._closed and not self._thread.is_alive():  # nothing will move any more
                return self._ledger.base > target and self._inherited <= 0
            self._flushing += 1
            self._wake()
            try:
                done = self._cond.wait_for(
                    lambda: (
                        self._fatal is not None
                        or (self._ledger.base > target and self._inherited <= 0)
                    ),
                    timeout,
                )
            finally:
                self._flushing -= 1
            if self._fatal is not None:
                raise self._fatal
            return done

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to ``timeout``), then stop the thread. Idempotent. Events still undelivered
        go to the spool when there is one; without a spool they are counted as dropped."""
        with self._lock:
            if self._closed:
                return
        with contextlib.suppress(AgentstreamError):
            if not self.flush(timeout):
                log.warning(
                    "close(): not every event was acknowledged within %s s; %s",
                    timeout,
                    "the rest stays in the spool for the next process"
                    if self._spool is not None
                    else "the rest is dropped (no spool_dir configured)",
                )
        with self._lock:
            self._closed = True
            self._stopping = True
            self._wake()
        self._thread.join()
        atexit.unregister(self._close_at_exit)

    def stats(self) -> ProducerStats:
        """Counters and queue sizes right now (the same numbers the metrics export)."""
        return self.metrics.snapshot()

    @property
    def last_error(self) -> str | None:
        """The last connection or delivery error, in words (None when all went well)."""
        return self.metrics.last_error

    def _close_at_exit(self) -> None:
        self.close(timeout=5.0)

    def _redacted(self, event: Event) -> Event:
        if self._redact is None or not event.data:
            return event
        data = self._redact(event.data)
        if data is event.data:
            return event
        return msgspec.structs.replace(event, data=data)

    def _make_room(self) -> bool:
        """Memory is full: apply the overflow policy. Called with the lock held."""
        reason = "spool_full" if self._spool is not None else "queue_full"
        on_own_thread = threading.get_ident() == self._thread.ident
        if self._overflow == "block" and self._block_timeout > 0 and not on_own_thread:
            self._wake()
            room = self._cond.wait_for(
                lambda: self._in_memory < self._max_queue or self._closed, self._block_timeout
            )
            if room and not self._closed:
                return True
            reason = "block_timeout"
        self.metrics.drop(reason)
        self._warn(
            "drop:" + reason,
            "publisher memory full (%d events, max_queue_events=%d%s): dropped the newest "
            "event (overflow=%s, reason=%s)",
            self._in_memory,
            self._max_queue,
            ", spool full" if self._spool is not None else ", no spool_dir",
            self._overflow,
            reason,
        )
        return False

    def _drop(self, event: Event, reason: str, detail: str = "") -> None:
        self.metrics.drop(reason)
        self._warn(
            "drop:" + reason,
            "dropped event %s of type %r (session %r): %s%s",
            event.event_id,
            event.type,
            event.session_id,
            reason,
            f": {detail}" if detail else "",
        )

    def _wake(self) -> None:
        loop, kick = self._loop, self._kick
        if loop is not None and kick is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(kick.set)

    # === sender thread =========================================================================

    def _thread_main(self, ready: threading.Event) -> None:
        asyncio.run(self._main(ready))

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._kick = kick = asyncio.Event()
        ready.set()
        connector = asyncio.create_task(self._connect())
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(kick.wait(), self._next_wait())
                kick.clear()
                try:
                    self._step()
                except Exception:  # a bug must not stop delivery for good: log, go on
                    self._error("step", "publisher sender step failed", exc_info=True)
                if self._stopping:
                    break
                if self._fatal is not None:
                    await asyncio.sleep(_TICK)
        finally:
            connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connector
            await self._shutdown()

    async def _connect(self) -> None:
        backoff = self.settings.retry_backoff_ms / 1000
        while not self._stopping:
            producer = AIOKafkaProducer(**producer_kwargs(self.settings))
            try:
                await producer.start()
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                if self._is_init_pid_failure(exc):
                    self._set_fatal(
                        ConfigurationError(
                            "enable_idempotence=True, but the broker at "
                            f"{self.settings.bootstrap_servers} rejected InitProducerId "
                            f"({type(exc).__name__}: {exc}); an idempotent producer needs a broker "
                            "that supports it (Apache Kafka does, the embedded broker does not). "
                            "Set AGENTSTREAM_ENABLE_IDEMPOTENCE=false or use such a broker."
                        )
                    )
                    return
                message = await self._describe_connect_failure(exc)
                self.metrics.last_error = message
                self._connected = False
                self._error("connect", "%s; retrying in %.1f s", message, backoff)
                self._kick_now()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_CONNECT_BACKOFF)
                continue
            self._producer = producer
            self._connected = True
            log.info("publisher connected to %s", self.settings.bootstrap_servers)
            self._kick_now()
            return

    def _is_init_pid_failure(self, exc: BaseException) -> bool:
        """aiokafka's start() asks for a producer id when idempotence is on; these are the
        answers of a broker that cannot give one (the embedded broker says UNKNOWN)."""
        return self.settings.enable_idempotence and isinstance(
            exc, UnknownError | UnsupportedVersionError | ClusterAuthorizationFailedError
        )

    async def _describe_connect_failure(self, exc: BaseException) -> str:
        servers = self.settings.bootstrap_servers
        protocol = self.settings.security_protocol
        text = f"cannot connect to Kafka at {servers} ({protocol}): {type(exc).__name__}: {exc}"
        context = self.settings.ssl_context()
        if context is None:
            return text
        host, _, port = servers.split(",")[0].strip().rpartition(":")
        try:  # aiokafka hides the TLS error behind "Unable to bootstrap": find it
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port), ssl=context, server_hostname=host), 5
            )
            writer.close()
        except Exception as tls:
            text += (
                f"; the TLS handshake with {host}:{port} failed: {tls} — check ssl_cafile "
                f"(AGENTSTREAM_SSL_CAFILE={self.settings.ssl_cafile}) and ssl_check_hostname"
            )
        return text

    def _set_fatal(self, error: AgentstreamError) -> None:
        log.error("%s", error)
        self.metrics.last_error = str(error)
        with self._lock:
            self._fatal = error
            self._cond.notify_all()

    def _kick_now(self) -> None:
        if self._kick is not None:
            self._kick.set()

    def _next_wait(self) -> float:
        if self._stopping:
            return 0
        busy = max(self._linger, 0.001)
        if self._connected:
            for lane in self._lanes.values():
                if lane.queue and lane.inflight is None:
                    return busy
        with self._lock:
            if self._incoming:
                return busy
            self._idle = True
        return _TICK

    # --- one round of work ----------------------------------------------------------------

    def _step(self) -> None:
        with self._lock:
            records, self._incoming = self._incoming, deque()
            self._idle = False
            urgent = self._flushing > 0 or self._closed
        now = time.monotonic()
        self._counts = {}
        if self._spool is not None and self._spooling:
            self._held.extend(records)
            self._spool_held()
        else:
            self._route_all(records, now)
        self._route_unrouted(now)
        if self._spool is not None:
            self._check_overflow(now)
            self._feed(now)
        self._dispatch(now, urgent)
        if self._spool is not None:
            self._spool.sync()
            self._spool.commit()

    def _partition_count(self, topic: str) -> int | None:
        if topic in self._counts:
            return self._counts[topic]
        count: int | None = None
        if self._producer is not None:
            partitions = self._producer.client.cluster.partitions_for_topic(topic)
            count = len(partitions) if partitions else None
        if count is None and self._producer is not None and topic not in self._metadata_wanted:
            self._metadata_wanted.add(topic)
            self._spawn(self._fetch_metadata(topic))
        self._counts[topic] = count
        return count

    async def _fetch_metadata(self, topic: str) -> None:
        assert self._producer is not None
        try:
            await asyncio.wait_for(
                self._producer.partitions_for(topic), self.settings.request_timeout_ms / 1000
            )
        except Exception as exc:
            self._warn("metadata:" + topic, "no metadata for topic %r yet: %r", topic, exc)
            await asyncio.sleep(self.settings.retry_backoff_ms / 1000)
        finally:
            self._metadata_wanted.discard(topic)
            self._kick_now()

    def _route_all(self, records: Iterable[_Record], now: float) -> None:
        # _route inlined: this loop runs once per event
        unrouted = self._unrouted
        lanes = self._lanes
        counts = self._counts
        partitioner = self._partitioner
        for record in records:
            if not record.queued:
                record.queued = now
            if unrouted:
                unrouted.append(record)
                continue
            topic = record.topic
            count = counts[topic] if topic in counts else self._partition_count(topic)
            if count is None:
                unrouted.append(record)
                continue
            partition = partitioner(record.key, count) if record.key else 0
            lane = lanes.get((topic, partition))
            if lane is None:
                lane = lanes[(topic, partition)] = _Lane(topic, partition)
            record.partition = partition
            lane.queue.append(record)
            lane.bytes += len(record.value)

    def _route(self, record: _Record, now: float) -> None:
        count = self._partition_count(record.topic)
        if count is None:
            self._unrouted.append(record)
            return
        partition = self._partitioner(record.key, count) if record.key else 0
        lane = self._lanes.get((record.topic, partition))
        if lane is None:
            lane = self._lanes[(record.topic, partition)] = _Lane(record.topic, partition)
        record.partition = partition
        lane.queue.append(record)
        lane.bytes += len(record.value)

    def _route_unrouted(self, now: float) -> None:
        unrouted = self._unrouted
        while unrouted and self._partition_count(unrouted[0].topic) is not None:
            self._route(unrouted.popleft(), now)

    # --- spool ------------------------------------------------------------------------------

    def _check_overflow(self, now: float) -> None:
        """Switch to the spool when the broker is unreachable, slow, or memory fills."""
        if self._spooling:
            return
        reason = None
        if self._connected is False:
            reason = "the broker is unreachable"
        elif self._in_memory > self._max_queue // 2:
            reason = f"{self._in_memory} events are waiting in memory"
        elif self._oldest_wait(now) > self._spool_after:
            reason = f"no acknowledgement for {self._spool_after:.1f} s"
        if reason is None:
            return
        self._warn("spooling", "spooling events to %s: %s", self._spool_dir_name(), reason)
        self._spooling = True
        # Everything not yet sent goes to the spool, oldest first per partition; a batch that
        # was sent (and may be retried) stays at the head of its lane.
        for lane in self._lanes.values():
            queue = lane.queue
            kept: deque[_Record] = deque()
            while queue and queue[0].attempts:
                kept.append(queue.popleft())
            for record in queue:
                lane.bytes -= len(record.value)
            self._held.extend(queue)
            lane.queue = kept
        self._held.extend(self._unrouted)
        self._unrouted.clear()
        self._spool_held()

    def _oldest_wait(self, now: float) -> float:
        oldest = self._unrouted[0].queued if self._unrouted else now
        for lane in self._lanes.values():
            if lane.inflight:
                oldest = min(oldest, lane.inflight[0].queued)
            elif lane.queue:
                oldest = min(oldest, lane.queue[0].queued)
        return now - oldest

    def _spool_held(self) -> None:
        spool = self._spool
        assert spool is not None
        held = self._held
        written = 0
        while held:
            record = held[0]
            entry = _SpoolEntry(
                self._epoch,
                record.index,
                record.topic,
                record.key,
                record.value,
                record.headers,
                record.created,
            )
            payload = _entry_encoder.encode(entry)
            if not spool.append(payload):
                if spool.size_bytes == 0:  # larger than the whole spool: it can never fit
                    held.popleft()
                    self._finish([record])
                    self.metrics.drop("spool_full")
                    self._error(
                        "spool-too-small",
                        "an event of %d bytes does not fit in the spool (spool_max_bytes=%d): "
                        "dropped",
                        len(payload),
                        spool.max_bytes,
                    )
                    continue
                self._warn(
                    "spool-full",
                    "spool %s is full (%d bytes, spool_max_bytes=%d): keeping %d events in memory",
                    self._spool_dir_name(),
                    spool.size_bytes,
                    spool.max_bytes,
                    len(held),
                )
                break
            held.popleft()
            if record.ticket is not None:  # it was read from the spool: its copy replaces it
                spool.ack(record.ticket)
            written += 1
        if written:
            with self._lock:
                self._in_memory -= written
                self.metrics.spooled += written
                self._cond.notify_all()

    def _feed(self, now: float) -> None:
        """Read the spool back into the lanes while the broker keeps up."""
        spool = self._spool
        assert spool is not None
        if (
            not self._spooling
            or not self._connected
            or self._unrouted
            or self._oldest_wait(now) > self._spool_after
        ):
            return
        room = max(self._max_queue // 4, 1) - self._in_memory
        if room <= 0:
            return
        entries = spool.read(min(room, 10_000))
        records: list[_Record] = []
        for ticket, payload in entries:
            try:
                entry = _entry_decoder.decode(payload)
            except msgspec.DecodeError as exc:
                spool.ack(ticket)
                self.metrics.drop("spool_corrupt")
                self._error("spool-decode", "unreadable spool record skipped: %s", exc)
                continue
            index = entry.index if entry.epoch == self._epoch else 0
            records.append(
                _Record(
                    entry.topic,
                    entry.key,
                    entry.value,
                    entry.headers,
                    entry.created,
                    index,
                    ticket,
                )
            )
        if records:
            with self._lock:
                self._in_memory += len(records)
            self._route_all(records, now)
        if not entries:
            # The spool is read to the end: what waited for room comes next, then direct mode.
            held, self._held = self._held, deque()
            self._route_all(held, now)
            self._spooling = False
            log.info("spool %s drained; publishing directly again", self._spool_dir_name())

    def _spool_dir_name(self) -> str:
        return str(self._spool.directory) if self._spool is not None else "-"

    # --- sending ----------------------------------------------------------------------------

    def _dispatch(self, now: float, urgent: bool) -> None:
        producer = self._producer
        if producer is None:
            return
        for lane in list(self._lanes.values()):
            if lane.inflight is not None or not lane.queue or lane.retry_at > now:
                continue
            if (
                not urgent
                and lane.bytes < self._batch_bytes
                and now - lane.queue[0].queued < self._linger
            ):
                continue
            count = self._partition_count(lane.topic)
            if count is not None and lane.partition >= count:
                self._reroute(lane, now)  # the topic lost partitions (recreated)
                continue
            batch = producer.create_batch()
            taken: list[_Record] = []
            queue = lane.queue
            size = 0
            while queue:
                record = queue[0]
                if (
                    batch.append(
                        key=record.key,
                        value=record.value,
                        timestamp=int(record.created * 1000),
                        headers=record.headers,
                    )
                    is None
                ):
                    break
                queue.popleft()
                size += len(record.value)
                record.attempts += 1
                taken.append(record)
            if not taken:  # cannot happen: an empty batch takes any single record
                continue
            batch.close()
            lane.bytes -= size
            lane.inflight = taken
            self._spawn(self._send(lane, batch, taken))

    def _reroute(self, lane: _Lane, now: float) -> None:
        records = list(lane.queue)
        lane.queue.clear()
        lane.bytes = 0
        del self._lanes[(lane.topic, lane.partition)]
        for record in records:
            self._route(record, now)

    async def _send(self, lane: _Lane, batch: Any, taken: list[_Record]) -> None:
        assert self._producer is not None
        try:
            future = await self._producer.send_batch(batch, lane.topic, partition=lane.partition)
            await future
        except Exception as exc:
            self._on_failure(lane, taken, exc)
        else:
            self._on_delivered(lane, taken)
        finally:
            self._kick_now()

    def _on_delivered(self, lane: _Lane, taken: list[_Record]) -> None:
        lane.inflight = None
        now = time.time()
        self.metrics.record_delivered(lane.topic, [now - r.created for r in taken])
        self._finish(taken)

    def _on_failure(self, lane: _Lane, taken: list[_Record], exc: BaseException) -> None:
        lane.inflight = None
        where = f"{lane.topic}[{lane.partition}]"
        if _retriable(exc) or (
            not _permanent(exc) and taken[0].attempts < _MAX_ATTEMPTS_UNKNOWN_ERROR
        ):
            self.metrics.last_error = f"sending to {where}: {type(exc).__name__}: {exc}"
            self._warn(
                "retry:" + where,
                "batch of %d events to %s failed (%r); retrying, later events of the partition "
                "wait behind it",
                len(taken),
                where,
                exc,
            )
            lane.queue.extendleft(reversed(taken))
            lane.bytes += sum(len(r.value) for r in taken)
            lane.retry_at = time.monotonic() + self.settings.retry_backoff_ms / 1000
            return
        self.metrics.last_error = f"{where} rejected {len(taken)} events: {exc!r}"
        self._error(
            "failed:" + where,
            "the broker rejected a batch of %d events for %s with a non-retriable error: %r "
            "(counted in agentstream_producer_events_failed_total)",
            len(taken),
            where,
            exc,
        )
        self.metrics.record_failed(lane.topic, len(taken))
        self._finish(taken)

    def _finish(self, records: list[_Record]) -> None:
        spool = self._spool
        inherited = 0
        with self._lock:
            ledger = self._ledger
            flags = ledger.flags
            base = ledger.base
            for record in records:
                index = record.index
                if index >= base:
                    flags[index - base] = 1
                elif not index:
                    inherited += 1
                if record.ticket is not None and spool is not None:
                    spool.ack(record.ticket)
            ledger.advance()
            self._inherited -= inherited
            self._in_memory -= len(records)
            self._cond.notify_all()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- stopping ---------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            # Let batches already handed to aiokafka finish, briefly (the broker may be gone).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 2.0)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        with self._lock:
            leftover_incoming, self._incoming = self._incoming, deque()
        # What is still in memory, oldest first per partition.
        leftover: list[_Record] = []
        for lane in self._lanes.values():
            leftover.extend(lane.inflight or ())
            leftover.extend(lane.queue)
            lane.inflight = None
            lane.queue.clear()
        leftover.extend(self._unrouted)
        self._unrouted.clear()
        if self._spool is not None:
            # Records read from the spool stay there (unacknowledged): the next process reads
            # them again at their place. The others are appended.
            own = [r for r in leftover if r.ticket is None]
            self._held = deque([*own, *self._held, *leftover_incoming])
            self._spool_held()
            lost = len(self._held)
            self._spool.close()
        else:
            lost = len(leftover) + len(leftover_incoming)
        if lost:
            self.metrics.drop("closed", lost)
            log.error("publisher closed with %d events undelivered and not spooled (dropped)", lost)


def _permanent(exc: BaseException) -> bool:
    """Errors that sending the same records again cannot fix."""
    return isinstance(exc, _PERMANENT_ERRORS)


def _retriable(exc: BaseException) -> bool:
    if isinstance(exc, KafkaTimeoutError | KafkaConnectionError | asyncio.TimeoutError):
        return True
    return bool(getattr(exc, "retriable", False))
