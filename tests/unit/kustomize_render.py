"""Renders deploy/k8s's kustomizations offline, for tests on machines without kustomize.

Only what our kustomizations use: `resources` (files and directories), `images`, `replicas`
and JSON 6902 `patches` with a kind/name target. Any other field is refused rather than
ignored, so a kustomization that grows a feature fails here until the feature is rendered.
Where `kubectl` is installed, tests/unit/test_deploy_k8s.py checks that this renderer and
`kubectl kustomize` produce the same resources.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

SUPPORTED_FIELDS = frozenset({"apiVersion", "kind", "resources", "images", "replicas", "patches"})
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "ReplicaSet"})


class UnsupportedKustomization(ValueError):
    """The kustomization uses a feature this renderer does not implement."""


def render(directory: Path) -> list[Resource]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED_FIELDS
    if unknown:
        raise UnsupportedKustomization(f"{directory}: {sorted(unknown)}")
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            resources.extend(render(path))
        else:
            resources.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for patch in kustomization.get("patches", []):
        apply_patch(resources, patch, directory)
    for image in kustomization.get("images", []):
        set_image(resources, image)
    for replicas in kustomization.get("replicas", []):
        set_replicas(resources, replicas["name"], replicas["count"])
    return resources


def apply_patch(resources: list[Resource], patch: dict[str, Any], directory: Path) -> None:
    if set(patch) - {"target", "patch", "path"} or set(patch["target"]) - {"kind", "name"}:
        raise UnsupportedKustomization(f"patch {patch}")
    text = patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text()
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise UnsupportedKustomization("only JSON 6902 patches (a list of operations)")
    targets = [r for r in resources if r["kind"] == patch["target"]["kind"]
               and r["metadata"]["name"] == patch["target"]["name"]]
    if not targets:
        raise ValueError(f"patch target not found: {patch['target']}")
    for resource in targets:
        for operation in operations:
            apply_operation(resource, operation)


def apply_operation(document: Resource, operation: dict[str, Any]) -> None:
    """One JSON Patch (RFC 6902) operation: add, replace or remove."""
    *parents, last = [_unescape(t) for t in operation["path"].lstrip("/").split("/")]
    node: Any = document
    for token in parents:
        node = node[int(token)] if isinstance(node, list) else node[token]
    op = operation["op"]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if op == "add":
            node.insert(index, copy.deepcopy(operation["value"]))
        elif op == "replace":
            node[index] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del node[index]
        else:
            raise UnsupportedKustomization(f"op {op}")
        return
    if op in ("replace", "remove") and last not in node:
        raise ValueError(f"{operation['path']}: nothing to {op}")
    if op in ("add", "replace"):
        node[last] = copy.deepcopy(operation["value"])
    elif op == "remove":
        del node[last]
    else:
        raise UnsupportedKustomization(f"op {op}")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def set_image(resources: list[Resource], image: dict[str, Any]) -> None:
    for container in containers(resources):
        name, tag = split_image(container["image"])
        if name != image["name"]:
            continue
        new_name = image.get("newName", name)
        if "digest" in image:
            container["image"] = f"{new_name}@{image['digest']}"
        else:
            new_tag = image.get("newTag", tag)
            container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name


def split_image(reference: str) -> tuple[str, str | None]:
    """`registry:5000/name:tag` -> (`registry:5000/name`, `tag`); a digest stays in the name."""
    if "@" in reference:
        return reference, None
    head, _, last = reference.rpartition("/")
    if ":" in last:
        last, tag = last.split(":", 1)
        return (f"{head}/{last}" if head else last), tag
    return reference, None


def set_replicas(resources: list[Resource], name: str, count: int) -> None:
    targets = [r for r in resources if r["kind"] in WORKLOAD_KINDS and r["metadata"]["name"] == name]
    if not targets:
        raise ValueError(f"replicas: no workload named {name}")
    for resource in targets:
        resource["spec"]["replicas"] = count


def containers(resources: list[Resource]) -> list[dict[str, Any]]:
    found = []
    for resource in resources:
        pod = resource.get("spec", {}).get("template", {}).get("spec", {})
        found.extend(pod.get("initContainers", []))
        found.extend(pod.get("containers", []))
    return found
