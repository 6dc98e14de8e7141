"""Kafka's default partitioner: murmur2 vectors from the Java client, and librdkafka agreeing."""

from __future__ import annotations

import pytest

from agentstream.schemas.partitioner import KeyPartitioner, murmur2, partition_for, to_positive
from agentstream.schemas.settings import KafkaSettings

# org.apache.kafka.common.utils.UtilsTest#testMurmur2 (the Java client's own expectations)
JAVA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "expected"), JAVA_VECTORS.items())
def test_murmur2_matches_the_java_client(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


def test_murmur2_of_empty_and_short_keys_is_a_signed_32_bit_int() -> None:
    for key in (b"", b"a", b"ab", b"\xff\xff\xff", b"\x00" * 7):
        value = murmur2(key)
        assert -(2**31) <= value < 2**31


def test_to_positive_clears_the_sign_bit_instead_of_abs() -> None:
    assert to_positive(-1) == 0x7FFFFFFF
    assert to_positive(-(2**31)) == 0  # abs() would overflow in Java; Kafka masks
    assert to_positive(5) == 5


def test_partition_for_is_the_java_formula() -> None:
    for key, hashed in JAVA_VECTORS.items():
        assert partition_for(key, 6) == (hashed & 0x7FFFFFFF) % 6
    with pytest.raises(ValueError, match="positive partition count"):
        partition_for(b"x", 0)


def test_key_partitioner_memo_agrees_and_stays_bounded() -> None:
    partitioner = KeyPartitioner(max_entries=4)
    keys = [f"session-{i}".encode() for i in range(10)]
    for key in keys * 2:
        assert partitioner(key, 7) == partition_for(key, 7)
        assert partitioner(key, 3) == partition_for(key, 3)
    assert len(partitioner._hashes) <= 4


async def test_librdkafka_puts_each_key_on_the_partition_we_compute(
    kafka_settings: KafkaSettings,
) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": kafka_settings.bootstrap_servers, "partitioner": "murmur2_random"}
    )
    seen: dict[bytes, int] = {}

    def report(err: object, msg: object) -> None:
        assert err is None, err
        seen[msg.key()] = msg.partition()  # type: ignore[attr-defined]

    keys = [f"0193b0a2-session-{i}".encode() for i in range(40)]
    for key in keys:
        producer.produce(kafka_settings.routing().events, b"{}", key=key, on_delivery=report)
    assert producer.flush(30) == 0
    assert seen == {key: partition_for(key, 4) for key in keys}
