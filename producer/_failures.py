"""Failure counting for the producer's never-raise paths (collectors, forwarder, bus)."""

from __future__ import annotations

import logging
import threading

__all__ = ["FailureLog"]

logger = logging.getLogger("agentstream.producer.collectors")  # where these lines always went


class FailureLog:
    """Counts failures and logs the 1st, 10th, 100th, ... of them (a broken collector on a
    hot path must not flood the log, and must not go unnoticed either). Thread-safe."""

    __slots__ = ("_lock", "count", "what")

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0
        self._lock = threading.Lock()

    def record(self, exc: BaseException, detail: str) -> None:
        with self._lock:
            self.count += 1
            count = self.count
        if _is_power_of_ten(count):
            logger.error(
                "%s failed (%d failure(s) so far; logging the 1st, 10th, 100th...): %s: %r",
                self.what,
                count,
                detail,
                exc,
                exc_info=exc,
            )


def _is_power_of_ten(n: int) -> bool:
    while n % 10 == 0 and n >= 10:
        n //= 10
    return n == 1
