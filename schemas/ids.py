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
_RAND_B_MASK = (1 << 62) - 1
_VARIANT = 0b10 << 62
_counter = itertools.count(int.from_bytes(os.urandom(10), "big") & _COUNTER_MASK)
_time_ns = time.time_ns
# (millisecond, "tttttttt-tttt-7"): the time part changes at most once per millisecond, so it
# is formatted once per millisecond. A tuple is replaced whole, so threads never see it torn.
_prefix: tuple[int, str] = (-1, "")


def new_event_id() -> str:
    """Return a new UUIDv7 string. Thread-safe (``itertools.count`` is atomic in CPython)."""
    global _prefix
    c = next(_counter) & _COUNTER_MASK
    ms = _time_ns() // 1_000_000
    cached_ms, prefix = _prefix
    if ms != cached_ms:
        t = f"{ms:012x}"
        prefix = f"{t[:8]}-{t[8:]}-7"
        _prefix = (ms, prefix)
    # rand_a (the counter's top 12 bits), then the variant and rand_b: 80 bits as 20 hex
    # digits in one C call (bytes.hex), the first always 0.
    h = ((c >> 62) << 64 | _VARIANT | (c & _RAND_B_MASK)).to_bytes(10, "big").hex()
    return f"{prefix}{h[1:4]}-{h[4:8]}-{h[8:]}"


def event_id_millis(event_id: str) -> int:
    """The Unix time in milliseconds encoded in a UUIDv7 event id."""
    return int(event_id[:8] + event_id[9:13], 16)


def new_instance_id() -> str:
    """A producer instance id: host name and process id plus 6 random hex characters."""
    host = os.uname().nodename.split(".")[0] or "host"
    return f"{host}-{os.getpid()}-{os.urandom(3).hex()}"
