"""A small kustomize renderer for the features deploy/k8s uses (there is no kubectl here).

Supported kustomization keys: ``resources`` (files, or folders holding a kustomization),
``namespace``, ``labels`` (``pairs`` with ``includeTemplates``; ``includeSelectors`` must be
false), ``images`` (``name``, ``newName``, ``newTag``, ``digest``) and ``patches`` (a ``path``
or inline ``patch``: a strategic-merge document naming its resource, or JSON 6902 operations
with a ``target``). Any other key is an error, so a kustomization using a feature this
renderer does not know fails the tests instead of rendering wrong.

Order, as kustomize's: resources (each base fully rendered first), then this
kustomization's patches, namespace, labels, images.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KNOWN_KEYS = frozenset(
    {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
)
CLUSTER_SCOPED = frozenset(
    {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass"}
)
POD_TEMPLATE_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})
# Strategic merge: lists of objects merged by these keys (as the Kubernetes types declare).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}


class KustomizeError(Exception):
    """A kustomization this renderer cannot render (or that kustomize would reject)."""


def load_documents(path: Path) -> list[Any]:
    """The YAML documents of ``path`` (resources, or JSON 6902 operation lists in patches)."""
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def render(folder: Path) -> list[Resource]:
    """Every resource of the kustomization in ``folder``, as ``kustomize build`` would."""
    kustomization_file = folder / "kustomization.yaml"
    if not kustomization_file.is_file():
        raise KustomizeError(f"expected {kustomization_file}, found none")
    (spec,) = load_documents(kustomization_file)
    unknown = set(spec) - KNOWN_KEYS
    if unknown:
        raise KustomizeError(
            f"{kustomization_file}: keys this renderer does not support: {unknown}"
        )
    resources: list[Resource] = []
    for entry in spec.get("resources", []):
        target = (folder / entry).resolve()
        if target.is_dir():
            resources.extend(render(target))
        elif target.is_file():
            resources.extend(load_documents(target))
        else:
            raise KustomizeError(f"{kustomization_file}: resource {entry!r} does not exist")
    _check_unique(resources, kustomization_file)
    for patch in spec.get("patches", []):
        _apply_patch(resources, patch, folder)
    if "namespace" in spec:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = spec["namespace"]
    for label_spec in spec.get("labels", []):
        _apply_labels(resources, label_spec)
    for image in spec.get("images", []):
        _apply_image(resources, image)
    return resources


def _key(resource: Resource) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


def _check_unique(resources: list[Resource], where: Path) -> None:
    seen: set[tuple[str, str]] = set()
    for resource in resources:
        key = _key(resource)
        if key in seen:
            raise KustomizeError(f"{where}: {key[0]}/{key[1]} appears twice")
        seen.add(key)


# --- patches ---------------------------------------------------------------------------------


def _apply_patch(resources: list[Resource], entry: Resource, folder: Path) -> None:
    documents: list[Any]
    if "path" in entry:
        documents = load_documents(folder / entry["path"])
    elif "patch" in entry:
        documents = [doc for doc in yaml.safe_load_all(entry["patch"]) if doc is not None]
    else:
        raise KustomizeError(f"a patch needs path or patch, got {entry}")
    target = entry.get("target")
    for document in documents:
        if isinstance(document, list):  # JSON 6902 operations
            if target is None:
                raise KustomizeError("JSON 6902 operations need a target")
            matched = [r for r in resources if _matches(r, target)]
            if not matched:
                raise KustomizeError(f"patch target {target} matches no resource")
            for resource in matched:
                for operation in document:
                    _json6902(resource, operation)
        else:
            matched = (
                [r for r in resources if _matches(r, target)]
                if target
                else [r for r in resources if _key(r) == _key(document)]
            )
            if not matched:
                raise KustomizeError(
                    f"strategic merge patch for {_key(document)} matches no resource"
                )
            for resource in matched:
                patched = strategic_merge(resource, document)
                resource.clear()
                resource.update(patched)


def _matches(resource: Resource, target: Resource) -> bool:
    for field in ("kind", "name", "namespace"):
        if field in target:
            value = resource["kind"] if field == "kind" else resource["metadata"].get(field)
            if value != target[field]:
                return False
    if "labelSelector" in target:
        labels = resource["metadata"].get("labels", {})
        for term in target["labelSelector"].split(","):
            name, _, value = term.partition("=")
            if labels.get(name.strip()) != value.strip():
                return False
    unknown = set(target) - {"kind", "name", "namespace", "labelSelector", "group", "version"}
    if unknown:
        raise KustomizeError(f"patch target fields this renderer does not support: {unknown}")
    return True


def strategic_merge(base: Any, patch: Any, field: str | None = None) -> Any:
    """``patch`` merged into ``base`` (Kubernetes strategic merge for the simple cases: maps
    merged, null deletes, known lists of objects merged by key, other lists replaced)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        if "$patch" in patch:
            raise KustomizeError("$patch directives are not supported")
        merged = copy.deepcopy(base)
        for name, value in patch.items():
            if value is None:
                merged.pop(name, None)
            elif name in merged:
                merged[name] = strategic_merge(merged[name], value, name)
            else:
                merged[name] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        merged_list = copy.deepcopy(base)
        for item in patch:
            for index, existing in enumerate(merged_list):
                if existing.get(key) == item.get(key):
                    merged_list[index] = strategic_merge(existing, item)
                    break
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"expected a JSON pointer starting with /, got {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _json6902(resource: Resource, operation: Resource) -> None:
    op, parts = operation["op"], _pointer(operation["path"])
    parent: Any = resource
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    if op in ("add", "replace"):
        value = copy.deepcopy(operation["value"])
        if isinstance(parent, list):
            if last == "-":
                parent.append(value)
            elif op == "add":
                parent.insert(int(last), value)
            else:
                parent[int(last)] = value
        else:
            if op == "replace" and last not in parent:
                raise KustomizeError(f"replace of a missing path {operation['path']}")
            parent[last] = value
    elif op == "remove":
        if isinstance(parent, list):
            del parent[int(last)]
        else:
            del parent[last]
    else:
        raise KustomizeError(f"JSON 6902 op {op!r} is not supported")


# --- labels and images -----------------------------------------------------------------------


def pod_spec(resource: Resource) -> Resource | None:
    """The pod spec of a workload, or None."""
    if resource["kind"] not in POD_TEMPLATE_KINDS:
        return None
    spec: Resource = resource["spec"]["template"]["spec"]
    return spec


def _apply_labels(resources: list[Resource], label_spec: Resource) -> None:
    if label_spec.get("includeSelectors"):
        raise KustomizeError("labels with includeSelectors are not supported")
    pairs = label_spec["pairs"]
    for resource in resources:
        resource["metadata"].setdefault("labels", {}).update(pairs)
        if label_spec.get("includeTemplates") and resource["kind"] in POD_TEMPLATE_KINDS:
            template = resource["spec"]["template"].setdefault("metadata", {})
            template.setdefault("labels", {}).update(pairs)


def _image_name(image: str) -> str:
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def _apply_image(resources: list[Resource], image: Resource) -> None:
    for resource in resources:
        spec = pod_spec(resource)
        if spec is None:
            continue
        for container in [*spec.get("containers", []), *spec.get("initContainers", [])]:
            current = container["image"]
            if _image_name(current) != image["name"]:
                continue
            name = image.get("newName", image["name"])
            if "digest" in image:
                container["image"] = f"{name}@{image['digest']}"
            elif "newTag" in image:
                container["image"] = f"{name}:{image['newTag']}"
            else:
                tag = current[len(_image_name(current)) :]
                container["image"] = f"{name}{tag}"
