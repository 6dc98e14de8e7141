"""``agentstream demo``: simulated agent pods (half Corail-style EventBus, half Calute-style
AuditEmitter) emitting realistic sessions, some of which loop or blow their budget."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from ._common import (
    add_kafka_arguments,
    kafka_settings_from,
    port_number,
    positive_integer,
    positive_number,
)


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "demo",
        help="simulated agent pods emitting realistic sessions (some loop, some blow budgets)",
        description=(
            "Run simulated agents through the public producer API until --duration elapses "
            "or SIGINT/SIGTERM; sessions in flight are then finished at once, everything is "
            "flushed and a summary printed. The same --seed plays the same sessions."
        ),
    )
    add_kafka_arguments(parser)
    parser.add_argument(
        "--agents", type=positive_integer, default=8, help="simulated pods (default 8)"
    )
    parser.add_argument(
        "--rate",
        type=positive_number,
        default=40.0,
        help="events per second, all agents (default 40)",
    )
    parser.add_argument(
        "--duration",
        type=positive_number,
        metavar="S",
        help="stop after S seconds (default: run until stopped)",
    )
    parser.add_argument("--seed", type=int, default=7, help="scenario seed (default 7)")
    parser.add_argument(
        "--run-id", help="prefix of the session ids (default: 6 random hex characters)"
    )
    parser.add_argument(
        "--obey-control",
        action="store_true",
        help="Corail-style pods listen on the control topic and stop a session the loops or "
        "budget service paused (sessions then depend on timing, not only on the seed)",
    )
    parser.add_argument(
        "--metrics-port",
        type=port_number,
        metavar="PORT",
        help="serve the pods' publisher metrics (agentstream_producer_*) on this port's "
        "/metrics, as an agent pod exposes them for Prometheus (default: not served)",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        metavar="PATH",
        help="write the sessions played and the id of every event published as JSON",
    )
    parser.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    from agentstream.schemas.errors import ConfigurationError

    from ._demo.pods import Demo

    settings = kafka_settings_from(args)
    if args.manifest is not None and not args.manifest.parent.is_dir():  # known only at the end
        raise ConfigurationError(
            f"expected --manifest in an existing directory, got {args.manifest} "
            f"({args.manifest.parent} is no directory)"
        )
    if args.run_id is not None and not args.run_id:  # a random one was used instead
        raise ConfigurationError("expected --run-id to be a prefix of session ids, got ''")
    if args.manifest is not None and args.manifest.is_dir():
        raise ConfigurationError(
            f"expected --manifest to name a file, got {args.manifest}: a directory"
        )
    registry = server = None
    if args.metrics_port is not None:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        try:
            server, _ = start_http_server(args.metrics_port, registry=registry)
        except OSError as exc:
            raise ConfigurationError(
                f"expected --metrics-port {args.metrics_port} free to serve /metrics on, "
                f"got {exc.strerror}"
            ) from None
    demo = Demo(
        settings,
        agents=args.agents,
        rate=args.rate,
        seed=args.seed,
        duration=args.duration,
        run_id=args.run_id,
        obey_control=args.obey_control,
        registry=registry,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, demo.stop)
    print(
        f"demo: {args.agents} agents, ~{args.rate:g} events/s, seed {args.seed}, "
        f"run {demo.run_id}, to {settings.bootstrap_servers}",
        flush=True,
    )
    try:
        summary = await demo.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        if args.manifest is not None:
            demo.write_manifest(args.manifest)
        if server is not None:
            server.shutdown()
            server.server_close()
    for line in summary.lines():
        print(line, flush=True)
    return 0 if summary.flushed and summary.dropped == 0 else 1
