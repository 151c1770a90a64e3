import gzip
import io
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model import VAEConfig
from model.data import (
    DataError,
    image_folder,
    image_to_array,
    image_to_tensor,
    load_fashion_mnist,
    load_image_folder,
    read_idx,
)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trip(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)


def test_read_idx_rejects_short_data(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x01\x02")
    with pytest.raises(DataError, match="promises 10 bytes"):
        read_idx(tmp_path / "bad")


def test_load_fashion_mnist_from_tiny_files(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 2, 3]))
    x, y = load_fashion_mnist("test", tmp_path)
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x[1, 0], torch.tensor(images[1] / 255.0, dtype=torch.float32))
    assert y.tolist() == [1, 2, 3]


def test_missing_data_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path)


def test_image_to_tensor_fits_and_pads() -> None:
    image = Image.new("RGB", (56, 28), (255, 255, 255))  # 2:1 white image
    x = image_to_tensor(image, VAEConfig())
    assert x.shape == (1, 28, 28)
    assert x[0, 14, 14] == pytest.approx(1.0) and x[0, 0, 14] == 0.0  # centred, black bars above


def test_image_to_tensor_composites_alpha_on_black() -> None:
    image = Image.new("RGBA", (28, 28), (255, 255, 255, 0))
    assert image_to_tensor(image, VAEConfig()).max() == 0.0


def test_image_to_tensor_rgb_model() -> None:
    image = Image.new("RGB", (8, 8), (255, 0, 0))
    x = image_to_tensor(image, VAEConfig(channels=3, height=8, width=8))
    assert x.shape == (3, 8, 8) and x[0].min() == pytest.approx(1.0) and x[1].max() == 0.0


def test_image_to_array_is_the_same_conversion_as_a_contiguous_float32_array() -> None:
    # The service converts uploads with image_to_array, training with image_to_tensor.
    image = Image.new("RGB", (5, 9), (30, 200, 90))
    array = image_to_array(image, VAEConfig(channels=3, height=8, width=8))
    assert array.dtype == np.float32 and array.flags.c_contiguous and array.shape == (3, 8, 8)
    assert np.array_equal(array, image_to_tensor(image, VAEConfig(channels=3, height=8, width=8)).numpy())


def test_load_image_folder_with_classes(tmp_path: Path) -> None:
    for name, shade in (("cats", 40), ("dogs", 200)):
        (tmp_path / name).mkdir()
        for i in range(2):
            buf = io.BytesIO()
            Image.new("L", (32, 32), shade).save(buf, "PNG")
            (tmp_path / name / f"{i}.png").write_bytes(buf.getvalue())
    (tmp_path / "cats" / "notes.txt").write_text("ignored")
    x, y, classes = load_image_folder(tmp_path, VAEConfig())
    assert x.shape == (4, 1, 28, 28) and y.tolist() == [0, 0, 1, 1] and classes == ["cats", "dogs"]
    assert x[2].mean().item() == pytest.approx(200 / 255, abs=0.01)


def test_load_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no images"):
        load_image_folder(tmp_path, VAEConfig())
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        load_image_folder(tmp_path, VAEConfig())


def test_image_folder_reads_each_file_only_when_asked(tmp_path: Path) -> None:
    for name, shade in (("a", 40), ("b", 200)):
        (tmp_path / name).mkdir()
        Image.new("L", (32, 32), shade).save(tmp_path / name / "0.png")
    files, classes = image_folder(tmp_path, VAEConfig())
    (tmp_path / "a" / "0.png").write_bytes(b"broken after listing")
    x, y = files.__getitems__([1])
    assert classes == ["a", "b"] and len(files) == 2 and x.shape == (1, 1, 28, 28) and y.tolist() == [1]
    assert x.mean().item() == pytest.approx(200 / 255, abs=0.01)
    with pytest.raises(DataError, match="0.png: not a readable image"):
        files[0]
