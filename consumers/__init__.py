"""agentstream's consumer side: the consumer runtime and the services built on it.

``producer`` and ``consumers`` never import each other; both stand on ``schemas``. The
``agentstream`` command (:mod:`agentstream.consumers.cli`) is the composition root and may
reach the producer side lazily, inside the commands that need it.

The runtime's public names are importable from here (``from agentstream.consumers import
EventConsumer``); they load on first use, so the command line stays quick to start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runtime import EventConsumer, Record, ServiceSettings, ServiceSpec

__all__ = ["EventConsumer", "Record", "ServiceSettings", "ServiceSpec"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".runtime", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
