"""Proven against a real Prometheus: every agentstream service runs as ``agentstream consume
<service>`` (two metrics instances splitting the partitions) on synthetic traffic sent through
the producer API; a Prometheus server with the deploy configuration and alert rules scrapes
them every second. Every dashboard panel query and every alert expression returns data, and
Prometheus' sums over the two metrics instances equal the events produced.

The scenario runs once for the module. Traffic comes in two phases, two turns of the same
sessions (so that ``rate()`` and ``increase()`` see counters grow): pod events through
:class:`KafkaPublisher` (with a loop block and a budget exceedance reported by pods, and one
turn looping for the loops service to find), and one undecodable record that every service
dead-letters. The budget service has a 800-token session limit, which the second turn
crosses. At the end the tracing service is stopped, for the service-down alert. Queries are
evaluated at one instant, when all samples are in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry, start_http_server
from support.metrics_service import fleet_traffic, looping_turn
from support.produce import produce_raw
from support.prometheus import Prometheus, running_prometheus
from support.runtime import ServiceProcess

from agentstream.consumers.broker import free_port
from agentstream.producer import KafkaPublisher
from agentstream.schemas import Event
from agentstream.schemas.admin import TopicSpec, ensure_topics
from agentstream.schemas.settings import KafkaSettings

# Six service processes and a Prometheus server start in the first test's setup: more than the
# default 120 s on a loaded machine is possible (it takes about 40 s on an idle one).
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]

DASHBOARD = Path(__file__).resolve().parents[3] / "deploy/grafana/dashboards/agentstream-fleet.json"

RATE_WINDOW = "5m"
"""``$__rate_interval``: the whole traffic lies inside it at the evaluation instant (Grafana
would use 4 scrape intervals at least; the traffic of a test is a few seconds, but the wait
for the alerts after it took over a minute on a loaded machine: a 1 m window then held no
increase, and "Events/s from pods" returned only zeros)."""
RANGE = "10m"
"""``$__range``: a dashboard time range that holds the whole traffic."""

ZERO_IS_DATA = {"Consumer lag by service", "Pod queues", "Sessions split across partitions"}
"""Panels whose every value may be 0 with the data present: the consumers have caught up,
the pods have delivered everything, every event is keyed by its session (the series exist at
0 from the services' start)."""

UNTRIGGERED = {
    "AgentstreamConsumerLagHigh": "needs more than 10,000 records of lag for 5 minutes",
    "AgentstreamSessionsSplitAcrossPartitions": "every event here is keyed by its session",
}
"""Alerts the traffic does not trigger: their inner expression must return data instead."""

AGENT_TYPES = 'type!~"budget.+|audit.tool_loop.+|control.+"'
"""Types only agents emit here (the services publish budget, loop and control events too)."""

ENV = {
    "AGENTSTREAM_LINGER_MS": "1",
    "AGENTSTREAM_COMMIT_INTERVAL_MS": "200",
    "AGENTSTREAM_SESSION_TIMEOUT_MS": "6000",
    "AGENTSTREAM_HEARTBEAT_INTERVAL_MS": "300",
}
SERVICES = ("metrics", "loops", "budget", "persistence", "tracing")


@dataclass
class Scenario:
    prometheus: Prometheus
    at: float
    agent_events: int
    sessions: int
    tool_durations: int


@contextlib.contextmanager
def agent_pod(settings: KafkaSettings) -> Iterator[tuple[KafkaPublisher, int]]:
    """A pod's publisher with its metrics on its own /metrics (prometheus_client's server on
    the injected registry, as an agent process exposes them): the publisher and the port."""
    registry = CollectorRegistry()
    publisher = KafkaPublisher(settings, redact=None, registry=registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield publisher, port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        publisher.close(10)


async def publish(publisher: KafkaPublisher, events: list[Event]) -> None:
    """Through the producer API, as agent pods send them."""
    for event in events:
        publisher.publish(event)
    assert await asyncio.to_thread(publisher.flush, 30), publisher.last_error


async def wait_for_alerts(prometheus: Prometheus, expected: dict[str, set[str]]) -> None:
    deadline = time.monotonic() + 30
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        rules = await asyncio.to_thread(prometheus.rules)
        states = {r["name"]: r["state"] for r in rules if r["type"] == "alerting"}
        if all(states.get(name) in allowed for name, allowed in expected.items()):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"alert states {states}, expected {expected}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scenario(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Scenario]:
    base = KafkaSettings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:12]}", linger_ms=1
    )
    await ensure_topics(base.admin_options(), base.routing(), TopicSpec(partitions=4))
    tmp = tmp_path_factory.mktemp("services")
    (tmp / "budget.toml").write_text("[session]\ntokens = 800\n")
    options: dict[str, list[str]] = {
        "budget": ["--config", str(tmp / "budget.toml")],
        "persistence": ["--store", f"sqlite:///{tmp / 'events.db'}"],
        # nothing listens there: exports fail (and are counted), the service runs on
        "tracing": ["--otlp-endpoint", f"http://127.0.0.1:{free_port()}"],
    }
    with contextlib.ExitStack() as processes:
        running = {
            service: [
                processes.enter_context(
                    ServiceProcess(service, base, *options.get(service, []), env=ENV, log_dir=tmp)
                )
                for _ in range(2 if service == "metrics" else 1)
            ]
            for service in SERVICES
        }
        await asyncio.gather(*(p.wait_ready(60) for ps in running.values() for p in ps))
        pod, pod_port = processes.enter_context(agent_pod(base))
        targets = {
            f"agentstream-{service}": [f"127.0.0.1:{p.port}" for p in ps]
            for service, ps in running.items()
        }
        targets["agent-pods"] = [f"127.0.0.1:{pod_port}"]  # not a service: its own job
        async with running_prometheus(tmp_path_factory.mktemp("prometheus"), targets) as p:
            await p.wait_for('sum(up{job=~"agentstream-.+"})', 6)
            # the pod's drop counters scraped at 0 first, so that the drop below is an increase
            dropped = 'agentstream_producer_events_dropped_total{reason="too_large"}'
            await p.wait_for(f"count({dropped})", 1)
            await p.wait_for('sum(agentstream_consumer_assigned_partitions{service="metrics"})', 16)
            await p.wait_for(
                'count(agentstream_consumer_assigned_partitions{service="metrics"} > 0)', 2
            )

            agent_events = tool_durations = 0
            for phase in (1, 2):
                # Phase 2 is the next turn of the same sessions: the series phase 1 created on
                # each instance grow, as in production (a series born within the rate window
                # with its first value above 0 has no rate for Prometheus).
                traffic = fleet_traffic(12, first_turn=phase == 1)
                events = traffic.events + (looping_turn() if phase == 1 else [])
                await publish(pod, events)
                if phase == 1:  # larger than max_request_size: dropped in the pod, counted
                    pod.publish(Event(type="tool.result", data={"output": "x" * 1_100_000}))
                await produce_raw(base, base.routing().events, b"\x00 not an event", key=b"poison")
                agent_events += len(events) - sum(
                    1 for e in events if e.type.startswith(("budget.", "audit.tool_loop"))
                )
                tool_durations += 12 * 3  # 2 Corail calls paired + 1 audit duration per session
                await p.wait_for(f"sum(agentstream_events_total{{{AGENT_TYPES}}})", agent_events)
                dead = 'agentstream_consumer_records_total{outcome="dead_lettered"}'
                await p.wait_for(f"count(sum by (service) ({dead}) == {phase})", len(SERVICES))
            # What the loops and budget services found, published on the alerts topic:
            loops = 'sum(agentstream_loop_events_total{origin="service", kind="block"})'
            budget = 'sum(agentstream_budget_events_total{origin="service", level="exceeded"})'
            await p.wait_for(f"count({loops} > 0)", 1)
            await p.wait_for(f"count({budget} > 0)", 1)

            assert await running["tracing"][0].terminate() == 0
            await wait_for_alerts(
                p,
                {
                    "AgentstreamToolLoopBlocked": {"firing"},
                    "AgentstreamBudgetExceeded": {"firing"},
                    "AgentstreamDeadLetters": {"firing"},
                    "AgentstreamServiceDown": {"pending", "firing"},
                    "AgentstreamEventsDroppedInPods": {"firing"},
                },
            )
            yield Scenario(p, time.time(), agent_events, len(traffic.sessions), tool_durations)


