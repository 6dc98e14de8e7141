"""The persistence service and its query API.

Writing: ``agentstream consume persistence --store URL`` (:mod:`.service`). Reading::

    from agentstream.consumers.persistence import open_store

    async with open_store("sqlite:///agentstream.db", readonly=True) as store:
        await store.sessions(agent="agent-weather")
        await store.timeline(session_id)
        await store.events(type="tool.*", since=...)
"""

from .store import (
    SessionSummary,
    Store,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    open_store,
)

__all__ = [
    "SessionSummary",
    "Store",
    "StoreError",
    "StoreTimeoutError",
    "StoreUnavailableError",
    "open_store",
]
