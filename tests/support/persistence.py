"""Running the persistence service in tests, and streams of events to feed it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from agentstream.consumers.persistence import Store
from agentstream.consumers.persistence.service import SERVICE, PersistenceSettings
from agentstream.consumers.runtime import EventConsumer
from agentstream.schemas import Event
from agentstream.schemas.settings import KafkaSettings
from support.runtime import running_consumer
from support.samples import SAMPLE_DATA

TYPES = sorted(SAMPLE_DATA)


def settings_for(kafka: KafkaSettings, store: str, **overrides: Any) -> PersistenceSettings:
    """Settings on ``kafka``'s broker and topics, tuned for quick tests."""
    fields: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "topic_prefix": kafka.topic_prefix,
        "store": store,
        "linger_ms": 1,
        "commit_interval_ms": 100,
        "batch_max_records": 200,
        "batch_max_wait_ms": 20,
        "store_retry_backoff_ms": 20,
        "store_retry_max_backoff_ms": 200,
    }
    return PersistenceSettings(**{**fields, **overrides})


def stream(count: int, *, sessions: int = 20, prefix: str = "s") -> list[Event]:
    """``count`` events of every type, spread over ``sessions`` sessions, per-session seq."""
    return [
        Event(
            type=TYPES[i % len(TYPES)],
            session_id=f"{prefix}{i % sessions}",
            agent_id=f"agent-{i % 3}",
            seq=i,
            source="pod-1",
            data=dict(SAMPLE_DATA[TYPES[i % len(TYPES)]]),
        )
        for i in range(count)
    ]


@contextlib.asynccontextmanager
async def persistence(settings: PersistenceSettings) -> AsyncIterator[tuple[EventConsumer, Store]]:
    consumer = EventConsumer(settings, service=SERVICE.name)
    async with SERVICE.setup(consumer, settings) as store, running_consumer(consumer):
        assert isinstance(store, Store)
        yield consumer, store


def metric(consumer: EventConsumer, name: str) -> float:
    return consumer.registry.get_sample_value(name) or 0.0


async def count_is(store: Store, n: int) -> bool:
    return await store.count() == n


def committed_total(consumer: EventConsumer) -> int:
    """The sum of the offsets the consumer's group committed (one count over partitions)."""
    return sum(consumer.committed_offsets().values())


def dead_lettered(consumer: EventConsumer) -> float:
    """Records the consumer sent to the dead-letter topic, of every type."""
    return sum(
        sample.value
        for family in consumer.registry.collect()
        for sample in family.samples
        if sample.name == "agentstream_consumer_records_total"
        and sample.labels.get("outcome") == "dead_lettered"
    )
