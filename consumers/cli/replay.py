"""``agentstream replay SESSION_ID``: a stored session's timeline, or back into Kafka."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

import msgspec

from ._common import add_kafka_arguments, settings_from, topic_argument
from .sessions import add_store_argument, print_lines, store_from

if TYPE_CHECKING:
    from agentstream.schemas import Event
    from agentstream.schemas.codec import Encoding
    from agentstream.schemas.settings import KafkaSettings


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "replay",
        help="print a stored session's timeline, or publish it back into Kafka",
        description=(
            "Print a session's events in timeline order (timestamp, then seq, then event_id), "
            "or with --to-topic publish them to a topic, with their original event ids, keys "
            "and CloudEvents headers (the persistence service stores them again only once)."
        ),
    )
    parser.add_argument("session_id", metavar="SESSION_ID")
    add_store_argument(parser)
    parser.add_argument("--json", action="store_true", help="one JSON event per line")
    parser.add_argument(
        "--to-topic", metavar="TOPIC", type=topic_argument, help="publish the events to TOPIC"
    )
    parser.add_argument(
        "--for-group",
        metavar="GROUP",
        help="with --to-topic: for this consumer group only (agentstream.tracing, say); "
        "every other group skips the records, as with `dlq replay`",
    )
    add_kafka_arguments(parser)
    parser.set_defaults(func=run, quiet_client_logs=True)


async def run(args: argparse.Namespace) -> int:
    from agentstream.schemas.errors import ConfigurationError

    if args.for_group and not args.to_topic:
        raise ConfigurationError("expected --for-group with --to-topic, got it alone")
    if args.json and args.to_topic:  # --json was ignored
        raise ConfigurationError(
            "expected --json (show the timeline) or --to-topic (publish it), got both"
        )
    async with store_from(args) as store:
        await store.require_schema()
        # the envelopes as stored too: fields a newer producer added (top level) are only there
        stored = await store.timeline_as_stored(args.session_id)
    events = [event for event, _ in stored]
    documents = [document for _, document in stored]
    if not events:
        print(f"no events stored for session {args.session_id!r} in {store.url}", file=sys.stderr)
        return 1
    if args.to_topic:
        from agentstream.schemas.settings import KafkaSettings

        settings = settings_from(args, KafkaSettings)
        sent = await publish(
            settings, args.to_topic, events, for_group=args.for_group, documents=documents
        )
        target = f" for group {args.for_group}" if args.for_group else ""
        print(f"published {sent} events of session {args.session_id} to {args.to_topic}{target}")
        return 0
    print_lines(
        json.dumps(document, ensure_ascii=False) if args.json else human(event)
        for event, document in stored
    )
    return 0


def human(event: Event) -> str:
    data = json.dumps(event.data, ensure_ascii=False, separators=(",", ":"), default=str)
    if len(data) > 120:
        data = data[:117] + "..."
    return (
        f"{event.timestamp.isoformat(timespec='microseconds')}  #{event.seq:<5} "
        f"{event.type:<24} {event.agent_id}  {data}"
    )


async def publish(
    settings: KafkaSettings,
    topic: str,
    events: list[Event],
    *,
    for_group: str | None = None,
    documents: list[dict[str, Any]] | None = None,
) -> int:
    """Send ``events`` in order to ``topic``, each acknowledged; return how many. With
    ``for_group`` only that consumer group handles them (see ``deadletter.REPLAYED_FOR``).
    With ``documents`` (the envelopes as stored, one per event), each record's value is its
    document as JSON, so that fields a newer producer added travel on; else the event encoded
    with ``settings.encoding``."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    from agentstream.consumers.runtime.deadletter import addressed
    from agentstream.schemas import encode_event, event_headers, record_key
    from agentstream.schemas.admin import start_client, wait_for_broker
    from agentstream.schemas.codec import checked_size
    from agentstream.schemas.errors import AgentstreamError, describe

    await wait_for_broker(settings.admin_options())
    producer = AIOKafkaProducer(**settings.producer_options())
    await start_client(producer, settings.client_options())
    encoding: Encoding = "json" if documents is not None else settings.encoding
    largest = settings.max_request_size
    values = (
        [
            checked_size(msgspec.json.encode(d), e, encoding, largest)
            for e, d in zip(events, documents, strict=True)
        ]
        if documents is not None
        else [encode_event(e, encoding, max_bytes=largest) for e in events]
    )
    try:
        futures = [
            await producer.send(
                topic,
                value,
                key=record_key(event),
                headers=addressed(event_headers(event, encoding), for_group),
                timestamp_ms=_record_time(event),
            )
            for event, value in zip(events, values, strict=True)
        ]
        for future in futures:
            await future
    except KafkaError as exc:  # no such topic (and no auto-creation), no rights, ...
        raise AgentstreamError(
            f"expected topic {topic} at {settings.bootstrap_servers} to take the session's "
            f"{len(events)} events, got {describe(exc)} (create the topic first "
            "if the cluster does not create topics on use)"
        ) from None
    finally:
        await producer.stop()
    return len(futures)


def _record_time(event: Event) -> int | None:
    """The record's timestamp: the event's, so that services timing events by their records
    (``max_clock_skew_ms``) keep the session's own times; the client's clock for an event
    before 1970 (a Kafka timestamp cannot be negative)."""
    ms = int(event.timestamp.timestamp() * 1000)
    return ms if ms >= 0 else None
