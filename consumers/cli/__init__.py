"""The ``agentstream`` command: the composition root. Thin; each command lives in its own
module with a ``register(subparsers)`` function, imported here and nowhere else."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import sys
from collections.abc import Sequence

from agentstream.schemas.errors import AgentstreamError

# Each module defines register(subparsers); the order is the order of `agentstream --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "agentstream.consumers.cli.broker",
    "agentstream.consumers.cli.topics",
    "agentstream.consumers.cli.schemas",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentstream",
        description="AI-agent events through Kafka: producers, services and tools.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result = args.func(args)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
    except AgentstreamError as exc:
        print(f"agentstream: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
