"""``agentstream consume <service>``: run one consumer service (see ``--list``)."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "consume",
        help="run a consumer service (persistence, loops, budget, metrics, tracing, ...)",
        description=(
            "Run a service until SIGTERM/SIGINT. Options after SERVICE are the service's own "
            "(see `agentstream consume SERVICE --help`); settings also come from AGENTSTREAM_* "
            "environment variables."
        ),
    )
    parser.add_argument("--list", action="store_true", help="list the installed services")
    parser.add_argument(
        "--service-spec",
        nargs=argparse.REMAINDER,
        metavar="MODULE:ATTR [OPTIONS]",
        help="run a ServiceSpec given as module:attribute (your own service) with its options",
    )
    parser.add_argument("service", nargs="?", help="service name, or module:attribute")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="service options")
    parser.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    from agentstream.consumers.runtime.runner import (
        available_services,
        load_service,
        run_service,
        settings_from_options,
        tune_gc,
    )
    from agentstream.schemas.errors import ConfigurationError

    if args.list:
        for name in available_services():
            spec = load_service(name)
            print(f"{name}\t{spec.description}")
        return 0
    if args.service_spec:
        target, options = args.service_spec[0], args.service_spec[1:]
    elif args.service:
        target, options = args.service, args.options
    else:
        known = ", ".join(available_services()) or "(none installed)"
        raise ConfigurationError(f"expected a service name among {known}, got none")
    spec = load_service(target)
    settings = settings_from_options(spec, options)
    tune_gc(settings.gc_gen0_threshold)
    return await run_service(spec, settings)
