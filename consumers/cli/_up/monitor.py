"""What ``agentstream up`` watches: each service's ``/metrics`` (lag, records consumed, events
counted by the metrics service) and the alerts and control topics (read without a consumer
group, so it never takes partitions from a service)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from agentstream.schemas.admin import stop_client
from agentstream.schemas.envelope import Event
from agentstream.schemas.errors import describe
from agentstream.schemas.settings import KafkaSettings

from .processes import Child

log = logging.getLogger(__name__)

LAG = "agentstream_consumer_lag"
RECORDS = "agentstream_consumer_records_total"
EVENTS = "agentstream_events_total"  # the metrics service's count of every event


async def http_get(host: str, port: int, path: str, timeout: float = 3.0) -> tuple[int, str]:
    async def get() -> tuple[int, str]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            response = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head, _, body = response.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode(errors="replace")

    return await asyncio.wait_for(get(), timeout)


def metric_sums(text: str) -> dict[str, float]:
    """Sums over all label sets of the samples ``up`` shows (consumed records only)."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {LAG: 0.0, RECORDS: 0.0, EVENTS: 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == RECORDS and sample.labels.get("outcome") != "consumed":
                continue
            if sample.name in sums:
                sums[sample.name] += sample.value
    return sums


@dataclass
class ServiceState:
    name: str
    host: str
    port: int
    child: Child
    ready: bool = False
    scrapes_ok: int = 0
    scrapes_failed: int = 0
    lag: int | None = None
    consumed: float = 0.0
    events_counted: float = 0.0
    last_error: str | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def summary(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "metrics_url": self.metrics_url,
            "pid": self.child.pid,
            "ready": self.ready,
            "scrapes_ok": self.scrapes_ok,
            "scrapes_failed": self.scrapes_failed,
            "lag": self.lag,
            "records_consumed": self.consumed,
            "exit_code": self.child.returncode,
            "last_error": self.last_error,
        }


@dataclass
class AlertLine:
    at: float
    kind: str
    text: str


def describe_alert(event: Event) -> AlertLine:
    data = event.data
    session = event.session_id or "-"
    if event.type in ("audit.tool_loop_block", "audit.tool_loop_warning"):
        level = "BLOCK" if event.type.endswith("block") else "warn"
        text = (
            f"loop {level}: {data.get('tool_name')} {data.get('pattern')} "
            f"x{data.get('call_count')}  session {session} ({event.agent_id})"
        )
        return AlertLine(time.time(), "loop_block" if level == "BLOCK" else "loop_warning", text)
    if event.type in ("budget.exceeded", "budget.warning"):
        level = "EXCEEDED" if event.type.endswith("exceeded") else "warning"
        used, limit = data.get("used"), data.get("limit")
        text = (
            f"budget {level}: {data.get('scope')} {data.get('dimension')} "
            f"{_num(used)}/{_num(limit)}  ({event.agent_id})"
        )
        kind = "budget_exceeded" if level == "EXCEEDED" else "budget_warning"
        return AlertLine(time.time(), kind, text)
    if event.type == "control.agent.paused":
        text = (
            f"pause sent by {data.get('service', '?')} to {event.agent_id or '?'}: "
            f"{data.get('reason', '')}  session {session}"
        )
        return AlertLine(time.time(), "pause", text)
    return AlertLine(time.time(), event.type, f"{event.type}  session {session}")


def _num(value: Any) -> str:
    return f"{value:,.0f}" if isinstance(value, int | float) else str(value)


@dataclass
class Monitor:
    services: dict[str, ServiceState]
    alerts: deque[AlertLine] = field(default_factory=lambda: deque(maxlen=200))
    alert_counts: Counter[str] = field(default_factory=Counter)
    events_per_s: float = 0.0
    events_total: float = 0.0
    _last_events: tuple[float, float] | None = None
    final: bool = False
    """Set once the last figures are in (the services are stopping): no scrape after it, whose
    refused connections would be reported as the services' last errors."""

    async def scrape(self) -> None:
        if self.final:
            return
        await asyncio.gather(*(self._scrape_one(s) for s in self.services.values()))
        metrics = self.services.get("metrics")
        if metrics is not None and metrics.scrapes_ok:
            now, total = time.monotonic(), metrics.events_counted
            if self._last_events is not None and now > self._last_events[0]:
                rate = (total - self._last_events[1]) / (now - self._last_events[0])
                self.events_per_s = max(0.0, rate)
            self._last_events = (now, total)
            self.events_total = total

    async def _scrape_one(self, state: ServiceState) -> None:
        try:
            status, body = await http_get(state.host, state.port, "/metrics")
            if status != 200:
                raise OSError(f"HTTP {status}")
            sums = metric_sums(body)
        except (OSError, TimeoutError, ValueError, IndexError) as exc:
            state.scrapes_failed += 1
            state.last_error = describe(exc)
            return
        state.scrapes_ok += 1
        state.last_error = None
        state.lag = int(sums[LAG])
        state.consumed = sums[RECORDS]
        state.events_counted = sums[EVENTS]

    def caught_up(self) -> bool:
        return all(s.lag == 0 for s in self.services.values() if s.child.running())

    async def follow_alerts(
        self, settings: KafkaSettings, stop: asyncio.Event, log_path: Path, *, from_start: bool
    ) -> None:
        """Read the alerts and control topics until ``stop`` is set and a fetch round after it
        brought nothing; each alert or directive is shown and appended to ``log_path`` as one
        JSON line."""
        from aiokafka import AIOKafkaConsumer
        from aiokafka.structs import TopicPartition

        from agentstream.schemas.codec import decode_record
        from agentstream.schemas.errors import AgentstreamError, RecordLocation

        routing = settings.routing()
        consumer = AIOKafkaConsumer(
            **{**settings.consumer_options(), "group_id": None, "auto_offset_reset": "earliest"}
        )
        await consumer.start()
        out: IO[str] = log_path.open("a", encoding="utf-8")
        try:
            await consumer.topics()
            partitions = [
                TopicPartition(topic, p)
                for topic in (routing.alerts, routing.control)
                for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            consumer.assign(partitions)
            if from_start:
                await consumer.seek_to_beginning()
            else:
                await consumer.seek_to_end()
            while True:
                stopping = stop.is_set()
                batches = await consumer.getmany(timeout_ms=200)
                if stopping and not any(batches.values()):
                    break  # asked to stop and one more fetch round found nothing new
                for records in batches.values():
                    for record in records:
                        where = RecordLocation(record.topic, record.partition, record.offset)
                        try:
                            event = decode_record(record.value, record.headers, where=where)
                        except AgentstreamError as exc:
                            log.warning("undecodable alert at %s: %s", where, exc)
                            continue
                        self._alert(event, out)
        finally:
            out.close()
            await stop_client(consumer)

    def _alert(self, event: Event, out: IO[str]) -> None:
        line = describe_alert(event)
        self.alerts.appendleft(line)
        self.alert_counts[line.kind] += 1
        out.write(
            json.dumps(
                {
                    "event_id": event.event_id,
                    "type": event.type,
                    "timestamp": event.timestamp.isoformat(),
                    "source": event.source,
                    "agent_id": event.agent_id,
                    "user_id": event.user_id,
                    "session_id": event.session_id,
                    "turn_id": event.turn_id,
                    "data": event.data,
                },
                default=str,
            )
            + "\n"
        )
        out.flush()
