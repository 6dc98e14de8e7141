"""``agentstream consume loops``: Calute's tool-loop rules across every pod, from the stream.

Fed by ``tool.called`` and ``audit.tool_call_attempt`` (plus the turn, message and session
boundaries that end scopes). A finding publishes ``audit.tool_loop_warning`` or
``audit.tool_loop_block`` on the alerts topic; a critical one first publishes a
``control.agent.paused`` directive on the control topic. Both are awaited inside the handler,
so output is at-least-once, and their ids are derived from the finding, so a repeat is the
same record. See ``docs/loops.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from pydantic import Field, SecretStr, StrictInt

from agentstream.consumers.runtime import (
    EventConsumer,
    HttpPort,
    Record,
    ServiceSettings,
    ServiceSpec,
)
from agentstream.consumers.runtime.http import http_url_problem
from agentstream.consumers.runtime.placement import SessionPlacement
from agentstream.consumers.runtime.replay import Window, committed_offsets, read_window_events
from agentstream.consumers.runtime.retry import backoff_seconds
from agentstream.schemas import Event
from agentstream.schemas.settings import WaitMs, checked, kafka_option

from .alerts import SOURCE, alert_event, pause_directive
from .config import THRESHOLD_NAMES, LoopConfig
from .detector import INPUT_TYPES, Finding, LoopDetector
from .metrics import LoopMetrics
from .restore import recent_ids_from
from .webhook import WebhookNotifier

log = logging.getLogger(__name__)


def _webhook_url_problem(url: str) -> str | None:
    return http_url_problem(url, secret=True)


class LoopSettings(ServiceSettings):
    http_port: HttpPort = 9102
    # Alert latency is the point of this service: short fetch waits and lingers by default
    # (the embedded broker holds a fetch for the whole fetch_max_wait_ms even when records
    # are waiting; Apache Kafka answers as soon as fetch.min.bytes is there).
    fetch_max_wait_ms: WaitMs = kafka_option(
        "consumer", default=20, description="Longest a fetch waits for records (latency bound)."
    )
    linger_ms: WaitMs = kafka_option("producer", default=1, description="Alert batching delay.")
    loops_config: Path | None = Field(
        default=None, description="TOML file with [loops] thresholds and [loops.agents.<id>]."
    )
    loop_max_calls: int | None = Field(default=None, ge=0, description="Default 25; 0: off.")
    loop_same_call_warning: int | None = Field(default=None, ge=0, description="Default 3.")
    loop_same_call_critical: int | None = Field(default=None, ge=0, description="Default 5.")
    loop_pingpong_warning: int | None = Field(default=None, ge=0, description="Default 4.")
    loop_pingpong_critical: int | None = Field(default=None, ge=0, description="Default 6.")
    loop_agents: dict[str, dict[str, StrictInt]] = Field(
        default_factory=dict,
        description='Per-agent thresholds, JSON: {"agent-id": {"same_call_warning": 5}}.',
    )
    max_scopes: int = Field(default=100_000, ge=1, description="Scopes held; LRU beyond.")
    scope_ttl_s: float = Field(default=3_600.0, gt=0, description="Idle scopes dropped after.")
    restore_window: int = Field(
        default=5_000,
        ge=0,
        description="Records per partition read again (before the committed offset) on assignment.",
    )
    restore_timeout_s: float = Field(default=30.0, gt=0, description="Bound on one restore.")
    alerts_dedup_window: int = Field(
        default=2_000,
        ge=0,
        description="Records per alerts partition scanned on assignment for alerts already sent.",
    )
    control_directives: bool = Field(
        default=True, description="Publish control.agent.paused on critical findings."
    )
    control_max_age_s: float = Field(
        default=600.0,
        ge=0,
        description="No pause directive for a finding whose triggering event is older than "
        "this (a backlog caught up after an outage: the session has moved on); 0: no limit.",
    )
    webhook_url: Annotated[SecretStr, checked(_webhook_url_problem)] | None = Field(
        default=None,
        description="POST each alert here (JSON); a secret (a Slack URL is its token): logs "
        "show its host only.",
    )
    webhook_format: Literal["json", "slack"] = Field(
        default="json", description='"json" (the alert event) or "slack" ({"text": ...}).'
    )
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_retries: int = Field(default=3, ge=0)
    webhook_queue: int = Field(default=1_000, ge=1, description="Alerts waiting; drop beyond.")
    webhook_max_age_s: float = Field(
        default=600.0,
        ge=0,
        description="No webhook call for an alert whose triggering event is older than this "
        "(a backlog caught up: nobody is paged for old loops); 0: no limit.",
    )

    def loop_config(self) -> LoopConfig:
        overrides = {
            name: value
            for name in THRESHOLD_NAMES
            if (value := getattr(self, f"loop_{name}")) is not None
        }
        return LoopConfig.build(self.loops_config, overrides=overrides, agents=self.loop_agents)


class _RecentIds:
    """A bounded set of alert ids already on the alerts topic."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> None:
        self._ids[event_id] = None
        self._ids.move_to_end(event_id)
        while len(self._ids) > self.cap:
            self._ids.popitem(last=False)


