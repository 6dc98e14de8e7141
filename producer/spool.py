"""The disk spool: an append-only, checksummed log of records waiting for the broker.

Layout of ``spool_dir``::

    00000000000000000001.seg    segments, appended in order, never rewritten
    00000000000000000002.seg
    checkpoint                  where delivery resumes: (segment, offset) of the oldest
                                record not yet acknowledged
    lock                        held (``flock``) by the one spool that has the directory open
    process-1/, process-2/ ...  slots of the same layout, for the processes that found the
                                ones before busy

One open spool per directory (two would append to the same segments and delete each other's).
The lock is the operating system's, so it goes with a process that dies. The processes of a
pre-forking server (gunicorn or uvicorn workers) share one ``spool_dir``: each takes the first
free slot, the directory itself or ``process-N`` below it (up to :data:`MAX_SLOTS`). The
records of a slot no process holds (its process died, and the server may now run fewer) are
moved by the next spool that opens beside it to the end of its own, and delivered from there.

Each record is framed as ``magic (4 bytes) | length (u32, big-endian) | crc32 (u32) | payload``.
A reader that meets a bad checksum, a wrong magic or a frame running past the end of a segment
(a torn tail left by a crash) logs it, counts it in :attr:`Spool.corrupt`, and resumes at the
next intact frame or the next segment, so one bad record never blocks the rest.

A process never appends to a segment it did not create: after a crash the next process starts
a new segment and reads the old ones from the checkpoint. Segments are deleted only once every
record in them is acknowledged (:meth:`Spool.ack` then :meth:`Spool.commit`). A record read but
not acknowledged before a crash is read again: delivery from the spool is at-least-once.

Durability (``fsync``): ``always`` syncs segment and checkpoint on every :meth:`Spool.sync`;
``interval`` at most once per ``fsync_interval`` seconds; ``never`` leaves it to the OS (a killed
process loses nothing; a power cut may lose the last writes).

Writes are unbuffered: a record :meth:`Spool.append_many` counts is in the segment file. When
the disk refuses a write (full, quota, I/O error) the records not written are not counted, a
torn one is cut off, :attr:`Spool.write_error` says why, and writing is tried again after
``WRITE_RETRY_S``; the caller keeps those records meanwhile. Not thread-safe: one thread uses
it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import time
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from io import FileIO
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple

from agentstream.schemas.errors import ConfigurationError

__all__ = ["FsyncPolicy", "Position", "Spool", "SpoolTicket"]

log = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "interval", "never"]

MAGIC = b"ASR1"
_FRAME = struct.Struct(">4sII")
_CHECKPOINT = struct.Struct(">QQI")
_SUFFIX = ".seg"
_CHECKPOINT_NAME = "checkpoint"
_LOCK_NAME = "lock"
MAX_SLOTS = 64
"""Spools one ``spool_dir`` holds at once: the directory and ``process-1`` to ``process-63``."""
SLOT_PREFIX = "process-"
WRITE_RETRY_S = 1.0
"""After a write the disk refused, how long :meth:`Spool.append_many` waits to try again."""


class Position(NamedTuple):
    """A byte offset in a segment; positions order as records do."""

    segment: int
    offset: int


class SpoolTicket:
    """One record handed out by :meth:`Spool.read`; :meth:`Spool.ack` it once delivered."""

    __slots__ = ("acked", "end", "position")

    def __init__(self, position: Position, end: Position) -> None:
        self.position = position
        self.end = end
        self.acked = False


def frame(payload: bytes) -> bytes:
    """The framed bytes of one record."""
    return _FRAME.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


class Spool:
    """Append-only segment files with a delivery checkpoint (see the module docstring)."""

    def __init__(
        self,
        directory: str | Path,
        *,
        max_bytes: int,
        fsync: FsyncPolicy = "interval",
        fsync_interval: float = 1.0,
        segment_bytes: int | None = None,
        checkpoint_interval: float = 0.2,
        _claimed: tuple[Path, BinaryIO] | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ConfigurationError(f"expected a positive spool size, got max_bytes={max_bytes}")
        self.directory, lock = _claimed or _claim(Path(directory))
        self._lock: BinaryIO | None = lock
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self.segment_bytes = segment_bytes or min(max(max_bytes // 8, 4096), 16 * 2**20)
        self.checkpoint_interval = checkpoint_interval
        self.corrupt = 0
        """Corrupt or torn regions skipped so far (each one is also logged)."""

        self._sizes: dict[int, int] = {}
        for path in self.directory.glob(f"*{_SUFFIX}"):
            try:
                number = int(path.stem)
            except ValueError:
                continue
            self._sizes[number] = path.stat().st_size
        self._writer: FileIO | None = None  # unbuffered: a record counted is the OS's
        self.write_error: str | None = None
        """Why the last write failed (None once one succeeds): see :meth:`append_many`."""
        self.write_errors = 0
        """Writes the disk refused so far."""
        self._write_retry_at = 0.0
        self._write_segment = max(self._sizes, default=0)  # the next one created is +1
        self._dirty = False
        self._last_fsync = time.monotonic()

        self._read_pos = self._load_checkpoint()
        # Never write into (or before) the segment the checkpoint names.
        self._write_segment = max(self._write_segment, self._read_pos.segment)
        self._reader: BinaryIO | None = None
        self._reader_segment = -1
        self._tickets: deque[SpoolTicket] = deque()
        self._committed = self._read_pos
        self._checkpoint_written = self._read_pos
        self._last_checkpoint = 0.0
        self.unread = self._count_unread()
        """Records appended (or left by an earlier process) and not yet read."""
        self.adopted = 0
        """Records moved here at open from slots no process had (see :meth:`_adopt`)."""
        if _claimed is None:
            for slot in _slots(Path(directory)):
                if slot != self.directory and _holds_records(slot):
                    self._adopt(slot)

    # --- state -----------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        """Bytes on disk in segments (acknowledged records count until their segment goes)."""
        return sum(self._sizes.values())

    @property
    def outstanding(self) -> int:
        """Records read and not yet acknowledged."""
        return len(self._tickets)

    @property
    def pending(self) -> int:
        """Records not yet acknowledged (read or not)."""
        return self.unread + len(self._tickets)

    # --- writing ---------------------------------------------------------------------------

    def append(self, payload: bytes) -> bool:
        """Append one record; False (nothing written) when the spool is full or cannot be
        written (see :meth:`append_many`)."""
        return self.append_many((payload,)) == 1

    def append_many(self, payloads: Iterable[bytes]) -> int:
        """Append records in order, as many as fit; returns how many. Each one counted is in
        its segment file (handed to the OS; fsync as the policy says), so its caller may let
        go of it. ``payloads`` is read lazily, at most one past the last record written.

        Fewer than all when the next record would take the spool past ``max_bytes``, or when
        the disk refuses a write (full, over quota, an I/O error, a directory made read-only).
        Then :attr:`write_error` says why, the segment is cut back to its last whole record,
        and no write is tried for ``WRITE_RETRY_S`` (0 at once): the caller keeps what was
        not written and offers it again later.
        """
        if self.write_error is not None and time.monotonic() < self._write_retry_at:
            return 0
        before = self.unread
        room = self.max_bytes - self.size_bytes
        frames: list[bytes] = []
        pending = 0  # bytes in frames
        try:
            for payload in payloads:
                data = frame(payload)
                if len(data) > room:
                    break
                if (
                    self._writer is None
                    or self._sizes[self._write_segment] + pending >= self.segment_bytes
                ):
                    self._write(frames)
                    pending = 0
                    self._roll()
                frames.append(data)
                pending += len(data)
                room -= len(data)
            self._write(frames)
        except OSError as exc:
            self.write_error = str(exc)
            self.write_errors += 1
            self._write_retry_at = time.monotonic() + WRITE_RETRY_S
        else:
            self.write_error = None
        return self.unread - before

    def _write(self, frames: list[bytes]) -> None:
        """Write ``frames`` at the end of the current segment and count them; on an OSError
        count the whole ones written, cut off a torn one, and raise."""
        if not frames:
            return
        assert self._writer is not None
        fd = self._writer.fileno()
        segment = self._write_segment
        start = self._sizes[segment]
        data = b"".join(frames)
        done = 0
        try:
            view = memoryview(data)
            while done < len(data):
                written = os.pwrite(fd, view[done:], start + done)
                if written <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += written
        except OSError:
            whole = count = 0
            for data_frame in frames:
                if whole + len(data_frame) > done:
                    break
                whole += len(data_frame)
                count += 1
            self._written(segment, whole, count)
            if whole < done:
                try:
                    os.ftruncate(fd, start + whole)
                except OSError:  # leave the torn tail (readers skip it) and its segment
                    self._writer.close()
                    self._writer = None
            raise
        self._written(segment, len(data), len(frames))
        frames.clear()

    def _written(self, segment: int, size: int, count: int) -> None:
        if count:
            self._sizes[segment] += size
            self._dirty = True
            self.unread += count

    def sync(self, *, force: bool = False) -> None:
        """fsync appended records as the policy says (they are the OS's once appended)."""
        if self._writer is None or not self._dirty:
            return
        now = time.monotonic()
        if self.fsync == "always" or (
            self.fsync == "interval" and (force or now - self._last_fsync >= self.fsync_interval)
        ):
            os.fsync(self._writer.fileno())
            self._last_fsync = now
            self._dirty = False
        elif self.fsync == "never":
            self._dirty = False

    def _roll(self) -> None:
        if self._writer is not None:
            self.sync(force=True)
            self._writer.close()
            self._writer = None
        number = self._write_segment + 1
        self._writer = open(self._segment_path(number), "xb", buffering=0)  # noqa: SIM115
        self._write_segment = number
        self._sizes[number] = 0
        if self.fsync == "always":
            _fsync_dir(self.directory)

    # --- reading ---------------------------------------------------------------------------

    def read(
        self, max_records: int, *, max_bytes: int | None = None
    ) -> list[tuple[SpoolTicket, bytes]]:
        """Up to ``max_records`` records in append order, skipping corrupt ones; with
        ``max_bytes``, no more once their payloads reach it (one at least)."""
        out: list[tuple[SpoolTicket, bytes]] = []
        size = 0
        while len(out) < max_records and (max_bytes is None or size < max_bytes):
            item = self._read_one()
            if item is None:
                break
            out.append(item)
            size += len(item[1])
            self._tickets.append(item[0])
        return out

    def _read_one(self) -> tuple[SpoolTicket, bytes] | None:
        while True:
            segment, offset = self._read_pos
            size = self._sizes.get(segment)
            if size is None or offset >= size:
                later = [n for n in self._sizes if n > segment]
                if not later:
                    self.unread = 0  # caught up with the writer
                    return None
                self._read_pos = Position(min(later), 0)
                continue
            reader = self._open_reader(segment)
            reader.seek(offset)
            header = reader.read(_FRAME.size)
            if len(header) == _FRAME.size:
                magic, length, crc = _FRAME.unpack(header)
                end = offset + _FRAME.size + length
                if magic == MAGIC and end <= size:
                    payload = reader.read(length)
                    if len(payload) == length and zlib.crc32(payload) == crc:
                        self.unread = max(self.unread - 1, 0)
                        self._read_pos = Position(segment, end)
                        ticket = SpoolTicket(Position(segment, offset), self._read_pos)
                        return ticket, payload
            self._skip_corrupt(segment, offset, size)

    def _skip_corrupt(self, segment: int, offset: int, size: int) -> None:
        """Resume at the next intact frame of ``segment``, or at its end."""
        reader = self._open_reader(segment)
        reader.seek(offset + 1)
        rest = reader.read(size - offset - 1)
        base = offset + 1
        found = size
        for at in _magic_offsets(rest):
            if _intact(rest, at):
                found = base + at
                break
        kind = "torn tail" if found == size else "corrupt record"
        self.corrupt += 1
        log.warning(
            "spool %s: %s in segment %s at byte %d: skipped %d bytes%s",
            self.directory,
            kind,
            self._segment_path(segment).name,
            offset,
            found - offset,
            "" if found == size else f", resuming at byte {found}",
        )
        self._read_pos = Position(segment, found)

    def _open_reader(self, segment: int) -> BinaryIO:
        if self._reader_segment != segment or self._reader is None:
            if self._reader is not None:
                self._reader.close()
            self._reader = self._segment_path(segment).open("rb")
            self._reader_segment = segment
        return self._reader

    # --- acknowledging ---------------------------------------------------------------------

    def ack(self, ticket: SpoolTicket) -> None:
        ticket.acked = True

    def commit(self, *, force: bool = False) -> None:
        """Move the checkpoint past acknowledged records; delete finished segments."""
        tickets = self._tickets
        while tickets and tickets[0].acked:
            tickets.popleft()
        self._committed = tickets[0].position if tickets else self._read_pos
        if not tickets and self.unread == 0 and self._writer is not None and not force:
            self._reset_if_drained()
        for number in sorted(self._sizes):
            if number >= self._committed.segment or number == self._write_segment:
                break
            self._delete(number)
        now = time.monotonic()
        if self._committed != self._checkpoint_written and (
            force or now - self._last_checkpoint >= self.checkpoint_interval
        ):
            self._write_checkpoint(self._committed)
            self._last_checkpoint = now

    def _reset_if_drained(self) -> None:
        """Everything is delivered: remove all segments and start afresh on the next append."""
        if self._sizes.get(self._write_segment, 0) < self.segment_bytes // 2:
            return  # keep appending to a small active segment
        assert self._writer is not None
        self._writer.close()
        self._writer = None
        for number in list(self._sizes):
            self._delete(number)
        self._read_pos = self._committed = Position(self._write_segment + 1, 0)

    def _delete(self, number: int) -> None:
        if self._reader_segment == number and self._reader is not None:
            self._reader.close()
            self._reader = None
            self._reader_segment = -1
        self._segment_path(number).unlink(missing_ok=True)
        del self._sizes[number]

    def close(self) -> None:
        """Sync, write the checkpoint, and close the files (idempotent). Files and lock are
        closed also when the disk refuses the sync or the checkpoint; that OSError is raised
        after (the next process reads from the previous checkpoint: at-least-once)."""
        try:
            self.commit(force=True)
            if self._writer is not None:
                self.sync(force=True)
            if self.pending == 0:
                for number in list(self._sizes):
                    self._delete(number)
                (self.directory / _CHECKPOINT_NAME).unlink(missing_ok=True)
        finally:
            self._close_files()  # the lock file's: releases it

    def release_inherited(self) -> None:
        """In the child of an ``os.fork()``: close the files and the lock inherited from the
        parent, as they are (no sync, no checkpoint: the spool is the parent's). The parent's
        lock then goes with the parent alone; held open here, it kept the directory locked
        while any child lived, and the next process took another slot and left these
        records where they were."""
        self._close_files()

    def _close_files(self) -> None:
        for handle in (self._writer, self._reader, self._lock):
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.close()
        self._writer = self._reader = self._lock = None

    # --- adopting ---------------------------------------------------------------------------

    def _adopt(self, slot: Path) -> None:
        """Move the records of ``slot``, left by a process that is gone and taken by none, to
        the end of this spool, so that they are delivered now rather than when a process
        takes that slot again (a server running fewer workers than before may never).

        Copied first, synced as the policy says, and only then acknowledged in ``slot``: a
        crash in between leaves them in both, delivered twice (the spool is at-least-once),
        never lost. What does not fit stays in ``slot``, behind its checkpoint."""
        try:
            lock = _lock(slot)
        except (_Busy, ConfigurationError):
            return  # a process has it (or it cannot be opened): not an orphan
        moved = left = 0
        try:
            orphan = Spool(
                slot,
                max_bytes=self.max_bytes,
                fsync=self.fsync,
                segment_bytes=self.segment_bytes,
                _claimed=(slot, lock),
            )
        except OSError as exc:
            lock.close()
            log.warning("spool slot %s holds records that could not be read: %s", slot, exc)
            return
        try:
            while batch := orphan.read(1_000, max_bytes=self.segment_bytes):
                fitted = self.append_many(payload for _, payload in batch)
                for ticket, _ in batch[:fitted]:
                    orphan.ack(ticket)
                moved += fitted
                if fitted < len(batch):
                    break
            self.sync(force=True)
            orphan.commit(force=True)
            left = orphan.pending
        except OSError as exc:
            log.warning("spool slot %s: moving its records here stopped: %s", slot, exc)
        finally:
            self.corrupt += orphan.corrupt
            try:
                orphan.close()
            except OSError as exc:  # its checkpoint not written: its records are read again
                log.warning("spool slot %s: cannot write its checkpoint: %s", slot, exc)
        self.adopted += moved
        if moved or left:
            log.warning(
                "spool slot %s held %d records from an earlier process and no process had it: "
                "%d moved to %s for delivery%s",
                slot,
                moved + left,
                moved,
                self.directory,
                f", {left} left there ({self.write_error or 'this spool is full'})" if left else "",
            )

    # --- checkpoint ------------------------------------------------------------------------

    def _load_checkpoint(self) -> Position:
        first = Position(min(self._sizes, default=1), 0)
        path = self.directory / _CHECKPOINT_NAME
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return first
        if len(data) == _CHECKPOINT.size:
            segment, offset, crc = _CHECKPOINT.unpack(data)
            if zlib.crc32(data[:16]) == crc:
                position = Position(segment, offset)
                return max(position, first)
        self.corrupt += 1
        log.warning(
            "spool %s: unreadable checkpoint file; resending from the oldest segment "
            "(records may be delivered twice)",
            self.directory,
        )
        return first

    def _write_checkpoint(self, position: Position) -> None:
        body = struct.pack(">QQ", position.segment, position.offset)
        data = body + struct.pack(">I", zlib.crc32(body))
        path = self.directory / _CHECKPOINT_NAME
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as out:
            out.write(data)
            if self.fsync != "never":
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, path)
        if self.fsync == "always":
            _fsync_dir(self.directory)
        self._checkpoint_written = position

    def _count_unread(self) -> int:
        """Records left by earlier processes after the checkpoint (a scan at open)."""
        count = 0
        for number in sorted(self._sizes):
            if number < self._read_pos.segment:
                continue
            start = self._read_pos.offset if number == self._read_pos.segment else 0
            data = self._segment_path(number).read_bytes()
            at = start
            while at < len(data):
                if _intact(data, at):
                    count += 1
                    at += _FRAME.size + _FRAME.unpack_from(data, at)[1]
                else:
                    nxt = next((o for o in _magic_offsets(data, at + 1) if _intact(data, o)), None)
                    if nxt is None:
                        break
                    at = nxt
        return count

    def _segment_path(self, number: int) -> Path:
        return self.directory / f"{number:020d}{_SUFFIX}"


