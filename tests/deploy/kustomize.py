"""Rendering deploy/k8s overlays: `kubectl kustomize` where kubectl is installed, else this
module's renderer of the kustomize features the manifests use (resources, JSON 6902 patches
with a target, images). tests/deploy/test_k8s.py checks that both render the same objects
wherever kubectl exists, and this renderer refuses any feature it does not implement."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

KNOWN = {"apiVersion", "kind", "resources", "patches", "images"}


def kubectl_render(directory: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render(directory: Path) -> list[dict]:
    """The objects `kubectl kustomize directory` renders, for the features in KNOWN."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN
    if unknown:
        raise ValueError(f"{directory}/kustomization.yaml uses {sorted(unknown)}, which the test renderer lacks")
    objects: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        objects += render(path) if path.is_dir() else [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch in kustomization.get("patches", []):
        operations = yaml.safe_load((directory / patch["path"]).read_text())
        target = patch["target"]
        for obj in objects:
            if obj["kind"] == target["kind"] and obj["metadata"]["name"] == target["name"]:
                for operation in operations:
                    apply(obj, operation)
    for image in kustomization.get("images", []):
        for obj in objects:
            for container in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    return objects


def apply(document: dict, operation: dict) -> None:
    """One RFC 6902 operation (add, replace or remove) on `document`, in place."""
    *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]]
    node: Any = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    op = operation["op"]
    if op not in ("add", "replace", "remove"):
        raise ValueError(f"the test renderer lacks the patch operation {op!r}")
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if op == "add":
            node.insert(index, operation["value"])
        elif op == "replace":
            node[index] = operation["value"]
        else:
            del node[index]
        return
    if op != "add" and last not in node:
        raise KeyError(f"{operation['path']}: no such member to {op}")
    if op == "remove":
        del node[last]
    else:
        node[last] = operation["value"]
