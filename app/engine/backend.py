"""What a family of VAEs provides to be served: the backend protocol.

A `Family` recognises its checkpoints and loads each as a `Backend`: one model, which the engine
drives through these methods alone, so nothing outside a backend knows which family it serves.
Every tensor method takes and returns whole batches of rows (dim 0), and a row's result must not
depend on the other rows: the engine pads and packs rows of several requests into one pass
(app/engine/passes.py). Randomness comes only from the `torch.Generator` passed in.

Families plug in without editing the engine: `VAE_BACKENDS` names them by import path
(`package.module:attribute`); they are asked before the built-in ones (app/engine/backends/).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from PIL.Image import Image

Operation = Literal["sample", "encode", "decode", "reconstruct", "score", "interpolate"]
# What a backend can have, and what each feature is, for the message when one is missing.
Feature = Literal["prior", "encoder", "posterior", "decoder", "likelihood"]
FEATURES: dict[Feature, str] = {
    "prior": "prior p(z) to sample from",
    "encoder": "encoder",
    "posterior": "Gaussian posterior q(z|x) (its encoder is deterministic)",
    "decoder": "decoder",
    "likelihood": "likelihood p(x|z)",
}
OPERATIONS: tuple[Operation, ...] = ("sample", "encode", "decode", "reconstruct", "score", "interpolate")
# The features each operation needs (interpolating between images also needs the encoder).
NEEDS: dict[Operation, tuple[Feature, ...]] = {
    "sample": ("prior", "decoder"),
    "encode": ("encoder",),
    "decode": ("decoder",),
    "reconstruct": ("encoder", "decoder"),
    # With a likelihood: the ELBO and IWAE bound; without: the reconstruction error (and a posterior's KL).
    "score": ("encoder", "decoder"),
    "interpolate": ("decoder",),
}

# A latent's shape; None where it follows the image size (a [C, h, w] latent of a convolutional VAE).
LatentShape = tuple[int | None, ...]
# What a model takes and makes: images [C, H, W], videos [C, T, H, W] (T frames), or audio
# [C, samples] (C channels of a waveform).
Media = Literal["image", "video", "audio"]


@dataclass(frozen=True)
class Frames:
    """The frame counts a video model takes: `first + step * k` for k >= 0 (1 + 4k for the causal
    video VAEs, whose first frame is encoded alone and every `ratio` frames after it into one
    latent frame; CogVideoX encodes 8 frames at a time: 1 + 8k; Allegro's tiles hold 24 frames
    and step by 16: 24 + 16k), and its latent frame counts."""

    first: int
    step: int
    ratio: int  # the temporal compression: frames per latent frame after the first
    native: int  # what `sample` makes
    fps: float  # the frame rate its pipelines export videos at: an mp4's, unless the request says
    first_latent: int = 1  # latent frames of the first `first` frames (first / ratio where not causal)

    def accepts(self, frames: int) -> bool:
        return frames >= self.first and (frames - self.first) % self.step == 0

    def latent(self, frames: int) -> int:
        """Latent frames of a video of `frames` frames (a count it accepts)."""
        return self.first_latent + (frames - self.first) // self.ratio

    def decoded(self, latent: int) -> int:
        """Frames a decode of `latent` latent frames makes."""
        return self.first + (latent - self.first_latent) * self.ratio

    def rule(self) -> str:
        return f"{self.first} + {self.step}k"


@dataclass(frozen=True)
class Grid:
    """Sides a model takes on a fixed tile grid: `first + step * k` pixels, (first, step) per side
    (Allegro's tiles must cover a video exactly: what they miss decodes to zeros)."""

    height: tuple[int, int]
    width: tuple[int, int]

    def at_least(self, height: int, width: int) -> tuple[int, int]:
        """The smallest sides on the grid of at least height x width pixels."""
        return tuple(  # type: ignore[return-value]
            first + max(0, -(-(side - first) // step)) * step
            for side, (first, step) in ((height, self.height), (width, self.width))
        )

    def unfit(self, height: int, width: int) -> str | None:
        """Why height x width pixels is not on the grid; None where it is."""
        for name, side, (first, step) in (("height", height, self.height), ("width", width, self.width)):
            if side < first or (side - first) % step:
                return f"{name} {side} is not {first} + {step}k pixels (its tile grid)"
        return None


@dataclass(frozen=True)
class ImageSpec:
    """The images a model takes and makes: float values in [0, 1], [C, H, W]; a video model's
    ([C, T, H, W]) says which frame counts T it takes in `frames`; an audio model's waveforms
    [C, samples] have a `sample_rate`, their length is `width` (samples; `height` is 1) and
    `multiple` the samples per latent step, or, where it has `frames` (latent steps that decode
    causally, LTX-2's audio), the samples per hop, `frames` then counting hops."""

    channels: int
    height: int  # the native size: what `sample` makes, and what uploads are fitted to when fixed
    width: int
    fixed_size: bool = True  # False: any size whose sides are multiples of `multiple`
    multiple: int = 1
    # The values the model itself works in (diffusers' autoencoders: [-1, 1]): float image
    # tensors on the binary endpoints are in this range, as the family's own tools make them.
    value_range: tuple[float, float] = (0.0, 1.0)
    frames: Frames | None = None  # a video model's frame counts; None: images
    sample_rate: int | None = None  # an audio model's, in Hz; None: images or videos
    grid: Grid | None = None  # sides on a fixed tile grid (multiples of `multiple` too); None: any multiple

    @property
    def media(self) -> Media:
        return "audio" if self.sample_rate else "image" if self.frames is None else "video"

    def item(self, height: int, width: int, frames: int | None = None) -> tuple[int, ...]:
        """One input's shape: [C, H, W], [C, T, H, W] for a video model (T: `frames`, else
        native), or [C, width] for an audio model."""
        if self.sample_rate:
            return (self.channels, width)
        if self.frames is None:
            return (self.channels, height, width)
        return (self.channels, self.frames.native if frames is None else frames, height, width)


@runtime_checkable
class Posterior(Protocol):
    """A diagonal-Gaussian q(z|x) per row (model.vae.DiagonalGaussian is one)."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    std: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor: ...
    def draws(self, k: int, generator: torch.Generator | None = None) -> torch.Tensor: ...
    def kl(self) -> torch.Tensor: ...


class Backend(Protocol):
    """One loaded model of some family, as the engine serves it.

    `features` says what it has; the operations it serves follow (`NEEDS`), and any other gets
    `NotSupported`, naming the model and the missing feature. `encode` returns a `Posterior`
    ("posterior"), or a plain tensor of latents for a deterministic encoder. `log_likelihood`
    and `log_weights` ("likelihood") serve the ELBO and the IWAE bound of "score" (Burda et al.,
    arXiv 1509.00519). Labels are class indices [B] (int64) for a conditional model
    (`label_names` not empty), else None. `describe` adds family facts to the model's listing.
    A backend may set `max_rows`, the most rows one pass may hold (large images: memory; 1 where
    batching gains little on its device), and `tiled_above`, the pixels a side above which it
    encodes and decodes in tiles (the memory estimate counts one tile's working memory,
    app/engine/memory.py), and `missing`, why a feature it lacks is missing (a feature -> a
    phrase, which `NotSupported` adds); the passes of a variable-size model are calibrated on
    small images (app/engine/passes.py). A backend whose decoder takes inputs from the request (a
    seeded decoder's seed) names them in `decode_options` (name -> an object with `default` and
    `column(value)`, its value as an int64); `decode` then also takes `options`, [B, k] int64,
    row i's columns in that order.
    """

    family: str
    image: ImageSpec
    label_names: Sequence[str]
    features: frozenset[Feature]
    device: torch.device
    dtype: torch.dtype
    # Everything that picks kernels (layer shapes), not the weights: models with equal keys
    # share one calibration of their passes.
    architecture: Hashable

    def latent_shape(
        self, height: int | None = None, width: int | None = None, frames: int | None = None
    ) -> LatentShape:
        """The latent shape of an image of this size (a video model: of `frames` frames, else its
        native count); without a size, None where it follows the size (and the frame count)."""
        ...

    def prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n draws z ~ p(z) for native-size images, [n, *latent shape] (the engine scales them by
        the request's temperature)."""
        ...

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None) -> Posterior | torch.Tensor:
        """q(z|x) of images x [B, C, H, W] (videos [B, C, T, H, W]) in [0, 1]; or the latents of a
        deterministic encoder."""
        ...

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Images [B, C, H, W] (videos [B, C, T, H, W]) with values in [0, 1]: what each latent shows."""
        ...

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """log p(x[i] | z[i]) per row, nats."""
        ...

    def log_weights(self, log_likelihood: torch.Tensor, z: torch.Tensor, posterior: Posterior) -> torch.Tensor:
        """The IWAE log-weights log p(x|z) + log p(z) - log q(z|x) of samples z of `posterior`."""
        ...

    def to_input(self, image: Image) -> np.ndarray:
        """An uploaded image as the model's input: float32 [C, H, W] in [0, 1]."""
        ...

    def describe(self) -> dict[str, Any]:
        """Facts for the model's listing: `likelihood` (a name, or None), `evaluation`, `training`."""
        ...


@dataclass
class Loaded:
    backend: Backend
    sha256: str  # of the checkpoint's bytes, so clients can tell exactly which weights answered


class Family(Protocol):
    """A family of models: which paths are its checkpoints, and how to load one."""

    name: str

    def model_name(self, path: Path) -> str | None:
        """The model's name if `path` (a file or folder in the model folder) is this family's checkpoint."""
        ...

    def load(self, path: Path, device: torch.device) -> Loaded:
        """The model at `path` on `device`; a problem is a one-line `StartupError` naming the file."""
        ...
