"""The deploy files on their own: promtool accepts the Prometheus config and rules and the alert
unit tests (deploy/prometheus/alerts_test.yml has cases for every alert of alerts.yml) pass;
the Grafana dashboard and provisioning are consistent. (test_prometheus.py runs them.)"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

from support.prometheus import DEPLOY, promtool, write_config

from agentstream.consumers.cli._up.run import SERVICES, UpOptions

GRAFANA = DEPLOY.parent / "grafana"


def test_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_every_alert_has_a_passing_unit_test() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = set(re.findall(r"(?m)^\s*- alert: (\w+)", (DEPLOY / "alerts.yml").read_text()))
    tested = set(re.findall(r"(?m)^\s*alertname: (\w+)", (DEPLOY / "alerts_test.yml").read_text()))
    assert alerts, "no alert found in alerts.yml"
    assert alerts == tested, f"alerts without a unit test: {sorted(alerts - tested)}"


def test_the_deploy_config_and_the_test_variant_are_valid(tmp_path: Path) -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    config = write_config(tmp_path, {"agentstream-metrics": ["127.0.0.1:1"]})
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "scrape_interval: 1s" in config.read_text()
    groups = json.loads((tmp_path / "targets" / "test.yml").read_text())
    assert groups == [{"targets": ["127.0.0.1:1"], "labels": {"job": "agentstream-metrics"}}]


def test_the_deploy_targets_name_every_service_on_its_port() -> None:
    text = (DEPLOY / "targets" / "local.yml").read_text()
    found = dict(
        re.findall(r'"127\.0\.0\.1:(\d+)"\]\s*\n\s*labels: \{job: agentstream-(\w+)\}', text)
    )
    assert found == {
        "9101": "persistence",
        "9102": "loops",
        "9103": "budget",
        "9104": "metrics",
        "9105": "tracing",
    }
    # ... which are the services' own default ports; the agent pods (the demo of `make up`)
    # come after them, on the port `up` gives the demo's metrics.
    assert re.search(r'"127\.0\.0\.1:9106"\]\s*\n\s*labels: \{job: agent-pods\}', text), text
    assert UpOptions.first_port + len(SERVICES) == 9106
    for port, name in found.items():
        spec = importlib.import_module(f"agentstream.consumers.{name}.service").SERVICE
        assert spec.settings_class.model_fields["http_port"].default == int(port), name


def dashboard() -> dict[str, Any]:
    return dict(json.loads((GRAFANA / "dashboards" / "agentstream-fleet.json").read_text()))


def test_dashboard_layout_and_datasources() -> None:
    board = dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == [
        "Fleet overview",
        "Tools",
        "LLM",
        "Budgets and loops",
        "Pipeline health",
        "Producers (agent pods)",
    ]
    for panel in [p for p in board["panels"] if p["type"] != "row"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "agent", "tool", "model"]


def test_provisioning_points_at_the_dashboard_and_the_datasource() -> None:
    datasource = (GRAFANA / "provisioning" / "datasources" / "agentstream.yml").read_text()
    assert "type: prometheus" in datasource
    assert "uid: agentstream-prometheus" in datasource
    assert "timeInterval: 15s" in datasource  # = scrape_interval of prometheus.yml
    assert "scrape_interval: 15s" in (DEPLOY / "prometheus.yml").read_text()
    provider = (GRAFANA / "provisioning" / "dashboards" / "agentstream.yml").read_text()
    assert "type: file" in provider
    assert "path: /var/lib/grafana/dashboards/agentstream" in provider
    assert dashboard()["uid"] == "agentstream-fleet"
