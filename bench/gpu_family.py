"""The model family that bench/gpu_check.py's servers load (`VAE_BACKENDS=bench.gpu_family:family`).

It serves a diffusers `save_pretrained` folder as the built-in diffusers family does (the same
`DiffusersBackend`), with three differences the check needs, set by the check in the server's
environment:
- `GPU_CHECK_DTYPE` (float16, bfloat16, float32): the weights' dtype, which the built-in family
  picks itself (float16 on a GPU);
- 8 rows per pass on any device (the built-in family runs one row at a time on a CPU), so the dry
  run batches as a GPU does;
- `GPU_CHECK_CAP_BYTES`: on CUDA, the process may allocate at most this many bytes
  (`torch.cuda.set_per_process_memory_fraction`), so that a too-large request really runs out of
  memory. A CPU has no such cap: there, a pass of more than one row raises torch's
  out-of-memory error instead (a stand-in, which the check's table says).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from app.engine.backend import Loaded
from app.engine.backends import diffusers as builtin
from app.engine.backends.diffusers_folders import locate, sha256
from app.engine.errors import StartupError


class CappedBackend(builtin.DiffusersBackend):
    """A CPU stand-in for a memory cap: a pass of more than one row is out of memory."""

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if z.shape[0] > 1:
            raise torch.OutOfMemoryError(f"stand-in: a {z.shape[0]}-row pass is over the cap on {self.device}")
        return super().decode(z, labels)


class CheckFamily:
    name = "gpu-check"

    def model_name(self, path: Path) -> str | None:
        return builtin.family.model_name(path)

    def load(self, path: Path, device: torch.device) -> Loaded:
        cap = int(os.environ.get("GPU_CHECK_CAP_BYTES") or 0)
        if cap and device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
        dtype = getattr(torch, os.environ.get("GPU_CHECK_DTYPE", "float32"))
        try:
            located = locate(path)
            model = builtin.load_model(located, dtype)
        except builtin.DiffusersError as e:
            raise StartupError(f"cannot load model {path}: {e}") from None
        backend_class = CappedBackend if cap and device.type == "cpu" else builtin.DiffusersBackend
        backend = backend_class(model.to(device))
        backend.max_rows = builtin.GPU_ROWS
        return Loaded(backend, sha256(located))


family = CheckFamily()
