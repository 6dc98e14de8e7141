"""``agentstream dlq list|show|replay``: inspect dead letters and send them back once fixed."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import AsyncIterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentstream.consumers.runtime.dlqtools import DeadLetterInfo

from ._common import add_kafka_arguments, kafka_settings_from


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "dlq", help="inspect and replay dead letters (<prefix>.dlq)"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="one line per dead letter")
    add_kafka_arguments(listing)
    listing.add_argument("--service", help="only this service's dead letters")
    listing.set_defaults(func=run_list, quiet_client_logs=True)
    show = actions.add_parser("show", help="one dead letter in full: headers and decoded value")
    add_kafka_arguments(show)
    show.add_argument("ref", type=_ref, metavar="PARTITION:OFFSET", help="as printed by `dlq list`")
    show.set_defaults(func=run_show, quiet_client_logs=True)
    replay = actions.add_parser(
        "replay", help="send dead letters back to their original topic (key, value, headers)"
    )
    add_kafka_arguments(replay)
    replay.add_argument("--service", help="only this service's dead letters")
    replay.add_argument(
        "--offset",
        action="append",
        type=_ref,
        metavar="PARTITION:OFFSET",
        help="this one (repeatable)",
    )
    replay.add_argument(
        "--all", action="store_true", help="every dead letter (of --service, if given)"
    )
    replay.set_defaults(func=run_replay, quiet_client_logs=True)


def _ref(text: str) -> str:
    """A dead letter's ``partition:offset``, as ``dlq list`` prints it."""
    partition, _, offset = text.partition(":")
    # Kafka's partitions are 32-bit, its offsets 63-bit: past them aiokafka's fetcher failed
    # in the background and the command waited forever
    if not (
        partition.isascii()
        and partition.isdigit()
        and offset.isascii()
        and offset.isdigit()
        and int(partition) < 2**31
        and int(offset) < 2**63
    ):
        raise argparse.ArgumentTypeError(
            f"expected PARTITION:OFFSET as `dlq list` prints it (3:17), got {text!r}"
        )
    return f"{int(partition)}:{int(offset)}"


async def run_list(args: argparse.Namespace) -> int:
    from agentstream.consumers.runtime.dlqtools import dead_letters

    header = "ref\ttime\tservice\thandler\ttype\toriginal\treason"
    # Closed here whatever ends the loop (a reader gone: `dlq list | head -1`); left to the
    # event loop's shutdown, the generator was closed while running ("aclose(): asynchronous
    # generator is already running", a traceback).
    async with contextlib.aclosing(
        dead_letters(kafka_settings_from(args), service=args.service)
    ) as letters:
        async for info in letters:  # the header once the topic could be read: no table on an error
            if header:
                print(header, flush=True)
                header = ""
            print(info.line())
    if header:
        print(header, flush=True)
    return 0


def _partition_offset(ref: str) -> tuple[int, int]:
    partition, _, offset = ref.partition(":")
    return int(partition), int(offset)


async def run_show(args: argparse.Namespace) -> int:
    from agentstream.consumers.runtime.dlqtools import dead_letter_at
    from agentstream.schemas import DecodeError, decode_record

    info = await dead_letter_at(kafka_settings_from(args), *_partition_offset(args.ref))
    if info is None:
        print(f"no dead letter {args.ref} (see `agentstream dlq list`)", file=sys.stderr)
        return 1
    record = info.record
    print(f"dead letter {info.ref}\nkey: {record.key!r}\nheaders:")
    for name, value in record.headers:
        print(f"  {name}: {value.decode('utf-8', 'replace')}")
    try:
        event = decode_record(record.value, record.headers)
    except DecodeError as exc:
        print(f"value (undecodable: {exc.message}): {record.value!r}")
    else:
        print("value:\n" + json.dumps(event.to_dict(), indent=2, ensure_ascii=False))
    return 0


async def run_replay(args: argparse.Namespace) -> int:
    from agentstream.consumers.runtime.dlqtools import (
        dead_letter_at,
        dead_letters,
        replay,
    )
    from agentstream.schemas.errors import ConfigurationError

    if not args.all and not args.offset:
        raise ConfigurationError("expected --offset PARTITION:OFFSET or --all, got neither")
    if args.all and args.offset:
        raise ConfigurationError("expected --offset PARTITION:OFFSET or --all, got both")
    settings = kafka_settings_from(args)
    letters: AsyncIterable[DeadLetterInfo] | list[DeadLetterInfo]
    if args.offset:  # each read where it is; all found before any is sent
        found = [await dead_letter_at(settings, *_partition_offset(ref)) for ref in args.offset]
        letters = [
            info
            for info in found
            if info is not None and (args.service is None or info.service == args.service)
        ]
        missing = set(args.offset) - {info.ref for info in letters}
        if missing:
            raise ConfigurationError(f"expected dead letters {sorted(missing)}, not found")
        refused = [f"{info.ref}: {why}" for info in letters if (why := info.unreplayable())]
        if refused:
            raise ConfigurationError(f"expected dead letters to replay, got {'; '.join(refused)}")
    else:
        letters = dead_letters(settings, service=args.service)
    sent = 0
    try:
        async for info, partition, offset in replay(settings, letters):
            target = f"group {info.group_id}" if info.group_id else "every group"
            print(
                f"replayed {info.ref} -> {info.topic}[{partition}]@{offset} ({info.type}) "
                f"for {target}",
                flush=True,
            )
            sent += 1
    except BaseException:
        if sent:  # how far a replay that failed got (the error follows)
            print(f"{sent} dead letter(s) replayed before it stopped", flush=True)
        raise
    print(f"{sent} dead letter(s) replayed", flush=True)
    return 0
