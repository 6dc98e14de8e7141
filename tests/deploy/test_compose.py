"""docker-compose.yml: valid against the Compose Specification, ordered start-up, every
agentstream container a real command with settings its process reads (Docker cannot run here:
the stack is validated, not run)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentstream.consumers.budget.config import load_config
from agentstream.consumers.loops.config import LoopConfig
from agentstream.consumers.runtime.runner import available_services

from .checks import ROOT, SERVICES, check_process
from .test_dockerfile import parse_dockerfile

COMPOSE = ROOT / "docker-compose.yml"


def load_compose() -> dict[str, Any]:
    with COMPOSE.open() as handle:
        compose: dict[str, Any] = yaml.safe_load(handle)
    return compose


def agentstream_containers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from this repository's Dockerfile."""
    return {
        name: service
        for name, service in compose["services"].items()
        if isinstance(service.get("build"), dict) or service.get("build") == "."
    }


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    command = ["check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", *command[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_compose_file_matches_the_compose_specification() -> None:
    result = check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    compose = load_compose()
    compose["services"]["persistence"]["depends_on"]["kafka"]["condition"] = "service_ready"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(compose))
    result = check_jsonschema(broken)
    assert result.returncode != 0
    assert "service_ready" in result.stdout + result.stderr


def test_start_up_is_ordered_by_health_and_completion() -> None:
    compose = load_compose()
    services = compose["services"]
    built = agentstream_containers(compose)
    image_healthcheck = parse_dockerfile()["final"]["HEALTHCHECK"]
    graph: dict[str, set[str]] = {}
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions (long form)"
        graph[name] = set(depends)
        for dependency, spec in depends.items():
            assert dependency in services, f"{name} depends on an unknown service {dependency}"
            condition = spec["condition"]
            target = services[dependency]
            if condition == "service_healthy":
                own = target.get("healthcheck")
                has_check = (own is not None and not own.get("disable")) or (
                    own is None and dependency in built and image_healthcheck
                )
                assert has_check, f"{name} waits for {dependency} to be healthy: it has no check"
            elif condition == "service_completed_successfully":
                assert target.get("restart") == "no", (
                    f"{name} waits for {dependency} to complete: it must be a one-shot job"
                )
            else:
                assert condition == "service_started", f"{name}: condition {condition}"
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        pytest.fail(f"depends_on has a cycle: {exc}")
    # Kafka first, then the topics, then every consumer service, then the demo agents.
    assert order.index("kafka") < order.index("topics")
    for service in SERVICES:
        assert order.index("topics") < order.index(service) < order.index("demo")
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]


def test_every_consumer_service_runs_once_with_its_own_port() -> None:
    compose = load_compose()
    commands = {
        name: service["command"] for name, service in agentstream_containers(compose).items()
    }
    consumed = sorted(cmd[1] for cmd in commands.values() if cmd[0] == "consume")
    assert consumed == sorted(available_services()) == sorted(SERVICES)
    assert commands["topics"][:2] == ["topics", "create"]
    assert commands["demo"][0] == "demo"
    ports = {
        name: environment_of(service).get("AGENTSTREAM_HTTP_PORT")
        for name, service in agentstream_containers(compose).items()
        if service["command"][0] == "consume"
    }
    assert None not in ports.values() and len(set(ports.values())) == len(ports), ports


@pytest.mark.parametrize("container", ["topics", *SERVICES, "demo"])
def test_container_command_and_environment_are_real(container: str) -> None:
    service = agentstream_containers(load_compose())[container]
    check_process(service["command"], environment_of(service), f"docker-compose {container}")


def test_prometheus_scrapes_every_service_of_the_stack() -> None:
    compose = load_compose()
    prometheus = compose["services"]["prometheus"]
    mounts = {
        target: source
        for source, target, *_ in (volume.split(":") for volume in prometheus["volumes"])
    }
    targets_dir = ROOT / mounts["/etc/prometheus/targets"]
    groups = [
        group
        for path in sorted(targets_dir.glob("*.yml"))
        for group in yaml.safe_load(path.read_text())
    ]
    scraped = {target: group["labels"]["job"] for group in groups for target in group["targets"]}
    expected = {}
    for name, service in agentstream_containers(compose).items():
        command = service["command"]
        if command[0] == "consume":
            port = environment_of(service)["AGENTSTREAM_HTTP_PORT"]
            expected[f"{name}:{port}"] = f"agentstream-{command[1]}"
        elif command[0] == "demo":  # the agents' publisher metrics: a job of their own
            expected[f"{name}:{command[command.index('--metrics-port') + 1]}"] = "agent-pods"
    assert scraped == expected
    # Same job labels as the metrics engineer's local targets (the dashboards select on them).
    local = yaml.safe_load((ROOT / "deploy/prometheus/targets/local.yml").read_text())
    assert {g["labels"]["job"] for g in local} == set(expected.values())


def test_mounted_files_exist_and_configs_load() -> None:
    compose = load_compose()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
    budget = compose["services"]["budget"]
    loops = compose["services"]["loops"]
    assert load_config(ROOT / "deploy/compose/budget.toml").warning_fraction == 0.8
    LoopConfig.build(ROOT / "deploy/compose/loops.toml", overrides={}, agents={})
    assert (
        "./deploy/compose/budget.toml:"
        + environment_of(budget)["AGENTSTREAM_BUDGET_CONFIG"]
        + ":ro"
        in budget["volumes"]
    )
    assert (
        "./deploy/compose/loops.toml:" + environment_of(loops)["AGENTSTREAM_LOOPS_CONFIG"] + ":ro"
        in loops["volumes"]
    )


def test_grafana_gets_the_dashboards_datasource() -> None:
    ours = yaml.safe_load((ROOT / "deploy/compose/grafana-datasources/agentstream.yml").read_text())
    theirs = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/agentstream.yml").read_text()
    )
    (datasource,) = ours["datasources"]
    (original,) = theirs["datasources"]
    assert datasource["uid"] == original["uid"]
    assert datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/agentstream.yml").read_text()
    )["providers"][0]
    volumes = load_compose()["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in volumes


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) missing")
def test_prometheus_config_with_compose_targets_is_valid(tmp_path: Path) -> None:
    shutil.copy(ROOT / "deploy/prometheus/prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(ROOT / "deploy/prometheus/alerts.yml", tmp_path / "alerts.yml")
    shutil.copytree(ROOT / "deploy/compose/prometheus-targets", tmp_path / "targets")
    result = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_clients_use_an_advertised_listener_of_the_broker() -> None:
    compose = load_compose()
    kafka = compose["services"]["kafka"]["environment"]
    # host:port -> listener name, and listener name -> security protocol
    advertised = {
        address: name
        for name, _, address in (
            listener.partition("://") for listener in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
        )
    }
    protocols = dict(
        item.split(":", 1) for item in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    for name, service in agentstream_containers(compose).items():
        env = environment_of(service)
        protocol = env.get("AGENTSTREAM_SECURITY_PROTOCOL", "PLAINTEXT")
        for server in env["AGENTSTREAM_BOOTSTRAP_SERVERS"].split(","):
            assert server in advertised, f"{name}: {server} is not advertised by kafka"
            assert protocols[advertised[server]] == protocol, f"{name}: {server}"
    # The host listener is published; the controller listener is not advertised.
    host = next(a for a, listener in advertised.items() if a.startswith("localhost:"))
    assert f"{host.split(':')[1]}:{host.split(':')[1]}" in compose["services"]["kafka"]["ports"]
    assert kafka["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised.values()
