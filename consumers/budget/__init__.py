"""The budget service: tokens, rounds, tool calls, cost and wall time per session and per
agent and user day; ``budget.warning`` and ``budget.exceeded`` once each.

``accounting`` (pure rules), ``config`` (TOML limits and prices), ``signals`` (the events
published), ``changelog`` (the service's topics and state store), ``stages`` (the durable
processing of the events and repartition topics), ``service`` (``SERVICE`` for
``agentstream consume budget``).
"""

from .accounting import BudgetTracker, Ledger, Level, ScopeKind, ScopeState, Signal
from .config import BudgetConfig, Dimension, Limits, Override, Price, load_config

__all__ = [
    "BudgetConfig",
    "BudgetTracker",
    "Dimension",
    "Ledger",
    "Level",
    "Limits",
    "Override",
    "Price",
    "ScopeKind",
    "ScopeState",
    "Signal",
    "load_config",
]
