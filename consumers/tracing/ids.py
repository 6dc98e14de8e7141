"""Deterministic trace and span ids, derived from the events themselves.

Assembling the same events again (after a restart, on another instance) gives the same ids,
so a re-export replaces or duplicates identical spans instead of creating a second trace.
"""

from __future__ import annotations

import hashlib

_INVALID_TRACE = bytes(16)
_INVALID_SPAN = bytes(8)


def _digest(*parts: str) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        data = part.encode()
        h.update(len(data).to_bytes(4, "big"))
        h.update(data)
    return h.digest()


def trace_id_for(session_id: str, turn_key: str) -> bytes:
    """16 bytes from ``(session_id, turn key)``; never all zeros (invalid in OTLP)."""
    digest = _digest("trace", session_id, turn_key)
    return digest if digest != _INVALID_TRACE else b"\x00" * 15 + b"\x01"


def span_id_for(trace_id: bytes, *parts: str) -> bytes:
    """8 bytes from the trace id and what identifies the span (usually its opening event id)."""
    digest = _digest("span", trace_id.hex(), *parts)[:8]
    return digest if digest != _INVALID_SPAN else b"\x00" * 7 + b"\x01"
