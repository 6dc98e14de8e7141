"""The spool bridge: when events overflow to disk and how they come back.

With ``spool_dir``, events overflow to disk (:mod:`.spool`) when the broker cannot be reached,
when an event has waited ``spool_after_ms`` without being acknowledged (a slow or dead broker),
or when half of the memory bound (``max_queue_events`` or ``max_queue_bytes``) is in use.
From then on every new event goes to the spool, behind the ones already there; once the broker
acknowledges again the spool is read back in order (no more than a quarter of the memory bound
at a time), and publishing goes direct again when the spool is empty. Runs on the sender
thread.
"""

from __future__ import annotations

from collections import deque

import msgspec

from ._lanes import _Lanes
from ._records import _entry_decoder, _entry_encoder, _Record, _SpoolEntry, log
from .spool import WRITE_RETRY_S


class _Overflow(_Lanes):
    """Spilling to the spool and feeding it back (sender thread)."""

    # --- spool ------------------------------------------------------------------------------

    def _check_overflow(self, now: float) -> None:
        """Switch to the spool when the broker is unreachable, slow, or memory fills."""
        if self._spooling:
            return
        reason = None
        if self._connected is False:
            reason = "the broker is unreachable"
        elif (
            self._in_memory > self._max_queue // 2
            or self._in_memory_bytes > self._max_queue_bytes // 2
        ):
            reason = f"{self._in_memory} events ({self._in_memory_bytes} bytes) wait in memory"
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
        """Move what waits in memory (``_held``) to the spool, oldest first, as far as it
        takes them: until it is full or the disk refuses a write; the rest waits for the next
        round."""
        spool = self._spool
        assert spool is not None
        held = self._held
        written = written_bytes = 0
        while held:
            count = spool.append_many(self._spool_entry(record) for record in held)
            for _ in range(count):
                record = held.popleft()
                written_bytes += len(record.value)
                if record.ticket is not None:  # it was read from the spool: its copy replaces it
                    spool.ack(record.ticket)
            written += count
            if not held:
                break
            if spool.write_error is not None:
                self._error(
                    "spool-write",
                    "cannot write to the spool %s (%s): keeping %d events in memory, trying "
                    "again every %.0f s",
                    self._spool_dir_name(),
                    spool.write_error,
                    len(held),
                    WRITE_RETRY_S,
                )
                break
            if spool.size_bytes:
                self._warn(
                    "spool-full",
                    "spool %s is full (%d bytes, spool_max_bytes=%d): keeping %d events in memory",
                    self._spool_dir_name(),
                    spool.size_bytes,
                    spool.max_bytes,
                    len(held),
                )
                break
            record = held.popleft()  # larger than the whole spool: it can never fit
            self._finish([record])
            self.metrics.drop("spool_full")
            self._error(
                "spool-too-small",
                "an event of %d bytes does not fit in the spool (spool_max_bytes=%d): dropped",
                len(self._spool_entry(record)),
                spool.max_bytes,
            )
        if written:
            if spool.write_error is None:
                self._error.recovered(
                    "spool-write", "spool %s is written again", self._spool_dir_name()
                )
            with self._lock:
                self._in_memory -= written
                self._in_memory_bytes -= written_bytes
                self.metrics.spooled += written
                self._cond.notify_all()

    def _spool_entry(self, record: _Record) -> bytes:
        return _entry_encoder.encode(
            _SpoolEntry(
                self._epoch,
                record.index,
                record.topic,
                record.key,
                record.value,
                list(record.headers),
                record.created,
            )
        )

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
        room_bytes = max(self._max_queue_bytes // 4, 1) - self._in_memory_bytes
        if room <= 0 or room_bytes <= 0:
            return
        entries = spool.read(min(room, 10_000), max_bytes=room_bytes)
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
                self._in_memory_bytes += sum([len(record.value) for record in records])
            self._route_all(records, now)
        if not entries:
            # The spool is read to the end: what waited for room comes next, then direct mode.
            held, self._held = self._held, deque()
            self._route_all(held, now)
            self._spooling = False
            log.info("spool %s drained; publishing directly again", self._spool_dir_name())

    def _spool_dir_name(self) -> str:
        return str(self._spool.directory) if self._spool is not None else "-"
