"""A rebalance storm: persistence instances join and leave (SIGTERM and kill -9) while events
flow at a steady rate. Every event is stored, once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.chaos import Figures, Row, end_offsets, size, sqlite_rows
from support.chaos import traffic as make_traffic
from support.produce import produce_events
from support.runtime import ServiceProcess, committed_offsets, wait_until

from agentstream.schemas.settings import KafkaSettings

SESSIONS = size(10, 80)
RATE = size(400, 1_500)  # events/s


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        process.kill()


async def test_rebalance_storm_stores_every_event_once(
    kafka_settings: KafkaSettings,
    tmp_path: Path,
    processes: list[ServiceProcess],
    group_env: dict[str, str],
) -> None:
    figures = Figures(
        "rebalance-storm",
        "Rebalance storm: persistence instances joining, leaving (SIGTERM) and killed (-9) "
        f"under {RATE} events/s",
        "every event stored exactly once: at-least-once delivery, idempotent store",
    )
    events = make_traffic(SESSIONS).events
    db = tmp_path / "store.db"

    def start() -> ServiceProcess:
        process = ServiceProcess(
            "persistence", kafka_settings, "--store", f"sqlite:///{db}", env=group_env
        ).start()
        processes.append(process)
        return process

    async def stream() -> None:
        tick = 0.05
        per_tick = max(1, int(RATE * tick))
        for i in range(0, len(events), per_tick):
            await produce_events(kafka_settings, events[i : i + per_tick])
            await asyncio.sleep(tick)

    first = start()
    await first.wait_ready()
    streaming = asyncio.create_task(stream())
    changes: list[str] = []
    try:
        cycle = 0
        while not streaming.done() or cycle < 2:  # at least two full cycles of churn
            joiner = start()
            await joiner.wait_ready()
            changes.append("join")
            leaver = start()
            await leaver.wait_ready()
            changes.append("join")
            await joiner.stop()
            changes.append("leave (SIGTERM)")
            leaver.kill()
            changes.append("kill -9")
            cycle += 1
        await streaming
    finally:
        if not streaming.done():
            streaming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streaming
    topic = kafka_settings.routing().events
    group = f"{kafka_settings.topic_prefix}.persistence"

    async def drained() -> bool:
        ends = await end_offsets(kafka_settings, [topic])
        committed = await committed_offsets(kafka_settings, group, [topic])
        return all(committed.get(tp, 0) >= end for tp, end in ends.items())

    await wait_until(drained, timeout=90, what="the survivor drained the stream")
    await first.stop()
    ids = [r[0] for r in sqlite_rows(db)]
    sent = {e.event_id for e in events}
    figures.rows.append(
        Row("persistence", len(events), stored=len(set(ids) & sent), lost=len(sent - set(ids)),
            duplicated=len(ids) - len(set(ids)),
            note=f"{len(changes)} membership changes: " + ", ".join(changes))
    )  # fmt: skip
    figures.details = {"cycles": cycle, "instances_started": len(processes)}
    figures.write()
    assert sent <= set(ids) and len(ids) == len(set(ids))
