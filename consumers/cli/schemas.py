"""``agentstream schemas export``: the JSON Schema of the envelope and of every payload."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser("schemas", help="event schemas")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    export = actions.add_parser(
        "export", help="write the JSON Schemas (envelope and every payload)"
    )
    export.add_argument(
        "--out",
        type=Path,
        default=Path("schemas/jsonschema"),
        help="directory (default schemas/jsonschema)",
    )
    export.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the files are stale"
    )
    export.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from agentstream.schemas import jsonschema_export as jsonschema
    from agentstream.schemas.errors import ConfigurationError

    if args.out.exists() and not args.out.is_dir():
        raise ConfigurationError(f"expected --out to be a directory, got the file {args.out}")
    if args.check and not args.out.is_dir():  # run elsewhere than the repository's root
        raise ConfigurationError(
            f"expected the exported schemas in {args.out}, no such directory (run it at the "
            "repository's root, or give --out)"
        )
    if args.check:
        stale = jsonschema.stale_files(args.out)
        for name in stale:
            print(f"stale: {args.out / name}")
        return 1 if stale else 0
    names = jsonschema.export(args.out)
    print(f"wrote {len(names)} schemas to {args.out}")
    return 0
