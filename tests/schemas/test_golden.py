"""Golden records of every released schema version decode with today's code (old → new), and
today's records decode with each released version's reader (new → old).

The readers of old versions are kept here as data, not code: the envelope Struct of that
version (below) and the JSON Schemas it exported (``golden/<version>/jsonschema``).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import jsonschema
import msgspec
import pytest
from support.samples import all_sample_events, sample_event

from agentstream.schemas import Event, EventType, decode_event, encode_event

GOLDEN = Path(__file__).with_name("golden")
VERSIONS = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())


class EnvelopeV1(msgspec.Struct, kw_only=True):
    """The envelope exactly as version 1 defined it (unknown fields ignored, as every reader)."""

    schema_version: int
    event_id: str
    type: str
    timestamp: Annotated[datetime, msgspec.Meta(tz=True)]
    agent_id: str = ""
    user_id: str = ""
    session_id: str = ""
    turn_id: str = ""
    seq: int = 0
    source: str = ""
    data: dict[str, Any] = {}


READERS: dict[str, type[msgspec.Struct]] = {"v1": EnvelopeV1}


def test_every_version_has_a_reader_and_every_type() -> None:
    assert sorted(READERS) == VERSIONS
    for version in VERSIONS:
        for encoding in ("json", "msgpack"):
            names = {p.stem for p in (GOLDEN / version / encoding).iterdir()}
            assert {t.value for t in EventType} <= names


def _golden(version: str, encoding: str) -> list[Path]:
    return sorted((GOLDEN / version / encoding).iterdir())


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_old_records_decode_with_new_code(version: str, encoding: str) -> None:
    for path in _golden(version, encoding):
        event = decode_event(path.read_bytes(), encoding)  # type: ignore[arg-type]
        assert event.type == path.stem
        _ = event.payload  # validates against today's payload Struct
        if version == "v1":  # v1 golden records are the test samples: nothing may be lost
            original = next(e for e in all_sample_events() if e.type == path.stem)
            assert event == original


def _schema(version: str, event_type: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        (GOLDEN / version / "jsonschema" / f"{event_type}.json").read_text()
    )
    return document


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_new_records_decode_with_old_readers(version: str, encoding: str) -> None:
    reader = READERS[version]
    for index, event_type in enumerate(EventType):
        event = sample_event(event_type.value, index)
        value = encode_event(event, encoding)  # type: ignore[arg-type]
        decode = msgspec.json.decode if encoding == "json" else msgspec.msgpack.decode
        old = decode(value, type=reader)
        assert old.event_id == event.event_id  # type: ignore[attr-defined]
        assert old.data == event.data  # type: ignore[attr-defined]
        jsonschema.validate(old.data, _schema(version, event_type.value))  # type: ignore[attr-defined]


def test_old_readers_ignore_fields_added_later() -> None:
    """The evolution rule in action: a field added with a default does not break version 1."""
    event = sample_event("tool.called")
    document = json.loads(encode_event(event))
    document["added_in_v2"] = {"anything": True}
    document["data"]["added_later"] = 1
    old = msgspec.json.decode(json.dumps(document).encode(), type=EnvelopeV1)
    assert old.event_id == event.event_id
    jsonschema.validate(old.data, _schema("v1", "tool.called"))
    assert decode_event(json.dumps(document).encode()).data["added_later"] == 1


def test_golden_records_are_not_today_by_accident() -> None:
    """Guard against regenerating golden files: v1 records carry the fixed sample time."""
    for path in _golden("v1", "json"):
        assert b'"timestamp":"2026-11-01T12:00:00.123456Z"' in path.read_bytes()


def test_new_events_are_written_with_the_current_version() -> None:
    assert json.loads(encode_event(Event(type="agent.started")))["schema_version"] == 1
