"""The served models: every checkpoint loaded once at start-up by the family that claims it,
with what each model needs from a request: `LoadedModel.checked` (every operation, on arrays,
called by the engine before any request joins a batch) and the label and latent parsers the
protocols use to build those arrays with messages that name their own fields."""

from __future__ import annotations

import logging
import reprlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from app.engine.backend import FEATURES, NEEDS, OPERATIONS, Backend, Family, Feature, Operation
from app.engine.errors import BadLabel, BadLatentShape, InvalidInput, NotSupported, StartupError, UnknownModel
from model.device import resolve_device

log = logging.getLogger(__name__)

# The rows each operation takes from a request (sample takes none: a count); interpolating
# between images first encodes them, so its own rows are latents.
ROWS: dict[Operation, Literal["images", "latents"] | None] = {
    "sample": None,
    "encode": "images",
    "decode": "latents",
    "reconstruct": "images",
    "score": "images",
    "interpolate": "latents",
}


@dataclass
class LoadedModel:
    name: str  # from the checkpoint's file name
    backend: Backend
    sha256: str  # of the checkpoint, so clients can tell exactly which weights answered

    @property
    def conditional(self) -> bool:
        return bool(self.backend.label_names)

    @property
    def capabilities(self) -> list[Operation]:
        return [op for op in OPERATIONS if set(NEEDS[op]) <= self.backend.features]

    def require(self, operation: Operation, *features: Feature) -> None:
        """NotSupported unless the model has what `operation` needs (and `features`)."""
        missing = getattr(self.backend, "missing", {})
        for feature in (*NEEDS[operation], *features):
            if feature not in self.backend.features:
                why = f" ({missing[feature]})" if feature in missing else ""
                raise NotSupported(self.name, operation, f"it has no {FEATURES[feature]}{why}")

    def checked(
        self, operation: Operation, rows: np.ndarray, labels: np.ndarray | None, *features: Feature
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """`rows` (float32, C order) and `labels` if they are what this model needs for
        `operation`, else the error a client gets (InvalidInput, NotSupported): the one statement
        of it, which every protocol's request meets before it joins a batch, so that no request
        can fail the batch it would share with others.

        - the features `operation` needs (`NEEDS`), and `features`;
        - latents (decode, interpolate): [B, *latent shape], B >= 1, finite; a dimension that
          follows the image size (None) any size >= 1;
        - images (encode, reconstruct, score): [B, C, H, W] in [0, 1], the model's channels and
          native size, or for a model of variable size, sides that are multiples of its multiple;
          a video model's [B, C, T, H, W] with T a frame count it takes (and latents whose t
          latent frames decode to one); an audio model's [B, C, samples], samples a multiple of its hop;
        - labels: a conditional model needs one class index per row, in range; an unconditional
          one takes none.
        """
        self.require(operation, *features)
        what = ROWS[operation]
        if what is None:
            raise ValueError(f"{operation} takes no rows")
        rows = self._latent_rows(rows) if what == "latents" else self._image_rows(rows)
        if not np.isfinite(rows).all():
            raise InvalidInput(f"{what}: {int((~np.isfinite(rows)).sum())} values are not finite")
        if what == "images" and not (rows.min() >= 0 and rows.max() <= 1):
            raise InvalidInput(f"images: values must be in [0, 1] for model '{self.name}'")
        return rows, self._label_rows(labels, len(rows), what.removesuffix("s"))

    def checked_label(self, label: int | None) -> int | None:
        """The one class of a sample, checked: for a conditional model an index in range (None:
        drawn per image); an unconditional one takes none."""
        self.require("sample")
        return self.one_label(label)

    def _latent_rows(self, z: np.ndarray) -> np.ndarray:
        shape = self.backend.latent_shape()
        fits = z.ndim == 1 + len(shape) and all(want in (None, got) for want, got in zip(shape, z.shape[1:]))
        if not fits or 0 in z.shape:
            shown = ", ".join("?" if size is None else str(size) for size in shape)
            raise BadLatentShape(f"latents: shape {list(z.shape)}; model '{self.name}' takes [B, {shown}], B >= 1")
        frames = self.backend.image.frames
        if frames is not None and not frames.accepts(frames.decoded(z.shape[2])):
            raise BadLatentShape(
                f"latents: {z.shape[2]} latent frames decode to {frames.decoded(z.shape[2])} frames; "
                f"model '{self.name}' takes {frames.rule()} frames"
            )
        grid, multiple = self.backend.image.grid, self.backend.image.multiple
        unfit = grid and grid.unfit(z.shape[-2] * multiple, z.shape[-1] * multiple)
        if unfit:
            raise BadLatentShape(f"latents: {list(z.shape)} decode to {unfit} of model '{self.name}'")
        return np.ascontiguousarray(z, dtype=np.float32)

    def _image_rows(self, x: np.ndarray) -> np.ndarray:
        spec = self.backend.image
        layout = {"image": "H, W", "video": "T, H, W", "audio": "samples"}[spec.media]
        if x.ndim != 2 + len(layout.split(", ")) or 0 in x.shape or x.shape[1] != spec.channels:
            raise InvalidInput(
                f"images: shape {list(x.shape)}; model '{self.name}' takes [B, {spec.channels}, {layout}], B >= 1"
            )
        if spec.media == "audio":  # its `frames`, if any, count hops of `multiple` samples (causal steps)
            if x.shape[2] % spec.multiple or (spec.frames and not spec.frames.accepts(x.shape[2] // spec.multiple)):
                hops = f"({spec.frames.rule()}) x {spec.multiple}" if spec.frames else f"multiples of {spec.multiple}"
                raise InvalidInput(f"images: {x.shape[2]} samples; model '{self.name}' takes {hops}")
            return np.ascontiguousarray(x, dtype=np.float32)
        if spec.frames is not None and not spec.frames.accepts(x.shape[2]):
            raise InvalidInput(f"images: {x.shape[2]} frames; model '{self.name}' takes {spec.frames.rule()} frames")
        height, width = x.shape[-2:]
        if spec.fixed_size and (height, width) != (spec.height, spec.width):
            raise InvalidInput(f"images: {width}x{height}; model '{self.name}' takes {spec.width}x{spec.height}")
        if height % spec.multiple or width % spec.multiple:
            raise InvalidInput(
                f"images: {width}x{height}; model '{self.name}' needs sides that are multiples of {spec.multiple}"
            )
        unfit = spec.grid and spec.grid.unfit(height, width)
        if unfit:
            raise InvalidInput(f"images: {width}x{height}: {unfit} of model '{self.name}'")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _label_rows(self, labels: np.ndarray | None, count: int, what: str) -> np.ndarray | None:
        if labels is None or not self.conditional:
            # None for a conditional model, or labels for an unconditional one: label_array says which.
            return self.label_array(None if labels is None else list(labels), count, what)
        classes = len(self.backend.label_names)
        if labels.shape != (count,) or labels.dtype.kind not in "iu":
            raise BadLabel(f"labels: {labels.shape} {labels.dtype}; give one class index per {what} ({count})")
        if count and (labels.min() < 0 or labels.max() >= classes):
            raise BadLabel(f"labels: class indices must be 0-{classes - 1} for model '{self.name}'")
        return np.ascontiguousarray(labels, dtype=np.int64)

    def label_index(self, label: int | str, field: str) -> int:
        """A class given by index, name (exact, then case-insensitive) or index written as text."""
        names = list(self.backend.label_names)
        if isinstance(label, str):
            folded = [name.casefold() for name in names]
            if label in names:
                return names.index(label)
            if label.casefold() in folded:
                return folded.index(label.casefold())
            # isdecimal, not isdigit: int() refuses digits like '²'; and a 5000-digit index is no index.
            if label.strip().isdecimal() and len(label) <= 18:
                label = int(label)
        if isinstance(label, int) and 0 <= label < len(names):
            return label
        raise BadLabel(
            f"{field}: unknown label {reprlib.repr(label)} for model '{self.name}': use a class name "
            f"({', '.join(names)}) or an index 0-{len(names) - 1}"
        )

    def one_label(self, label: int | str | None, field: str = "label") -> int | None:
        """The class index of one label for every image; None when none is given."""
        if label is None:
            return None
        if not self.conditional:
            raise BadLabel(f"{field}: model '{self.name}' is unconditional; leave {field} out")
        return self.label_index(label, field)

    def label_array(self, labels: Sequence[int | str] | None, count: int, what: str) -> np.ndarray | None:
        """Class indices [count] for a conditional model (one label per `what`); None otherwise."""
        if not self.conditional:
            if labels:
                raise BadLabel(f"labels: model '{self.name}' is unconditional; leave labels out")
            return None
        if labels is None:
            raise BadLabel(
                f"labels: model '{self.name}' is conditional: give one label per {what}, a class name or index "
                f"({', '.join(self.backend.label_names)})"
            )
        if len(labels) != count:
            raise BadLabel(f"labels: {len(labels)} labels for {count} {what}s; give one per {what}")
        return np.array([self.label_index(label, f"labels[{i}]") for i, label in enumerate(labels)], dtype=np.int64)

    def latent_array(self, latents: Sequence[Sequence[float]], field: str = "latents") -> np.ndarray:
        """[B, *latent shape] float32, each row checked against the model's latent shape."""
        shape = self.backend.latent_shape()
        if len(shape) == 1 and shape[0] is not None:
            for i, latent in enumerate(latents):
                if len(latent) != shape[0]:
                    raise BadLatentShape(
                        f"{field}[{i}]: has {len(latent)} values; model '{self.name}' has latent_dim {shape[0]}"
                    )
        try:
            z = np.array(latents, dtype=np.float32)
        except ValueError:
            message = f"{field}: rows of different shapes; model '{self.name}' has latents {shape}"
            raise BadLatentShape(message) from None
        if None in shape:
            raise BadLatentShape(
                f"{field}: model '{self.name}' has latents of shape [{', '.join(str(s or '?') for s in shape)}] "
                "(? follows the image size), which JSON does not carry: send them as a binary tensor (docs/api.md)"
            )
        if z.ndim != 1 + len(shape) or any(want not in (None, got) for want, got in zip(shape, z.shape[1:])):
            raise BadLatentShape(f"{field}: latents of shape {list(z.shape[1:])}; model '{self.name}' has {shape}")
        return z


class Registry:
    def __init__(self, models: list[LoadedModel], default: str) -> None:
        self.models = {model.name: model for model in models}
        self.default = default

    def __iter__(self) -> Iterator[LoadedModel]:
        return iter(self.models.values())

    def get(self, name: str | None) -> LoadedModel:
        """The named model, or the default one when `name` is None."""
        model = self.models.get(self.default if name is None else name)
        if model is None:
            # reprlib: a client's 1 MB name is not echoed back whole.
            raise UnknownModel(f"unknown model {reprlib.repr(name)}; available: {', '.join(self.models)}")
        return model


def device_from_setting(setting: str) -> torch.device:
    device = resolve_device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise StartupError(f"VAE_DEVICE={setting}, but CUDA is not available on this machine")
        if (device.index or 0) >= torch.cuda.device_count():
            raise StartupError(f"VAE_DEVICE={setting}, but this machine has {torch.cuda.device_count()} CUDA devices")
    return device


def claimed(path: Path, families: Sequence[Family]) -> tuple[str, Family] | None:
    """The model name and family of `path`: the first family that claims it."""
    for family in families:
        name = family.model_name(path)
        if name is not None:
            return name, family
    return None


def load_registry(
    families: Sequence[Family],
    device: torch.device,
    model_dir: Path,
    checkpoint: Path | None = None,
    default: str | None = None,
) -> Registry:
    """Every model in `model_dir` (or the one `checkpoint`), each loaded by the first family
    that claims it; any problem is a one-line StartupError."""
    if checkpoint is not None:
        found = claimed(checkpoint, families)
        if found is None:
            raise StartupError(f"{checkpoint}: no model family serves this file (VAE_CHECKPOINT, VAE_BACKENDS)")
        paths = [(checkpoint, found)]
    else:
        if not model_dir.is_dir():
            raise StartupError(f"{model_dir}: model folder does not exist (VAE_MODEL_DIR)")
        paths = [(path, found) for path in sorted(model_dir.iterdir()) if (found := claimed(path, families))]
        if not paths:
            raise StartupError(f"{model_dir}: no *.safetensors checkpoints in the model folder (VAE_MODEL_DIR)")
    models = []
    for path, (name, family) in paths:
        loaded = family.load(path, device)
        models.append(LoadedModel(name, loaded.backend, loaded.sha256))
    names = [model.name for model in models]
    if default is not None:
        if default not in names:
            raise StartupError(f"VAE_DEFAULT_MODEL={default!r} is not loaded; loaded: {', '.join(names)}")
    else:
        default = next((m.name for m in models if not m.conditional), names[0])
    for model in models:
        labels = model.backend.label_names
        kind = f"conditional on {len(labels)} classes" if labels else "unconditional"
        family, sha = model.backend.family, model.sha256[:12]
        log.info("loaded model %s (%s, %s, sha256 %s) on %s", model.name, family, kind, sha, device)
    return Registry(models, default)


def device_memory(models: Iterable[LoadedModel]) -> dict[str, tuple[int, int]]:
    """Bytes this process holds in tensors on each CUDA device that serves one of `models`, now
    and at most since it started (torch.cuda.memory_allocated, max_memory_allocated)."""
    devices = sorted({m.backend.device for m in models if m.backend.device.type == "cuda"}, key=str)
    return {str(d): (torch.cuda.memory_allocated(d), torch.cuda.max_memory_allocated(d)) for d in devices}
