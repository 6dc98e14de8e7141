"""Cluster administration both sides need: broker readiness and topic creation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    CorruptRecordException,
    KafkaConnectionError,
    KafkaError,
    TopicAlreadyExistsError,
    UnsupportedCodecError,
    for_code,
)
from aiokafka.protocol.metadata import MetadataRequest

from .connect import raise_if_refused, refusal
from .errors import AgentstreamError, BrokerUnavailableError, ConfigurationError, describe
from .routing import ALERTS, CONTROL, DLQ, EVENTS, TOKENS, Routing
from .settings import broker_address

DAY_MS = 86_400_000
KAFKA_MESSAGE_MAX_BYTES = 1_048_588
"""Apache Kafka's default ``message.max.bytes`` (broker) and ``max.message.bytes`` (topic)."""
DEAD_LETTER_HEADROOM = 65_536
"""Bytes a dead letter may add to the record it copies: its error headers (exception message,
stack trace and reason are cut at 2,048, 8,192 and 2,048 characters, up to 4 bytes each in
UTF-8, and a few short values). The dead-letter topic is created accepting records this much
larger than the other topics, and the services' producer sends them: a record the events
topic took near its limit can be dead-lettered (one wedged its partition, its dead letter
refused as too large at every retry). A record the topic took compressed may be larger than
that uncompressed, which is how a producer measures a request: its dead letter goes without
its value (``agentstream.errors.value.dropped``)."""

log = logging.getLogger("agentstream.admin")


@dataclass(frozen=True)
class TopicSpec:
    """Partitions, replication and retention for the five topics. Retention is in
    milliseconds, -1 keeping records forever (Kafka's ``retention.ms=-1``). Raises
    :class:`ConfigurationError` for values a topic cannot have (some brokers accept them)."""

    partitions: int = 6
    replication_factor: int = 1
    retention_ms: Mapping[str, int] = field(
        default_factory=lambda: {
            EVENTS: 7 * DAY_MS,
            TOKENS: 1 * DAY_MS,
            ALERTS: 30 * DAY_MS,
            CONTROL: 1 * DAY_MS,
            DLQ: 30 * DAY_MS,
        }
    )
    extra_configs: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = [
            f"{name} >= 1, got {value}"
            for name, value in (
                ("partitions", self.partitions),
                ("replication factor", self.replication_factor),
            )
            if value < 1
        ]
        problems += [
            f"retention of the {kind} topic > 0 ms or -1 (forever), got {ms}"
            for kind, ms in self.retention_ms.items()
            if ms <= 0 and ms != -1
        ]
        if problems:
            raise ConfigurationError(f"expected {'; '.join(problems)}")

    def new_topics(self, routing: Routing) -> list[NewTopic]:
        topics = []
        largest = int(self.extra_configs.get("max.message.bytes", KAFKA_MESSAGE_MAX_BYTES))
        for kind, retention in self.retention_ms.items():
            configs = {
                "retention.ms": str(retention),
                "cleanup.policy": "delete",
                **self.extra_configs,
            }
            if kind == DLQ:
                configs["max.message.bytes"] = str(largest + DEAD_LETTER_HEADROOM)
            topics.append(
                NewTopic(
                    routing.topic(kind),
                    self.partitions,
                    self.replication_factor,
                    topic_configs=configs,
                )
            )
        return topics


async def wait_for_broker(admin_options: Mapping[str, Any], timeout: float = 30.0) -> None:
    """Return once the cluster answers a metadata request; raise after ``timeout`` seconds.

    Retries every 50 ms at first, backing off to every 0.5 s, and says once that it waits.
    A broker that answers but refuses the client's TLS or SASL settings is no reason to wait:
    that raises :class:`ConfigurationError` at once (see :func:`~.connect.refusal`). Brokers
    that advertise addresses not reachable from here may be DNS catching up with a new
    broker: that is said, waited for, and raised at the deadline.
    """
    servers = broker_address(admin_options)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    pause = 0.05
    while (left_ms := int((deadline - time.monotonic()) * 1000)) > 0:
        # Each attempt, and the look at why it failed, ends by the deadline (a host that
        # drops packets would hold each for its whole timeout).
        attempt = {**admin_options, "request_timeout_ms": max(100, min(2_000, left_ms))}
        admin = AIOKafkaAdminClient(**attempt)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except Exception as exc:  # a KafkaError while it is not up; others from a refusal
            left_ms = int((deadline - time.monotonic()) * 1000)
            probe = {**admin_options, "request_timeout_ms": max(100, left_ms)}
            refused = await raise_if_refused(probe, exc, waiting=True)
            if last is None or (refused is not None and type(last) is not type(refused)):
                log.info(
                    "%s; waiting up to %.0f s",
                    refused or f"no Kafka broker answers at {servers} yet",
                    timeout,
                )
            last = refused or exc
        finally:
            await admin.close()
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.5)
    if isinstance(last, AgentstreamError):
        raise last
    raise BrokerUnavailableError(
        f"expected a Kafka broker answering metadata requests at {servers} within {timeout:.0f} s; "
        f"last error: {last!r}"
    )


