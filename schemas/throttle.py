"""Log lines about a problem that repeats: each kind at most once per interval.

A pod whose broker is away for an hour, or a service whose OTLP collector never answers,
would write thousands of identical lines (1,600 in two minutes from the tracing service of
``agentstream up`` without a collector). The metrics count every occurrence; the log needs
the first one at once, a reminder now and then with how many were held back, and, where the
caller can tell, one line when it works again. The producer uses it every 10 s per kind
(connects, drops, spooling), the services once a minute (OTLP exports, webhooks).

:class:`RepeatFilter` does the same for the Kafka client's own lines, which are not ours to
call less often: aiokafka retries a lost broker every ``retry_backoff_ms`` (100 ms) and logs
each attempt, about 50 ERROR lines a second per service process during an outage (1,019 in
20 s, measured), drowning the lines that say what happened.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["RepeatFilter", "ThrottledLog", "quiet_client_repeats"]


class _Kind:
    __slots__ = ("amount", "failing", "held", "next")

    def __init__(self) -> None:
        self.next = float("-inf")  # when a line of this kind may be logged again
        self.held = 0
        self.amount = 0
        self.failing = False

    def admit(self, now: float, interval_s: float, amount: int = 0) -> bool:
        """Whether a line of this kind may be logged at ``now`` (then not again for
        ``interval_s``); one held back otherwise, with its ``amount``."""
        if now < self.next:
            self.held += 1
            self.amount += amount
            return False
        self.next = now + interval_s
        return True


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
            if not kind.admit(self._clock(), self._interval_s, amount):
                return
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

    def flush(self, key: str, message: str, *args: object) -> None:
        """Log what is held back of ``key`` (at shutdown: it would never be said), if any."""
        with self._lock:
            kind = self._kinds.get(key)
            if kind is None or not kind.held:
                return
            since = self._since(kind)
        self._logger.log(self._level, message + since, *args)

    def _since(self, kind: _Kind) -> str:
        held, amount = kind.held, kind.amount
        kind.held = kind.amount = 0
        if not held:
            return ""
        total = f", {amount:,} {self._unit}" if self._unit else ""
        return f" ({held} more since the last line{total})"


class RepeatFilter(logging.Filter):
    """Holds back repeats of a Kafka client's WARNING and ERROR lines: the first of each kind
    (logger and message template, so ``Unable connect to node with id %s: %s`` whatever the
    node) passes, then one per ``interval_s``, saying how many were held back. Lower levels
    pass untouched (group joins and assignments are worth every line). ``thread_prefix``
    limits it to the records of threads so named (a library's own client thread, leaving the
    application's other clients alone). Thread-safe."""

    def __init__(
        self,
        interval_s: float = 10.0,
        *,
        logger_prefix: str = "aiokafka",
        thread_prefix: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._logger_prefix = logger_prefix
        self._thread_prefix = thread_prefix
        self._clock = clock
        self._kinds: dict[tuple[str, str], _Kind] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self._logger_prefix):
            return True
        if self._thread_prefix is not None and not (record.threadName or "").startswith(
            self._thread_prefix
        ):
            return True
        key = (record.name, str(record.msg))
        with self._lock:
            kind = self._kinds.get(key)
            if kind is None:
                if len(self._kinds) >= 1024:  # templates are few; stay bounded
                    self._kinds.clear()
                kind = self._kinds[key] = _Kind()
            if not kind.admit(self._clock(), self._interval_s):
                return False
            held, kind.held = kind.held, 0
        if held:
            record.msg = f"{record.getMessage()} ({held} more like this since the last one)"
            record.args = None
        return True


_installed: dict[str | None, RepeatFilter] = {}
_install_lock = threading.Lock()


def quiet_client_repeats(
    *, thread_prefix: str | None = None, interval_s: float = 10.0
) -> RepeatFilter:
    """Attach a :class:`RepeatFilter` to every aiokafka logger (once per ``thread_prefix``).

    A logger's filters see the records it creates, whatever handlers the application set up,
    so this works in a process agentstream does not own (an agent pod, with ``thread_prefix``
    naming the publisher's thread) as in its own (the services, for every thread)."""
    import aiokafka.admin  # noqa: F401 - its modules create their loggers on import

    with _install_lock:
        found = _installed.get(thread_prefix)
        if found is not None:
            return found
        repeat = _installed[thread_prefix] = RepeatFilter(interval_s, thread_prefix=thread_prefix)
        for name in list(logging.Logger.manager.loggerDict):
            if name == "aiokafka" or name.startswith("aiokafka."):
                logging.getLogger(name).addFilter(repeat)
        return repeat
