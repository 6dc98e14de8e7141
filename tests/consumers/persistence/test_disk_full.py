"""A SQLite store whose disk fills up: an outage to wait out, not bad records."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from support.disk import files_limited_to
from support.persistence import count_is, metric, persistence, settings_for, stream
from support.produce import produce_events
from support.runtime import read_records, wait_until

from agentstream.schemas.settings import KafkaSettings


async def test_a_full_disk_is_waited_out_and_nothing_is_lost(
    kafka_settings: KafkaSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "events.db"
    settings = settings_for(kafka_settings, f"sqlite:///{db}")
    first, second = stream(100, prefix="a"), stream(2_000, prefix="b")
    caplog.set_level(logging.INFO, logger="agentstream.consumers.persistence")
    async with persistence(settings) as (consumer, store):
        await produce_events(kafka_settings, first)
        await wait_until(lambda: count_is(store, 100), what="the first events stored")
        largest = max(entry.stat().st_size for entry in os.scandir(tmp_path))
        with files_limited_to(largest + 8192):  # room for little more than what is there
            await produce_events(kafka_settings, second)
            await wait_until(
                lambda: metric(consumer, "agentstream_persistence_store_unavailable_total") >= 2,
                what="writes refused for want of room",
            )
            assert metric(consumer, "agentstream_persistence_store_up") == 0
        await wait_until(lambda: count_is(store, 2_100), timeout=60, what="everything stored")
        assert metric(consumer, "agentstream_persistence_store_up") == 1
    # EFBIG here; ENOSPC on a full disk says "database or disk is full" (seen on a tmpfs)
    assert "disk I/O error" in caplog.text or "database or disk is full" in caplog.text
    assert "is back after" in caplog.text
    dead = await read_records(settings, settings.routing().dlq, 0)
    assert dead == []  # an outage, not bad records
