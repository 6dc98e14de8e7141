"""The settings every service process reads: Kafka, HTTP endpoints, retries, limits."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from agentstream.schemas.settings import KafkaSettings

from .eventtime import DEFAULT_MAX_SKEW_MS

HttpPort = Annotated[
    int,
    Field(ge=0, le=65_535, description="Port of /metrics, /healthz, /readyz (0: any free one)."),
]
"""The services' HTTP port. The bound is the type's, so each service's own default keeps it."""


class ServiceSettings(KafkaSettings):
    """One service process's settings (``AGENTSTREAM_*``); each service subclasses it.

    Each service overrides ``http_port``'s default: persistence 9101, loops 9102,
    budget 9103, metrics 9104, tracing 9105.
    """

    http_host: str = Field(default="0.0.0.0", description="Address of /metrics, /healthz, /readyz.")
    http_port: HttpPort = 9100
    group_id: str | None = Field(
        default=None, description='Consumer group; default "<topic_prefix>.<service name>".'
    )
    drain_timeout_ms: int = Field(
        default=20_000,
        ge=0,
        description="Bound on stopping (SIGTERM) and on a revoke: finish in-flight work, commit.",
    )
    handler_retries: int = Field(
        default=3,
        ge=0,
        description="Retries of a failing handler before the record is dead-lettered.",
    )
    handler_retry_backoff_ms: int = Field(default=200, ge=0, description="First retry delay.")
    handler_retry_max_backoff_ms: int = Field(
        default=10_000, ge=0, description="Longest retry delay."
    )
    max_buffered_records: int = Field(
        default=10_000,
        ge=1,
        description="Records fetched but not finished, per process; fetching pauses above it.",
    )
    commit_interval_ms: int = Field(
        default=1_000,
        ge=10,
        description="How often the finished prefix of each partition is committed.",
    )

    max_clock_skew_ms: int = Field(
        default=DEFAULT_MAX_SKEW_MS,
        ge=0,
        description=(
            "Budget, metrics and tracing time an event by its Kafka record's timestamp when "
            "its own is further from it than this (a producer's zero time, a wrong clock); "
            "0: always the event's."
        ),
    )

    gc_gen0_threshold: int = Field(
        default=50_000,
        ge=0,
        description=(
            "Allocations between collections of the garbage collector's youngest generation "
            "in `agentstream consume` processes (Python's default, 700, means a collection "
            "every few hundred records, each walking the records in flight); startup "
            "objects are also frozen out of collections. 0 leaves the interpreter's default."
        ),
    )

    def group_for(self, service: str) -> str:
        """The consumer group of ``service``: ``group_id`` or ``<topic_prefix>.<service>``."""
        return self.group_id or f"{self.topic_prefix}.{service}"
