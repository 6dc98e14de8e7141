"""Log lines about a problem that repeats: each kind at most once per interval.

A pod whose broker is away for an hour, or a service whose OTLP collector never answers,
would write thousands of identical lines (1,600 in two minutes from the tracing service of
``agentstream up`` without a collector). The metrics count every occurrence; the log needs
the first one at once, a reminder now and then with how many were held back, and, where the
caller can tell, one line when it works again. The producer uses it every 10 s per kind
(connects, drops, spooling), the services once a minute (OTLP exports, webhooks).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["ThrottledLog"]


class _Kind:
    __slots__ = ("amount", "failing", "held", "next")

    def __init__(self) -> None:
        self.next = float("-inf")  # when a line of this kind may be logged again
        self.held = 0
        self.amount = 0
        self.failing = False


class ThrottledLog:
    """``log(key, message, *args)``: the first line of a ``key`` at once, later ones at most
    once per ``interval_s``, each saying how many were held back since the last line (and
    their total ``amount`` of ``unit``: spans dropped, alerts not delivered).
    :meth:`recovered` logs once when that ``key`` works again. Thread-safe."""

    def __init__(
        self,
        logger: logging.Logger,
        level: int = logging.WARNING,
        *,
        interval_s: float = 60.0,
        unit: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._level = level
        self._interval_s = interval_s
        self._unit = unit
        self._clock = clock
        self._kinds: dict[str, _Kind] = {}
        self._lock = threading.Lock()

    def __call__(
        self, key: str, message: str, *args: object, amount: int = 0, exc_info: bool = False
    ) -> None:
        """One occurrence of ``key``: ``message % args`` is logged, or held back and counted."""
        with self._lock:
            kind = self._kinds.get(key)
            if kind is None:
                kind = self._kinds[key] = _Kind()
            kind.failing = True
            now = self._clock()
            if now < kind.next:
                kind.held += 1
                kind.amount += amount
                return
            kind.next = now + self._interval_s
            since = self._since(kind)
        self._logger.log(self._level, message + since, *args, exc_info=exc_info)

    def recovered(self, key: str, message: str, *args: object) -> None:
        """``key`` works again: one INFO line (with what was held back), only after
        occurrences; the next occurrence is logged at once."""
        with self._lock:
            kind = self._kinds.get(key)
            if kind is None or not kind.failing:
                return
            kind.failing = False
            kind.next = float("-inf")
            since = self._since(kind)
        self._logger.info(message + since, *args)

    def _since(self, kind: _Kind) -> str:
        held, amount = kind.held, kind.amount
        kind.held = kind.amount = 0
        if not held:
            return ""
        total = f", {amount:,} {self._unit}" if self._unit else ""
        return f" ({held} more since the last line{total})"
