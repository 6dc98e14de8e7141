"""An in-memory stand-in for KafkaPublisher, for pure unit tests of the bus and emitter only
(integration tests use the real publisher and broker)."""

from __future__ import annotations

import threading

import pytest

from agentstream.schemas import Event


class RecordingPublisher:
    def __init__(self, *, fail: bool = False) -> None:
        self.events: list[Event] = []
        self.flushes = 0
        self.closed = False
        self.fail = fail
        self._lock = threading.Lock()

    def publish(self, event: Event) -> None:
        if self.fail:
            raise RuntimeError("publisher is broken")
        with self._lock:
            self.events.append(event)
            event.seq = len(self.events)  # as KafkaPublisher stamps it

    def flush(self, timeout: float | None = None) -> bool:
        self.flushes += 1
        return True

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


@pytest.fixture
def recording() -> type[RecordingPublisher]:
    """The in-memory publisher class (``recording()`` / ``recording(fail=True)``)."""
    return RecordingPublisher
