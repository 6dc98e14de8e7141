"""``agentstream consume <service>``: find a service, build its settings, run it.

Services are found by name: every package ``agentstream.consumers.<name>`` with a ``service``
module defining ``SERVICE`` (a :class:`ServiceSpec`). A ``module:attribute`` path runs any
other spec (a user's own service).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import importlib.util
import logging
import os
import pkgutil
import signal
import socket
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import ValidationError

import agentstream.consumers as consumers_package
from agentstream.schemas.admin import wait_for_broker
from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.settings import settings_error

from .consumer import EventConsumer
from .http import ServiceHTTPServer
from .settings import ServiceSettings
from .spec import ServiceSpec
from .until import until_stopped

log = logging.getLogger("agentstream.consumers.runtime.runner")

_NOT_SERVICES = frozenset({"runtime", "cli"})

EXIT_GRACE_SECONDS = 10.0
"""After a stop signal the process exits within ``drain_timeout_ms`` plus this (the drain
itself is bounded by ``drain_timeout_ms``; this covers commit, hooks, leaving the group and
closing the service's resources). Past it, it exits with code 1."""


def available_services() -> list[str]:
    """Names of the service packages under ``agentstream.consumers``."""
    names = []
    for info in pkgutil.iter_modules(consumers_package.__path__):
        if not info.ispkg or info.name in _NOT_SERVICES or info.name.startswith("_"):
            continue
        if importlib.util.find_spec(f"{consumers_package.__name__}.{info.name}.service"):
            names.append(info.name)
    return sorted(names)


def import_services() -> None:
    """Import every built-in service (their settings classes with them), skipping one whose
    optional dependencies are not installed."""
    for name in available_services():
        with contextlib.suppress(ImportError):
            importlib.import_module(f"{consumers_package.__name__}.{name}.service")


def load_service(name: str) -> ServiceSpec[Any]:
    """The spec of service ``name``, or of ``module:attribute``."""
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            spec = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise ConfigurationError(
                f"expected a ServiceSpec at {name!r} (module:attribute), got {exc!r}"
            ) from exc
    else:
        known = available_services()
        if name not in known:
            raise ConfigurationError(
                f"expected a service among {', '.join(known) or '(none installed)'}, "
                f"got {name!r} (or give module:attribute of a ServiceSpec)"
            )
        spec = getattr(
            importlib.import_module(f"{consumers_package.__name__}.{name}.service"), "SERVICE", None
        )
    if not isinstance(spec, ServiceSpec):
        raise ConfigurationError(f"expected a ServiceSpec at {name!r}, got {type(spec).__name__}")
    return spec


def service_parser(spec: ServiceSpec[Any], prog: str) -> tuple[argparse.ArgumentParser, set[str]]:
    """The options of ``spec``: common ones and the service's own (whose dests are returned)."""
    parser = argparse.ArgumentParser(prog=prog, description=spec.description or None)
    parser.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT",
        help="Kafka bootstrap servers (default: AGENTSTREAM_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    parser.add_argument(
        "--topic-prefix", metavar="PREFIX", help="topic prefix (default agentstream)"
    )
    parser.add_argument("--group-id", help="consumer group (default <topic-prefix>.<service>)")
    parser.add_argument("--http-host", help="address of /metrics, /healthz, /readyz")
    parser.add_argument("--http-port", type=int, help="port of /metrics, /healthz, /readyz")
    common = {action.dest for action in parser._actions}
    if spec.add_arguments is not None:
        spec.add_arguments(parser)
    own = {action.dest for action in parser._actions} - common
    # An option not given must not override the environment (store_true defaults to False).
    parser.set_defaults(**dict.fromkeys(own))
    return parser, own


