"""Loop detection: Calute's tool-loop rules applied to every pod's tool calls from Kafka.

``detector`` is pure (no Kafka): :class:`LoopDetector` fed one event at a time.
``service`` is ``agentstream consume loops`` on the consumer runtime. See
``docs/loops.md``.
"""

from .config import LoopConfig, LoopThresholds
from .detector import Finding, Level, LoopDetector, Pattern, ScopeKey, args_hash

__all__ = [
    "Finding",
    "Level",
    "LoopConfig",
    "LoopDetector",
    "LoopThresholds",
    "Pattern",
    "ScopeKey",
    "args_hash",
]