TLS_PROBE_AFTER_S = 2.0
"""A TLS client's ``start()`` still running after this long is looked at (:func:`refusal`): at a
listener without TLS the handshake gets no answer, and aiokafka waits its whole
``request_timeout_ms`` (40 s) before it fails."""


async def start_client(client: Any, options: Mapping[str, Any]) -> None:
    """``await client.start()`` of an aiokafka consumer, producer or admin client built with
    ``options`` (its keyword arguments, or at least their connection and security part). When
    it fails, the client is closed and the error says why: :class:`ConfigurationError` for a
    broker that refused the TLS or SASL settings (a TLS client at a listener without TLS within
    :data:`TLS_PROBE_AFTER_S` and a probe), else :class:`BrokerUnavailableError` with where
    the client looked (:func:`broker_address`)."""
    starting = asyncio.ensure_future(client.start())
    try:
        if options.get("security_protocol") in ("SSL", "SASL_SSL"):
            await asyncio.wait({starting}, timeout=TLS_PROBE_AFTER_S)
            refused = None if starting.done() else await refusal(options)
            if refused is not None and not refused.retriable:
                raise refused
        await starting
    except BaseException as exc:
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
        if not isinstance(exc, Exception):  # the caller's cancellation: as it was
            raise
        # KafkaConnectionError; a refused SCRAM exchange raises others
        await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())
        if isinstance(exc, ConfigurationError):
            raise
        await raise_if_refused(options, exc)
        if not isinstance(exc, KafkaConnectionError):
            raise
        raise BrokerUnavailableError(
            f"expected a Kafka broker at {broker_address(options)}, none answered: {exc}"
        ) from exc


@contextlib.asynccontextmanager
async def admin_client(options: Mapping[str, Any]) -> AsyncIterator[AIOKafkaAdminClient]:
    """An admin client built with ``options`` (``KafkaSettings.admin_options()``), started
    as :func:`start_client` starts it, closed when the block ends."""
    admin = AIOKafkaAdminClient(**options)
    await start_client(admin, options)
    try:
        yield admin
    finally:
        await admin.close()


UNREADABLE_ERRORS = (CorruptRecordException, UnsupportedCodecError)
"""What a fetch raises for a batch that stays unreadable however often it is fetched: a bad
CRC, a codec whose library is missing, a record the client cannot parse (see :func:`fetch`)."""


async def fetch(
    consumer: Any, *partitions: Any, timeout_ms: int, max_records: int | None = None
) -> dict[Any, list[Any]]:
    """``consumer.getmany(...)`` of an aiokafka consumer, with a record the client cannot
    parse raised as a :class:`~aiokafka.errors.CorruptRecordException` (a KafkaError), as a
    bad CRC is: a header name that is not UTF-8 (Go clients send header names as bytes, and
    Kafka takes them) raised UnicodeDecodeError out of aiokafka's parser, past every handler
    of fetch errors, and killed every service."""
    try:
        batches: dict[Any, list[Any]] = await consumer.getmany(
            *partitions, timeout_ms=timeout_ms, max_records=max_records
        )
    except KafkaError:
        raise
    except (ValueError, IndexError, struct.error) as exc:  # UnicodeDecodeError is a ValueError
        raise CorruptRecordException(f"a record the client cannot parse: {describe(exc)}") from exc
    return batches


