"""``agentstream db migrate|status``: the event store's schema."""

from __future__ import annotations

import argparse
from typing import Any

from .sessions import add_store_argument, store_from


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "db", help="the persistence store's schema (migrations)"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    migrate = actions.add_parser("migrate", help="apply pending schema migrations (idempotent)")
    add_store_argument(migrate)
    migrate.set_defaults(func=run_migrate)
    status = actions.add_parser("status", help="print the schema version and the event count")
    add_store_argument(status)
    status.set_defaults(func=run_status)


async def run_migrate(args: argparse.Namespace) -> int:
    async with store_from(args, readonly=False) as store:
        applied = await store.migrate()
        version = await store.schema_version()
    if applied:
        print(f"{store.url}: applied migrations {', '.join(map(str, applied))}; now at {version}")
    else:
        print(f"{store.url}: already at version {version}")
    return 0


async def run_status(args: argparse.Namespace) -> int:
    async with store_from(args) as store:
        version, latest = await store.schema_version(), store.latest_version()
        events = await store.count() if version else 0
    state = "up to date" if version == latest else f"this agentstream writes version {latest}"
    print(f"{store.url}: schema version {version} ({state}), {events} events")
    return 0 if version == latest else 1
