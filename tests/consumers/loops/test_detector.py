"""Calute's loop rules on realistic tool traces, at and around every threshold (no Kafka)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from agentstream.consumers.loops.config import LoopConfig, LoopThresholds
from agentstream.consumers.loops.detector import (
    Finding,
    Level,
    LoopDetector,
    Pattern,
    ScopeKey,
    args_hash,
)
from agentstream.schemas import Event, decode_event, encode_event
from agentstream.schemas.errors import ConfigurationError

# --- traces ----------------------------------------------------------------------------------


def corail_call(
    name: str,
    args: Any = None,
    *,
    agent: str = "support-bot",
    session: str = "sess-1",
    turn: str = "",
) -> Event:
    """Corail ``tool.called`` {name, args}; no turn id: the session is the scope."""
    return Event(
        type="tool.called",
        agent_id=agent,
        user_id="u-1",
        session_id=session,
        turn_id=turn,
        data={"name": name, "args": args},
    )


def calute_call(
    name: str,
    preview: str = "",
    *,
    agent: str = "researcher",
    session: str = "0f" * 16,
    turn: str = "a1b2c3d4e5f6",
) -> Event:
    """Calute ``audit.tool_call_attempt`` {tool_name, arguments_preview} within a turn."""
    return Event(
        type="audit.tool_call_attempt",
        agent_id=agent,
        session_id=session,
        turn_id=turn,
        data={"tool_name": name, "arguments_preview": preview, "severity": "info"},
    )


def boundary(event_type: str, **envelope: str) -> Event:
    data: dict[str, dict[str, Any]] = {
        "turn.ended": {"round": 3, "stop_reason": "end_turn"},
        "message.received": {"content": "try again please"},
        "session.ended": {},
        "audit.turn_end": {"content_preview": "done", "function_calls_count": 4},
        "audit.turn_start": {"prompt_preview": "find papers"},
    }
    return Event(
        type=event_type,
        data=data[event_type],
        agent_id=envelope.get("agent_id", ""),
        session_id=envelope.get("session_id", ""),
        turn_id=envelope.get("turn_id", ""),
    )


SEARCH = {"query": "kafka exactly once", "top_k": 5}


def search(**kw: Any) -> Event:
    return corail_call("web_search", dict(SEARCH), **kw)


def alternating(n: int, a: str = "read_file", b: str = "list_dir", **kw: Any) -> list[Event]:
    """``n`` calls alternating between two tools, with changing arguments."""
    return [corail_call(a if i % 2 == 0 else b, {"path": f"/src/{i}"}, **kw) for i in range(n)]


def run(
    detector: LoopDetector, events: list[Event], *, repeats: bool = False
) -> list[tuple[int, Finding]]:
    """Feed events; return (index of the call, finding) for each reported finding (repeats of
    a critical finding only when asked)."""
    found = []
    for i, event in enumerate(events):
        finding = detector.handle(event)
        if finding is not None and (repeats or not finding.repeat):
            found.append((i, finding))
    return found


def summary(found: list[tuple[int, Finding]]) -> list[tuple[int, str, str, int]]:
    return [(i, f.pattern.value, f.level.label, f.call_count) for i, f in found]


# --- argument hashing ------------------------------------------------------------------------


def test_args_hash_is_canonical_json_md5() -> None:
    expected = hashlib.md5(json.dumps({"a": 1, "b": [1, 2]}, sort_keys=True).encode()).hexdigest()
    assert args_hash({"b": [1, 2], "a": 1}) == expected
    assert args_hash({"a": 1, "b": [1, 2]}) == expected
    assert args_hash('{"q":"hi"}') == hashlib.md5(b'{"q":"hi"}').hexdigest()
    assert args_hash(None) == hashlib.md5(b"empty").hexdigest()
    assert args_hash({"a": 1}) != args_hash({"a": 2})


def test_a_call_hashes_the_same_whichever_encoding_carried_it() -> None:
    """MessagePack keeps integer keys and bytes that JSON turns into text: beside string
    keys they made the sort raise TypeError (the event dead-lettered, the call uncounted)."""
    args = {"page": {1: "intro", "2": "body"}, "blob": b"\x00\x01", "n": 1.5}
    event = Event(type="tool.called", session_id="s", data={"name": "read", "args": args})
    hashes = {
        args_hash(decode_event(encode_event(event, encoding), encoding).data["args"])
        for encoding in ("json", "msgpack")
    }
    assert len(hashes) == 1


# --- same call ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("calls", "expected"),
    [
        (2, []),
        (3, [(2, "same_call", "warning", 3)]),
        (4, [(2, "same_call", "warning", 3)]),
        (5, [(2, "same_call", "warning", 3), (4, "same_call", "critical", 5)]),
        (8, [(2, "same_call", "warning", 3), (4, "same_call", "critical", 5)]),
    ],
)
def test_same_call_thresholds(calls: int, expected: list[tuple[int, str, str, int]]) -> None:
    found = run(LoopDetector(), [search() for _ in range(calls)])
    assert summary(found) == expected


def test_same_call_key_order_does_not_matter_but_values_do() -> None:
    events = [
        corail_call("web_search", {"query": "q", "top_k": 5}),
        corail_call("web_search", {"top_k": 5, "query": "q"}),
        corail_call("web_search", {"query": "q", "top_k": 5}),
    ]
    assert summary(run(LoopDetector(), events)) == [(2, "same_call", "warning", 3)]
    changing = [corail_call("web_search", {"query": "q", "page": i}) for i in range(10)]
    assert run(LoopDetector(), changing) == []


def test_calls_after_a_critical_finding_repeat_it_for_the_pod() -> None:
    # Calute blocks every call from the 5th on; here the 6th and 7th come back as repeats of
    # the critical finding (the service re-sends the pause directive, not the alert).
    found = run(LoopDetector(), [search() for _ in range(7)], repeats=True)
    assert [(i, f.level.label, f.repeat, f.call_count) for i, f in found] == [
        (2, "warning", False, 3),
        (4, "critical", False, 5),
        (5, "critical", True, 6),
        (6, "critical", True, 7),
    ]
    first = found[1][1]
    assert {f.origin_event_id for _, f in found[1:]} == {first.trigger_event_id}
    assert len({f.trigger_event_id for _, f in found}) == 4


def test_a_broken_run_starts_a_new_streak_that_alerts_again() -> None:
    events = [search(), search(), search(), corail_call("calculator", {"x": 1})]
    events += [search(), search(), search()]
    found = run(LoopDetector(), events)
    assert summary(found) == [(2, "same_call", "warning", 3), (6, "same_call", "warning", 3)]
    assert found[0][1].streak_start == 0
    assert found[1][1].streak_start == 4


def test_calute_attempts_hash_the_preview_string() -> None:
    events = [calute_call("fetch_url", '{"url": "https://example.com"}') for _ in range(5)]
    found = run(LoopDetector(), events)
    assert summary(found) == [(2, "same_call", "warning", 3), (4, "same_call", "critical", 5)]
    assert found[1][1].scope == ScopeKey("researcher", "0f" * 16, "a1b2c3d4e5f6")
    other = [calute_call("fetch_url", f'{{"url": "https://example.com/{i}"}}') for i in range(5)]
    assert run(LoopDetector(), other) == []


# --- ping-pong ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("calls", "expected"),
    [
        (3, []),
        (4, [(3, "pingpong", "warning", 4)]),
        (5, [(3, "pingpong", "warning", 4)]),
        (6, [(3, "pingpong", "warning", 4), (5, "pingpong", "critical", 6)]),
        (9, [(3, "pingpong", "warning", 4), (5, "pingpong", "critical", 6)]),
    ],
)
def test_pingpong_thresholds(calls: int, expected: list[tuple[int, str, str, int]]) -> None:
    assert summary(run(LoopDetector(), alternating(calls))) == expected


def test_pingpong_counts_the_alternating_tail_run_only() -> None:
    # A third tool breaks the run: C A C A is a new run of 4 starting at the C.
    events = [*alternating(3), corail_call("grep", {"p": 1})]  # A B A C: run is "A C" (2)
    events += [corail_call("read_file", {"path": "x"}), corail_call("grep", {"p": 2})]
    found = run(LoopDetector(), events)
    assert summary(found) == [(5, "pingpong", "warning", 4)]
    assert found[0][1].streak_start == 2
    # A repeated name (A A) also breaks alternation: at most 2 names but not alternating.
    events = [corail_call(n, {"i": i}) for i, n in enumerate("ABAABAB")]
    assert summary(run(LoopDetector(), events)) == [(6, "pingpong", "warning", 4)]


def test_pingpong_ignores_arguments_and_three_names_never_match() -> None:
    three = [corail_call("abc"[i % 3], {"i": i}) for i in range(12)]
    assert run(LoopDetector(), three) == []


def test_same_call_is_checked_before_pingpong() -> None:
    # A A A: same_call warning; the alternation rule never sees a run there.
    events = [corail_call("A", {"x": 1})] * 1 + [corail_call("A", {"x": 1}) for _ in range(2)]
    assert summary(run(LoopDetector(), events)) == [(2, "same_call", "warning", 3)]


# --- max calls ---------------------------------------------------------------------------------


def test_max_calls_at_25_and_not_before() -> None:
    events = [corail_call("lookup", {"id": i}) for i in range(30)]
    found = run(LoopDetector(), events)
    assert summary(found) == [(24, "max_calls", "critical", 25)]


def test_max_calls_wins_over_other_rules() -> None:
    thresholds = LoopThresholds(max_calls=5)
    events = [search() for _ in range(7)]
    found = run(LoopDetector(LoopConfig(defaults=thresholds)), events)
    # call 3 warns (same_call); call 5 is both same_call critical and max_calls: max_calls wins.
    assert summary(found) == [(2, "same_call", "warning", 3), (4, "max_calls", "critical", 5)]


# --- scopes ------------------------------------------------------------------------------------


def test_turn_ids_separate_scopes() -> None:
    events = [calute_call("f", "x", turn="t1"), calute_call("f", "x", turn="t2")] * 3
    assert run(LoopDetector(), events) == []


@pytest.mark.parametrize("reset", ["turn.ended", "message.received"])
def test_session_scope_resets_at_turn_end_and_next_message(reset: str) -> None:
    detector = LoopDetector()
    events = [search(), search(), boundary(reset, agent_id="support-bot", session_id="sess-1")]
    events += [search(), search()]
    assert run(detector, events) == []
    assert len(detector) == 1
    assert summary(run(detector, [search()])) == [(0, "same_call", "warning", 3)]


def test_calute_turn_end_drops_the_turn_scope() -> None:
    detector = LoopDetector()
    run(detector, [calute_call("f", "x"), calute_call("f", "x")])
    assert len(detector) == 1
    run(
        detector,
        [
            boundary(
                "audit.turn_end",
                agent_id="researcher",
                session_id="0f" * 16,
                turn_id="a1b2c3d4e5f6",
            )
        ],
    )
    assert len(detector) == 0


def test_session_end_drops_every_scope_of_the_session() -> None:
    detector = LoopDetector()
    run(
        detector,
        [
            calute_call("f", turn="t1"),
            calute_call("f", turn="t2"),
            calute_call("f", session="other"),
        ],
    )
    assert len(detector) == 3
    run(detector, [boundary("session.ended", session_id="0f" * 16)])
    assert len(detector) == 1


def test_agents_in_one_session_have_their_own_scopes() -> None:
    events = [search(agent="a"), search(agent="b")] * 3
    assert run(LoopDetector(), events) == []


def test_a_redelivered_call_is_not_counted_twice() -> None:
    # Redelivery (a retried handler, a duplicated record) gets the verdict it had the first
    # time (so a failed publish can be retried) and does not lengthen the run.
    detector = LoopDetector()
    first, second, third = search(), search(), search()
    assert run(detector, [first, second, second, first]) == []
    found = run(detector, [third, third])
    assert summary(found) == [(0, "same_call", "warning", 3), (1, "same_call", "warning", 3)]
    assert found[0][1] is found[1][1]
    assert run(detector, [search()]) == []  # 4th call: still a warning, already reported


# --- per-agent thresholds and configuration ----------------------------------------------------


def test_per_agent_overrides(tmp_path: Path) -> None:
    path = tmp_path / "loops.toml"
    path.write_text(
        "[loops]\nsame_call_warning = 2\n\n"
        '[loops.agents."patient-agent"]\nsame_call_warning = 6\nsame_call_critical = 10\n'
        '[loops.agents."no-cap"]\nmax_calls = 0\n'
    )
    config = LoopConfig.build(path)
    assert config.defaults.same_call_warning == 2
    assert config.for_agent("patient-agent").same_call_critical == 10
    assert config.for_agent("patient-agent").pingpong_warning == 4  # inherited
    detector = LoopDetector(config)
    assert summary(run(detector, [search(agent="x") for _ in range(2)])) == [
        (1, "same_call", "warning", 2)
    ]
    patient = [search(agent="patient-agent") for _ in range(10)]
    assert summary(run(detector, patient)) == [
        (5, "same_call", "warning", 6),
        (9, "same_call", "critical", 10),
    ]
    uncapped = [corail_call("lookup", {"id": i}, agent="no-cap") for i in range(40)]
    assert run(detector, uncapped) == []


def test_settings_overrides_layer_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "loops.toml"
    path.write_text("[loops]\nmax_calls = 50\n[loops.agents.a]\nsame_call_warning = 4\n")
    config = LoopConfig.build(
        path, overrides={"pingpong_warning": 5}, agents={"a": {"same_call_critical": 9}}
    )
    assert config.defaults == LoopThresholds(max_calls=50, pingpong_warning=5)
    assert config.for_agent("a") == LoopThresholds(
        max_calls=50, pingpong_warning=5, same_call_warning=4, same_call_critical=9
    )


@pytest.mark.parametrize(
    "text",
    [
        "[loops]\nsame_call_warning = 6\n",  # warning above critical
        "[loops]\nmax_calls = -1\n",
        "[loops]\nsame_calls = 3\n",  # unknown key
        "[loops.agents.a]\nfoo = 1\n",
        "[loops\n",  # not TOML
        "[loop]\nmax_calls = 3\n",  # a misspelt table must not leave the defaults in force
        "max_calls = 3\n",  # a threshold outside [loops]
    ],
)
def test_bad_configuration_says_what_was_expected(tmp_path: Path, text: str) -> None:
    path = tmp_path / "loops.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match="expected"):
        LoopConfig.build(path)


# --- bounded state -----------------------------------------------------------------------------


def test_lru_cap_evicts_the_least_recently_used_scope() -> None:
    evicted: list[tuple[str, int]] = []
    detector = LoopDetector(max_scopes=3, on_evict=lambda r, n: evicted.append((r, n)))
    for session in ("s1", "s2", "s3"):
        detector.handle(search(session=session))
    detector.handle(search(session="s1"))  # s1 is now the most recent
    detector.handle(search(session="s4"))
    assert evicted == [("lru", 1)]
    assert ScopeKey("support-bot", "s2", "") not in detector
    assert ScopeKey("support-bot", "s1", "") in detector


def test_ttl_drops_idle_scopes() -> None:
    now = [0.0]
    evicted: list[tuple[str, int]] = []
    detector = LoopDetector(
        scope_ttl_s=60, clock=lambda: now[0], on_evict=lambda r, n: evicted.append((r, n))
    )
    detector.handle(search(session="old"))
    now[0] = 30.0
    detector.handle(search(session="recent"))
    now[0] = 61.0
    assert detector.expire() == 1
    assert evicted == [("ttl", 1)]
    assert len(detector) == 1


def test_memory_stays_flat_under_session_churn() -> None:
    detector = LoopDetector(max_scopes=100)
    for i in range(5_000):
        for _ in range(3):
            detector.handle(search(session=f"s{i}"))
        assert len(detector) <= 100
        if i % 2:
            detector.handle(boundary("session.ended", session_id=f"s{i}"))
    assert len(detector) == 99  # the last session (odd) ended
    assert len(detector._by_session) == 99


def test_findings_describe_the_loop() -> None:
    found = run(LoopDetector(), [search() for _ in range(5)])
    finding = found[-1][1]
    assert finding.level is Level.CRITICAL and finding.pattern is Pattern.SAME_CALL
    assert finding.describe() == (
        "Tool loop detected (same_call): web_search called 5 times in a row with the same arguments"
    )
