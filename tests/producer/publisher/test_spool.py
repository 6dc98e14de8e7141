"""The disk spool: framing, order, checkpoints, corruption and torn tails, size limit."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

import pytest
from support.disk import files_limited_to

from agentstream.producer.spool import MAGIC, Spool
from agentstream.schemas.errors import ConfigurationError


def payloads(n: int, start: int = 0) -> list[bytes]:
    return [f"record-{i:05d}".encode() * 3 for i in range(start, start + n)]


def read_all(spool: Spool) -> list[bytes]:
    return [payload for _, payload in spool.read(10_000)]


def crash(spool: Spool) -> None:
    """What the operating system does when the process dies: its files are closed and the
    directory's lock goes with them; nothing is synced or checkpointed."""
    for handle in (spool._writer, spool._reader, spool._lock):
        if handle is not None:
            handle.close()


def test_records_come_back_in_append_order_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=256)
    for p in payloads(50):
        assert spool.append(p)
    spool.sync()
    assert len(list(tmp_path.glob("*.seg"))) > 3
    assert spool.unread == 50
    assert read_all(spool) == payloads(50)
    assert spool.unread == 0 and spool.outstanding == 50
    spool.close()


def test_acknowledged_segments_are_deleted_and_unacked_ones_survive_a_restart(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=256, fsync="always")
    for p in payloads(40):
        spool.append(p)
    spool.sync()
    entries = spool.read(40)
    segments_before = len(list(tmp_path.glob("*.seg")))
    for ticket, _ in entries[:25]:
        spool.ack(ticket)
    spool.ack(entries[30][0])  # acked out of order: does not move the checkpoint past 25
    spool.commit(force=True)
    assert len(list(tmp_path.glob("*.seg"))) < segments_before
    crash(spool)  # no close(): a new process opens the same directory
    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=256)
    assert again.unread == 15
    assert read_all(again) == payloads(15, start=25)  # 30 again too: at-least-once
    again.close()


def test_everything_acked_leaves_an_empty_directory_on_close(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=256)
    for p in payloads(30):
        spool.append(p)
    for ticket, _ in spool.read(30):
        spool.ack(ticket)
    spool.close()
    assert [p.name for p in tmp_path.iterdir()] == ["lock"]  # kept: see _lock
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert reopened.unread == 0
    reopened.close()


def test_a_new_process_never_appends_to_an_old_segment(tmp_path: Path) -> None:
    first = Spool(tmp_path, max_bytes=1 << 20)
    first.append(b"old")
    first.sync()
    crash(first)
    second = Spool(tmp_path, max_bytes=1 << 20)
    second.append(b"new")
    second.sync()
    assert len(list(tmp_path.glob("*.seg"))) == 2
    assert read_all(second) == [b"old", b"new"]
    second.close()


def test_a_corrupt_record_is_skipped_logged_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for p in payloads(5):
        spool.append(p)
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    data = bytearray(segment.read_bytes())
    second = data.find(MAGIC, 1)
    data[second + 14] ^= 0xFF  # a flipped bit inside the second record's payload
    segment.write_bytes(bytes(data))
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert reopened.unread == 4
    with caplog.at_level(logging.WARNING, logger="agentstream.producer.spool"):
        got = read_all(reopened)
    assert got == [p for i, p in enumerate(payloads(5)) if i != 1]
    assert reopened.corrupt == 1
    assert "corrupt record" in caplog.text and segment.name in caplog.text
    reopened.close()


def test_a_torn_tail_is_skipped_and_later_segments_are_still_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crashed = Spool(tmp_path, max_bytes=1 << 20)
    for p in payloads(3):
        crashed.append(p)
    crashed.sync()
    crash(crashed)
    (segment,) = tmp_path.glob("*.seg")
    segment.write_bytes(segment.read_bytes()[:-5])  # the last write was cut short
    survivor = Spool(tmp_path, max_bytes=1 << 20)
    survivor.append(b"after the crash")
    survivor.sync()
    with caplog.at_level(logging.WARNING, logger="agentstream.producer.spool"):
        got = read_all(survivor)
    assert got == [*payloads(2), b"after the crash"]
    assert survivor.corrupt == 1
    assert "torn tail" in caplog.text
    survivor.close()


def test_a_full_spool_refuses_appends_until_acked_segments_go(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=2048, segment_bytes=512)
    accepted = 0
    while spool.append(b"x" * 100):
        accepted += 1
    assert 10 <= accepted <= 20
    assert spool.size_bytes <= 2048
    assert spool.write_error is None  # full, not refused by the disk
    for ticket, _ in spool.read(accepted):
        spool.ack(ticket)
    spool.commit()
    assert spool.append(b"x" * 100)
    spool.close()


def test_a_damaged_checkpoint_means_resending_from_the_oldest_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=128)
    for p in payloads(10):
        spool.append(p)
    entries = spool.read(10)
    for ticket, _ in entries[:5]:
        spool.ack(ticket)
    spool.commit(force=True)
    crash(spool)
    (tmp_path / "checkpoint").write_bytes(b"garbage")
    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=128)
    assert again.corrupt == 1
    got = read_all(again)
    assert got[-5:] == payloads(5, start=5)  # nothing unacknowledged is lost
    again.close()


