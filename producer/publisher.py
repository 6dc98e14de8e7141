"""The Kafka path of the producer: one :class:`KafkaPublisher` per process.

``publish()`` runs on the caller's thread and only stamps, redacts, encodes and enqueues; a
background thread runs its own asyncio loop with an aiokafka producer and does the rest:

The parts: this module is the caller side; :mod:`._sender` runs the background thread,
:mod:`._lanes` routes and batches, :mod:`._overflow` bridges to the disk spool, and
:mod:`._records` holds the small value types.

* **Partitioning** — key = :func:`~agentstream.schemas.codec.record_key` (the session), partition
  = Kafka's default partitioner (:mod:`.partitioner`), passed explicitly to aiokafka, so Java and
  librdkafka producers put a session on the same partition.
* **Lanes** — one FIFO per topic-partition with at most one batch in flight. A batch that fails
  with a retriable error goes back to the head of its lane, so later events of that partition
  never overtake it: per-session order holds across retries. Batches are built with aiokafka's
  batch API (``create_batch``/``send_batch``), ``linger_ms`` and ``max_batch_size`` apply per lane.
* **Spool** — with ``spool_dir``, events overflow to disk (:mod:`.spool`) when the broker cannot
  be reached, when an event has waited ``spool_after_ms`` without being acknowledged (a slow or
  dead broker), or when half of the memory bound is in use. From then on every new event goes
  to the spool, behind the ones already there; once the broker acknowledges again the spool is
  read back in order, and publishing goes direct again when the spool is empty. A process that
  finds a spool left by an earlier one delivers it first.
* **Overflow** — memory holds at most ``max_queue_events`` events and ``max_queue_bytes`` of
  encoded values (plus one record: the one that crossed it), like librdkafka's
  ``queue.buffering.max.messages`` and ``.max.kbytes``. When it is full (and the spool
  is full or absent), ``overflow="drop"`` drops the new event, ``overflow="block"`` makes
  ``publish()`` wait up to ``block_timeout_ms`` for room and then drops it; either way the event
  is counted in ``agentstream_producer_events_dropped_total{reason}`` and logged (rate-limited).

Delivery is at-least-once for spooled events (one read but not acknowledged before a crash is
sent again) and for events in flight when the process closes during an outage (they are
spooled). Events still only in memory when the process is killed are lost: the window is
bounded by ``spool_after_ms``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import Literal

from msgspec.structs import replace
from prometheus_client import CollectorRegistry

from agentstream.schemas.codec import encode_event
from agentstream.schemas.envelope import Event
from agentstream.schemas.errors import (
    AgentstreamError,
    ConfigurationError,
    RecordTooLargeError,
    describe,
)
from agentstream.schemas.ids import new_instance_id
from agentstream.schemas.partitioner import KeyPartitioner
from agentstream.schemas.settings import KafkaSettings
from agentstream.schemas.throttle import ThrottledLog, quiet_client_repeats

from ._digest import ArgumentsDigest
from ._headers import RecordFactory
from ._records import LOG_EVERY_S, Overflow, Redact, _Ledger, log
from ._sender import _Sender, producer_kwargs
from .adapters import encodable_data, mended_envelope
from .metrics import ProducerMetrics, ProducerStats
from .spool import FsyncPolicy, Spool

SENDER_THREAD_PREFIX = "agentstream-publisher-"
"""The sender threads' names start so (and their aiokafka lines' ``threadName``)."""

__all__ = ["KafkaPublisher", "exit_on_sigterm", "producer_kwargs"]


class KafkaPublisher(_Sender):
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
        max_queue_bytes: int = 64 * 2**20,
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
        if max_queue_bytes < 1:
            raise ConfigurationError(f"expected max_queue_bytes >= 1, got {max_queue_bytes}")
        # Built once, here: unreadable TLS files fail the constructor, not the sender later.
        self._producer_options = producer_kwargs(settings)
        self.settings = settings
        self.instance_id = instance_id or new_instance_id()
        self._epoch = new_instance_id()  # tells this process's spool records from older ones
        self._routing = settings.routing()
        self._encoding = settings.encoding
        self._max_record_bytes = settings.max_request_size
        self._overflow = overflow
        self._block_timeout = block_timeout_ms / 1000
        self._max_queue = max_queue_events
        self._max_queue_bytes = max_queue_bytes
        self._spool_after = spool_after_ms / 1000
        self._linger = settings.linger_ms / 1000
        self._batch_bytes = settings.max_batch_size
        if redact == "default":
            from .redact import DEFAULT_REDACTOR

            self._redact = DEFAULT_REDACTOR
        else:
            self._redact = redact
        self._digest = ArgumentsDigest()

        self._spool: Spool | None = None
        self._in_memory = 0  # guarded by _cond, like the fields below; read by the metrics
        self._in_memory_bytes = 0  # the encoded values of those events
        self.metrics = ProducerMetrics(
            registry,
            in_memory=lambda: self._in_memory,
            in_memory_bytes=lambda: self._in_memory_bytes,
            spool_pending=lambda: self._spool.unread if self._spool is not None else 0,
            spool_bytes=lambda: self._spool.size_bytes if self._spool is not None else 0,
            spool_corrupt=lambda: self._spool.corrupt if self._spool is not None else 0,
            spool_write_errors=lambda: self._spool.write_errors if self._spool else 0,
        )
        # Last of what can fail here: a spool opened is a directory locked until close().
        if spool_dir is not None:
            self._spool = Spool(spool_dir, max_bytes=spool_max_bytes, fsync=fsync)
        self._inherited = self._spool.unread if self._spool is not None else 0
        self._warn = ThrottledLog(log, logging.WARNING, interval_s=LOG_EVERY_S)
        self._error = ThrottledLog(log, logging.ERROR, interval_s=LOG_EVERY_S)

        # Shared between callers and the sender thread, guarded by _cond.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._incoming = deque()
        self._seq = 0
        self._ledger = _Ledger()
        self._idle = False  # the sender sleeps long and wants a wake-up for new events
        self._flushing = 0
        self._closed = False
        self._fatal = None

        # Sender-thread state.
        self._loop = None
        self._kick = None
        self._producer = None
        self._connected = None  # None until the first attempt finishes
        self._partitioner = KeyPartitioner()
        self._factory = RecordFactory(self._routing, self._encoding)
        self._lanes = {}
        self._unrouted = deque()
        self._held = deque()  # waiting for room in a full spool
        self._spooling = self._spool is not None and self._spool.unread > 0
        self._metadata_wanted = set()
        self._counts = {}
        self._tasks = set()
        self._stopping = False
        self._starting = False

        # aiokafka logs every reconnect attempt (about 20 ERROR lines a second while the broker
        # is away): repeats from the sender threads are held back, the pod's other clients
        # left alone.
        quiet_client_repeats(thread_prefix=SENDER_THREAD_PREFIX)
        ready = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._thread_main,
            args=(ready,),
            name=f"{SENDER_THREAD_PREFIX}{self.instance_id[:8]}",
            daemon=True,
        )
        self._thread.start()
        ready.wait()
        atexit.register(self._close_at_exit)
        self._pid = os.getpid()
        _LIVE.add(self)

    # === caller side ===========================================================================

    def publish(self, event: Event) -> None:
        """Stamp, redact, encode and enqueue ``event``; never waits on the network.

        Thread-safe. Stamps ``event.source`` (when empty) with :attr:`instance_id` and
        ``event.seq`` with this publisher's next sequence number. Values in ``data`` the
        encoder refuses (a ``Path``, an exception object, a tuple key) are sent as text, with
        a log line; an event larger than ``max_request_size`` is dropped, counted and logged,
        never raised: telemetry must not break the agent. Raises only after a fatal configuration
        error (for example ``enable_idempotence`` on a broker without InitProducerId).
        """
        with self._lock:
            if self._fatal is not None:
                raise self._fatal
            self.metrics.emitted += 1
            if self._closed:
                self._drop(event, "closed")
                return
            if (
                self._in_memory >= self._max_queue or self._in_memory_bytes >= self._max_queue_bytes
            ) and not self._make_room():
                return
            self._seq += 1
            event.seq = seq = self._seq
            source = event.source
            if not source:
                event.source = source = self.instance_id
            data = event.data
            try:
                if self._redact is not None and data:
                    redacted = self._redact(data)
                    if redacted is data:  # nothing redacted (the common case): no copy, no digest
                        wire = event
                    else:
                        redacted = self._digest.digested(event.type, data, redacted)
                        wire = replace(event, data=redacted)
                else:
                    wire = event
                value = encode_event(wire, self._encoding, max_bytes=self._max_record_bytes)
            except RecordTooLargeError as exc:
                self._drop(event, "too_large", str(exc))
                return
            except Exception as exc:  # an object the encoder refuses: sent as plain values
                converted = self._encode_plain(event, exc)
                if converted is None:
                    return
                value, event = converted  # the headers follow the envelope as sent
                source = event.source
            # Headers, key and topic are built on the sender thread from this snapshot.
            fields = (
                event.event_id,
                event.type,
                source,
                event.timestamp,
                seq,
                event.session_id,
                event.agent_id,
                event.turn_id,
            )
            self._in_memory += 1
            self._in_memory_bytes += len(value)
            self._incoming.append((value, fields, time.time()))  # published (see Pending)
            if self._idle:  # otherwise the sender picks it up within linger_ms
                self._idle = False
                self._wake()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event published so far (and any left in the spool by an earlier
        process) is acknowledged, or given up for good (failed or dropped: counted and logged),
        as Kafka's ``flush()`` does; False when ``timeout`` seconds pass first, or when the
        publisher is closed with events left for the next process (in the spool). Any thread."""
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError("flush() cannot run on the publisher's own thread")
        with self._lock:
            if self._fatal is not None:
                raise self._fatal
            target = self._ledger.last() + len(self._incoming)  # see Pending

            def done() -> bool:
                return self._ledger.base > target and self._inherited <= 0

            if not (self._closed and self._stopped.is_set()):  # else nothing moves any more
                self._flushing += 1
                self._wake()
                try:  # closed meanwhile: what is left stays so
                    self._cond.wait_for(
                        lambda: self._fatal is not None or done() or self._stopped.is_set(),
                        timeout,
                    )
                finally:
                    self._flushing -= 1
                if self._fatal is not None:
                    raise self._fatal
            return done()

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to ``timeout``), then stop the thread. Idempotent. Events still undelivered
        go to the spool when there is one; without a spool they are counted as dropped.

        Every call returns once the sender has finished stopping: a close() cut short by a
        signal (SIGTERM through :func:`exit_on_sigterm`, a second Ctrl-C) is finished by the
        exit handler's, instead of the process ending while the spool is being written."""
        with self._lock:
            closing = self._closed
        if closing:
            self._stopped.wait()
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
        # not Thread.join(): on Python 3.11 a join cut short by a signal can leave the thread
        # reported as stopped, and a later join then returns at once
        self._stopped.wait()
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

    def _orphan(self) -> None:
        """In the child of an ``os.fork()``: the sender thread stayed in the parent, so nothing
        published here would ever leave. Every later call raises instead of losing events
        silently; the parent's publisher goes on unchanged."""
        self._lock = threading.Lock()  # the parent's may have been held by its other threads
        self._cond = threading.Condition(self._lock)
        self._closed = self._stopping = True
        self._stopped = threading.Event()  # no sender thread here: close() has nothing to wait
        self._stopped.set()
        if self._spool is not None:
            self._spool.release_inherited()
        self._fatal = ConfigurationError(
            f"this KafkaPublisher was created in process {self._pid}, before os.fork(); its "
            "sender thread did not follow into this process, so nothing published here would "
            "be sent. Create the publisher in each process after the fork (gunicorn: in the "
            "post_fork hook or without --preload; multiprocessing: the 'spawn' start method "
            "or in the worker)"
        )
        atexit.unregister(self._close_at_exit)

    def _make_room(self) -> bool:
        """Memory is full: apply the overflow policy. Called with the lock held."""
        reason = "spool_full" if self._spool is not None else "queue_full"
        on_own_thread = threading.get_ident() == self._thread.ident
        if self._overflow == "block" and self._block_timeout > 0 and not on_own_thread:
            self._wake()
            room = self._cond.wait_for(
                lambda: (
                    self._closed
                    or (
                        self._in_memory < self._max_queue
                        and self._in_memory_bytes < self._max_queue_bytes
                    )
                ),
                self._block_timeout,
            )
            if room and not self._closed:
                return True
            reason = "block_timeout"
        self.metrics.drop(reason)
        self._warn(
            "drop:" + reason,
            "publisher memory full (%d events of max_queue_events=%d, %d bytes of "
            "max_queue_bytes=%d%s): dropped the newest event (overflow=%s, reason=%s)",
            self._in_memory,
            self._max_queue,
            self._in_memory_bytes,
            self._max_queue_bytes,
            self._spool_state(),
            self._overflow,
            reason,
        )
        return False

    def _spool_state(self) -> str:
        """Why the spool takes no more, for the line about a full memory."""
        if self._spool is None:
            return ", no spool_dir"
        error = self._spool.write_error  # a str the sender thread replaces: read as it is
        return ", spool full" if error is None else f", the spool cannot be written: {error}"

    def _encode_plain(self, event: Event, refused: Exception) -> tuple[bytes, Event] | None:
        """The record value of ``event`` with its data as plain values (``encodable_data``:
        unknown objects as their ``str()``, strings made valid Unicode) and its envelope's text
        made valid too, after the encoder refused the event as it is, with the event as sent;
        None when the event was dropped (lock held)."""
        try:
            data = encodable_data(event.data)
            if self._redact is not None and data:
                data = self._digest.digested(event.type, data, self._redact(data))
            wire = replace(event, data=data, **mended_envelope(event))
            value = encode_event(wire, self._encoding, max_bytes=self._max_record_bytes)
        except RecordTooLargeError as exc:
            self._drop(event, "too_large", str(exc))
            return None
        except Exception as exc:
            self._drop(event, "unencodable", repr(exc))
            return None
        self._warn(
            "converted",
            "event %s of type %s (session %r): it could not be encoded as it is (%s); sent "
            "with the values the encoder refused as text and lone surrogates replaced by U+FFFD",
            event.event_id,
            str(event.type),
            event.session_id,
            describe(refused),
        )
        return value, wire

    def _drop(self, event: Event, reason: str, detail: str = "") -> None:
        self.metrics.drop(reason)
        self._warn(
            "drop:" + reason,
            "dropped event %s of type %s (session %r): %s%s",
            event.event_id,
            str(event.type),
            event.session_id,
            reason,
            f": {detail}" if detail else "",
        )

    def _wake(self) -> None:
        loop, kick = self._loop, self._kick
        if loop is not None and kick is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(kick.set)


_LIVE: weakref.WeakSet[KafkaPublisher] = weakref.WeakSet()
"""Every publisher of this process, for :func:`_after_fork_in_child`."""


def _after_fork_in_child() -> None:
    for publisher in list(_LIVE):
        publisher._orphan()
    _LIVE.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def exit_on_sigterm() -> bool:
    """Let SIGTERM end the process as ``sys.exit(143)`` does, so that every publisher's
    ``close()`` runs (at interpreter exit): what is queued is delivered within its bound, or
    spooled. Python's own SIGTERM ends the process at once, without exit handlers, and
    Kubernetes stops every pod with a SIGTERM: a plain ``python agent.py`` lost the events
    still in memory at each rollout.

    Installed only from the main thread, and only where SIGTERM still has the default
    disposition: an application or server that handles it (gunicorn, uvicorn, an asyncio
    loop's handler) is left alone, as those exit normally. Returns whether it was installed.
    Call it at the entry point; the library never does on its own."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _exit_on_signal)
    return True


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)
