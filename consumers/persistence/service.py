"""``agentstream consume persistence``: every event into SQLite or PostgreSQL, exactly once."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, TypeVar

from pydantic import Field

from agentstream.consumers.runtime import EventConsumer, HttpPort, ServiceSettings, ServiceSpec
from agentstream.consumers.runtime.retry import backoff_seconds
from agentstream.schemas.settings import checked
from agentstream.schemas.throttle import ThrottledLog

from .retention import Retention
from .sink import EventSink, SinkMetrics
from .store import Store, StoreUnavailableError, open_store, store_url_problem

T = TypeVar("T")
log = logging.getLogger(__name__)


class PersistenceSettings(ServiceSettings):
    http_port: HttpPort = 9101
    store: Annotated[str, checked(store_url_problem)] = Field(
        default="sqlite:///agentstream.db",
        description="sqlite:///path (relative), sqlite:////path (absolute) or postgresql://...",
        repr=False,  # it may hold a password (messages show it through redact_url)
    )
    retention_days: float | None = Field(
        default=None,
        gt=0,
        le=36_500,  # a century; far more overflowed the cutoff date (a traceback at start)
        description="Delete events older than this many days (default: keep).",
    )
    retention_interval_s: float = Field(default=300.0, gt=0, description="Time between sweeps.")
    retention_batch_size: int = Field(default=1_000, ge=1, description="Rows per DELETE.")
    batch_max_records: int = Field(
        default=1_000,
        ge=1,
        description="Most events per transaction (one partition's). Measured against 2,000: "
        "as fast on SQLite, faster on PostgreSQL (more batches written concurrently).",
    )
    batch_max_wait_ms: int = Field(
        default=200, ge=0, description="Longest wait for a batch to fill before it is written."
    )
    store_retry_backoff_ms: int = Field(default=200, ge=1, description="First retry delay.")
    store_retry_max_backoff_ms: int = Field(
        default=5_000, ge=1, description="Longest delay between retries while the store is down."
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="URL",
        help="sqlite:///path or postgresql://user@host/db (default: AGENTSTREAM_STORE "
        "or sqlite:///agentstream.db)",
    )
    parser.add_argument(
        "--retention-days",
        type=float,
        metavar="N",
        help="delete events older than N days, in small batches (default: keep everything)",
    )


async def until_available(
    what: str, action: Callable[[], Awaitable[T]], settings: PersistenceSettings
) -> T:
    """Run ``action``, retrying while the store is unavailable (the service waits for its
    database instead of crash-looping). The first failure is logged at once, then one line a
    minute with how many attempts were held back, and one when the store answers."""
    attempt = 0
    while True:
        try:
            result = await action()
        except StoreUnavailableError as exc:
            attempt += 1
            delay = backoff_seconds(
                attempt, settings.store_retry_backoff_ms, settings.store_retry_max_backoff_ms
            )
            _waiting(what, "%s: store unavailable (attempt %d), retrying: %s", what, attempt, exc)
            log.debug("%s: attempt %d failed, next in %.2f s: %s", what, attempt, delay, exc)
            await asyncio.sleep(delay)
            continue
        if attempt:
            _waiting.recovered(what, "%s: the store answers after %d attempts", what, attempt)
        return result


_waiting = ThrottledLog(log)


@contextlib.asynccontextmanager
async def setup(consumer: EventConsumer, settings: PersistenceSettings) -> AsyncIterator[Store]:
    store = open_store(settings.store)
    await until_available("opening the store", store.open, settings)
    retention_task: asyncio.Task[None] | None = None
    try:
        applied = await until_available("migrating", store.migrate, settings)
        if applied:
            log.info("store %s migrated to version %d", store.url, applied[-1])
        # A store a newer agentstream migrated may hold what this version cannot write
        # (a new NOT NULL column): refuse to start, as the readers do, instead of refusing
        # every event into the dead-letter topic.
        await until_available("checking the schema", store.require_schema, settings)
        sink = EventSink(
            store,
            metrics=SinkMetrics(consumer.registry),
            retry_backoff_ms=settings.store_retry_backoff_ms,
            retry_max_backoff_ms=settings.store_retry_max_backoff_ms,
        )
        consumer.subscribe_batch(
            "*",
            sink,
            max_records=settings.batch_max_records,
            max_wait_ms=settings.batch_max_wait_ms,
            name="persistence",
        )
        if settings.retention_days is not None:
            retention = Retention(
                store,
                days=settings.retention_days,
                registry=consumer.registry,
                batch_size=settings.retention_batch_size,
                interval=settings.retention_interval_s,
            )
            retention_task = asyncio.create_task(retention.run(), name="persistence-retention")
        yield store
    finally:
        if retention_task is not None:
            retention_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retention_task
        await store.close()


SERVICE = ServiceSpec(
    name="persistence",
    settings_class=PersistenceSettings,
    setup=setup,
    description="store every event (SQLite or PostgreSQL), exactly once, queryable by session",
    add_arguments=add_arguments,
)