# --- two instances add up ----------------------------------------------------------------


async def test_prometheus_sums_over_two_instances_equal_what_was_produced(
    scenario: Scenario,
) -> None:
    p, at = scenario.prometheus, scenario.at
    assert p.value(f"sum(agentstream_events_total{{{AGENT_TYPES}}})", at) == scenario.agent_events
    assert p.value("count(count by (instance) (agentstream_events_total > 0))", at) == 2
    # Every record the two instances consumed was counted once by the fleet metrics.
    consumed = 'sum(agentstream_consumer_records_total{service="metrics", outcome="consumed"})'
    assert p.value(consumed, at) == p.value("sum(agentstream_events_total)", at)
    assert p.value("sum(agentstream_pipeline_delay_seconds_count)", at) == p.value(
        "sum(agentstream_events_total)", at
    )
    assert p.value("sum(agentstream_active_sessions)", at) == scenario.sessions + 1  # + looping
    assert p.value("sum(agentstream_tool_duration_seconds_count)", at) == scenario.tool_durations
    by_type = {
        r["metric"]["type"]: float(r["value"][1])
        for r in p.query("sum by (type) (agentstream_events_total)", at)
    }
    assert by_type["tool.called"] == 2 * 12 * 2 + 6
    assert by_type["budget.exceeded"] >= 2  # one per phase from pods, more from the service


