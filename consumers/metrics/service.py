"""``agentstream consume metrics``: the fleet's Prometheus metrics on ``/metrics`` (port 9104)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

from agentstream.consumers.runtime import EventConsumer, ServiceSpec
from agentstream.consumers.runtime.eventtime import EventTime

from .fleet import FleetMetrics
from .settings import MetricsSettings


@contextlib.asynccontextmanager
async def setup(consumer: EventConsumer, settings: MetricsSettings) -> AsyncIterator[FleetMetrics]:
    """Register the fleet metrics on the consumer's registry and feed them every event."""
    routing = consumer.routing
    metrics = FleetMetrics(
        consumer.registry,
        events_topic=routing.events,
        alerts_topic=routing.alerts,
        agents=settings.agent_bound(),
        tools=settings.tool_bound(),
        models=settings.model_bound(),
        session_window_s=settings.active_session_window_s,
        pending_max_sessions=settings.pending_max_sessions,
        pending_max_per_session=settings.pending_max_per_session,
        pending_ttl_s=settings.pending_ttl_s,
        event_time=EventTime.of_service(consumer, routing.events, routing.alerts),
    )
    consumer.subscribe_batch(
        "*",
        metrics.handle_batch,
        max_records=settings.batch_max_records,
        max_wait_ms=settings.batch_max_wait_ms,
        name="fleet-metrics",
    )
    consumer.on_revoked(metrics.forget_partitions)
    consumer.on_assigned(metrics.keep_partitions)
    yield metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for kind, limit in (("agent", 50), ("tool", 100), ("model", 20)):
        parser.add_argument(
            f"--{kind}-labels",
            metavar="NAMES",
            help=f"comma-separated {kind} names that get their own label value "
            f"(default: the first --{kind}-label-limit seen)",
        )
        parser.add_argument(
            f"--{kind}-label-limit",
            type=int,
            metavar="N",
            help=f"without --{kind}-labels: how many distinct {kind} names pass (default {limit})",
        )
    parser.add_argument(
        "--active-session-window-s",
        type=float,
        metavar="SECONDS",
        help="a session is active with an event in this window (default 300)",
    )


SERVICE = ServiceSpec(
    name="metrics",
    settings_class=MetricsSettings,
    setup=setup,
    description="Prometheus metrics of the agent fleet (events, tools, LLM, budgets, loops)",
    add_arguments=add_arguments,
)