def _claim(base: Path) -> tuple[Path, BinaryIO]:
    """The first free slot of ``base`` (itself, then ``process-1`` ...) and its lock; a
    :class:`ConfigurationError` when all :data:`MAX_SLOTS` are taken."""
    holders = []
    for slot in range(MAX_SLOTS):
        directory = base if slot == 0 else base / f"{SLOT_PREFIX}{slot}"
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"expected a directory the spool can use at {directory}: {exc.strerror}"
            ) from None
        try:
            lock = _lock(directory)
        except _Busy as busy:
            holders.append(busy.holder)
            continue
        return directory, lock
    raise ConfigurationError(
        f"expected a free slot in the spool directory {base}, all {MAX_SLOTS} are in use "
        f"(by {', '.join(sorted(set(holders))[:3])}...): give these publishers another spool_dir"
    )


def _slots(base: Path) -> list[Path]:
    """``base`` and the ``process-N`` slots below it."""
    return [base, *sorted(p for p in base.glob(f"{SLOT_PREFIX}*") if p.is_dir())]


def _holds_records(directory: Path) -> bool:
    """Whether ``directory`` has a segment that is not empty (one its owner deletes meanwhile
    is empty)."""
    for path in directory.glob(f"*{_SUFFIX}"):
        with contextlib.suppress(OSError):
            if path.stat().st_size:
                return True
    return False


