"""agentstream's producer side, for code inside agent pods: the EventBus and AuditEmitter
APIs of the seed runtimes, shipping every event to Kafka. Imports only ``schemas``.

Wiring for one pod (one publisher, shared)::

    publisher = KafkaPublisher(KafkaSettings())             # reads AGENTSTREAM_* once
    bus = EventBus(publisher, agent_id="agent-1")             # Corail's API
    emitter = AuditEmitter(KafkaCollector(publisher, agent_id="agent-1"), session_id=sid)
    ...
    await bus.close(); publisher.close()                      # close() flushes
"""

from agentstream.schemas import Event, EventType, StopReason

from .audit import PREVIEW_CHARS, AuditEmitter
from .audit_events import (
    AuditEvent,
    ErrorEvent,
    HookMutationEvent,
    SandboxDecisionEvent,
    ToolCallAttemptEvent,
    ToolCallCompleteEvent,
    ToolCallFailureEvent,
    ToolLoopBlockEvent,
    ToolLoopWarningEvent,
    ToolPolicyDecisionEvent,
    TurnEndEvent,
    TurnStartEvent,
)
from .bus import EventBus, Handler, Publisher
from .collectors import (
    AuditCollector,
    CompositeCollector,
    InMemoryCollector,
    JSONLSinkCollector,
    KafkaCollector,
    audit_envelope,
)
from .control import ControlListener
from .publisher import KafkaPublisher, exit_on_sigterm
from .redact import DEFAULT_REDACTOR, Redactor
from .scope import Scope, current_scope, event_scope

__all__ = [
    "DEFAULT_REDACTOR",
    "PREVIEW_CHARS",
    "AuditCollector",
    "AuditEmitter",
    "AuditEvent",
    "CompositeCollector",
    "ControlListener",
    "ErrorEvent",
    "Event",
    "EventBus",
    "EventType",
    "Handler",
    "HookMutationEvent",
    "InMemoryCollector",
    "JSONLSinkCollector",
    "KafkaCollector",
    "KafkaPublisher",
    "Publisher",
    "Redactor",
    "SandboxDecisionEvent",
    "Scope",
    "StopReason",
    "ToolCallAttemptEvent",
    "ToolCallCompleteEvent",
    "ToolCallFailureEvent",
    "ToolLoopBlockEvent",
    "ToolLoopWarningEvent",
    "ToolPolicyDecisionEvent",
    "TurnEndEvent",
    "TurnStartEvent",
    "audit_envelope",
    "current_scope",
    "event_scope",
    "exit_on_sigterm",
]
