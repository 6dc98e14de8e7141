"""``agentstream consume budget``: tokens, rounds, tool calls, cost and wall time per session,
agent day and user day; ``budget.warning`` and ``budget.exceeded`` once each.

Two consumer groups in one process: ``<group>`` reads the events topic (session scopes) and
``<group>.repartition`` reads ``<prefix>.budget-repartition`` (agent and user days). Both
keep their state in ``<prefix>.budget-changelog``; see :mod:`.stages` for the protocol.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from prometheus_client import CollectorRegistry
from pydantic import Field

from agentstream.consumers.runtime import EventConsumer, HttpPort, ServiceSettings, ServiceSpec
from agentstream.consumers.runtime.eventtime import EventTime
from agentstream.consumers.runtime.placement import SessionPlacement
from agentstream.schemas.routing import EVENTS

from .accounting import Ledger
from .changelog import ChangelogWriter, ensure_budget_topics, repartition_topic
from .config import BudgetConfig, Limits, load_config
from .metrics import BudgetMetrics
from .stages import USAGE_TYPE, DayStage, SessionStage, Stage

S = TypeVar("S", bound=Stage)

log = logging.getLogger("agentstream.consumers.budget")


class BudgetSettings(ServiceSettings):
    """The budget service's settings (``AGENTSTREAM_*``)."""

    http_port: HttpPort = 9103
    budget_config: Path | None = Field(
        default=None, description="TOML file with limits, overrides and prices."
    )
    budget_warning_fraction: float | None = Field(
        default=None, gt=0, le=1, description="Fraction of a limit that earns budget.warning."
    )
    budget_session_tokens: int | None = Field(
        default=None, ge=0, description="Tokens per session (overrides the file; 0: no limit)."
    )
    budget_session_rounds: int | None = Field(
        default=None, ge=0, description="Rounds per session (overrides the file; 0: no limit)."
    )
    budget_pause_on_exceeded: bool = Field(
        default=False, description="Also publish control.agent.paused on every exceedance."
    )
    budget_pause_max_age_s: float = Field(
        default=600.0,
        ge=0,
        description="No pause directive for an exceedance caused by an event older than this "
        "(a backlog caught up after an outage); 0: no limit.",
    )
    # At most a thousand years each: far more overflowed the dates the eviction computes.
    budget_session_idle_hours: float = Field(
        default=24.0,
        gt=0,
        le=8_760_000,
        description="Forget a session this long after its last event.",
    )
    budget_keep_days: int = Field(
        default=2, ge=0, le=365_000, description="Keep agent/user days this many days before today."
    )
    budget_batch_records: int = Field(default=500, ge=1, description="Records per batch.")
    budget_batch_wait_ms: int = Field(default=20, ge=0, description="Longest batch wait.")

    def budget(self) -> BudgetConfig:
        """The file's config with the env and command-line overrides applied."""
        session = Limits(tokens=self.budget_session_tokens, rounds=self.budget_session_rounds)
        return load_config(
            self.budget_config,
            warning_fraction=self.budget_warning_fraction,
            session=session,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        dest="budget_config",
        metavar="PATH",
        help="budget TOML file (default: AGENTSTREAM_BUDGET_CONFIG; none: Corail's limits)",
    )
    parser.add_argument(
        "--warning-fraction",
        dest="budget_warning_fraction",
        type=float,
        metavar="F",
        help="budget.warning at this fraction of a limit (default 0.8)",
    )
    parser.add_argument(
        "--pause-on-exceeded",
        dest="budget_pause_on_exceeded",
        action="store_true",
        default=None,
        help="publish control.agent.paused for the agent on every exceedance",
    )
    parser.add_argument(
        "--pause-max-age-s",
        dest="budget_pause_max_age_s",
        type=float,
        metavar="S",
        help="no directive when the exceeding event is older (default 600; 0: no limit)",
    )


class _RepartitionConsumer(EventConsumer):
    """The runtime's consumer, on the budget's repartition topic instead of the routed ones."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        service: str,
        topic: str,
        registry: CollectorRegistry,
    ) -> None:
        super().__init__(settings, service=service, registry=registry)
        self._topic = topic

    def topics(self) -> list[str]:
        return [self._topic]


@dataclass
class BudgetService:
    config: BudgetConfig
    sessions: SessionStage
    days: DayStage
    repartition: EventConsumer
    partitions: int


@contextlib.asynccontextmanager
async def setup(consumer: EventConsumer, settings: BudgetSettings) -> AsyncIterator[BudgetService]:
    """Create the budget topics, wire both stages, run the repartition consumer alongside."""
    config = settings.budget()
    partitions = await ensure_budget_topics(settings)
    metrics = BudgetMetrics(consumer.registry)
    writer = ChangelogWriter(settings)
    topic = repartition_topic(settings.topic_prefix)
    repartition = _RepartitionConsumer(
        settings.model_copy(update={"group_id": f"{consumer.group_id}.repartition"}),
        service=f"{consumer.service}-repartition",
        topic=topic,
        registry=consumer.registry,  # its runtime metrics and lag in the service's /metrics
    )
    consumer.add_companion(repartition)  # and its readiness and health in /readyz, /healthz

    def stage(cls: type[S]) -> S:
        return cls(
            settings=settings,
            repartition_topic=topic,
            ledger=Ledger(config),
            writer=writer,
            metrics=metrics,
            publish=writer.send_events,
            pause_on_exceeded=settings.budget_pause_on_exceeded,
            pause_max_age_s=settings.budget_pause_max_age_s,
            session_idle=timedelta(hours=settings.budget_session_idle_hours),
            keep_days=settings.budget_keep_days,
        )

    sessions, days = stage(SessionStage), stage(DayStage)
    sessions.placement = SessionPlacement(
        consumer.registry,
        consumer.service,
        consumer.partition_count,
        topics=[consumer.routing.events],
    )
    sessions.event_time = EventTime.of_service(consumer, consumer.routing.events)
    size, wait = settings.budget_batch_records, settings.budget_batch_wait_ms
    consumer.subscribe_batch(  # what it counts travels on the events topic only
        "*",
        sessions.handle,
        name="budget-sessions",
        max_records=size,
        max_wait_ms=wait,
        topics=[EVENTS],
    )
    consumer.on_assigned(sessions.assigned)
    consumer.on_revoked(sessions.revoked)
    repartition.subscribe_batch(
        USAGE_TYPE, days.handle, name="budget-days", max_records=size, max_wait_ms=wait
    )
    repartition.on_assigned(days.assigned)
    repartition.on_revoked(days.revoked)
    log.info(
        "budget: %d partitions; session limits %s; agent day %s; user day %s; warning at %.0f %%",
        partitions,
        config.session.as_dict(),
        config.agent_day.as_dict(),
        config.user_day.as_dict(),
        config.warning_fraction * 100,
    )
    await writer.start()
    try:
        await repartition.start()
        try:
            yield BudgetService(config, sessions, days, repartition, partitions)
        finally:
            await repartition.stop()
    finally:
        await writer.stop()


SERVICE = ServiceSpec(
    name="budget",
    settings_class=BudgetSettings,
    setup=setup,
    description="token, round, tool-call, cost and wall-time budgets per session, agent and user",
    add_arguments=add_arguments,
    preflight=BudgetSettings.budget,
)
