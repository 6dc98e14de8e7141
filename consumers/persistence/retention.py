"""Retention: delete events older than N days, a small batch at a time.

Each statement deletes at most ``batch_size`` rows (a short transaction, so the writer never
waits long for a lock), with a pause between statements; a sweep runs every ``interval``
seconds until nothing older than the cutoff is left. Age is the event's own ``timestamp``.
An event older than the cutoff that arrives later (a replay) is stored, then swept again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, Counter

from agentstream.schemas import utc_now

from .store import Store, StoreError

log = logging.getLogger(__name__)


class Retention:
    def __init__(
        self,
        store: Store,
        *,
        days: float,
        registry: CollectorRegistry,
        batch_size: int = 1_000,
        pause: float = 0.05,
        interval: float = 300.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if days <= 0:
            raise ValueError(f"expected retention days > 0, got {days}")
        self.store = store
        self.keep = timedelta(days=days)
        self.batch_size = batch_size
        self.pause = pause
        self.interval = interval
        self.clock = clock
        self.deleted = Counter(
            "agentstream_persistence_retention_deleted_total",
            "Events deleted because they were older than the retention period.",
            registry=registry,
        )

    async def sweep(self) -> int:
        """Delete everything older than the retention period; return how many rows."""
        cutoff = self.clock() - self.keep
        total = 0
        while True:
            deleted = await self.store.delete_before(cutoff, limit=self.batch_size)
            total += deleted
            self.deleted.inc(deleted)
            if deleted < self.batch_size:
                break
            await asyncio.sleep(self.pause)
        if total:
            log.info("retention: deleted %d events stamped before %s", total, cutoff.isoformat())
        return total

    async def run(self) -> None:
        """Sweep every ``interval`` seconds until cancelled; store errors wait for the next."""
        while True:
            try:
                await self.sweep()
            except StoreError as exc:
                log.warning("retention sweep failed, next in %.0f s: %s", self.interval, exc)
            await asyncio.sleep(self.interval)
