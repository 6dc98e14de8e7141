"""The sender thread: its own asyncio loop with an aiokafka producer, connecting (with the
real cause of a failure in words), one round of work per wake-up, and the shutdown that spools
or counts whatever is left."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    UnknownError,
    UnsupportedVersionError,
)

from agentstream.schemas.connect import refusal
from agentstream.schemas.errors import AgentstreamError, ConfigurationError, describe
from agentstream.schemas.settings import KafkaSettings

from ._overflow import _Overflow
from ._records import Pending, _Record, log

_TICK = 0.1
_MAX_CONNECT_BACKOFF = 5.0
_START_GRACE_S = 5.0
"""How long a close() lets a producer start() in progress finish before cancelling it."""
_SHUTDOWN_SEND_S = 2.0
"""How long a close() lets the last batches be sent and aiokafka finish, in all."""


def producer_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments of the ``AIOKafkaProducer`` the publisher runs (all from settings:
    connection, PLAINTEXT/SSL/SASL_PLAINTEXT/SASL_SSL with PLAIN or SCRAM, acks, compression,
    batch size, idempotence)."""
    return settings.producer_options()


class _Sender(_Overflow):
    """The background thread's main loop (see :mod:`.publisher`)."""

    # === sender thread =========================================================================

    def _thread_main(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._main(ready))
        finally:
            self._stopped.set()
            with self._lock:  # a flush() waiting in another thread: nothing moves any more
                self._cond.notify_all()

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
            if self._starting:  # cancelling aiokafka's bootstrap leaks its connection: let the
                # start() end (it is stopped with the rest), within a bound
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(connector), _START_GRACE_S)
            connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connector
            await self._shutdown()

    async def _connect(self) -> None:
        backoff = self.settings.retry_backoff_ms / 1000
        while not self._stopping:
            try:
                producer = AIOKafkaProducer(**self._producer_options)
            except Exception as exc:  # options the client refuses: retrying cannot help
                self._set_fatal(
                    ConfigurationError(f"cannot create the Kafka producer: {describe(exc)}")
                )
                return
            self._starting = True
            try:
                await producer.start()
            except BaseException as exc:  # a close() during start() may cancel it: stop it too
                self._starting = False
                with contextlib.suppress(Exception):
                    await producer.stop()
                if not isinstance(exc, Exception):
                    raise
                if self._closing():  # close() came while start() ran: no retry
                    return
                if self._is_init_pid_failure(exc):
                    self._set_fatal(
                        ConfigurationError(
                            "enable_idempotence=True, but the broker at "
                            f"{self.settings.bootstrap_servers} rejected InitProducerId "
                            f"({describe(exc)}); an idempotent producer needs a broker "
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
            self._starting = False
            self._producer = producer  # stopped by _shutdown, also when close() came meanwhile
            self._connected = True
            log.info("publisher connected to %s", self.settings.bootstrap_servers)
            self._kick_now()
            return

    def _closing(self) -> bool:
        """``_stopping`` read anew: after ``while not self._stopping`` mypy takes the attribute
        as False for the rest of the loop body, across the awaits where close() may set it."""
        return self._stopping

    def _is_init_pid_failure(self, exc: BaseException) -> bool:
        """aiokafka's start() asks for a producer id when idempotence is on; these are the
        answers of a broker that cannot give one (the embedded broker says UNKNOWN)."""
        return self.settings.enable_idempotence and isinstance(
            exc, UnknownError | UnsupportedVersionError | ClusterAuthorizationFailedError
        )

    async def _describe_connect_failure(self, exc: BaseException) -> str:
        """What failed, with what the broker refused when it answered (aiokafka hides a TLS
        or SASL refusal behind "Unable to bootstrap"). A refusal is retried like an outage:
        credentials and certificates get fixed while the pod runs."""
        servers = self.settings.bootstrap_servers
        protocol = self.settings.security_protocol
        refused = await refusal(self._producer_options, ssl_cafile=self.settings.ssl_cafile)
        return f"cannot connect to Kafka at {servers} ({protocol}): {refused or describe(exc)}"

    def _set_fatal(self, error: AgentstreamError) -> None:
        log.error("%s", error)
        self.metrics.last_error = str(error)
        with self._lock:
            self._fatal = error
            self._cond.notify_all()

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
            taken = self._take_incoming()
            self._idle = False
            urgent = self._flushing > 0 or self._closed
        records = self._build(*taken)
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
            try:
                self._spool.sync()
                self._spool.commit()
            except OSError as exc:  # the records are the OS's; a crash may resend some
                self._error(
                    "spool-sync",
                    "spool %s: cannot sync or write its checkpoint (%s); at a crash, "
                    "events may be delivered twice",
                    self._spool_dir_name(),
                    exc,
                )

    def _take_incoming(self) -> tuple[deque[Pending], int]:
        """What was published since the last take, and the first of the publish indices
        opened for it (see :data:`~._records.Pending`). The caller holds ``_lock``."""
        pending, self._incoming = self._incoming, deque()
        return pending, self._ledger.take(len(pending))

    def _build(self, pending: Iterable[Pending], first_index: int) -> list[_Record]:
        """The records of ``pending``, publish indices from ``first_index``. Events whose
        envelope fields cannot make a record (see :meth:`RecordFactory.build`) are counted,
        logged and finished as dropped."""
        records = self._factory.build(pending, first_index)
        refused = self._factory.refused
        if refused:
            self._factory.refused = []
            self.metrics.drop("unencodable", len(refused))
            for _, why in refused:
                self._warn("drop:envelope", "dropped %s", why)
            self._finish([record for record, _ in refused])
        return records

    # --- stopping ---------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            # Let the batches the last step handed out be sent, and those already with aiokafka
            # finish, briefly (the broker may be gone): they were published before close().
            deadline = time.monotonic() + _SHUTDOWN_SEND_S
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=_SHUTDOWN_SEND_S)
            try:
                await asyncio.wait_for(producer.stop(), max(0.1, deadline - time.monotonic()))
            except Exception:  # cut (a dead broker; aiokafka 0.13 also waits out linger_ms):
                with contextlib.suppress(Exception):  # its connections would stay open
                    await producer.client.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        with self._lock:
            taken = self._take_incoming()
        leftover_incoming = self._build(*taken)
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
            dropped = list(self._held)  # no room in the spool either
            try:
                self._spool.close()
            except OSError as exc:
                log.error(
                    "spool %s: cannot sync or write its checkpoint at close (%s); the next "
                    "process may deliver some events twice",
                    self._spool_dir_name(),
                    exc,
                )
        else:
            dropped = [*leftover, *leftover_incoming]
        if dropped:
            # finished as given up: counted, out of the in-memory figures, and what a flush()
            # after close() waited for is done (it returned False for good)
            self._finish(dropped)
            self.metrics.drop("closed", len(dropped))
            log.error(
                "publisher closed with %d events undelivered and not spooled (dropped)",
                len(dropped),
            )
