"""How a service describes itself to ``agentstream consume``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from .settings import ServiceSettings

if TYPE_CHECKING:
    from .consumer import EventConsumer

S = TypeVar("S", bound=ServiceSettings)


@dataclass(frozen=True)
class ServiceSpec(Generic[S]):
    """A service: its name, settings class and setup.

    ``setup(consumer, settings)`` subscribes handlers and hooks on the consumer, opens the
    service's resources, yields, and closes them on exit. ``add_arguments`` adds options to
    ``agentstream consume <name>``; each option's ``dest`` is a field of ``settings_class``.
    ``preflight(settings)`` reads what the settings name and raises
    :class:`~agentstream.schemas.errors.ConfigurationError` when it cannot work (a config file
    missing or malformed): run at start, before the broker is waited for, so such a mistake
    is said at once, broker or not.
    """

    name: str
    settings_class: type[S]
    setup: Callable[[EventConsumer, S], AbstractAsyncContextManager[object]]
    description: str = ""
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    preflight: Callable[[S], object] | None = None
