"""TopicSpec refuses what a topic cannot have, before any broker sees it (some accept it)."""

from __future__ import annotations

import pytest

from agentstream.schemas.admin import (
    DAY_MS,
    DEAD_LETTER_HEADROOM,
    KAFKA_MESSAGE_MAX_BYTES,
    TopicSpec,
    creation_error,
)
from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.routing import Routing


def test_retention_minus_one_keeps_records_forever() -> None:
    spec = TopicSpec(partitions=3, retention_ms={"events": -1, "dlq": DAY_MS})
    configs = {t.name: t.topic_configs["retention.ms"] for t in spec.new_topics(Routing())}
    assert configs == {"agentstream.events": "-1", "agentstream.dlq": str(DAY_MS)}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"partitions": 0}, "expected partitions >= 1, got 0"),
        ({"replication_factor": -1}, "expected replication factor >= 1, got -1"),
        (
            {"partitions": -3, "retention_ms": {"tokens": 0}},
            "expected partitions >= 1, got -3; retention of the tokens topic > 0 ms or -1 "
            "(forever), got 0",
        ),
    ],
)
def test_impossible_values_are_refused_with_what_was_expected(
    spec: dict[str, object], expected: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        TopicSpec(**spec)  # type: ignore[arg-type]
    assert str(caught.value) == expected


def test_a_refused_topic_creation_names_kafkas_error() -> None:
    error = creation_error(
        "p.events", 38, "Replication factor: 3 larger than available brokers: 1."
    )
    assert isinstance(error, ConfigurationError)  # one line from the CLI, not a traceback
    assert str(error) == (
        "expected Kafka to create topic 'p.events', it refused with error 38 "
        "InvalidReplicationFactorError: Replication factor: 3 larger than available brokers: 1."
    )


def test_the_dead_letter_topic_takes_records_larger_than_the_others_by_the_headroom() -> None:
    """A dead letter is its record plus error headers: near the size limit it was refused."""
    default = {
        t.name: t.topic_configs.get("max.message.bytes") for t in TopicSpec().new_topics(Routing())
    }
    assert default.pop("agentstream.dlq") == str(KAFKA_MESSAGE_MAX_BYTES + DEAD_LETTER_HEADROOM)
    assert set(default.values()) == {None}  # the broker's own limit elsewhere
    raised = TopicSpec(extra_configs={"max.message.bytes": "5000000"}).new_topics(Routing())
    limits = {t.name: t.topic_configs["max.message.bytes"] for t in raised}
    assert limits.pop("agentstream.dlq") == str(5_000_000 + DEAD_LETTER_HEADROOM)
    assert set(limits.values()) == {"5000000"}
