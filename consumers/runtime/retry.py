"""Exponential backoff with jitter, as aiokafka and most Kafka clients do it."""

from __future__ import annotations

import random


def backoff_seconds(
    attempt: int, base_ms: int, max_ms: int, rng: random.Random | None = None
) -> float:
    """Delay before retry number ``attempt`` (1-based): ``base * 2**(attempt-1)`` capped at
    ``max_ms``, then "equal jitter" (between half and all of it) so retries of many
    consumers do not beat in step."""
    if attempt < 1:
        raise ValueError(f"expected a retry number >= 1, got {attempt}")
    ceiling = min(float(max_ms), base_ms * 2.0 ** min(attempt - 1, 62))
    jitter = (rng or random).random()
    return ceiling * (0.5 + jitter / 2) / 1000.0
