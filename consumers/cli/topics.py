"""``agentstream topics create``: the five agentstream topics, idempotently; with ``--budget``
also the budget service's own two (for clusters where services may not create topics)."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import (
    add_kafka_arguments,
    kafka_settings_from,
    positive_integer,
    positive_number,
    retention_hours,
)


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "topics", help="manage the agentstream topics"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create", help="create the topics that do not exist yet (idempotent)"
    )
    add_kafka_arguments(create)
    create.add_argument(
        "--partitions", type=positive_integer, default=6, help="partitions per topic (default 6)"
    )
    create.add_argument(
        "--replication-factor",
        type=positive_integer,
        default=1,
        help="replicas per partition (default 1)",
    )
    for kind, days in (("events", 7), ("tokens", 1), ("alerts", 30), ("control", 1), ("dlq", 30)):
        create.add_argument(
            f"--{kind}-retention-hours",
            type=retention_hours,
            default=days * 24,
            metavar="H",
            help=f"retention of the {kind} topic (default {days * 24} h; -1 keeps forever)",
        )
    create.add_argument(
        "--budget",
        action="store_true",
        help="also the budget service's changelog and repartition topics, shaped like the "
        "events topic (where services may not create topics; else the service creates them)",
    )
    create.add_argument(
        "--timeout",
        type=positive_number,
        default=30.0,
        metavar="S",
        help="wait this long for the broker (default 30 s)",
    )
    create.set_defaults(func=create_topics, quiet_client_logs=True)


async def create_topics(args: argparse.Namespace) -> int:
    from agentstream.schemas.admin import TopicSpec, ensure_topics, wait_for_broker

    settings = kafka_settings_from(args)
    hours = {
        k: getattr(args, f"{k}_retention_hours")
        for k in ("events", "tokens", "alerts", "control", "dlq")
    }
    retention = {kind: -1 if h == -1 else int(h * 3_600_000) for kind, h in hours.items()}
    spec = TopicSpec(
        partitions=args.partitions,
        replication_factor=args.replication_factor,
        retention_ms=retention,
    )
    await wait_for_broker(settings.admin_options(), timeout=args.timeout)
    outcome = await ensure_topics(settings.admin_options(), settings.routing(), spec)
    if args.budget:
        from agentstream.consumers.budget.changelog import create_budget_topics

        _, budget = await create_budget_topics(settings)
        outcome.update(budget)
    for name, state in sorted(outcome.items()):
        print(f"{name}\t{state}")
    return 0
