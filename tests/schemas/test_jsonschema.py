from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from support.samples import SAMPLE_DATA, sample_event

from agentstream.schemas import PAYLOADS, encode_event
from agentstream.schemas import jsonschema_export as exported


def test_the_packaged_json_schemas_are_not_stale() -> None:
    stale = exported.stale_files(exported.PACKAGED_DIR)
    assert not stale, f"run `make schemas` (agentstream schemas export) and commit: {stale}"


def test_there_is_a_schema_for_the_envelope_and_every_payload() -> None:
    names = {p.name for p in exported.PACKAGED_DIR.glob("*.json")}
    assert names == {"envelope.json"} | {f"{t}.json" for t in PAYLOADS}


def test_samples_validate_against_the_exported_schemas() -> None:
    envelope = json.loads((exported.PACKAGED_DIR / "envelope.json").read_text())
    for event_type, data in SAMPLE_DATA.items():
        jsonschema.validate(json.loads(encode_event(sample_event(event_type))), envelope)
        payload = json.loads((exported.PACKAGED_DIR / f"{event_type}.json").read_text())
        jsonschema.validate(data, payload)


def test_export_writes_and_check_detects_staleness(tmp_path: Path) -> None:
    exported.export(tmp_path)
    assert exported.stale_files(tmp_path) == []
    (tmp_path / "tool.called.json").write_text("{}")
    (tmp_path / "removed.type.json").write_text("{}")
    assert exported.stale_files(tmp_path) == ["removed.type.json", "tool.called.json"]
    exported.export(tmp_path)
    assert exported.stale_files(tmp_path) == []
