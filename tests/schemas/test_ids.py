from __future__ import annotations

import threading
import time
import uuid

from agentstream.schemas import new_event_id
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
