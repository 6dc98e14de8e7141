"""``agentstream sessions``: the stored sessions, one line each, latest activity first."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ._common import positive_integer, settings_from, since_argument

if TYPE_CHECKING:
    from agentstream.consumers.persistence import SessionSummary, Store


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "sessions", help="list stored sessions: events, duration, last stop reason"
    )
    add_store_argument(parser)
    parser.add_argument("--agent", metavar="ID", help="only sessions this agent took part in")
    parser.add_argument(
        "--since",
        type=since_argument,
        metavar="WHEN",
        help="only sessions active since WHEN: 90s, 15m, 1h, 2d, 1w or an ISO time",
    )
    parser.add_argument(
        "--limit", type=positive_integer, default=50, help="at most this many (default 50)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(func=run)


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="URL",
        help="sqlite:///path or postgresql://user@host/db "
        "(default: AGENTSTREAM_STORE or sqlite:///agentstream.db)",
    )


def store_from(args: argparse.Namespace, *, readonly: bool = True) -> Store:
    """The store named by ``--store`` or the environment, opened read-only where possible
    (unless ``readonly`` is false)."""
    from agentstream.consumers.persistence import open_store
    from agentstream.consumers.persistence.service import PersistenceSettings

    settings = settings_from(args, PersistenceSettings, store=args.store)
    return open_store(settings.store, readonly=readonly)


async def run(args: argparse.Namespace) -> int:
    async with store_from(args) as store:
        await store.require_schema()
        found = await store.sessions(agent=args.agent, since=args.since, limit=args.limit)
    if args.json:
        print_lines(json.dumps(as_dict(s)) for s in found)
    elif not found:
        print("no sessions")
    else:
        width = max(7, *(len(s.session_id) for s in found))
        agent_width = max(5, *(len(s.agent_id) for s in found))
        header = (
            f"{'SESSION':<{width}}  {'AGENT':<{agent_width}} {'EVENTS':>7} {'DURATION':>9}  "
            f"{'LAST EVENT (UTC)':<19}  STOP REASON"
        )
        print_lines(
            [header]
            + [
                f"{s.session_id:<{width}}  {s.agent_id:<{agent_width}} {s.events:>7} "
                f"{format_duration(s.duration):>9}  {s.last:%Y-%m-%d %H:%M:%S}  "
                f"{s.stop_reason or '-'}"
                for s in found
            ]
        )
    return 0


def print_lines(lines: Iterable[str]) -> None:
    """Print ``lines``. A reader that stops early (``| head``) ends the command with 141, as
    every command (the entry point's BrokenPipeError handler)."""
    for line in lines:
        print(line)
    sys.stdout.flush()


def as_dict(s: SessionSummary) -> dict[str, Any]:
    return {
        "session_id": s.session_id,
        "agent_id": s.agent_id,
        "events": s.events,
        "first": s.first.isoformat(),
        "last": s.last.isoformat(),
        "duration_s": s.duration.total_seconds(),
        "stop_reason": s.stop_reason,
    }


def format_duration(span: timedelta) -> str:
    """``850ms``, ``42.0s``, ``12m05s``, ``3h07m``, ``2d04h``."""
    seconds = span.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
