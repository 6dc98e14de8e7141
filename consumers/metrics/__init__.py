"""The metrics service: the agent fleet's Prometheus metrics, computed from the event stream.

``agentstream consume metrics`` serves them on ``/metrics`` (port 9104). The fleet metrics
(:class:`FleetMetrics`) work on any injected registry, without Kafka.
"""

from agentstream.consumers.runtime.histogram import BatchHistogram

from .fleet import FleetMetrics
from .labels import OTHER, UNKNOWN, BoundedLabel, type_label
from .pairing import PendingCalls
from .sessions import ActiveSessions

__all__ = [
    "OTHER",
    "UNKNOWN",
    "ActiveSessions",
    "BatchHistogram",
    "BoundedLabel",
    "FleetMetrics",
    "PendingCalls",
    "type_label",
]
