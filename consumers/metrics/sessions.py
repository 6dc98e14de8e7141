"""``agentstream_active_sessions``: sessions with an event in the last few minutes.

Each partition keeps the time of the latest event of each of its sessions; the gauge counts
the recent ones when Prometheus scrapes. A session is one key, hence one partition of the
events topic, hence one instance of the service: summed over instances, every active
session counts once. Only the events topic counts (``llm.token`` travels on the tokens
topic, whose partitions may be assigned to another instance).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PartitionKey = tuple[str, int]


class ActiveSessions(Collector):
    """Latest event time per session, per partition; counted and pruned at scrape."""

    def __init__(
        self,
        window_s: float,
        *,
        clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if window_s <= 0:
            raise ValueError(f"expected an active-session window > 0 s, got {window_s}")
        self.window_s = window_s
        self._clock = clock
        self._partitions: dict[PartitionKey, dict[str, float]] = {}
        self.lock = threading.Lock()
        """Held by whoever changes the sessions (once per batch) and by scrapes."""
        if registry is not None:
            registry.register(self)

    def partition(self, key: PartitionKey) -> dict[str, float]:
        """The ``session → latest event time`` table of a partition (call with ``lock`` held)."""
        table = self._partitions.get(key)
        if table is None:
            table = self._partitions[key] = {}
        return table

    def detach(self, key: PartitionKey) -> dict[str, float] | None:
        """Take a partition's table out of the count (its partition was revoked)."""
        with self.lock:
            return self._partitions.pop(key, None)

    def attach(self, key: PartitionKey, table: dict[str, float]) -> None:
        """Count a detached table again (its partition was assigned back)."""
        with self.lock:
            self._partitions[key] = table

    def count(self) -> int:
        """Sessions seen within the window; forgets the others."""
        cutoff = self._clock() - self.window_s
        active = 0
        with self.lock:
            for table in self._partitions.values():
                stale = [s for s, seen in table.items() if seen < cutoff]
                for session in stale:
                    del table[session]
                active += len(table)
        return active

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("agentstream_active_sessions", self._help())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("agentstream_active_sessions", self._help(), value=self.count())

    def _help(self) -> str:
        return (
            f"Sessions with an event in the last {self.window_s:g} s on this instance's "
            "partitions of the events topic (sum over instances)."
        )
