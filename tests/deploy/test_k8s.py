"""deploy/k8s: the kustomize base and the example overlay, rendered by tests/deploy/kustomize.py
and checked offline: core kinds against the Kubernetes schemas (kubernetes-validate), the
CRDs (KEDA, Prometheus Operator) by shape, and the wiring between the objects and the code
(commands, settings, ports, consumer groups, partitions, drain bound)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from agentstream.consumers.budget.service import BudgetSettings
from agentstream.consumers.loops.service import LoopSettings
from agentstream.consumers.runtime.runner import EXIT_GRACE_SECONDS, load_service
from agentstream.schemas.routing import Routing

from .checks import ROOT, SERVICES, check_process, environment, settings_class_for
from .kustomize import KustomizeError, pod_spec, render, strategic_merge

K8S = ROOT / "deploy/k8s"
TREES = {"base": K8S / "base", "overlay": K8S / "overlays/example"}
# The oldest Kubernetes the manifests claim, and the newest the package knows.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
CORE_API_GROUPS = ("v1", "apps/v1", "batch/v1", "policy/v1")
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}

Resource = dict[str, Any]


@pytest.fixture(scope="module", params=sorted(TREES))
def tree(request: pytest.FixtureRequest) -> tuple[str, list[Resource]]:
    return request.param, render(TREES[request.param])


def by_kind(resources: list[Resource], kind: str) -> dict[str, Resource]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def container_env(resources: list[Resource], container: Resource) -> dict[str, str]:
    """What the container's process sees: envFrom ConfigMaps, then env (placeholders for
    values from Secrets and the downward API)."""
    configmaps = by_kind(resources, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"{container['name']}: envFrom {source}"
        name = source["configMapRef"]["name"]
        assert name in configmaps, f"{container['name']}: envFrom an unknown ConfigMap {name}"
        env.update(configmaps[name]["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]
            if "configMapKeyRef" in ref:
                env[item["name"]] = configmaps[ref["configMapKeyRef"]["name"]]["data"][
                    ref["configMapKeyRef"]["key"]
                ]
            else:  # a Secret's value: what the setting expects, with no real credential
                env[item["name"]] = SECRET_PLACEHOLDERS.get(item["name"], "placeholder")
    return env


SECRET_PLACEHOLDERS = {"AGENTSTREAM_STORE": "postgresql://agentstream@postgres:5432/agentstream"}
"""Secret values that must have a form: the store URL is checked with the settings."""


def workloads(resources: list[Resource]) -> list[tuple[Resource, Resource]]:
    found: list[tuple[Resource, Resource]] = []
    for resource in resources:
        spec = pod_spec(resource)
        if spec is not None:
            found.extend((resource, container) for container in spec["containers"])
    return found


def service_name(deployment: Resource) -> str:
    (container,) = pod_spec(deployment)["containers"]  # type: ignore[index]
    args = container["args"]
    assert args[0] == "consume", f"{deployment['metadata']['name']}: args {args}"
    return str(args[1])


# --- schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_match_the_kubernetes_schemas(
    tree: tuple[str, list[Resource]], version: str
) -> None:
    checked = 0
    for resource in tree[1]:
        if resource["apiVersion"] in CORE_API_GROUPS:
            try:
                kubernetes_validate.validate(resource, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{resource['kind']}/{resource['metadata']['name']}: {exc.message}")
            checked += 1
    assert checked >= 5 * 3 + 4  # Deployments, Services, PDBs, ConfigMaps, Job, SA


def test_the_schema_check_rejects_a_broken_deployment() -> None:
    deployment = dict(by_kind(render(TREES["base"]), "Deployment")["agentstream-loops"])
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_custom_resources_have_their_required_fields(tree: tuple[str, list[Resource]]) -> None:
    resources = tree[1]
    known = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}
    for resource in resources:
        if resource["apiVersion"] in CORE_API_GROUPS:
            continue
        kind, name = resource["kind"], resource["metadata"]["name"]
        assert kind in known, f"unexpected custom resource {kind}/{name}"
        assert set(resource) <= {"apiVersion", "kind", "metadata", "spec"}, name
        if kind in ("ScaledObject", "TriggerAuthentication"):
            assert resource["apiVersion"] == "keda.sh/v1alpha1"
        else:
            assert resource["apiVersion"] == "monitoring.coreos.com/v1"
        spec = resource["spec"]
        if kind == "ScaledObject":
            assert spec["scaleTargetRef"]["name"]
            assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
            for trigger in spec["triggers"]:
                assert trigger["type"] == "kafka"
                metadata = trigger["metadata"]
                assert all(isinstance(v, str) for v in metadata.values()), metadata
                assert {"consumerGroup", "topic", "lagThreshold"} <= set(metadata)
                assert "bootstrapServers" in metadata or "bootstrapServersFromEnv" in metadata
                assert int(metadata["lagThreshold"]) > 0
        elif kind == "TriggerAuthentication":
            for ref in spec["secretTargetRef"]:
                assert {"parameter", "name", "key"} == set(ref)
        else:
            assert spec["selector"]["matchLabels"]
            for endpoint in spec["endpoints"]:
                assert {"port", "path"} <= set(endpoint)


# --- one process per service, each a real command with settings it reads ---------------------


def test_every_service_has_its_deployment(tree: tuple[str, list[Resource]]) -> None:
    deployments = by_kind(tree[1], "Deployment")
    assert sorted(service_name(d) for d in deployments.values()) == sorted(SERVICES)


def test_every_container_runs_a_real_command_with_settings_it_reads(
    tree: tuple[str, list[Resource]],
) -> None:
    resources = tree[1]
    for workload, container in workloads(resources):
        where = f"{tree[0]} {workload['kind']}/{workload['metadata']['name']}"
        assert "command" not in container, f"{where}: args only (the image's entry point)"
        check_process(container["args"], container_env(resources, container), where)


def test_credentials_and_store_come_from_secrets(tree: tuple[str, list[Resource]]) -> None:
    for workload, container in workloads(tree[1]):
        refs = {
            item["name"]: item["valueFrom"]["secretKeyRef"]
            for item in container.get("env", [])
            if "secretKeyRef" in item.get("valueFrom", {})
        }
        where = workload["metadata"]["name"]
        assert set(refs) >= {"AGENTSTREAM_SASL_PLAIN_USERNAME", "AGENTSTREAM_SASL_PLAIN_PASSWORD"}
        assert refs["AGENTSTREAM_SASL_PLAIN_USERNAME"]["name"] == "agentstream-kafka", where
        if container["args"][:2] == ["consume", "persistence"]:
            assert refs["AGENTSTREAM_STORE"] == {"name": "agentstream-postgres", "key": "url"}
    for configmap in by_kind(tree[1], "ConfigMap").values():
        for key in configmap["data"]:
            assert "PASSWORD" not in key and "STORE" not in key, f"a secret in {key}"


def test_config_files_are_mounted_where_the_settings_point(
    tree: tuple[str, list[Resource]], tmp_path: Path
) -> None:
    resources = tree[1]
    files = by_kind(resources, "ConfigMap")["agentstream-files"]["data"]
    for deployment in by_kind(resources, "Deployment").values():
        spec = pod_spec(deployment)
        assert spec is not None
        (container,) = spec["containers"]
        env = container_env(resources, container)
        for variable in ("AGENTSTREAM_LOOPS_CONFIG", "AGENTSTREAM_BUDGET_CONFIG"):
            if variable not in env:
                continue
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == env[variable]]
            (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
            assert volume["configMap"]["name"] == "agentstream-files"
            key = mount["subPath"]
            assert key in files
            path = Path(env[variable])
            assert path.name == key
    # The files load with the services' own loaders, as the pods read them.
    folder = tmp_path / "etc"
    folder.mkdir()
    for key, text in files.items():
        (folder / key).write_text(text)
    budget = BudgetSettings(budget_config=folder / "budget.toml").budget()
    assert budget.session.tokens == 100_000
    assert LoopSettings(loops_config=folder / "loops.toml").loop_config() is not None


# --- pods: probes, resources, security, shutdown ----------------------------------------------


def test_pods_are_probed_bounded_and_locked_down(tree: tuple[str, list[Resource]]) -> None:
    resources = tree[1]
    for workload, container in workloads(resources):
        where = workload["metadata"]["name"]
        spec = pod_spec(workload)
        assert spec is not None
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] != 0
        assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, where
        assert security["readOnlyRootFilesystem"] is True, where
        assert security["runAsNonRoot"] is True, where
        assert security["capabilities"]["drop"] == ["ALL"], where
        assert security["seccompProfile"]["type"] == "RuntimeDefault", where
        tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp and any(
            v["name"] == tmp[0]["name"] and "emptyDir" in v for v in spec["volumes"]
        ), f"{where}: /tmp must be writable with a read-only root"
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert {"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(requests), where
        if workload["kind"] != "Deployment":
            continue
        env = container_env(resources, container)
        port = int(env["AGENTSTREAM_HTTP_PORT"])
        (declared,) = container["ports"]
        assert declared == {"name": "http", "containerPort": port, "protocol": "TCP"}, where
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        # The runner bounds a SIGTERM shutdown by drain_timeout_ms + EXIT_GRACE_SECONDS.
        settings = load_service(service_name(workload)).settings_class
        drain_ms = int(
            env.get(
                "AGENTSTREAM_DRAIN_TIMEOUT_MS", settings.model_fields["drain_timeout_ms"].default
            )
        )
        bound = drain_ms / 1000 + EXIT_GRACE_SECONDS
        assert spec["terminationGracePeriodSeconds"] > bound, f"{where}: shutdown bound {bound}"
        assert "replicas" not in workload["spec"], f"{where}: the ScaledObject owns replicas"


def test_each_deployment_has_a_service_monitor_and_disruption_budget(
    tree: tuple[str, list[Resource]],
) -> None:
    resources = tree[1]
    services = by_kind(resources, "Service")
    monitors = by_kind(resources, "ServiceMonitor")
    budgets = by_kind(resources, "PodDisruptionBudget")
    for name, deployment in by_kind(resources, "Deployment").items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        (container,) = pod_spec(deployment)["containers"]  # type: ignore[index]
        service = services[name]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        (port,) = service["spec"]["ports"]
        assert port["targetPort"] == "http" and port["name"] == "http"
        assert port["port"] == container["ports"][0]["containerPort"]
        # job label = the Service's name, as the dashboards and alerts select it.
        assert name == f"agentstream-{service_name(deployment)}"
        monitor = monitors[name]
        assert (
            monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        )
        assert monitor["spec"]["endpoints"] == [
            {"port": "http", "path": "/metrics", "interval": "15s"}
        ]
        budget = budgets[name]
        assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert budget["spec"].get("maxUnavailable") == 1 or "minAvailable" in budget["spec"]


# --- scaling on lag --------------------------------------------------------------------------


def topics_partitions(resources: list[Resource]) -> int:
    (job,) = by_kind(resources, "Job").values()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    args = check_process(container["args"], container_env(resources, container), "topics Job")
    return int(args.partitions)


EVENTS_ONLY = {"budget", "tracing"}
"""Services whose group reads the events topic only (their service tests assert
``consumer.topics() == [events]``)."""


def test_scaled_objects_follow_each_groups_lag_up_to_the_partitions(
    tree: tuple[str, list[Resource]],
) -> None:
    resources = tree[1]
    partitions = topics_partitions(resources)
    scaled = by_kind(resources, "ScaledObject")
    auths = by_kind(resources, "TriggerAuthentication")
    for name, deployment in by_kind(resources, "Deployment").items():
        service = service_name(deployment)
        scaled_object = scaled[name]
        spec = scaled_object["spec"]
        assert spec["scaleTargetRef"]["name"] == name
        assert spec["maxReplicaCount"] <= partitions
        (container,) = pod_spec(deployment)["containers"]  # type: ignore[index]
        env = container_env(resources, container)
        with environment(env):
            settings = settings_class_for(container["args"])()
        routing = Routing(prefix=settings.topic_prefix)
        group = settings.group_for(service)  # type: ignore[attr-defined]
        # The service's own groups and topics: its events group on the routed topics, and the
        # budget's repartition stage (group "<group>.repartition").
        expected_groups = {group, f"{group}.repartition"} if service == "budget" else {group}
        readable = set(routing.all_topics()) | {f"{routing.prefix}.budget-repartition"}
        seen_groups = set()
        for trigger in spec["triggers"]:
            metadata = trigger["metadata"]
            where = f"{tree[0]} {name} trigger {metadata['topic']}"
            assert metadata["consumerGroup"] in expected_groups, where
            assert metadata["topic"] in readable, where
            seen_groups.add(metadata["consumerGroup"])
            source = metadata.get("bootstrapServersFromEnv")
            if source:
                assert env[source] == settings.bootstrap_servers, where
            else:
                assert metadata["bootstrapServers"] == settings.bootstrap_servers, where
            assert metadata.get("allowIdleConsumers", "false") == "false", where
            assert metadata.get("offsetResetPolicy") == settings.auto_offset_reset, where
            # The scaler talks to Kafka the way the service does.
            if settings.security_protocol.startswith("SASL"):
                assert metadata["sasl"] == KEDA_SASL[settings.sasl_mechanism], where
                auth = auths[trigger["authenticationRef"]["name"]]
                refs = auth["spec"]["secretTargetRef"]
                secret_names = {
                    ref["name"] for ref in refs if ref["parameter"] in ("username", "password")
                }
                user_ref = next(
                    item["valueFrom"]["secretKeyRef"]
                    for item in container["env"]
                    if item["name"] == "AGENTSTREAM_SASL_PLAIN_USERNAME"
                )
                assert secret_names == {user_ref["name"]}, where
                params = {ref["parameter"]: ref["key"] for ref in refs}
                assert params["username"] == user_ref["key"], where
                # The scaler trusts the CA the pods trust (Strimzi signs with its own).
                ca_ref = next((ref for ref in refs if ref["parameter"] == "ca"), None)
                if settings.ssl_cafile is None:
                    assert ca_ref is None, where
                else:
                    assert ca_ref is not None, f"{where}: KEDA has no CA"
                    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
                    secrets = {
                        v["name"]: v["secret"]["secretName"]
                        for v in pod_spec(deployment)["volumes"]  # type: ignore[index]
                        if "secret" in v
                    }
                    mounted = {
                        f"{mounts[name]}/{ca_ref['key']}": secret
                        for name, secret in secrets.items()
                        if name in mounts
                    }
                    assert mounted.get(settings.ssl_cafile) == ca_ref["name"], where
            expect_tls = settings.security_protocol in ("SSL", "SASL_SSL")
            assert (metadata.get("tls") == "enable") == expect_tls, where
            if service in EVENTS_ONLY and metadata["consumerGroup"] == group:
                # a group that commits nothing on a topic has all of it as lag for KEDA's
                # scaler: budget scaled on the tokens topic it never reads sat at its maximum
                assert metadata["topic"] == routing.events, where
        assert seen_groups == expected_groups, f"{name}: lag of every group it consumes"
        events = {t["metadata"]["topic"] for t in spec["triggers"]}
        assert routing.events in events, f"{name}: scales on the events topic's lag"


# --- the overlay -----------------------------------------------------------------------------


def test_overlay_changes_what_it_says() -> None:
    base, overlay = render(TREES["base"]), render(TREES["overlay"])
    assert {r["kind"] + "/" + r["metadata"]["name"] for r in base} == {
        r["kind"] + "/" + r["metadata"]["name"] for r in overlay
    }
    for resource in overlay:
        assert resource["metadata"]["namespace"] == "agentstream"
        assert resource["metadata"]["labels"]["app.kubernetes.io/instance"] == "example"
        assert resource["metadata"]["labels"]["app.kubernetes.io/part-of"] == "agentstream"
    for workload, container in workloads(overlay):
        assert container["image"] == "registry.example.com/platform/agentstream:0.1.0"
        # Strimzi's cluster CA: every pod (the topics Job too) has the file its setting names
        ca_file = container_env(overlay, container)["AGENTSTREAM_SSL_CAFILE"]
        mounts = [m["mountPath"] + "/" for m in container["volumeMounts"]]
        assert any(ca_file.startswith(m) for m in mounts), workload["metadata"]["name"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "example"
        selector = workload["spec"].get("selector", {}).get("matchLabels", {})
        assert "app.kubernetes.io/instance" not in selector
    for monitor in by_kind(overlay, "ServiceMonitor").values():
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    tracing = by_kind(overlay, "Deployment")["agentstream-tracing"]
    (container,) = pod_spec(tracing)["containers"]  # type: ignore[index]
    env = container_env(overlay, container)
    assert env["AGENTSTREAM_OTLP_ENDPOINT"].startswith("http://tempo-distributor.")
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == "deployment.environment=example"
    # Merged by name: the base's variables are all still there.
    base_tracing = by_kind(base, "Deployment")["agentstream-tracing"]
    base_names = {e["name"] for e in pod_spec(base_tracing)["containers"][0]["env"]}  # type: ignore[index]
    assert base_names <= {e["name"] for e in container["env"]}


# --- the renderer itself ---------------------------------------------------------------------


def test_strategic_merge_merges_lists_by_key_and_replaces_others() -> None:
    base = {
        "containers": [{"name": "a", "env": [{"name": "X", "value": "1"}], "args": ["p", "q"]}],
        "keep": 1,
        "drop": 2,
    }
    patch = {
        "containers": [
            {"name": "a", "env": [{"name": "Y", "value": "2"}], "args": ["r"]},
            {"name": "b"},
        ],
        "drop": None,
    }
    assert strategic_merge(base, patch) == {
        "containers": [
            {
                "name": "a",
                "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
                "args": ["r"],
            },
            {"name": "b"},
        ],
        "keep": 1,
    }


def test_renderer_refuses_features_it_does_not_know(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(KustomizeError, match="namePrefix"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\npatches:\n  - patch: |-\n"
        "      apiVersion: v1\n      kind: ConfigMap\n      metadata: {name: other}\n"
    )
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n")
    with pytest.raises(KustomizeError, match="matches no resource"):
        render(tmp_path)


def test_documented_commands_parse() -> None:
    """The commands docs/deploy.md tells users to run with the image."""
    notes = (ROOT / "docs/deploy.md").read_text()
    lines = [
        line.strip()
        for line in notes.splitlines()
        if line.strip().startswith("docker run") and "agentstream:local" in line
    ]
    assert lines
    for line in lines:
        argv = shlex.split(line.split("agentstream:local", 1)[1])
        check_process(argv, {}, f"docs: {line}")
