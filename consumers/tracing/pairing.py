"""Pairing a call's opening event with its outcome, inside one turn.

Identity first: when both events carry a ``call_id``, they pair exactly. Without one
(Corail and Calute never send one), the outcome pairs with the **oldest open call of the
same name**, in the order the events were consumed (Kafka offset order, which is the order the
pod emitted them, since one session is one key on one partition). That is correct whenever a
tool's executions finish in the order they started; where they do not, see the notes
(``docs/tracing.md``): no stream without call ids can tell two concurrent calls of the
same tool with the same timing apart.

Retries: a failed call stays known as *failed* until its retry shows up. A new opening of the
same name (Calute repeats ``tool_call_attempt`` on every retry) is numbered as its next
attempt; an outcome that finds no open call of its name (Corail reports retries with
``tool.error {attempt}`` without a new ``tool.called``) continues the failed call as its next
attempt, starting where the failed attempt ended. An error whose ``attempt`` is k > 0 prefers
the failed call whose last attempt was k - 1 over an open call: a fresh call starts at 0.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .spans import Span


@dataclass(slots=True)
class Call:
    """One attempt of a tool call (or another paired operation), with its span."""

    name: str
    call_id: str | None
    span: Span
    attempt: int = 0


class CallTable:
    """Open and failed calls of one turn, per name, in opening order."""

    __slots__ = ("_failed", "_open")

    def __init__(self) -> None:
        self._open: dict[str, deque[Call]] = {}
        self._failed: dict[str, deque[Call]] = {}

    def retry_attempt(self, name: str, call_id: str | None) -> int:
        """The attempt number of a new opening of ``name``: 0, or the next of a failed call."""
        previous = self._take_failed(name, call_id, attempt=None)
        return 0 if previous is None else previous.attempt + 1

    def open(self, call: Call) -> None:
        self._open.setdefault(call.name, deque()).append(call)

    def match(
        self, name: str, call_id: str | None, attempt: int | None = None
    ) -> tuple[Call | None, bool]:
        """The call an outcome belongs to, and whether it continues a failed call (a retry).

        The returned call is no longer open; ``(None, False)`` when nothing matches.
        """
        if call_id is not None:
            call = self._take_open(name, call_id)
            if call is not None:
                return call, False
            failed = self._take_failed(name, call_id, attempt=None)
            if failed is not None:
                return failed, True
        # By name: an outcome with an unknown id may still belong to a call opened without one.
        anonymous = call_id is not None
        if attempt is not None and attempt > 0:
            failed = self._take_failed(name, None, attempt=attempt - 1, anonymous=anonymous)
            if failed is not None:
                return failed, True
        call = self._take_open(name, None, anonymous=anonymous)
        if call is not None:
            return call, False
        failed = self._take_failed(name, None, attempt=None, anonymous=anonymous)
        return (failed, True) if failed is not None else (None, False)

    def mark_failed(self, call: Call) -> None:
        """Remember a failed attempt: its retry may follow."""
        self._failed.setdefault(call.name, deque()).append(call)

    def oldest_open(self, name: str) -> Call | None:
        queue = self._open.get(name)
        return queue[0] if queue else None

    def _take_open(self, name: str, call_id: str | None, *, anonymous: bool = False) -> Call | None:
        queue = self._open.get(name)
        if not queue:
            return None
        for call in queue:
            if anonymous and call.call_id is not None:
                continue
            if call_id is None or call.call_id == call_id:
                queue.remove(call)
                return call
        return None

    def _take_failed(
        self, name: str, call_id: str | None, *, attempt: int | None, anonymous: bool = False
    ) -> Call | None:
        queue = self._failed.get(name)
        if not queue:
            return None
        for call in queue:
            if anonymous and call.call_id is not None:
                continue
            if call_id is not None and call.call_id != call_id:
                continue
            if attempt is not None and call.attempt != attempt:
                continue
            queue.remove(call)
            return call
        return None