class _Busy(Exception):
    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def _lock(directory: Path) -> BinaryIO:
    """Take the directory's lock, writing this process in as its holder; :class:`_Busy`
    naming the holder when another has it."""
    try:
        handle = open(directory / _LOCK_NAME, "a+b")  # noqa: SIM115 (held until close())
    except OSError as exc:
        raise ConfigurationError(
            f"expected a directory the spool can use at {directory}: {exc.strerror}"
        ) from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read(200).decode("utf-8", "replace").strip() or "another spool"
        handle.close()
        raise _Busy(holder) from None
    except OSError as exc:  # a filesystem without flock (some FUSE mounts): ENOLCK, ENOTSUP
        handle.close()
        raise ConfigurationError(
            f"expected a spool directory on a filesystem with file locks (flock) at "
            f"{directory}, got {exc.strerror or exc}: put spool_dir on a local disk or an "
            "emptyDir volume"
        ) from None
    handle.truncate(0)
    handle.write(f"process {os.getpid()}".encode())
    handle.flush()
    return handle


def _intact(data: bytes, at: int) -> bool:
    if at + _FRAME.size > len(data):
        return False
    magic, length, crc = _FRAME.unpack_from(data, at)
    end = at + _FRAME.size + length
    return (
        bool(magic == MAGIC)
        and end <= len(data)
        and zlib.crc32(data[at + _FRAME.size : end]) == crc
    )


def _magic_offsets(data: bytes, start: int = 0) -> Iterator[int]:
    at = data.find(MAGIC, start)
    while at != -1:
        yield at
        at = data.find(MAGIC, at + 1)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
