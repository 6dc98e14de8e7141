"""ThrottledLog: the first line of a kind at once, then one per interval with what was held
back, and the recovery; kinds apart; thread-safe counts."""

from __future__ import annotations

import logging
import threading

import pytest

from agentstream.schemas.throttle import RepeatFilter, ThrottledLog, quiet_client_repeats

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


def test_a_client_s_repeated_lines_pass_once_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    client = logging.getLogger("aiokafka.test_repeats")
    client.addFilter(RepeatFilter(10, clock=lambda: now[0]))
    with caplog.at_level(logging.INFO, logger="aiokafka.test_repeats"):
        for tick in range(250):  # 25 s of reconnect attempts every 100 ms, two nodes
            now[0] = tick / 10
            client.error("Unable connect to node with id %s: %s", tick % 2, "refused")
            if tick % 50 == 0:
                client.info("Discovered coordinator %s", tick)  # below WARNING: every line
        client.warning("Marking the coordinator dead (node %s)", 1)  # another kind: at once
    assert lines(caplog) == [
        ("ERROR", "Unable connect to node with id 0: refused"),
        ("INFO", "Discovered coordinator 0"),
        ("INFO", "Discovered coordinator 50"),
        (
            "ERROR",
            "Unable connect to node with id 0: refused (99 more like this since the last one)",
        ),
        ("INFO", "Discovered coordinator 100"),
        ("INFO", "Discovered coordinator 150"),
        (
            "ERROR",
            "Unable connect to node with id 0: refused (99 more like this since the last one)",
        ),
        ("INFO", "Discovered coordinator 200"),
        ("WARNING", "Marking the coordinator dead (node 1)"),
    ]


def test_a_thread_scoped_filter_leaves_other_threads_lines_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = logging.getLogger("aiokafka.test_threads")
    client.addFilter(RepeatFilter(60, thread_prefix="agentstream-publisher-"))

    def attempts() -> None:
        for _ in range(20):
            client.error("Unable to update metadata from [%s]", 111)

    with caplog.at_level(logging.ERROR, logger="aiokafka.test_threads"):
        for name in ("agentstream-publisher-abc", "the-application's-own-client"):
            thread = threading.Thread(target=attempts, name=name)
            thread.start()
            thread.join()
    threads = [r.threadName for r in caplog.records]
    assert threads.count("agentstream-publisher-abc") == 1
    assert threads.count("the-application's-own-client") == 20


def test_installed_once_on_every_aiokafka_logger() -> None:
    first = quiet_client_repeats(thread_prefix="test-once-")
    assert quiet_client_repeats(thread_prefix="test-once-") is first
    for name in ("aiokafka", "aiokafka.conn", "aiokafka.consumer.fetcher", "aiokafka.admin.client"):
        assert logging.getLogger(name).filters.count(first) == 1
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("aiokafka"):
            logging.getLogger(name).removeFilter(first)