async def true_ends(
    consumer: Any, partitions: Sequence[Any], *, timeout_s: float, wait_ms: int = 500
) -> tuple[dict[Any, int], set[Any]]:
    """The end of each of an assigned consumer's ``partitions``: the high watermark a fetch
    response reports, and the partitions whose fetch did not answer within ``timeout_s``
    (their end is ListOffsets'). The embedded broker answers ListOffsets with the base offset
    of its last batch + 1, short of the records after the first one of that batch; Apache
    Kafka answers the high watermark, and both agree with fetch responses. Moves the
    consumer's positions (the caller seeks where it wants next) and leaves the partitions
    resumed."""
    ends = {tp: int(end) for tp, end in (await consumer.end_offsets(list(partitions))).items()}
    for tp, end in ends.items():  # inside the last batch: the fetch answers at once with data
        consumer.seek(tp, max(0, end - 1))
    pending = set(ends)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        await fetch(consumer, *pending, timeout_ms=wait_ms, max_records=1)
        for tp in list(pending):
            high = consumer.highwater(tp)
            if high is not None:
                ends[tp] = max(ends[tp], int(high))
                pending.discard(tp)
                consumer.pause(tp)
    consumer.resume(*(set(ends) - pending))
    return ends, pending


async def stop_client(client: Any) -> None:
    """``await client.stop()`` of an aiokafka consumer or producer. Without a broker, aiokafka's
    consumer ends its ``stop()`` in the CancelledError of its own fetch task (it awaits the
    task it cancelled), before closing its network client: that error is swallowed (never a
    cancellation of the caller) and the network client closed here, so no metadata task
    keeps reconnecting in a process that goes on."""
    try:
        await client.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        network = getattr(client, "_client", None)  # aiokafka's AIOKafkaClient
        if network is not None:
            await network.close()
        log.warning("%s stopped while its broker did not answer", type(client).__name__)


async def ensure_topics(
    admin_options: Mapping[str, Any], routing: Routing, spec: TopicSpec | None = None
) -> dict[str, str]:
    """Create the five agentstream topics that do not exist yet (see
    :func:`create_missing_topics`, which this calls with ``spec``'s topics)."""
    return await create_missing_topics(admin_options, (spec or TopicSpec()).new_topics(routing))


async def create_missing_topics(
    admin_options: Mapping[str, Any],
    topics: Sequence[NewTopic],
    *,
    required: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Create those of ``topics`` that do not exist yet.

    Idempotent: returns ``{topic: "created" | "exists" | "exists with N partitions, not M" |
    "exists with cleanup.policy=P, not Q"}``. A topic that exists with another partition count
    than asked is left as it is (partitions can only be added, and that moves keys to other
    partitions) and logged as a warning: sessions are then spread over its own count. So is
    one with another ``cleanup.policy``. Unless ``required`` names it, ``{topic: why}``: then
    either raises :class:`ConfigurationError` saying why the topic must be as asked.
    """
    required = required or {}
    async with admin_client(admin_options) as admin:
        try:
            existing = set(await admin.list_topics())
            missing = [t for t in topics if t.name not in existing]
            present = [t for t in topics if t.name in existing]
            outcome = await _check_existing(admin, present, required)
            for name, differs in (await _check_policies(admin, present, required)).items():
                said = outcome[name]
                outcome[name] = (
                    f"exists with {differs}" if said == "exists" else f"{said}; {differs}"
                )
            if missing:
                response = await admin.create_topics(missing)
                for name, code, message in _topic_errors(response):
                    if code == 0:
                        outcome[name] = "created"
                    elif code == TopicAlreadyExistsError.errno:
                        outcome[name] = "exists"
                    else:
                        raise creation_error(name, code, message)
            return outcome
        except KafkaError as exc:  # a broker reached at bootstrap, not where it advertises
            await raise_if_refused(admin_options, exc)
            raise


def creation_error(name: str, code: int, message: str | None) -> ConfigurationError:
    """What a refused CreateTopics says: the topic, Kafka's error by name (38:
    INVALID_REPLICATION_FACTOR for more replicas than brokers, 29: not authorized, ...) and
    the broker's own words."""
    kind = for_code(code).__name__
    said = f": {message}" if message else ""
    return ConfigurationError(
        f"expected Kafka to create topic {name!r}, it refused with error {code} {kind}{said}"
    )


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    rows = []
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        rows.append((name, code, message))
    return rows


