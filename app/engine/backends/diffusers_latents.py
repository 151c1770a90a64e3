"""Pipeline-space latents: what a diffusers pipeline hands its VAE's decode step, and takes from
its encode, as against the VAE's own latents.

Two independent steps, each exactly as the pipelines compute it (tests compare with their code):
- packing, the layout of Flux.1, Flux.2 and Qwen-Image transformers: [B, C, h, w] latents as a
  sequence of 2x2 patches [B, (h/2)(w/2), 4C] (`FluxPipeline._pack_latents`/`_unpack_latents`;
  Flux.2's `_patchify_latents` then `_pack_latents` gives the same order);
- normalisation, per class (app/engine/backends/diffusers_classes.py): a scalar scale and shift,
  per-channel latents_mean/latents_std (`QwenImagePipeline`), or Flux.2's batch-norm statistics
  over 2x2-patchified latents (`Flux2Pipeline`).
Arrays here are float32 NumPy in the VAE's layout without a frame axis, [B, C, h, w].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def packed_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """The latent sides [h, w] of an image height x width as FluxPipeline._unpack_latents computes them."""
    return 2 * (height // (factor * 2)), 2 * (width // (factor * 2))


def pack(z: np.ndarray) -> np.ndarray:
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C] (FluxPipeline._pack_latents)."""
    b, c, h, w = z.shape
    z = z.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3, 5)
    return np.ascontiguousarray(z.reshape(b, (h // 2) * (w // 2), c * 4))


def unpack(z: np.ndarray, h: int, w: int) -> np.ndarray:
    """[B, (h/2)(w/2), 4C] -> [B, C, h, w] (FluxPipeline._unpack_latents, given the latent sides)."""
    b, _, channels = z.shape
    z = z.reshape(b, h // 2, w // 2, channels // 4, 2, 2).transpose(0, 3, 1, 4, 2, 5)
    return np.ascontiguousarray(z.reshape(b, channels // 4, h, w))


def patchify(z: np.ndarray) -> np.ndarray:
    """[B, C, h, w] -> [B, 4C, h/2, w/2] (Flux2Pipeline._patchify_latents)."""
    b, c, h, w = z.shape
    z = z.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 5, 2, 4)
    return np.ascontiguousarray(z.reshape(b, c * 4, h // 2, w // 2))


def unpatchify(z: np.ndarray) -> np.ndarray:
    """[B, 4C, h/2, w/2] -> [B, C, h, w] (Flux2Pipeline._unpatchify_latents)."""
    b, c, h, w = z.shape
    z = z.reshape(b, c // 4, 2, 2, h, w).transpose(0, 1, 4, 2, 5, 3)
    return np.ascontiguousarray(z.reshape(b, c // 4, h * 2, w * 2))


@dataclass(frozen=True)
class PipelineSpace:
    """One model's pipeline normalisation: `to_vae` is what the pipeline does before vae.decode,
    `from_vae` what it does after vae.encode. `mean` and `std` are scalars ("scale": the shift and
    1/scaling_factor) or per-channel vectors; `patched`: they apply to 2x2-patchified latents."""

    kind: str
    mean: np.ndarray
    std: np.ndarray
    patched: bool = False
    packed_only: bool = False  # its pipelines hand over packed latents only (Flux.2)

    @property
    def frames(self) -> int | None:
        """The latent frames its statistics cover, where they are per latent frame too (Cosmos's)."""
        return self.mean.shape[1] if self.mean.ndim == 2 else None

    def _stats(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per channel (dim 1) of latents of any rank: [B, C, h, w], or a video's [B, C, t, h, w];
        per channel and latent frame [C, T] for the first t of its T frames."""
        if self.frames is not None:
            t = z.shape[2]
            return self.mean[None, :, :t, None, None], self.std[None, :, :t, None, None]
        shape = (1, z.shape[1], *(1,) * (z.ndim - 2)) if self.mean.size > 1 else ()
        return self.mean.reshape(shape), self.std.reshape(shape)

    def to_vae(self, z: np.ndarray) -> np.ndarray:
        if self.patched:
            z = patchify(z)
        mean, std = self._stats(z)
        z = z * std + mean
        return unpatchify(z) if self.patched else z

    def from_vae(self, z: np.ndarray) -> np.ndarray:
        if self.patched:
            z = patchify(z)
        mean, std = self._stats(z)
        z = (z - mean) / std
        return unpatchify(z) if self.patched else z

    def describe(self) -> str:
        return {
            "scale": "(z - shift_factor) * scaling_factor",
            "mean_std": "(z - latents_mean) / latents_std, per channel",
            "buffers": "(z - latents_mean) * scaling_factor / latents_std, per channel, the VAE's buffers",
            "frames": "(z - latents_mean) * sigma_data / latents_std, per channel and latent frame (latents_mean "
            "viewed [C, -1]), sigma_data the pipeline's scheduler's",
            "batch_norm": "2x2 patches, then (z - bn.running_mean) / sqrt(bn.running_var + batch_norm_eps); "
            "packed only: give height and width",
        }[self.kind]


def scale_space(scaling_factor: float, shift_factor: float) -> PipelineSpace:
    return PipelineSpace("scale", np.float32(shift_factor), np.float32(1.0 / scaling_factor))


def mean_std_space(mean: Sequence[float], std: Sequence[float], kind: str = "mean_std") -> PipelineSpace:
    """Per channel, from the config ("mean_std") or the VAE's registered buffers ("buffers"); per
    channel and latent frame ([C, T] statistics: "frames")."""
    return PipelineSpace(kind, np.asarray(mean, np.float32), np.asarray(std, np.float32))


def batch_norm_space(running_mean: np.ndarray, running_var: np.ndarray, eps: float) -> PipelineSpace:
    std = np.sqrt(running_var.astype(np.float32) + np.float32(eps))
    return PipelineSpace("batch_norm", running_mean.astype(np.float32), std, patched=True, packed_only=True)
