"""Kafka's default partitioner for keyed records, so every client agrees on a session's partition.

The Java client (``BuiltInPartitioner.partitionForKey``) and librdkafka's ``murmur2_random``
partitioner (confluent-kafka's default for Java compatibility) both place a keyed record on
``toPositive(murmur2(key)) % numPartitions``, counting every partition of the topic, available
or not. :func:`partition_for` computes exactly that, so events of one session land on the same
partition whichever client produced them.
"""

from __future__ import annotations

import struct

__all__ = ["KeyPartitioner", "murmur2", "partition_for", "to_positive"]

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``: 32-bit MurmurHash2 with Kafka's seed, as a signed Java int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    blocks = length // 4
    if blocks:
        for k in struct.unpack_from(f"<{blocks}I", data):
            k = (k * _M) & _MASK
            k ^= k >> 24
            k = (k * _M) & _MASK
            h = ((h * _M) & _MASK) ^ k
    tail = length & ~3
    rest = length & 3
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def to_positive(number: int) -> int:
    """Kafka's ``Utils.toPositive``: clear the sign bit (not ``abs``)."""
    return number & 0x7FFFFFFF


def partition_for(key: bytes, num_partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key`` among ``num_partitions``."""
    if num_partitions <= 0:
        raise ValueError(f"expected a positive partition count, got {num_partitions}")
    return to_positive(murmur2(key)) % num_partitions


class KeyPartitioner:
    """:func:`partition_for` with a bounded memo: a pod has few live sessions, hashed per event."""

    def __init__(self, max_entries: int = 16_384) -> None:
        self._max_entries = max_entries
        self._hashes: dict[bytes, int] = {}

    def __call__(self, key: bytes, num_partitions: int) -> int:
        positive = self._hashes.get(key)
        if positive is None:
            if len(self._hashes) >= self._max_entries:
                self._hashes.clear()
            positive = self._hashes[key] = to_positive(murmur2(key))
        return positive % num_partitions
