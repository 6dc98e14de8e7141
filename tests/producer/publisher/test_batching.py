"""Filling aiokafka batches: the direct path to the compiled builder and the public
``append`` path take the same records and build the same bytes."""

from __future__ import annotations

from collections import deque
from typing import Any

from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from agentstream.producer._lanes import _fill
from agentstream.producer._records import _Record


class PublicOnly:
    """A batch that only has the public BatchBuilder API."""

    def __init__(self, inner: BatchBuilder) -> None:
        self.inner = inner

    def append(self, **kwargs: Any) -> Any:
        return self.inner.append(**kwargs)


def records(n: int) -> deque[_Record]:
    return deque(
        _Record(
            "t",
            f"session-{i % 7}".encode(),
            b"v" * (100 + i),
            [("ce_id", str(i).encode()), ("ce_type", b"tool.called")],
            1_700_000_000.123 + i,
            i + 1,
        )
        for i in range(n)
    )


def test_both_paths_fill_a_batch_alike_and_stop_when_it_is_full() -> None:
    built = []
    for wrap in (lambda b: b, PublicOnly):
        queue = records(100)
        batch = BatchBuilder(4_000, 0)
        taken = _fill(wrap(batch), queue)
        assert 0 < len(taken) < 100  # 4 KB holds some, not all
        assert [r.index for r in taken] == list(range(1, len(taken) + 1))
        assert [r.index for r in queue][:1] == [len(taken) + 1]
        assert all(r.attempts == 1 for r in taken) and all(r.attempts == 0 for r in queue)
        assert batch.record_count() == len(taken)
        built.append(bytes(batch._build()))
    assert built[0] == built[1]
    (fast, _public) = built
    read = list(DefaultRecordBatch(bytearray(fast)))
    assert [r.offset for r in read] == list(range(len(read)))
    assert read[3].key == b"session-3" and read[3].timestamp == 1_700_000_003_123
    assert read[3].headers == [("ce_id", b"3"), ("ce_type", b"tool.called")]
