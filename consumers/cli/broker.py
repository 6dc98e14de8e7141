"""``agentstream broker``: the embedded broker in the foreground, for local work."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

from ._common import port_number, positive_integer


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "broker",
        help="run the embedded Kafka-compatible broker (Tansu, memory storage) in the foreground",
    )
    parser.add_argument(
        "--port",
        type=port_number,
        default=9092,
        help="listen port (default 9092; 0 = any free port)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument(
        "--create-topics", action="store_true", help="create the agentstream topics once ready"
    )
    parser.add_argument(
        "--partitions",
        type=positive_integer,
        default=6,
        help="partitions per topic with --create-topics",
    )
    parser.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    from agentstream.consumers.broker import EmbeddedBroker
    from agentstream.schemas.admin import TopicSpec, ensure_topics
    from agentstream.schemas.routing import Routing

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    spec = TopicSpec(partitions=args.partitions)  # a wrong value fails before the broker starts
    broker = EmbeddedBroker(args.port or None, host=args.host)
    broker.start()
    try:
        await broker.wait_ready()
        print(
            f"embedded broker ready at {broker.bootstrap_servers} "
            "(memory storage; Ctrl-C stops it)",
            flush=True,
        )
        if args.create_topics:
            created = await ensure_topics(
                {"bootstrap_servers": broker.bootstrap_servers},
                Routing(),
                spec,
            )
            print(
                "topics: "
                + ", ".join(f"{name} ({state})" for name, state in sorted(created.items())),
                flush=True,
            )
        while not stop.is_set():  # until a signal, or the broker process ends on its own
            if broker.returncode is not None:
                print(
                    f"agentstream: the embedded broker (pid {broker.pid}) exited with code "
                    f"{broker.returncode}; its clients have lost it",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        broker.stop()
    return 0
