"""Writes the golden records of the current schema version (run once per released version).

    .venv-dev/bin/python tests/schemas/make_golden.py v1

Never regenerate an existing version's files: they are what older producers wrote.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from support.samples import all_sample_events

from agentstream.schemas import encode_event
from agentstream.schemas.jsonschema_export import PACKAGED_DIR


def main(version: str) -> None:
    root = Path(__file__).with_name("golden") / version
    if root.exists() and any(root.rglob("*.*")):
        raise SystemExit(f"{root} exists: golden records of a released version never change")
    for encoding in ("json", "msgpack"):
        (root / encoding).mkdir(parents=True, exist_ok=True)
        for event in all_sample_events():
            path = root / encoding / f"{event.type}.{encoding}"
            path.write_bytes(encode_event(event, encoding))  # type: ignore[arg-type]
    shutil.copytree(PACKAGED_DIR, root / "jsonschema", dirs_exist_ok=True)


if __name__ == "__main__":
    main(sys.argv[1])
