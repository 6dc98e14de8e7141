"""``agentstream up``: the whole pipeline on this machine — embedded broker (or your Kafka),
topics, the five services as processes, demo agents, and a live view. Ctrl-C stops it all."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import (
    add_kafka_arguments,
    kafka_settings_from,
    non_negative_number,
    port_number,
    positive_integer,
    positive_number,
)


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "up",
        help="run everything locally: broker, topics, services, demo agents, live view",
        description=(
            "Start the embedded broker (or use --bootstrap-servers), create the topics, run "
            "persistence, loops, budget, metrics and tracing as separate processes, start the "
            "demo agents and show events/s, lags and alerts until Ctrl-C, SIGTERM or "
            "--duration. Events stay in the store for `agentstream sessions`/`replay`."
        ),
    )
    add_kafka_arguments(
        parser,
        bootstrap_help="a Kafka cluster to use instead of the embedded broker (default: start "
        "the embedded broker; AGENTSTREAM_BOOTSTRAP_SERVERS is not read here)",
    )
    parser.add_argument(
        "--duration", type=positive_number, metavar="S", help="stop after S seconds of running"
    )
    parser.add_argument("--no-demo", action="store_true", help="do not start the demo agents")
    parser.add_argument(
        "--store",
        type=Path,
        default=Path("agentstream.db"),
        metavar="PATH",
        help="SQLite file of the persistence service (default ./agentstream.db)",
    )
    parser.add_argument(
        "--partitions", type=positive_integer, default=4, help="partitions per topic (default 4)"
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=Path(".agentstream"),
        metavar="DIR",
        help="logs, alerts.jsonl, demo manifest and summary (default ./.agentstream)",
    )
    parser.add_argument(
        "--agents", type=positive_integer, default=8, help="demo agents (default 8)"
    )
    parser.add_argument(
        "--rate", type=positive_number, default=40.0, help="demo events per second (default 40)"
    )
    parser.add_argument("--seed", type=int, default=7, help="demo scenario seed (default 7)")
    parser.add_argument(
        "--obey-control",
        action="store_true",
        help="demo Corail pods stop the sessions the services pause (see `agentstream demo`)",
    )
    parser.add_argument(
        "--first-port",
        type=port_number,
        default=9101,
        metavar="PORT",
        help="HTTP port of the first service, the others follow, then the demo pods' metrics "
        "(default 9101..9105, 9106; a taken port is replaced by a free one; 0: free ports "
        "chosen by the kernel)",
    )
    parser.add_argument(
        "--plain", action="store_true", help="plain progress lines even on a terminal"
    )
    parser.add_argument(
        "--drain-timeout",
        type=non_negative_number,
        default=20.0,
        metavar="S",
        help="at stop, wait this long for the services to catch up (default 20 s)",
    )
    parser.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    from agentstream.schemas.errors import ConfigurationError

    from ._up.run import SERVICES, Up, UpOptions

    if args.log_dir.exists() and not args.log_dir.is_dir():
        raise ConfigurationError(
            f"expected --log-dir to be a directory, got the file {args.log_dir}"
        )
    last = 65536 - len(SERVICES) - 1
    if args.first_port != 0 and not 1 <= args.first_port <= last:
        raise ConfigurationError(
            f"expected --first-port 0 or from 1 to {last} (one port per service and the demo), "
            f"got {args.first_port}"
        )
    options = UpOptions(
        settings=kafka_settings_from(args),
        external_kafka=args.bootstrap_servers is not None,
        duration=args.duration,
        demo=not args.no_demo,
        store=args.store,
        log_dir=args.log_dir,
        partitions=args.partitions,
        seed=args.seed,
        agents=args.agents,
        rate=args.rate,
        obey_control=args.obey_control,
        first_port=args.first_port,
        plain=args.plain,
        drain_timeout=args.drain_timeout,
    )
    return await Up(options).run()
