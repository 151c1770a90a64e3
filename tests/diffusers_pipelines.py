"""diffusers pipelines' own latent functions (FluxPipeline._unpack_latents, Flux2Pipeline's
patchify and batch-norm steps, ...), compiled from the installed pipeline files: importing those
modules needs transformers (their text encoders), which this service does not depend on, and
the functions themselves need only torch."""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def source_file(module: str) -> Path:
    spec = importlib.util.find_spec("diffusers")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / (module.replace(".", "/") + ".py")


def functions(module: str, names: dict[str, str]) -> dict[str, Callable[..., Any]]:
    """{alias: function} for `names` ({alias: "Class.method" or "function"}) of diffusers' `module`
    (e.g. "pipelines.flux.pipeline_flux"), each compiled from its source as it is."""
    tree = ast.parse(source_file(module).read_text())
    found: dict[str, ast.FunctionDef] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found[node.name] = node
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    found[f"{node.name}.{item.name}"] = item
    namespace: dict[str, Any] = {"torch": torch}
    result = {}
    for alias, name in names.items():
        node = found[name]
        node.decorator_list = []  # @staticmethod: a plain function here
        code = compile(ast.Module(body=[node], type_ignores=[]), str(source_file(module)), "exec")
        exec(code, namespace)  # noqa: S102 - diffusers' own installed source
        result[alias] = namespace[node.name]
    return result