async def describe_topics(admin: AIOKafkaAdminClient, topics: Sequence[str]) -> list[Any]:
    """``admin.describe_topics(topics)`` that never creates one. aiokafka's asks the brokers
    to create missing topics (MetadataRequest v4+ with ``allow_auto_topic_creation``, true
    unless set), which Apache Kafka does under its default ``auto.create.topics.enable``, with
    the broker's default partition count: a look at a topic that a service creates later
    (the budget changelog) would fix its partitions wrongly for good. A missing topic comes
    back with error code 3 (UNKNOWN_TOPIC_OR_PARTITION) and no partitions.

    aiokafka's admin client has no public way to send the flag; ``_send_request`` is the
    one its own ``describe_topics`` uses (aiokafka 0.13 and 0.14: 0.12 and older build their
    requests another way, hence the lower bound in pyproject.toml)."""
    request = MetadataRequest(list(topics), allow_auto_topic_creation=False)
    response = await admin._send_request(request)
    return list(response.to_object()["topics"])


async def missing_topics(admin: AIOKafkaAdminClient, topics: Sequence[str]) -> list[str]:
    """Those of ``topics`` the cluster does not have (asked without creating them)."""
    described = await describe_topics(admin, topics)
    found = {d["topic"] for d in described if not d.get("error_code") and d.get("partitions")}
    return sorted(set(topics) - found)


POLICY_WHY = "compaction keeps only the last record of each session (the key)"
"""Why a topic keyed by session must not be compacted (a warning for the five topics)."""


async def topic_configs(
    admin: AIOKafkaAdminClient, topics: Sequence[str]
) -> dict[str, dict[str, str]]:
    """The configuration of each of ``topics`` the brokers describe (DescribeConfigs): none
    for a topic the client may not describe or that is not there. Apache Kafka lists every
    setting, defaults too; other brokers may list only those set (the embedded one does)."""
    if not topics:
        return {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in topics]
    found: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for code, _, _, name, entries in (r[:5] for r in response.resources):
            if code == 0:
                found[name] = {e[0]: e[1] for e in entries if e[1] is not None}
            else:
                log.debug("no configuration of topic %s: %s", name, for_code(code).__name__)
    return found


async def _check_policies(
    admin: AIOKafkaAdminClient, topics: list[NewTopic], required: Mapping[str, str]
) -> dict[str, str]:
    """``"cleanup.policy=P, not Q"`` for each of ``topics`` whose cleanup policy is not the
    one asked (see :func:`create_missing_topics` for ``required``)."""
    asked = {t.name: (t.topic_configs or {}).get("cleanup.policy") for t in topics}
    try:
        configs = await topic_configs(admin, [name for name, policy in asked.items() if policy])
    except KafkaError as exc:  # a principal without DescribeConfigs, a broker without it
        log.warning("cannot check the cleanup.policy of topics %s: %r", sorted(asked), exc)
        return {}
    outcome = {}
    for name, config in configs.items():
        want, have = asked[name], config.get("cleanup.policy")
        if want is None or have is None or set(have.split(",")) == set(want.split(",")):
            continue
        why = required.get(name)
        fix = (
            f"kafka-configs.sh --bootstrap-server <brokers> --alter --entity-type topics "
            f"--entity-name {name} --add-config cleanup.policy={want}"
        )
        if why is not None:
            raise ConfigurationError(
                f"expected topic {name} with cleanup.policy={want}, it has {have}: {why}; "
                f"fix it with `{fix}`"
            )
        outcome[name] = f"cleanup.policy={have}, not {want}"
        log.warning(
            "topic %s has cleanup.policy=%s, not %s: %s; left as it is (`%s` fixes it)",
            name,
            have,
            want,
            POLICY_WHY,
            fix,
        )
    return outcome


async def _check_existing(
    admin: AIOKafkaAdminClient, topics: list[NewTopic], required: Mapping[str, str]
) -> dict[str, str]:
    """``"exists"`` for each of ``topics``, or what differs in its partition count (see
    :func:`create_missing_topics` for ``required``)."""
    if not topics:
        return {}
    described = await describe_topics(admin, [t.name for t in topics])
    counts = {d["topic"]: len(d["partitions"]) for d in described if not d.get("error_code")}
    outcome = {}
    for topic in topics:
        found = counts.get(topic.name)
        if found is None or found == topic.num_partitions:
            outcome[topic.name] = "exists"
            continue
        why = required.get(topic.name)
        if why is not None:
            raise ConfigurationError(
                f"expected topic {topic.name} with {topic.num_partitions} partitions, it has "
                f"{found}: {why}"
            )
        outcome[topic.name] = f"exists with {found} partitions, not {topic.num_partitions}"
        log.warning(
            "topic %s exists with %d partitions, not the %d asked for: left as it is",
            topic.name,
            found,
            topic.num_partitions,
        )
    return outcome
