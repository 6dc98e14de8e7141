from __future__ import annotations

import itertools
import threading
import time
import uuid

import pytest

from agentstream.schemas import ids, new_event_id
from agentstream.schemas.ids import event_id_millis, new_instance_id


def test_event_ids_are_uuid7_text() -> None:
    value = new_event_id()
    parsed = uuid.UUID(value)
    assert str(parsed) == value
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_event_ids_carry_their_creation_time() -> None:
    before = time.time_ns() // 1_000_000
    value = new_event_id()
    after = time.time_ns() // 1_000_000
    assert before <= event_id_millis(value) <= after


def test_event_ids_sort_by_creation_within_a_process() -> None:
    ids = [new_event_id() for _ in range(10_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_event_ids_are_unique_across_threads() -> None:
    found: list[list[str]] = [[] for _ in range(4)]

    def make(slot: list[str]) -> None:
        slot.extend(new_event_id() for _ in range(20_000))

    threads = [threading.Thread(target=make, args=(slot,)) for slot in found]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [i for slot in found for i in slot]
    assert len(set(everything)) == len(everything) == 80_000


def test_instance_ids_differ() -> None:
    assert new_instance_id() != new_instance_id()


@pytest.mark.parametrize(
    "counter",
    [
        0,
        1,
        (1 << 48) - 1,
        1 << 48,
        (1 << 62) - 1,
        1 << 62,
        (1 << 74) - 1,
        (1 << 74) + 5,
        0x2ABCDEF0123456789AB,
    ],
)
def test_event_id_layout(monkeypatch: pytest.MonkeyPatch, counter: int) -> None:
    # RFC 9562: 48 bits of milliseconds, version 7, rand_a = the counter's top 12 of 74 bits,
    # the variant, rand_b = its low 62 bits (a counter past 2**74 wraps).
    ms = 0x0193_5A2B_C4D5
    monkeypatch.setattr(ids, "_counter", itertools.count(counter))
    monkeypatch.setattr(ids, "_time_ns", lambda: ms * 1_000_000 + 999_999)
    value = uuid.UUID(new_event_id())
    wrapped = counter & ((1 << 74) - 1)
    assert value.int >> 80 == ms
    assert value.version == 7 and value.variant == uuid.RFC_4122
    assert (value.int >> 64) & 0xFFF == wrapped >> 62
    assert value.int & ((1 << 62) - 1) == wrapped & ((1 << 62) - 1)
    following = uuid.UUID(new_event_id())  # the next id: one more, same millisecond
    assert following.int & ((1 << 62) - 1) == (wrapped + 1) & ((1 << 62) - 1)
