"""ThrottledWarning: the first failure at once, then one line a minute, and the recovery."""

from __future__ import annotations

import logging

import pytest

from agentstream.consumers.runtime.throttle import ThrottledWarning


def test_repeated_failures_are_one_line_per_interval_with_what_was_held(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = logging.getLogger("test.throttle")
    warning = ThrottledWarning(log, "export", "spans dropped", interval_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.throttle"):
        for second in range(0, 150, 10):  # one failure every 10 s, 5 spans each
            now[0] = second
            warning.failed(f"failed at {second}", 5)
        now[0] = 155
        warning.recovered("works again")
        warning.recovered("works again")  # once only
        now[0] = 156
        warning.failed("failed at 156", 2)  # a new outage is told at once
    held = " more failures since the last notice, "
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "export: failed at 0"),
        ("WARNING", f"export: failed at 60 (5{held}25 spans dropped)"),
        ("WARNING", f"export: failed at 120 (5{held}25 spans dropped)"),
        ("INFO", f"export: works again (2{held}10 spans dropped)"),
        ("WARNING", "export: failed at 156"),
    ]
