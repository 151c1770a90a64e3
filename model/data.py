"""Data: Fashion-MNIST's gzipped IDX files, users' image folders, and image conversion.

Every image, in training and in the service, goes through `image_to_array`, so the model
always sees inputs prepared the same way.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from model.vae import VAEConfig

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "VAE_FASHION_MNIST_DIR"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# The test set is binarised once with this seed, so every evaluation sees the same bits.
TEST_BINARIZATION_SEED = 1234
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(ValueError):
    """Data that cannot be read; the message says what is wrong and how to fix it."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{path}: IDX header promises {expected} bytes of data, file has {len(data) - header}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def fashion_mnist_dir(root: str | Path | None = None) -> Path:
    """The data folder: the argument, else $VAE_FASHION_MNIST_DIR, else Debian's location."""
    return Path(root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)


def load_fashion_mnist(split: str, root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float [N, 1, 28, 28] in [0, 1] and labels as long [N]."""
    folder = fashion_mnist_dir(root)
    image_file, label_file = (folder / name for name in FASHION_MNIST_FILES[split])
    for file in (image_file, label_file):
        if not file.is_file():
            raise DataError(
                f"Fashion-MNIST not found at {file}: run `apt-get install dataset-fashion-mnist` "
                f"or point --data-dir / ${FASHION_MNIST_ENV} at the folder with the IDX files"
            )
    images = torch.from_numpy(read_idx(image_file).copy()).unsqueeze(1).float() / 255.0
    labels = torch.from_numpy(read_idx(label_file).astype(np.int64))
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


def binarize(images: torch.Tensor, seed: int) -> torch.Tensor:
    """One fixed Bernoulli draw per pixel (the 'dynamically binarised' protocol's test set)."""
    return torch.bernoulli(images, generator=torch.Generator().manual_seed(seed))


def image_to_array(image: Image.Image, config: VAEConfig) -> np.ndarray:
    """Convert any PIL image to the model's input: float32 [C, H, W] in [0, 1].

    The first frame is taken, EXIF orientation applied, transparency composited onto black
    (Fashion-MNIST's background), colour converted to grey (C = 1) or RGB (C = 3), the image
    fitted inside H x W keeping its aspect ratio (Lanczos) and centred on black padding.
    """
    image.seek(0)
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits first
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray((array * (255.0 / peak)).clip(0, 255).astype(np.uint8), mode="L")
    image = image.convert("RGBA")
    background = Image.new("RGBA", image.size, (0, 0, 0, 255))
    image = Image.alpha_composite(background, image).convert("L" if config.channels == 1 else "RGB")
    image = ImageOps.pad(image, (config.width, config.height), method=Image.Resampling.LANCZOS, color=0)
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = array.reshape(config.height, config.width, -1).transpose(2, 0, 1)
    if array.shape[0] != config.channels:
        raise DataError(f"cannot convert an image to {config.channels} channels")
    return np.ascontiguousarray(array)


def image_to_tensor(image: Image.Image, config: VAEConfig) -> torch.Tensor:
    """`image_to_array` as a tensor."""
    return torch.from_numpy(image_to_array(image, config))


def load_image_folder(root: str | Path, config: VAEConfig) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images under `root`, optionally one subfolder per class, converted with `image_to_array`.

    Returns images [N, C, H, W], labels [N] (all 0 without subfolders) and class names
    (empty without subfolders).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    groups = [(i, root / name) for i, name in enumerate(classes)] or [(0, root)]
    images, labels = [], []
    for label, folder in groups:
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as image:
                    images.append(image_to_tensor(image, config))
            except (OSError, Image.DecompressionBombError) as e:
                raise DataError(f"{file}: not a readable image: {e}") from e
            labels.append(label)
    if not images:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    return torch.stack(images), torch.tensor(labels), classes
