"""Kafka's default partitioner, as the publisher uses it: :mod:`agentstream.schemas.partitioner`
(both sides need it: the services check that a session's events come where its key puts them)."""

from agentstream.schemas.partitioner import KeyPartitioner, murmur2, partition_for, to_positive

__all__ = ["KeyPartitioner", "murmur2", "partition_for", "to_positive"]
