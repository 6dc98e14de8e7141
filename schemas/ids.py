"""Cheap, unique, time-sortable event ids (UUID version 7, RFC 9562).

``uuid.uuid4()`` costs about 2.7 µs here; an id from :func:`new_event_id` costs well under
1 µs. Layout: 48 bits of Unix milliseconds, the version nibble, then a 74-bit counter split
around the variant bits. The counter starts at a random value in every process and goes up
by one per id (RFC 9562 section 6.2, method 2, "monotonic random"), so ids are unique within
a process for 2**74 ids and collide across processes only if two random 74-bit starting
points land within a few million of each other in the same millisecond.

Ids sort by creation time to the millisecond, and within a process strictly by creation
order. They are lower-case canonical UUID text, so PostgreSQL's ``uuid`` type accepts them.
"""

from __future__ import annotations

import itertools
import os
import time

_COUNTER_MASK = (1 << 74) - 1
_LOW_MASK = (1 << 48) - 1
_HIGH_MASK = (1 << 26) - 1
_VARIANT = 0b10 << 62
_counter = itertools.count(int.from_bytes(os.urandom(10), "big") & _COUNTER_MASK)
_time_ns = time.time_ns
# (millisecond, counter >> 48, "tttttttt-tttt-7aaa-vbbb-"): everything but the last 12 hex
# digits (the counter's low 48 bits) changes at most once per millisecond, so it is formatted
# then. A tuple is replaced whole, so threads never see it torn.
_prefix: tuple[int, int, str] = (-1, -1, "")


def new_event_id() -> str:
    """Return a new UUIDv7 string. Thread-safe (``itertools.count`` is atomic in CPython)."""
    global _prefix
    c = next(_counter)  # past 2**74 it wraps: only its low 74 bits are written
    ms = _time_ns() // 1_000_000
    high = c >> 48
    cached_ms, cached_high, prefix = _prefix
    if ms != cached_ms or high != cached_high:
        prefix = _format_prefix(ms, high & _HIGH_MASK)
        _prefix = (ms, high, prefix)
    return prefix + "%012x" % (c & _LOW_MASK)


def _format_prefix(ms: int, high: int) -> str:
    """The text before the last 12 hex digits: the time, the version, then the counter's top
    26 bits as rand_a (12 bits), the variant and the top 14 bits of rand_b."""
    t = f"{ms:012x}"
    h = f"{(high >> 14) << 16 | _VARIANT >> 48 | (high & 0x3FFF):07x}"
    return f"{t[:8]}-{t[8:]}-7{h[:3]}-{h[3:]}-"


def event_id_millis(event_id: str) -> int:
    """The Unix time in milliseconds encoded in a UUIDv7 event id."""
    return int(event_id[:8] + event_id[9:13], 16)


def new_instance_id() -> str:
    """A producer instance id: host name and process id plus 6 random hex characters."""
    host = os.uname().nodename.split(".")[0] or "host"
    return f"{host}-{os.getpid()}-{os.urandom(3).hex()}"
