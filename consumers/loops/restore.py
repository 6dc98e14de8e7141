"""Rebuilding detector state after an assignment, from Kafka itself.

When the group hands a partition to this process, the records just before the group's
committed offset are read again by a separate, group-less consumer
(:mod:`agentstream.consumers.runtime.replay`: manual assignment, so it never joins or disturbs
the group) and fed to the detector with alerts suppressed: their findings were alerted by
whoever processed them. Only offsets are used, never ``offsets_for_times``, so this works the
same on Apache Kafka and on the embedded broker.

The tail of the alerts topic is read the same way to learn which alerts were published but
whose triggering record was not committed (a crash between the two): they are not published
again.
"""

from __future__ import annotations

from agentstream.consumers.runtime.replay import (
    Window,
    high_watermarks,
    partitions_of,
    read_windows,
)
from agentstream.schemas import header
from agentstream.schemas.settings import KafkaSettings


async def recent_ids_from(
    settings: KafkaSettings, topic: str, source: str, window: int, *, timeout_s: float = 10.0
) -> list[str]:
    """``ce_id`` of the last ``window`` records of every partition of ``topic`` published by
    ``source`` (read from the headers, nothing decoded)."""
    if window <= 0:
        return []
    tps = await partitions_of(settings, topic)
    if not tps:
        return []
    highs = await high_watermarks(settings, tps)
    windows = {tp: Window(max(0, highs[tp] - window), highs[tp]) for tp in tps}
    wanted = source.encode()
    ids = []
    async for record in read_windows(settings, windows, timeout_s=timeout_s, name="loops-alerts"):
        if header(record.headers, "ce_source") == wanted:
            event_id = header(record.headers, "ce_id")
            if event_id is not None:
                ids.append(event_id.decode())
    return ids