# --- the dashboard -------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def expand(expr: str, variables: dict[str, str]) -> str:
    """The query Grafana would send, with template variables and intervals substituted."""
    text = expr.replace("$__rate_interval", RATE_WINDOW).replace("$__range", RANGE)
    text = text.replace("$__interval", "15s")
    for name, value in variables.items():
        text = re.sub(rf"\$\{{{name}\}}|\${name}\b", value, text)
    if "$" in text:
        raise AssertionError(f"an unknown variable is left in {text!r}")
    return text


async def test_template_variables_have_values(scenario: Scenario) -> None:
    for variable in dashboard()["templating"]["list"][1:]:
        match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"])
        assert match, variable["definition"]
        metric, label = match.groups()
        values = scenario.prometheus.get(f"/api/v1/label/{label}/values", **{"match[]": metric})
        assert values, f"${variable['name']} has no values"


ALL = {"agent": ".*", "tool": ".*", "model": ".*"}
ONE = {"agent": "planner", "tool": "web_search", "model": "claude-sonnet"}


@pytest.mark.parametrize("variables", [ALL, ONE], ids=["all", "one-each"])
async def test_every_panel_query_returns_data(
    scenario: Scenario, variables: dict[str, str]
) -> None:
    problems: list[str] = []
    checked = 0
    for panel in panels():
        for target in panel["targets"]:
            expr = expand(target["expr"], variables)
            result = scenario.prometheus.query(expr, scenario.at)
            values = [float(r["value"][1]) for r in result]
            finite = [v for v in values if math.isfinite(v)]
            checked += 1
            if not finite:
                problems.append(f"{panel['title']}: {expr} returned {values or 'nothing'}")
            elif panel["title"] not in ZERO_IS_DATA and not any(finite):
                problems.append(f"{panel['title']}: {expr} returned only zeros")
    assert not problems, "\n".join(problems)
    assert checked >= 25


# --- the alert rules -------------------------------------------------------------------------


def inner(query: str) -> str:
    """The expression of an alert without its final threshold (``X > 10000`` → ``X``)."""
    match = re.fullmatch(r"(.*\S)\s*(?:>|<|>=|<=|==|!=)\s*[0-9.e+]+", " ".join(query.split()))
    return match.group(1) if match else query


async def test_every_alert_expression_returns_data(scenario: Scenario) -> None:
    rules = [r for r in scenario.prometheus.rules() if r["type"] == "alerting"]
    names = {r["name"] for r in rules}
    assert names == {
        "AgentstreamToolLoopBlocked",
        "AgentstreamBudgetExceeded",
        "AgentstreamConsumerLagHigh",
        "AgentstreamDeadLetters",
        "AgentstreamServiceDown",
        "AgentstreamEventsDroppedInPods",
        "AgentstreamSessionsSplitAcrossPartitions",
    }
    problems: list[str] = []
    for rule in rules:
        if rule.get("health") != "ok":
            problems.append(f"{rule['name']}: health {rule.get('health')}: {rule.get('lastError')}")
        full = scenario.prometheus.query(rule["query"], scenario.at)
        selector = scenario.prometheus.query(inner(rule["query"]), scenario.at)
        if rule["name"] in UNTRIGGERED:
            if full:
                problems.append(f"{rule['name']} fired on this small traffic: {full}")
            if not selector:
                problems.append(f"{rule['name']}: {inner(rule['query'])} returned nothing")
        elif not full:
            problems.append(f"{rule['name']}: {rule['query']} returned nothing")
    assert not problems, "\n".join(problems)


async def test_the_triggered_alerts_name_what_happened(scenario: Scenario) -> None:
    alerts = scenario.prometheus.get("/api/v1/alerts")["alerts"]

    def firing(name: str, *labels: str) -> set[tuple[str, ...]]:
        return {
            tuple(a["labels"][label] for label in labels)
            for a in alerts
            if a["labels"]["alertname"] == name and a["state"] == "firing"
        }

    # Blocks reported by a Calute pod, and found by the loops service in a Corail turn.
    blocked = firing("AgentstreamToolLoopBlocked", "pattern", "origin")
    assert blocked == {("same_call", "agent"), ("same_call", "service")}
    # Exceedances reported by a Corail pod, and found by the budget service.
    exceeded = firing("AgentstreamBudgetExceeded", "dimension", "origin")
    assert exceeded == {("tokens", "agent"), ("tokens", "service")}
    dead = {
        a["labels"]["service"]
        for a in alerts
        if a["labels"]["alertname"] == "AgentstreamDeadLetters"
    }
    assert dead == set(SERVICES)  # tracing was stopped, its last samples still count
    down = [a for a in alerts if a["labels"]["alertname"] == "AgentstreamServiceDown"]
    assert [a["labels"]["job"] for a in down] == ["agentstream-tracing"]
    assert firing("AgentstreamEventsDroppedInPods", "reason") == {("too_large",)}