def test_processes_sharing_a_spool_dir_take_a_slot_each(tmp_path: Path) -> None:
    """The workers of a pre-forking server share one spool_dir. Before, every worker but the
    first was refused at start."""
    spools = [Spool(tmp_path, max_bytes=1 << 20) for _ in range(3)]
    assert [s.directory for s in spools] == [
        tmp_path,
        tmp_path / "process-1",
        tmp_path / "process-2",
    ]
    for spool, name in zip(spools, (b"first", b"second", b"third"), strict=True):
        spool.append(name)
        spool.sync()
    assert [read_all(s) for s in spools] == [[b"first"], [b"second"], [b"third"]]
    for spool in spools:
        spool.close()


def test_the_next_spool_to_open_takes_the_records_of_slots_no_process_holds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Three workers killed, the server back with one: its spool delivers all three slots'
    records, its own first. Before, the other two slots waited for a second and a third worker
    that might never start again."""
    spools = [Spool(tmp_path, max_bytes=1 << 20) for _ in range(3)]
    for k, spool in enumerate(spools):
        spool.append_many(payloads(3, start=10 * k))
        spool.sync()
        crash(spool)
    with caplog.at_level(logging.WARNING, logger="agentstream.producer.spool"):
        only = Spool(tmp_path, max_bytes=1 << 20)
    everything = payloads(3) + payloads(3, start=10) + payloads(3, start=20)
    assert only.directory == tmp_path and only.adopted == 6
    assert read_all(only) == everything
    assert any(
        f"spool slot {tmp_path / 'process-1'} held 3 records" in r.getMessage()
        for r in caplog.records
    )
    for slot in ("process-1", "process-2"):  # let go there: nobody delivers them again
        assert not list((tmp_path / slot).glob("*.seg"))
    crash(only)  # read, never acknowledged: all of them come back, from one slot
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.adopted == 0
    assert read_all(again) == everything
    again.close()


def test_a_slot_a_process_holds_is_left_alone(tmp_path: Path) -> None:
    first, second = Spool(tmp_path, max_bytes=1 << 20), Spool(tmp_path, max_bytes=1 << 20)
    second.append(b"mine")
    second.sync()
    first.close()
    third = Spool(tmp_path, max_bytes=1 << 20)  # takes the directory, beside a live slot
    assert third.adopted == 0 and read_all(third) == []
    assert read_all(second) == [b"mine"]
    second.close()
    third.close()


def test_what_does_not_fit_stays_in_the_old_slot_for_the_next_spool(tmp_path: Path) -> None:
    first, second = Spool(tmp_path, max_bytes=1 << 20), Spool(tmp_path, max_bytes=1 << 20)
    second.append_many(payloads(40))
    second.sync()
    crash(second)
    first.close()
    small = Spool(tmp_path, max_bytes=400, segment_bytes=128)  # room for about ten
    assert 0 < small.adopted < 40
    moved = read_all(small)
    assert moved == payloads(small.adopted)
    small.close()  # not acknowledged: kept, and the old slot keeps the rest
    big = Spool(tmp_path, max_bytes=1 << 20)
    assert big.directory == tmp_path
    assert read_all(big) == moved + payloads(40 - len(moved), start=len(moved))
    big.close()


def test_a_directory_that_cannot_be_one_is_a_configuration_error(tmp_path: Path) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("not a directory")
    for where in (taken, taken / "below"):
        with pytest.raises(ConfigurationError, match="expected a directory the spool can use"):
            Spool(where, max_bytes=1 << 20)


def test_a_write_the_disk_refuses_counts_nothing_it_did_not_write(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    records = [bytes([65 + i % 26]) * 300 for i in range(40)]
    with files_limited_to(4000):
        written = spool.append_many(records)
        assert 0 < written < 40
        assert spool.write_error is not None and "File too large" in spool.write_error
        assert spool.write_errors == 1
        assert spool.append_many(records[written:]) == 0  # no new try before WRITE_RETRY_S
    (segment,) = tmp_path.glob("*.seg")
    # the record cut short at the limit is cut off: the file holds whole records only
    assert segment.stat().st_size == spool.size_bytes == written * (12 + 300)
    assert spool.unread == written

    spool._write_retry_at = 0.0  # WRITE_RETRY_S later, with room on the disk again
    assert spool.append_many(records[written:]) == 40 - written
    assert spool.write_error is None
    spool.sync()
    crash(spool)
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert read_all(again) == records and again.corrupt == 0
    again.close()


def test_close_releases_the_directory_when_the_checkpoint_cannot_be_written(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for p in payloads(5):
        spool.append(p)
    ticket, _ = spool.read(1)[0]
    spool.ack(ticket)
    with files_limited_to(0), pytest.raises(OSError, match="File too large"):
        spool.close()  # the checkpoint's temporary file cannot grow
    successor = Spool(tmp_path, max_bytes=1 << 20)  # the lock went with close()
    assert read_all(successor) == payloads(5)  # from the last checkpoint: at-least-once
    successor.close()


def test_a_filesystem_without_file_locks_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some FUSE mounts (object-store buckets) refuse flock: a ConfigurationError that says
    where to put the spool, not an OSError from deep inside."""

    def refuse(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", refuse)
    with pytest.raises(ConfigurationError) as caught:
        Spool(tmp_path, max_bytes=1 << 20)
    assert str(caught.value) == (
        f"expected a spool directory on a filesystem with file locks (flock) at {tmp_path}, "
        f"got {os.strerror(errno.ENOLCK)}: put spool_dir on a local disk or an emptyDir volume"
    )
