"""``agentstream tail``: a live, decoded view of the events (no consumer group)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

from ._common import (
    add_kafka_arguments,
    kafka_settings_from,
    pattern_argument,
    positive_integer,
    since_argument,
)


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "tail",
        help="follow events as they arrive (one coloured line each, or JSON lines)",
        description=(
            "Reads the topics by assigning partitions (no consumer group: services are never "
            "disturbed, nothing is committed). Prints JSON lines with --json or when stdout "
            "is not a terminal."
        ),
    )
    add_kafka_arguments(parser)
    parser.add_argument(
        "--type",
        default="*",
        type=pattern_argument,
        metavar="PATTERN",
        help="type or glob (default *)",
    )
    parser.add_argument(
        "--session", metavar="ID", help="only this session ('': the events without one)"
    )
    parser.add_argument("--agent", metavar="ID", help="only this agent")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--from-beginning", action="store_true", help="start at the oldest record")
    start.add_argument(
        "--since",
        type=since_argument,
        metavar="WHEN",
        help="start this long ago (30s, 10m, 2h, 1d, 1w) or at a time",
    )
    parser.add_argument("--json", action="store_true", help="JSON lines (default off a terminal)")
    parser.add_argument("--limit", type=positive_integer, metavar="N", help="exit after N events")
    parser.add_argument(
        "--no-follow", action="store_true", help="stop at the end instead of waiting for more"
    )
    parser.set_defaults(func=run, quiet_client_logs=True)


async def run(args: argparse.Namespace) -> int:
    from agentstream.consumers.runtime.reader import read_topics

    settings = kafka_settings_from(args)
    topics = settings.routing().topics_for_pattern(args.type)
    since_ms = None if args.since is None else int(args.since.timestamp() * 1000)
    as_json = args.json or not sys.stdout.isatty()
    shown = 0
    records = read_topics(
        settings,
        topics,
        start="beginning" if args.from_beginning else "end",
        since_ms=since_ms,
        follow=not args.no_follow,
    )
    show = _printer(as_json)
    async with contextlib.aclosing(records):
        async for record in records:
            if not _show(args, record, show):
                continue
            shown += 1
            if args.limit is not None and shown >= args.limit:
                break
    return 0


def _printer(as_json: bool) -> Callable[[Any, Any], None]:
    """How events are printed: JSON lines, rich text when installed, else ANSI colours."""
    from agentstream.consumers.runtime import tailview

    if as_json:
        from agentstream.consumers.runtime.deadletter import replay_target

        return lambda event, record: print(
            tailview.json_line(
                event,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                replayed_for=replay_target(record.headers),
            ),
            flush=True,
        )
    try:
        from rich.console import Console
    except ImportError:
        colour = not os.environ.get("NO_COLOR")  # https://no-color.org, as rich honours it
        return lambda event, _: print(tailview.human_line(event, colour=colour), flush=True)
    console = Console(highlight=False, soft_wrap=True)
    return lambda event, _: console.print(tailview.rich_line(event))


def _show(args: argparse.Namespace, record: Any, show: Callable[[Any, Any], None]) -> bool:
    """Print ``record`` if it passes the filters; whether it did."""
    from agentstream.schemas import DecodeError, RecordLocation, decode_record, header, matches

    session = args.session.encode() if args.session is not None else None  # "": none
    agent = args.agent.encode() if args.agent is not None else None
    announced = header(record.headers, "ce_type")
    if announced is not None and not matches(args.type, announced.decode("utf-8", "replace")):
        return False
    if session is not None and header(record.headers, "ce_sessionid") not in (None, session):
        return False
    if agent is not None and header(record.headers, "ce_agentid") not in (None, agent):
        return False
    try:
        # The envelope only, as the services read it: data that does not match its type's
        # payload is shown, not taken for an undecodable record.
        event = decode_record(record.value, record.headers, validate=False)
    except DecodeError as exc:
        where = RecordLocation(record.topic, record.partition, record.offset)
        print(f"# undecodable record {exc.at(where)}", file=sys.stderr)
        return False
    if not matches(args.type, event.type):
        return False
    if (args.session is not None and event.session_id != args.session) or (
        args.agent is not None and event.agent_id != args.agent
    ):
        return False
    show(event, record)
    return True
