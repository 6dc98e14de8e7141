"""Warnings about a problem that repeats (an endpoint down for an hour), at most one a minute.

A service that logs every failed export or webhook call writes thousands of identical lines
while a peer is down (1,600 in two minutes from the tracing service of ``agentstream up``
without a collector). The metrics count every occurrence; the log needs the first one, a
reminder now and then with how many there were, and a line when it stops. (The producer's
``_RateLimitedLog`` is the pod-side cousin: keyed lines at most every 10 s, no recovery line;
the two sides do not import each other.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class ThrottledWarning:
    """The first :meth:`failed` is logged at once, later ones at most once per ``interval_s``
    with how many were held back since the last line (and their total ``unit``: spans
    dropped, alerts not delivered); :meth:`recovered` logs once when it works again."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        unit: str,
        *,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._what = what
        self._unit = unit
        self._interval_s = interval_s
        self._clock = clock
        self._next = float("-inf")
        self._held = 0
        self._held_amount = 0
        self._failing = False

    def failed(self, message: str, amount: int) -> None:
        """One occurrence: ``message`` says what happened, ``amount`` how many ``unit``."""
        self._failing = True
        now = self._clock()
        if now < self._next:
            self._held += 1
            self._held_amount += amount
            return
        self._logger.warning("%s: %s%s", self._what, message, self._since())
        self._next = now + self._interval_s

    def recovered(self, message: str) -> None:
        """It works again: one line (with what was held back), only after failures."""
        if self._failing:
            self._logger.info("%s: %s%s", self._what, message, self._since())
            self._failing = False
            self._next = float("-inf")

    def _since(self) -> str:
        held, amount = self._held, self._held_amount
        self._held = self._held_amount = 0
        if not held:
            return ""
        return f" ({held} more failures since the last notice, {amount:,} {self._unit})"
