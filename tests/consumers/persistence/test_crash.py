"""``kill -9`` of ``agentstream consume persistence`` at random moments during a 50,000-event
stream: the store ends with exactly the 50,000 distinct events (no loss, no duplicates)."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
from support.persistence import stream
from support.produce import produce_events
from support.runtime import ServiceProcess, http_get, wait_until

from agentstream.consumers.persistence import StoreError, open_store
from agentstream.schemas.settings import KafkaSettings

TOTAL = 50_000
KILLS = 10
ENV = {
    # a killed member stays in the group until its session times out, and the next process
    # joins only then: keep that short (Apache Kafka's default minimum is 6000 ms)
    "AGENTSTREAM_SESSION_TIMEOUT_MS": "2000",
    "AGENTSTREAM_HEARTBEAT_INTERVAL_MS": "400",
    "AGENTSTREAM_COMMIT_INTERVAL_MS": "200",
    "AGENTSTREAM_BATCH_MAX_RECORDS": "500",
    "AGENTSTREAM_BATCH_MAX_WAIT_MS": "50",
}


async def count(url: str) -> int:
    """Events stored so far (0 before the service created the file)."""
    try:
        async with open_store(url, readonly=True) as store:
            return await store.count() if await store.schema_version() else 0
    except StoreError:
        return 0


@pytest.mark.slow
async def test_kill_9_during_a_stream_loses_and_duplicates_nothing(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    events = stream(TOTAL, sessions=500)
    rng = random.Random()

    seen_at_kill: list[int] = []
    feeding: list[asyncio.Task[int]] = []
    chunk = TOTAL // KILLS
    started = time.monotonic()
    try:
        for cycle in range(KILLS):
            with ServiceProcess("persistence", kafka_settings, "--store", url, env=ENV) as proc:
                await proc.wait_ready(timeout=40)
                part = events[cycle * chunk : (cycle + 1) * chunk]
                feeding.append(asyncio.create_task(produce_events(kafka_settings, part)))
                await asyncio.sleep(rng.uniform(0.05, 0.6))  # a random moment of the stream
                proc.kill()
            seen_at_kill.append(await count(url))
            print(
                f"kill {cycle + 1} at {time.monotonic() - started:.1f}s: {seen_at_kill[-1]} stored"
            )
        assert sum(await asyncio.gather(*feeding)) == TOTAL
        with ServiceProcess("persistence", kafka_settings, "--store", url, env=ENV) as proc:
            await proc.wait_ready(timeout=40)
            await wait_until(lambda: _done(url), timeout=60, what=f"{TOTAL} events stored")
            _, body = await http_get(proc.port, "/metrics")
            assert await proc.terminate() == 0
    finally:
        for task in feeding:
            task.cancel()
        await asyncio.gather(*feeding, return_exceptions=True)

    async with open_store(url, readonly=True) as store:
        stored = await store.events(limit=TOTAL + 1)
    ids = [e.event_id for e in stored]
    assert len(ids) == len(set(ids)) == TOTAL
    assert set(ids) == {e.event_id for e in events}
    # the kills landed while events were being written, not only before or after
    assert any(0 < n < TOTAL for n in seen_at_kill), seen_at_kill
    redelivered = [
        line.split()[-1]
        for line in body.decode().splitlines()
        if line.startswith("agentstream_persistence_duplicate_events_total")
    ]
    print(
        f"stored at each kill -9: {seen_at_kill}; redelivered to the last process and "
        f"skipped: {redelivered}"
    )


async def _done(url: str) -> bool:
    return await count(url) == TOTAL
