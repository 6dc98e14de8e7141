"""JSON Schema of the envelope and of every payload, generated from the Structs.

The checked-in copies live in ``jsonschema/`` next to this module (and ship in the wheel);
``agentstream schemas export`` rewrites them and ``agentstream schemas export --check``
fails when they are stale.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import msgspec

from .envelope import WireEvent
from .payloads import PAYLOADS

PACKAGED_DIR = Path(__file__).with_name("jsonschema")


def _document(struct: type[Any], title: str, event_type: str | None = None) -> dict[str, Any]:
    (ref,), components = msgspec.json.schema_components([struct], ref_template="#/$defs/{name}")
    name = ref["$ref"].rsplit("/", 1)[1]
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
    }
    if event_type is not None:
        schema["x-event-type"] = event_type
    schema.update(components[name])
    others = {k: v for k, v in components.items() if k != name}
    if others:
        schema["$defs"] = others
    cleaned: dict[str, Any] = _cleaned(schema)
    return cleaned


def _cleaned(node: Any) -> Any:
    """``node`` with every docstring-born ``description`` dedented: msgspec 0.23 dedents
    docstrings and earlier releases keep their indentation, so the files are the same under
    either."""
    if isinstance(node, dict):
        return {
            key: inspect.cleandoc(value)
            if key == "description" and isinstance(value, str)
            else _cleaned(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_cleaned(item) for item in node]
    return node


def generate() -> dict[str, str]:
    """File name → JSON text, for the envelope and every payload type."""
    documents = {"envelope.json": _document(WireEvent, "agentstream event envelope")}
    for event_type, cls in sorted(PAYLOADS.items()):
        documents[f"{event_type}.json"] = _document(cls, f"data of {event_type}", event_type)
    return {
        name: json.dumps(doc, indent=2, sort_keys=True) + "\n" for name, doc in documents.items()
    }


def export(directory: Path) -> list[str]:
    """Write every schema into ``directory``, removing stale ones; return the names written."""
    directory.mkdir(parents=True, exist_ok=True)
    files = generate()
    for stale in directory.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return sorted(files)


def stale_files(directory: Path) -> list[str]:
    """Names that differ between ``directory`` and what the Structs generate now."""
    files = generate()
    present = {p.name: p.read_text(encoding="utf-8") for p in directory.glob("*.json")}
    return sorted(n for n in files.keys() | present.keys() if files.get(n) != present.get(n))
