"""Settings of ``agentstream consume metrics`` (``AGENTSTREAM_*``, on top of the runtime's)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from agentstream.consumers.runtime import HttpPort, ServiceSettings

from .labels import BoundedLabel

NameList = Annotated[list[str] | None, NoDecode]


class MetricsSettings(ServiceSettings):
    """Label bounds, the active-session window and the pairing state's bounds.

    Allow-lists (``AGENTSTREAM_AGENT_LABELS=planner,writer``) make every instance let the same
    names through; without one, each instance lets through the first ``*_label_limit`` names
    it sees and counts the rest as ``other``.
    """

    http_port: HttpPort = 9104

    agent_labels: NameList = Field(
        default=None, description="Agent ids that get their own label value (comma-separated)."
    )
    agent_label_limit: int = Field(
        default=50, ge=0, description="Without agent_labels: the first N agent ids seen."
    )
    tool_labels: NameList = Field(default=None, description="Tool names with their own label.")
    tool_label_limit: int = Field(default=100, ge=0)
    model_labels: NameList = Field(default=None, description="Model names with their own label.")
    model_label_limit: int = Field(default=20, ge=0)

    active_session_window_s: float = Field(
        default=300.0, gt=0, description="A session is active with an event in this window."
    )
    pending_max_sessions: int = Field(
        default=10_000,
        ge=1,
        description="Sessions with open tool or LLM calls kept per partition (oldest out).",
    )
    pending_max_per_session: int = Field(default=64, ge=1, description="Open calls per session.")
    pending_ttl_s: float = Field(
        default=3_600.0,
        gt=0,
        description="Open calls held this long by the service without an outcome get no duration.",
    )
    # Records waiting in a partition's batch count against the runtime's max_buffered_records:
    # small, quickly flushed batches keep fetching going (benchmarks/bench_metrics.py).
    batch_max_records: int = Field(default=250, ge=1, description="Records per handler call.")
    batch_max_wait_ms: int = Field(
        default=20, ge=0, description="Longest wait for a batch to fill (delays counts only)."
    )

    @field_validator("agent_labels", "tool_labels", "model_labels", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            names = [part.strip() for part in value.split(",")]
            # set but empty (a template's blank): no allow-list, not one that admits nothing
            return [name for name in names if name] or None
        return value

    def agent_bound(self) -> BoundedLabel:
        return BoundedLabel(self.agent_label_limit, self.agent_labels)

    def tool_bound(self) -> BoundedLabel:
        return BoundedLabel(self.tool_label_limit, self.tool_labels)

    def model_bound(self) -> BoundedLabel:
        return BoundedLabel(self.model_label_limit, self.model_labels)
