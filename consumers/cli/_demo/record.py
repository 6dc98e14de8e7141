"""What the demo published, kept compact: ``(event_id, type, session_id)`` of every event.

``agentstream up`` runs the demo until stopped, and its manifest lists every event: kept as
tuples of three strings, that was about 470 bytes an event (0.7 MB/s at 1,500 events/s,
1.6 GB a day at the default 40/s). Here an event costs 21 bytes: its UUID's 16 bytes, one
byte naming its type, four its session; the rare id that is not a UUID is kept as it is.
"""

from __future__ import annotations

import threading
import uuid
from array import array
from collections import Counter
from collections.abc import Iterator

from agentstream.producer import Event, Publisher


class RecordingPublisher:
    """A :class:`~agentstream.producer.Publisher` in front of the pod's publisher that
    remembers what was handed over, in order (see the module docstring)."""

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner
        self._ids = bytearray()
        self._types = array("H")
        self._sessions = array("I")
        self._type_names: list[str] = []
        self._type_index: dict[str, int] = {}
        self._session_names: list[str] = []
        self._session_index: dict[str, int] = {}
        self._odd_ids: dict[int, str] = {}  # position -> an event_id that is not a UUID
        self._lock = threading.Lock()

    def publish(self, event: Event) -> None:
        self.inner.publish(event)
        with self._lock:
            self._record(event.event_id, str(event.type), event.session_id)

    def flush(self, timeout: float | None = None) -> bool:
        return self.inner.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        self.inner.close(timeout)

    def _record(self, event_id: str, event_type: str, session_id: str) -> None:
        try:
            raw = uuid.UUID(event_id)
        except ValueError:
            raw = None
        if raw is None or str(raw) != event_id:  # not a UUID, or not in its canonical form
            self._odd_ids[len(self._types)] = event_id
            self._ids += bytes(16)
        else:
            self._ids += raw.bytes
        self._types.append(_index(event_type, self._type_names, self._type_index))
        self._sessions.append(_index(session_id, self._session_names, self._session_index))

    def __len__(self) -> int:
        return len(self._types)

    def items(self) -> Iterator[tuple[str, str, str]]:
        """``(event_id, type, session_id)`` of each event, in publish order."""
        ids, odd = self._ids, self._odd_ids
        types, sessions = self._type_names, self._session_names
        for i, (t, s) in enumerate(zip(self._types, self._sessions, strict=True)):
            event_id = odd.get(i) or str(uuid.UUID(bytes=bytes(ids[16 * i : 16 * i + 16])))
            yield event_id, types[t], sessions[s]

    def per_session(self) -> Counter[str]:
        """Events published per session id."""
        names = self._session_names
        return Counter({names[i]: n for i, n in Counter(self._sessions).items()})


def _index(name: str, names: list[str], index: dict[str, int]) -> int:
    found = index.get(name)
    if found is None:
        found = index[name] = len(names)
        names.append(name)
    return found
