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


class TensorImages(torch.utils.data.Dataset):
    """Images [N, C, H, W] and labels [N] held in memory; a batch is one indexing operation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch (the DataLoader calls this when it exists; `batch_as_is` collates)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]

    def subset(self, indices: torch.Tensor) -> TensorImages:
        return TensorImages(self.images[indices], self.labels[indices])


class ImageFiles(torch.utils.data.Dataset):
    """Image files read and converted with `image_to_tensor` only when a batch asks for them,
    so a folder larger than memory streams through the DataLoader's worker processes."""

    def __init__(self, files: list[Path], labels: list[int], config: VAEConfig) -> None:
        self.files, self.labels, self.config = files, labels, config

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        file = self.files[index]
        try:
            with Image.open(file) as image:
                return image_to_tensor(image, self.config), torch.tensor(self.labels[index])
        except (OSError, Image.DecompressionBombError) as e:
            raise DataError(f"{file}: not a readable image: {e}") from e

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if not indices:  # an empty split: the shape still says what an image is
            config = self.config
            return torch.empty(0, config.channels, config.height, config.width), torch.empty(0, dtype=torch.long)
        images, labels = zip(*(self[i] for i in indices))
        return torch.stack(images), torch.stack(labels)

    def subset(self, indices: torch.Tensor) -> ImageFiles:
        return ImageFiles([self.files[i] for i in indices], [self.labels[i] for i in indices], self.config)


def batch_as_is(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The DataLoader's collate_fn for datasets whose `__getitems__` already returns a batch."""
    return batch


def image_folder(root: str | Path, config: VAEConfig) -> tuple[ImageFiles, list[str]]:
    """The images under `root`, optionally one subfolder per class, as a dataset that reads
    each file when asked (labels all 0 without subfolders), and the class names (empty
    without subfolders). Only the file names are read here."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    groups = [(i, root / name) for i, name in enumerate(classes)] or [(0, root)]
    files, labels = [], []
    for label, folder in groups:
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                files.append(file)
                labels.append(label)
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    return ImageFiles(files, labels, config), classes


def load_image_folder(root: str | Path, config: VAEConfig) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every image of `image_folder(root, config)` in memory: images [N, C, H, W], labels [N]
    and the class names."""
    files, classes = image_folder(root, config)
    images, labels = files.__getitems__(list(range(len(files))))
    return images, labels, classes