def settings_from_options(
    spec: ServiceSpec[Any], options: Sequence[str], prog: str = "agentstream consume"
) -> ServiceSettings:
    """Environment (``AGENTSTREAM_*``) overridden by the options given."""
    parser, own = service_parser(spec, f"{prog} {spec.name}")
    args = parser.parse_args(list(options))
    fields = ["bootstrap_servers", "topic_prefix", "group_id", "http_host", "http_port", *own]
    given = {name: getattr(args, name) for name in fields if getattr(args, name, None) is not None}
    try:
        settings: ServiceSettings = spec.settings_class(**given)
    except ValidationError as exc:
        # Named by the option given (--max-calls), not by the variable of the setting.
        flags = {
            a.dest: max(a.option_strings, key=len) for a in parser._actions if a.option_strings
        }
        error = settings_error(exc, {name: flags.get(name, name) for name in given})
        if error is None:
            raise
        raise error from None
    return settings


def tune_gc(gen0_threshold: int) -> None:
    """The process's garbage-collector policy for streaming (``gc_gen0_threshold``): a young
    generation collected every ``gen0_threshold`` allocations instead of 700, and what exists
    at startup (modules, settings, the service's setup) moved out of the collector's sight.

    A consumer allocates a few container objects per record and holds thousands in flight;
    with the default threshold the collector runs every few hundred records and walks them
    all, about a third of the process's time in the benchmarks. Cycles are still collected,
    only less often. Called by the command-line entry point, which owns the process; the
    library never changes the interpreter's settings.
    """
    if gen0_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)


async def run_service(
    spec: ServiceSpec[Any], settings: ServiceSettings, *, stop: asyncio.Event | None = None
) -> int:
    """Run ``spec`` until SIGTERM/SIGINT (or ``stop``): HTTP endpoints, consumer, setup.

    The first signal drains and exits 0 (the drain is bounded by ``drain_timeout_ms``; the
    whole shutdown by that plus :data:`EXIT_GRACE_SECONDS`, else exit code 1; exit code 1 too
    when the final commit failed, the broker gone); a second signal exits at once with code
    1, without draining (nothing unfinished is committed).
    """
    if spec.preflight is not None:
        spec.preflight(settings)  # config files: said before any wait for the broker
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    bound = settings.drain_timeout_ms / 1000 + EXIT_GRACE_SECONDS
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_signal, stop, sig, bound)
    registry = CollectorRegistry()
    consumer = EventConsumer(settings, service=spec.name, registry=registry)
    consumer_started = [False]  # /healthz: alive while waiting for the broker, then the loop
    http = ServiceHTTPServer(
        settings.http_host,
        settings.http_port,
        registry=registry,
        healthy=lambda: consumer.healthy or not consumer_started[0],
        ready=lambda: consumer.ready,
    )
    try:
        await http.start()
    except OSError as exc:
        if isinstance(exc, socket.gaierror):  # the host, not the port
            raise ConfigurationError(
                f"expected an address to serve HTTP on (http_host / --http-host), got "
                f"{settings.http_host!r}: {exc.strerror}"
            ) from exc
        raise ConfigurationError(
            f"expected a free HTTP port at {settings.http_host}:{settings.http_port} "
            f"(http_port / --http-port), got {exc}"
        ) from exc
    try:
        if not await until_stopped(wait_for_broker(settings.admin_options(), timeout=60), stop):
            return 0
        async with contextlib.AsyncExitStack() as stack:
            # A setup may wait (for its store, a state restore): a signal cancels it.
            entered = stack.enter_async_context(spec.setup(consumer, settings))
            if not await until_stopped(entered, stop):
                log.info("service %s stopped while starting", spec.name)
                return 0
            consumer_started[0] = True
            if not stop.is_set():
                await consumer.run(stop)
        if consumer.committed_at_stop is False:
            log.error(
                "service %s stopped without committing its last offsets (see the warning "
                "above): the partitions' next owners process those records again",
                spec.name,
            )
            return 1
    finally:
        await http.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log.info("service %s exited cleanly", spec.name)
    return 0


def _on_signal(stop: asyncio.Event, sig: signal.Signals, bound: float) -> None:
    if stop.is_set():
        log.warning("%s received again: exiting now, without draining", sig.name)
        os._exit(1)
    log.info("%s received: stopping (finish in-flight work, commit, leave the group)", sig.name)
    stop.set()
    asyncio.get_running_loop().call_later(bound, _stuck, bound)


def _stuck(bound: float) -> None:
    log.error("shutdown did not finish within %.0f s: exiting without the rest", bound)
    os._exit(1)