class LoopService:
    """The handlers and rebalance hooks of one loops process."""

    def __init__(self, consumer: EventConsumer, settings: LoopSettings) -> None:
        self.consumer = consumer
        self.settings = settings
        self.routing = consumer.routing
        self.metrics: LoopMetrics
        self.detector = LoopDetector(
            settings.loop_config(),
            max_scopes=settings.max_scopes,
            scope_ttl_s=settings.scope_ttl_s,
            on_evict=self._evicted,
        )
        self.metrics = LoopMetrics(consumer.registry, lambda: len(self.detector))
        self.placement = SessionPlacement(
            consumer.registry,
            consumer.service,
            consumer.partition_count,
            topics=[self.routing.events],
        )
        self.webhook: WebhookNotifier | None = None
        self.published = _RecentIds(cap=max(10_000, settings.alerts_dedup_window * 8))
        self.positions: dict[int, int] = {}
        """Next offset to process, per partition of the events topic this process has state for."""

    def install(self) -> None:
        for event_type in INPUT_TYPES:
            self.consumer.subscribe(event_type, self.handle, name=f"loops:{event_type}")
        self.consumer.on_assigned(self.restore)

    def _evicted(self, reason: str, count: int) -> None:
        self.metrics.evictions.labels(reason).inc(count)

    # --- live ------------------------------------------------------------------------------

    async def handle(self, event: Event, record: Record) -> None:
        self.placement.check(record)
        finding = self.detector.handle(event, record.partition)
        self.positions[record.partition] = record.offset + 1
        if finding is not None:
            await self.publish(finding, event)

    async def publish(self, finding: Finding, trigger: Event) -> None:
        alert = alert_event(finding, trigger)
        if finding.repeat:  # the agent went on after the block: remind its pod
            await self._direct(finding, alert, trigger)
            return
        if alert.event_id in self.published:
            self.metrics.duplicates.inc()
            return
        if finding.critical:
            await self._direct(finding, alert, trigger)
        await self.consumer.send(self.routing.alerts, alert)
        self.published.add(alert.event_id)
        self.metrics.alerts.labels("block" if finding.critical else "warning").inc()
        self.metrics.findings.labels(finding.pattern.value, finding.level.label).inc()
        log.info("%s (agent %s, scope %s)", finding.describe(), trigger.agent_id, finding.scope)
        if self.webhook is not None:
            if _older_than(trigger, self.settings.webhook_max_age_s):
                self.metrics.webhook.labels("stale").inc()
            else:
                self.webhook.notify(alert)

    async def _direct(self, finding: Finding, alert: Event, trigger: Event) -> None:
        """Send the pause directive of a critical finding, unless directives are off or the
        triggering event is older than ``control_max_age_s`` (counted, not sent)."""
        if not self.settings.control_directives:
            return
        if _older_than(trigger, self.settings.control_max_age_s):
            self.metrics.stale_directives.inc()
            log.debug("no pause directive for %s: its trigger is too old", finding.describe())
            return
        await self.consumer.send(self.routing.control, pause_directive(finding, alert))
        self.metrics.alerts.labels("control").inc()

    # --- assignment --------------------------------------------------------------------------

    async def restore(self, assigned: frozenset[TopicPartition]) -> None:
        """Rebuild the state of newly assigned partitions before their records are handled.

        A failure is logged and counted and processing goes on with the state rebuilt so far
        (findings are then detected from the live records only, and may alert again)."""
        try:
            await self._restore(assigned)
        except Exception:
            self.metrics.restore_failures.inc()
            log.exception("restore of %d partitions failed; state is partial", len(assigned))

    async def _restore(self, assigned: frozenset[TopicPartition]) -> None:
        started = time.monotonic()
        events_topic = self.routing.events
        mine = {tp.partition for tp in assigned if tp.topic == events_topic}
        gone = set(self.positions) - mine
        if gone:
            self.detector.drop_partitions(gone, "revoked")
            for partition in gone:
                del self.positions[partition]
        tps = [TopicPartition(events_topic, p) for p in sorted(mine)]
        if not tps:
            return
        committed = await self._committed(tps)
        windows: dict[TopicPartition, Window] = {}
        for tp in tps:
            stop = committed.get(tp)
            if stop is None:  # nothing committed: processing starts at the reset position
                self._forget(tp.partition)
                continue
            held = self.positions.get(tp.partition)
            if held is not None and held <= stop and stop - held <= self.settings.restore_window:
                windows[tp] = Window(held, stop)  # our state is exact up to `held`
            else:
                self._forget(tp.partition)
                windows[tp] = Window(max(0, stop - self.settings.restore_window), stop)
        replayed = 0
        async for raw, event in read_window_events(
            self.settings,
            windows,
            timeout_s=self.settings.restore_timeout_s,
            name="loops-restore",
            group_id=self.consumer.group_id,
        ):
            if event.type in INPUT_TYPES:
                self.detector.handle(event, raw.partition)  # findings: already alerted
            self.positions[raw.partition] = raw.offset + 1
            replayed += 1
        for tp, window in windows.items():
            if window.stop is not None:
                self.positions[tp.partition] = window.stop
        for alert_id in await recent_ids_from(
            self.settings, self.routing.alerts, SOURCE, self.settings.alerts_dedup_window
        ):
            self.published.add(alert_id)
        self.metrics.restored.inc(replayed)
        elapsed = time.monotonic() - started
        self.metrics.restore_seconds.inc(elapsed)
        log.info(
            "restored %d records of %d partitions in %.3f s (%d scopes held)",
            replayed,
            len(windows),
            elapsed,
            len(self.detector),
        )

    async def _committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offsets, retried briefly (a coordinator can be busy right
        after a rebalance)."""
        for attempt in range(1, 4):
            try:
                return await committed_offsets(self.settings, self.consumer.group_id, tps)
            except KafkaError as exc:
                if attempt == 3:
                    raise
                log.warning("restore: committed offsets unavailable (%r), retrying", exc)
                await asyncio.sleep(backoff_seconds(attempt, 200, 800))
        raise AssertionError("unreachable")

    def _forget(self, partition: int) -> None:
        self.detector.drop_partitions({partition}, "revoked")
        self.positions.pop(partition, None)


def _older_than(event: Event, max_age_s: float) -> bool:
    """Whether ``event`` happened more than ``max_age_s`` ago (never, with 0)."""
    return bool(max_age_s) and (datetime.now(UTC) - event.timestamp).total_seconds() > max_age_s


@contextlib.asynccontextmanager
async def setup(consumer: EventConsumer, settings: LoopSettings) -> AsyncIterator[LoopService]:
    service = LoopService(consumer, settings)
    if settings.webhook_url:
        metrics = service.metrics
        service.webhook = WebhookNotifier(
            settings.webhook_url.get_secret_value(),
            fmt=settings.webhook_format,
            timeout_s=settings.webhook_timeout_s,
            retries=settings.webhook_retries,
            max_queue=settings.webhook_queue,
            on_outcome=lambda outcome: metrics.webhook.labels(outcome).inc(),
        )
        await service.webhook.start()
    service.install()
    try:
        yield service
    finally:
        if service.webhook is not None:
            await service.webhook.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", dest="loops_config", metavar="PATH", help="TOML file with [loops] thresholds"
    )
    for name in THRESHOLD_NAMES:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"loop_{name}",
            type=int,
            metavar="N",
            help=f"global {name} threshold (0 disables)",
        )
    parser.add_argument("--max-scopes", type=int, metavar="N", help="scopes held (LRU beyond)")
    parser.add_argument("--scope-ttl-s", type=float, metavar="S", help="idle scope lifetime")
    parser.add_argument(
        "--restore-window", type=int, metavar="N", help="records per partition replayed"
    )
    parser.add_argument("--webhook-url", metavar="URL", help="POST every alert to this URL")
    parser.add_argument("--webhook-format", choices=["json", "slack"], help="webhook body")
    parser.add_argument(
        "--no-control",
        dest="control_directives",
        action="store_const",
        const=False,
        help="do not publish control.agent.paused on critical findings",
    )
    parser.add_argument(
        "--control-max-age-s",
        type=float,
        metavar="S",
        help="no directive when the triggering event is older (default 600; 0: no limit)",
    )


SERVICE = ServiceSpec(
    name="loops",
    settings_class=LoopSettings,
    setup=setup,
    description="detect tool-call loops (Calute's rules) and alert; pause the agent when critical",
    add_arguments=add_arguments,
    preflight=LoopSettings.loop_config,
)
