"""The error hierarchy's text: class names once, locations appended."""

from __future__ import annotations

from aiokafka.errors import CorruptRecordException, KafkaConnectionError

from agentstream.schemas.errors import ConfigurationError, RecordLocation, describe


def test_describe_names_the_class_once() -> None:
    assert describe(KafkaConnectionError("Unable to bootstrap")) == (
        "KafkaConnectionError: Unable to bootstrap"
    )  # aiokafka's text already starts with it
    assert describe(KafkaConnectionError()) == "KafkaConnectionError"
    assert describe(ConnectionRefusedError(111, "refused")) == (
        "ConnectionRefusedError: [Errno 111] refused"
    )
    assert describe(TimeoutError()) == "TimeoutError"
    assert describe(CorruptRecordException("Invalid CRC")) == (
        "CorruptRecordException: Invalid CRC"  # aiokafka's "[Error 2] CorruptRecordException: ..."
    )


def test_at_appends_where_and_keeps_the_class() -> None:
    error = ConfigurationError("expected x, got y").at(RecordLocation("t", 2, 7))
    assert isinstance(error, ConfigurationError)
    assert str(error) == "expected x, got y (at t[2]@7)"
