"""A restore that cannot reach the group's offsets is retried, then logged and counted."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import TopicPartition

from agentstream.consumers.loops import service as loops_service
from agentstream.consumers.loops.service import SERVICE, LoopService, LoopSettings
from agentstream.consumers.runtime import EventConsumer


async def test_restore_failure_is_retried_counted_and_not_fatal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0

    async def unavailable(*args: Any, **kwargs: Any) -> dict[TopicPartition, int | None]:
        nonlocal calls
        calls += 1
        raise KafkaConnectionError("coordinator not available")

    monkeypatch.setattr(loops_service, "committed_offsets", unavailable)
    settings = LoopSettings(topic_prefix="unit")
    service = LoopService(EventConsumer(settings, service=SERVICE.name), settings)
    await service.restore(frozenset({TopicPartition("unit.events", 0)}))
    assert calls == 3
    failures = service.consumer.registry.get_sample_value("agentstream_loop_restore_failures_total")
    assert failures == 1
