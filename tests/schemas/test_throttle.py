"""ThrottledLog: the first line of a kind at once, then one per interval with what was held
back, and the recovery; kinds apart; thread-safe counts."""

from __future__ import annotations

import logging
import threading

import pytest

from agentstream.schemas.throttle import ThrottledLog

LOGGER = "test.throttle"


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records]


def test_repeated_failures_are_one_line_per_interval_with_what_was_held(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = ThrottledLog(
        logging.getLogger(LOGGER), interval_s=60, unit="spans dropped", clock=lambda: now[0]
    )
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for second in range(0, 150, 10):  # one failure every 10 s, 5 spans each
            now[0] = second
            log("export", "export: failed at %d", second, amount=5)
        now[0] = 155
        log.recovered("export", "export: works again")
        log.recovered("export", "export: works again")  # once only
        now[0] = 156
        log("export", "export: failed at %d", 156, amount=2)  # a new outage is told at once
    held = " more since the last line, "
    assert lines(caplog) == [
        ("WARNING", "export: failed at 0"),
        ("WARNING", f"export: failed at 60 (5{held}25 spans dropped)"),
        ("WARNING", f"export: failed at 120 (5{held}25 spans dropped)"),
        ("INFO", f"export: works again (2{held}10 spans dropped)"),
        ("WARNING", "export: failed at 156"),
    ]


def test_kinds_are_throttled_apart_at_the_chosen_level(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = ThrottledLog(
        logging.getLogger(LOGGER), logging.ERROR, interval_s=10, clock=lambda: now[0]
    )
    with caplog.at_level(logging.INFO, logger=LOGGER):
        log("connect", "cannot connect")
        log("connect", "cannot connect")
        log("drop:too_large", "dropped %s", "e1")  # another kind: told at once
        log.recovered("never-failed", "fine")  # nothing to recover from: silent
        now[0] = 10
        log("connect", "cannot connect")
    assert lines(caplog) == [
        ("ERROR", "cannot connect"),
        ("ERROR", "dropped e1"),
        ("ERROR", "cannot connect (1 more since the last line)"),
    ]


def test_counts_from_many_threads_add_up(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = ThrottledLog(
        logging.getLogger(LOGGER), interval_s=60, unit="events", clock=lambda: now[0]
    )

    def hammer() -> None:
        for _ in range(1_000):
            log("drop", "dropped", amount=1)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        log.recovered("drop", "delivering again")
    assert lines(caplog) == [
        ("WARNING", "dropped"),
        ("INFO", "delivering again (3999 more since the last line, 3,999 events)"),
    ]
