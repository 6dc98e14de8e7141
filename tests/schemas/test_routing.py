from __future__ import annotations

import pytest

from agentstream.schemas import EventType, Routing, matches
from agentstream.schemas.routing import pattern_problem, prefix_problem, topic_name_problem

R = Routing()


def test_topic_names_follow_the_prefix() -> None:
    assert R.all_topics() == [
        "agentstream.events", "agentstream.tokens", "agentstream.alerts",
        "agentstream.control", "agentstream.dlq",
    ]  # fmt: skip
    assert Routing(prefix="team-a").dlq == "team-a.dlq"
    with pytest.raises(ValueError, match="topic kind"):
        R.topic("nope")


def test_producers_route_tokens_apart_and_everything_else_to_events() -> None:
    assert R.topic_for("llm.token") == "agentstream.tokens"
    assert R.topic_for("tool.called") == "agentstream.events"
    assert R.topic_for("audit.skill_used") == "agentstream.events"


@pytest.mark.parametrize(
    ("pattern", "event_type", "expected"),
    [
        ("*", "tool.called", True),
        ("tool.called", "tool.called", True),
        ("tool.*", "tool.called", True),
        ("tool.*", "tool.result", True),
        ("tool.*", "tools.x", False),
        ("llm.*", "llm.call.started", True),
        ("audit.tool_*", "audit.tool_call_attempt", True),
        ("tool.called", "tool.calledx", False),
    ],
)
def test_patterns_match_like_the_in_pod_bus(pattern: str, event_type: str, expected: bool) -> None:
    assert matches(pattern, event_type) is expected


def test_patterns_map_to_the_topics_that_can_hold_matching_events() -> None:
    assert R.topics_for_pattern("tool.called") == {"agentstream.events"}
    assert R.topics_for_pattern("tool.*") == {"agentstream.events"}
    assert R.topics_for_pattern("llm.token") == {"agentstream.tokens"}
    assert R.topics_for_pattern("llm.*") == {"agentstream.events", "agentstream.tokens"}
    assert R.topics_for_pattern("budget.*") == {"agentstream.events", "agentstream.alerts"}
    assert R.topics_for_pattern("control.agent.paused") == {
        "agentstream.events",
        "agentstream.control",
    }
    assert R.topics_for_pattern("custom.thing") == {"agentstream.events"}
    everything = R.topics_for_pattern("*")
    assert everything == set(R.all_topics()) - {R.dlq}


def test_every_known_type_is_reachable_from_the_wildcard() -> None:
    topics = R.topics_for_pattern("*")
    assert all(R.topic_for(t.value) in topics for t in EventType)


def test_topic_names_follow_kafkas_rules() -> None:
    assert topic_name_problem("agentstream.events") is None
    assert topic_name_problem("a-b_c.9") is None
    for bad in ("", ".", "..", "bad topic", "a/b", "é"):
        assert topic_name_problem(bad) == (
            "expected a topic name of ASCII letters, digits, '.', '_' and '-' (not '.' or "
            f"'..'), got {bad!r}"
        )
    assert topic_name_problem("x" * 250) == (
        "expected a topic name of at most 249 characters, got 250"
    )


def test_a_prefix_must_make_valid_names_for_every_topic() -> None:
    assert prefix_problem("agentstream") is None
    assert prefix_problem("p" * 241) is None  # p...p.control is 249 characters
    assert prefix_problem("p" * 242) == (
        "expected a topic prefix of at most 241 characters, got 242"
    )
    assert prefix_problem("my prefix") == (
        "expected a topic prefix of ASCII letters, digits, '.', '_' and '-', got 'my prefix'"
    )


@pytest.mark.parametrize(
    "pattern", ["*", "tool.*", "audit.turn_start", "memory.stored", "t?.x", "tool.[cr]*"]
)
def test_patterns_that_can_match_pass(pattern: str) -> None:
    assert pattern_problem(pattern) is None


@pytest.mark.parametrize("pattern", ["", "Tool.Called", "tool", "tool called"])
def test_patterns_that_can_match_nothing_are_named(pattern: str) -> None:
    assert pattern_problem(pattern) == (
        "expected an event type (dotted lower-case words, as tool.called), a glob (tool.*) "
        f"or '*', got {pattern!r}"
    )


@pytest.mark.parametrize("pattern", ["Tool.*", "TOOL.CALLED?", "[abc", "tool.[a-z"])
def test_globs_that_can_match_nothing_are_named(pattern: str) -> None:
    """A glob with capitals or an unclosed '[' was taken, and a reader showed no line."""
    assert pattern_problem(pattern) == (
        "expected a glob that can match an event type (dotted lower-case words, as tool.*), "
        f"got {pattern!r}"
    )
    assert pattern_problem("tool.[a-z]*") is None
