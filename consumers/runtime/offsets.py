"""Which offset of a partition may be committed: the end of its contiguous finished prefix."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Protocol, TypeVar


class _HasOffset(Protocol):
    @property
    def offset(self) -> int: ...


R = TypeVar("R", bound=_HasOffset)


class PartitionOffsets:
    """Tracks the records of one partition from fetch to finish.

    Each received record starts with one hold (the worker's); :meth:`hold` adds one per
    batch handler that buffers it, :meth:`release` drops one. A record is finished when it
    holds nothing. :meth:`committable` is the offset of the first unfinished record, or one
    past the last received record when all are finished: committing it never skips an
    unfinished record.
    """

    __slots__ = ("_holds", "_next", "_order", "first")

    def __init__(self) -> None:
        self._order: deque[int] = deque()
        self._holds: dict[int, int] = {}
        self._next: int | None = None
        self.first: int | None = None
        """The first offset received: where this owner started (the group's position)."""

    def received(self, offset: int) -> bool:
        """Track a fetched record; False (and nothing tracked) for an offset already seen."""
        if self._next is not None and offset < self._next:
            return False
        if self.first is None:
            self.first = offset
        self._order.append(offset)
        self._holds[offset] = 1
        self._next = offset + 1
        return True

    def received_all(self, records: Iterable[R]) -> list[R]:
        """:meth:`received` for fetched records in offset order, in one pass: the records
        now tracked (those behind the last received are left out)."""
        order, holds, after = self._order, self._holds, self._next
        new: list[R] = []
        for record in records:
            offset = record.offset
            if after is not None and offset < after:
                continue
            order.append(offset)
            holds[offset] = 1
            after = offset + 1
            new.append(record)
        if new:
            if self.first is None:
                self.first = new[0].offset
            self._next = after
        return new

    def hold(self, offset: int, count: int = 1) -> None:
        self._holds[offset] += count

    def release(self, offset: int) -> None:
        left = self._holds[offset] - 1
        if left:
            self._holds[offset] = left
        else:
            del self._holds[offset]

    def release_all(self, offsets: Iterable[int]) -> None:
        """:meth:`release` each of ``offsets``."""
        holds = self._holds
        for offset in offsets:
            left = holds[offset] - 1
            if left:
                holds[offset] = left
            else:
                del holds[offset]

    @property
    def next(self) -> int | None:
        """One past the last offset received: where the next record is expected (None before
        any came)."""
        return self._next

    @property
    def outstanding(self) -> int:
        """Records received and not finished (queued, in progress or buffered in batches)."""
        return len(self._holds)

    def committable(self) -> int | None:
        """The offset to commit (next record to read), or None before any record came."""
        order, holds = self._order, self._holds
        while order and order[0] not in holds:
            order.popleft()
        if order:
            return order[0]
        return self._next
