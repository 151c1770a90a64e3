"""The diffusers backend computes what diffusers computes, in-process, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.engine.backends.diffusers import DiffusersError, LatentGaussian, load_diffusers, read_config
from tests.diffusers_models import save_autoencoders

diffusers = pytest.importorskip("diffusers")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_autoencoders(tmp_path_factory.mktemp("diffusers"))


def reference(folder: Path) -> torch.nn.Module:
    config = read_config(folder)
    return getattr(diffusers, config["_class_name"]).from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False).eval()


def images(seed: int, height: int = 16, width: int = 24) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (2, 3, height, width), generator=generator) / 255.0).float()


@torch.inference_mode()
def test_kl_encode_and_decode_equal_diffusers(folders: dict[str, Path]) -> None:
    backend, model = load_diffusers(folders["tiny-kl"], CPU), reference(folders["tiny-kl"])
    x = images(0)
    q = backend.encode(x)
    expected = model.encode(x * 2.0 - 1.0).latent_dist
    assert isinstance(q, LatentGaussian)
    assert torch.equal(q.mean, expected.mean) and torch.equal(q.variance, expected.var)
    assert torch.equal(q.kl(), expected.kl())
    assert torch.equal(q.sample(torch.Generator().manual_seed(3)), expected.sample(torch.Generator().manual_seed(3)))
    decoded = backend.decode(q.mean)
    assert decoded.shape == (2, 3, 16, 24)
    assert torch.equal(decoded, model.decode(expected.mean).sample * 0.5 + 0.5)
    assert backend.factor == 2 and backend.describe()["shift_factor"] == 0.25


@torch.inference_mode()
def test_tiny_encode_and_decode_equal_diffusers(folders: dict[str, Path]) -> None:
    backend, model = load_diffusers(folders["tiny-taesd"], CPU), reference(folders["tiny-taesd"])
    x = images(1)
    z = backend.encode(x)
    assert torch.equal(z, model.encode(x * 2.0 - 1.0).latents)
    assert torch.equal(backend.decode(z), model.decode(z).sample * 0.5 + 0.5)


@torch.inference_mode()
def test_large_images_are_tiled_as_diffusers_tiles_them(folders: dict[str, Path]) -> None:
    backend, model = load_diffusers(folders["tiny-kl"], CPU, tile=16), reference(folders["tiny-kl"])
    model.enable_tiling()
    model.tile_sample_min_size, model.tile_latent_min_size = 16, 8
    z = torch.randn(1, 4, 20, 12, generator=torch.Generator().manual_seed(2))
    assert torch.equal(backend.decode(z), model.decode(z).sample * 0.5 + 0.5)
    model.disable_tiling()
    small = z[..., :8, :8]  # within one tile: not tiled
    assert torch.equal(backend.decode(small), model.decode(small).sample * 0.5 + 0.5)


def test_uploads_must_fit_the_downsampling(folders: dict[str, Path]) -> None:
    backend = load_diffusers(folders["tiny-kl"], CPU)
    pixels = np.random.default_rng(0).integers(0, 256, (6, 4, 3), dtype=np.uint8)
    x = backend.to_input(Image.fromarray(pixels))
    assert x.shape == (3, 6, 4) and np.array_equal(x, pixels.transpose(2, 0, 1) / np.float32(255))
    with pytest.raises(DiffusersError, match="4x5; this model needs sides that are multiples of 2"):
        backend.to_input(Image.fromarray(pixels[:5]))


def test_folders_that_are_no_autoencoder_say_why(tmp_path: Path) -> None:
    with pytest.raises(DiffusersError, match="no config.json"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(DiffusersError, match="_class_name is 'UNet2DModel'; served classes: AutoencoderKL"):
        read_config(tmp_path)
