"""``agentstream consume tracing``: every agent turn as an OpenTelemetry trace over OTLP/HTTP.

One batch subscription to every type (per-partition order is what pairing relies on), records
of the events topic only. A batch returns when the turns it ended are exported (or after
``export_wait_ms``), so their end records are committed only after the export; the records of
turns still open are committed as they come and rebuilt on assignment (see ``restore``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from agentstream.consumers.runtime import EventConsumer, Record, ServiceSpec
from agentstream.consumers.runtime.eventtime import EventTime
from agentstream.consumers.runtime.replay import committed_offsets
from agentstream.schemas.errors import (
    AgentstreamError,
    BatchDeadLetter,
    ConfigurationError,
    describe,
)
from agentstream.schemas.routing import EVENTS

from .assembler import TraceAssembler
from .metrics import TracingMetrics
from .restore import replay
from .settings import TracingSettings, export_target
from .spans import Trace
from .turn import TurnLimits

if TYPE_CHECKING:
    from .exporter import OtlpHttpExporter

log = logging.getLogger(__name__)


class TracingService:
    """Feeds consumed records to the assembler and finished traces to the exporter."""

    def __init__(
        self,
        consumer: EventConsumer,
        settings: TracingSettings,
        assembler: TraceAssembler,
        exporter: OtlpHttpExporter,
        metrics: TracingMetrics,
    ) -> None:
        self.consumer = consumer
        self.settings = settings
        self.assembler = assembler
        self.exporter = exporter
        self.metrics = metrics
        self.event_time = EventTime.of_service(consumer, consumer.routing.events)
        self.events_topic = consumer.routing.events

    async def handle(self, records: list[Record]) -> None:
        finished: list[Trace] = []
        refused: dict[int, str] = {}
        for record in records:
            if record.topic == self.events_topic:
                try:
                    event = self.event_time.event(record)
                    finished.extend(self.assembler.add(event, scope=record.partition))
                except Exception as exc:  # one event's odd data (or a bug) fails only itself:
                    # a retried batch would add the others to their turns twice
                    log.warning("tracing: event at %s failed", record.location, exc_info=True)
                    refused[record.offset] = f"tracing could not handle the event: {describe(exc)}"
        self.assembler.settle()
        self._account(finished)
        if finished:
            await self.exporter.export(finished, wait_s=self.settings.export_wait_ms / 1000)
        if refused:
            raise BatchDeadLetter(refused)

    def expire(self) -> None:
        """Close idle turns and queue their traces (nothing waits on them)."""
        finished = self.assembler.expire()
        self.assembler.settle()
        self._account(finished)
        if finished:
            self.exporter.submit(finished)

    def _account(self, finished: list[Trace]) -> None:
        for trace in finished:
            if trace.dropped_spans:
                self.metrics.dropped_spans.labels(reason="turn_too_large").inc(trace.dropped_spans)
        for reason, count in self.assembler.ignored.items():
            self.metrics.ignored_events.labels(reason=reason).inc(count)
        self.assembler.ignored.clear()
        self.metrics.open_turns.set(self.assembler.open_turns)

    async def restore(self, partitions: frozenset[TopicPartition]) -> None:
        """Rebuild the turns open at the committed offset of newly assigned partitions."""
        tps = [tp for tp in partitions if tp.topic == self.events_topic]
        if not tps or self.settings.restore_window_records <= 0:
            return
        rebuilt = 0
        try:
            committed = await committed_offsets(self.settings, self.consumer.group_id, tps)
            async for tp, event, record_ms, offset in replay(
                self.settings,
                committed,
                window=self.settings.restore_window_records,
                timeout_s=self.settings.restore_timeout_ms / 1000,
                group_id=self.consumer.group_id,
            ):
                # Turns finished inside the window were exported before their end record was
                # committed: only the state of the turns still open is kept. Timed as when it
                # was handled live; an event that failed then (dead-lettered) fails again here.
                timed = self.event_time.of(
                    event, record_ms, tp.topic, tp.partition, offset, count=False
                )
                with contextlib.suppress(Exception):
                    self.assembler.add(timed, scope=tp.partition)
                self.assembler.settle()
                rebuilt += 1
        except (AgentstreamError, KafkaError, OSError) as exc:
            log.warning("tracing restore of %s failed (turns partial): %r", sorted(tps), exc)
        self.assembler.ignored.clear()
        self.metrics.open_turns.set(self.assembler.open_turns)
        log.info(
            "tracing restore: %d records replayed, %d turns open",
            rebuilt,
            self.assembler.open_turns,
        )

    async def forget(self, partitions: frozenset[TopicPartition]) -> None:
        """Drop the open turns of revoked partitions: their next owner rebuilds them."""
        for tp in partitions:
            if tp.topic == self.events_topic:
                self.assembler.drop_scope(tp.partition)
        self.metrics.open_turns.set(self.assembler.open_turns)


def build(consumer: EventConsumer, settings: TracingSettings) -> TracingService:
    try:  # the protobuf messages come with the 'tracing' extra; listing services needs none
        from .exporter import ExportPolicy, OtlpHttpExporter
    except ImportError as exc:
        raise ConfigurationError(
            "the tracing service needs the OTLP protobuf messages: "
            f"pip install 'agentstream[tracing]' (import failed: {exc})"
        ) from None
    metrics = TracingMetrics(consumer.registry)
    policy = ExportPolicy(
        batch_spans=settings.export_batch_spans,
        linger_s=settings.export_linger_ms / 1000,
        queue_spans=settings.export_queue_spans,
        max_retries=settings.export_max_retries,
        backoff_s=settings.export_backoff_ms / 1000,
        max_backoff_s=settings.export_max_backoff_ms / 1000,
    )
    exporter = OtlpHttpExporter(export_target(settings), metrics, policy)
    assembler = TraceAssembler(
        limits=TurnLimits(
            max_spans=settings.max_spans_per_turn,
            max_events_per_span=settings.max_events_per_span,
            max_attribute_chars=settings.max_attribute_chars,
        ),
        max_open_turns=settings.max_open_turns,
        idle_timeout_s=settings.idle_timeout_ms / 1000,
        max_turn_duration_s=settings.max_turn_duration_ms / 1000,
    )
    return TracingService(consumer, settings, assembler, exporter, metrics)


async def _expiry_loop(service: TracingService, period_s: float) -> None:
    while True:
        await asyncio.sleep(period_s)
        try:
            service.expire()
        except Exception:  # a bug here must not stop expiry for good
            log.exception("tracing: closing idle turns failed")


@contextlib.asynccontextmanager
async def setup(
    consumer: EventConsumer, settings: TracingSettings
) -> AsyncIterator[TracingService]:
    service = build(consumer, settings)
    # "*" for per-session order over every type; the events topic holds them all (tokens,
    # alerts and control are not part of a turn's spans)
    consumer.subscribe_batch(
        "*", service.handle, name="tracing", max_records=500, max_wait_ms=50, topics=[EVENTS]
    )
    consumer.on_assigned(service.restore)
    consumer.on_revoked(service.forget)
    await service.exporter.start()
    period = min(1.0, settings.idle_timeout_ms / 4000)
    expiry = asyncio.create_task(_expiry_loop(service, period), name="tracing-expiry")
    try:
        yield service
    finally:
        expiry.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await expiry
        await service.exporter.close(timeout_s=settings.drain_timeout_ms / 1000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--otlp-endpoint",
        dest="otlp_endpoint",
        metavar="URL",
        help="OTLP/HTTP traces URL (default: AGENTSTREAM_OTLP_ENDPOINT, "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces)",
    )
    parser.add_argument(
        "--idle-timeout-ms",
        dest="idle_timeout_ms",
        type=int,
        metavar="MS",
        help="export a turn without events for this long as incomplete (default 300000)",
    )


SERVICE = ServiceSpec(
    name="tracing",
    settings_class=TracingSettings,
    setup=setup,
    description="assemble every agent turn into an OpenTelemetry trace and export it over OTLP",
    add_arguments=add_arguments,
)
