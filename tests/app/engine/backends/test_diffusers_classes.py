"""Every served diffusers image autoencoder class, in-process: the backend computes what the
class computes in diffusers, row by row, for its own layout (frames, RGBA), its encoder's
output (posterior, latents, unquantised VQ latents), its decode options (the consistency
decoder's seed and steps), its tiling and the pipeline normalisation of its latents."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from app.engine.backends.diffusers import DiffusersBackend, LatentGaussian, load_diffusers
from app.engine.backends.diffusers_classes import AUDIO_CLASSES, CLASSES, VIDEO_CLASSES
from tests.diffusers_models import TINY, save_every_class

diffusers = pytest.importorskip("diffusers")
CPU = torch.device("cpu")
NAMES = ["tiny-kl", "tiny-taesd", *TINY]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_every_class(tmp_path_factory.mktemp("every-class"))


@pytest.fixture(scope="module")
def loaded(folders: dict[str, Path]) -> dict[str, tuple[DiffusersBackend, torch.nn.Module]]:
    """Each model served, and the same folder loaded by diffusers itself."""
    models = {}
    for name, folder in folders.items():
        backend = load_diffusers(folder, CPU)
        cls = getattr(diffusers, backend.kind)
        models[name] = (backend, cls.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False).eval())
    return models


def images(channels: int, seed: int = 0, height: int = 16, width: int = 24) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (1, channels, height, width), generator=generator) / 255.0).float()


def test_every_class_of_the_table_has_a_tiny_model() -> None:
    built = {"AutoencoderKL", "AutoencoderTiny", *(kind for kind, _ in TINY.values())}
    # The video and audio classes: test_diffusers_video.py, test_diffusers_audio.py.
    assert built == set(CLASSES) - set(VIDEO_CLASSES) - set(AUDIO_CLASSES)


@pytest.mark.parametrize("name", NAMES)
@torch.inference_mode()
def test_encode_and_decode_equal_diffusers(
    loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]], name: str
) -> None:
    backend, model = loaded[name]
    spec = backend.spec
    x = images(backend.image.channels)
    model_x = x * 2.0 - 1.0
    if spec.frames:  # a video-shaped model: one frame
        model_x = model_x[:, :, None]
    encoded = model.encode(model_x)
    q = backend.encode(x)
    if spec.encoder == "posterior":
        assert isinstance(q, LatentGaussian)
        assert torch.equal(q.mean, encoded.latent_dist.mean) and torch.equal(q.variance, encoded.latent_dist.var)
        # diffusers sums the KL over dims 1-3; over a frame axis too, that is the whole latent's.
        torch.testing.assert_close(q.kl(), encoded.latent_dist.kl().reshape(1, -1).sum(1), rtol=1e-6, atol=0)
        z = q.mean
    else:
        assert torch.equal(q, getattr(encoded, spec.encoder))
        z = q
    assert tuple(z.shape) == (1, *backend.latent_shape(16, 24))
    if spec.decode_options:
        expected = model.decode(z, generator=torch.Generator().manual_seed(0), num_inference_steps=2).sample
    else:
        expected = model.decode(z).sample
    if spec.frames:
        expected = expected[:, :, 0]
    decoded = backend.decode(z)
    assert decoded.shape == (1, backend.image.channels, 16, 24)
    torch.testing.assert_close(decoded, expected * 0.5 + 0.5, rtol=0, atol=1e-5)


@torch.inference_mode()
def test_vq_latents_are_unquantised_and_decode_quantises(
    loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]],
) -> None:
    backend, model = loaded["tiny-vq"]
    z = backend.encode(images(3))
    quantised = model.quantize(z)[0]
    assert not torch.equal(z, quantised)
    # The codebook's nearest entries (to the rounding of the quantiser's straight-through z + (z_q - z)).
    torch.testing.assert_close(backend.decode(z), backend.decode(quantised), rtol=0, atol=1e-5)


@torch.inference_mode()
def test_the_consistency_decoder_takes_seed_and_steps_per_row(
    loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]],
) -> None:
    backend, model = loaded["tiny-consistency"]
    z = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(1))
    options = torch.tensor([[7, 2], [8, 2]])
    decoded = backend.decode(z, None, options)
    for i, (seed, steps) in enumerate(options.tolist()):
        generator = torch.Generator().manual_seed(seed)
        expected = model.decode(z[i : i + 1], generator=generator, num_inference_steps=steps).sample
        torch.testing.assert_close(decoded[i : i + 1], expected * 0.5 + 0.5, rtol=0, atol=1e-5)
    assert torch.equal(backend.decode(z, None, options), decoded)  # same seed, same bytes
    assert not torch.equal(backend.decode(z, None, options + torch.tensor([[1, 0]])), decoded)
    assert backend.describe()["decode_options"].keys() == {"seed", "steps"}


@pytest.mark.parametrize(
    "name", ["tiny-dc", "tiny-qwenimage", "tiny-qwenimage21", "tiny-hunyuanimage", "tiny-kvae", "tiny-flux2"]
)
@torch.inference_mode()
def test_large_images_are_tiled_as_diffusers_tiles_them(
    loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]], folders: dict[str, Path], name: str
) -> None:
    backend, model = loaded[name]
    tiled = load_diffusers(folders[name], CPU, tile=16)
    tiled._tiling((32, 32), latent=False)  # the tile sizes the backend sets, given to diffusers' own model
    model.enable_tiling()
    for attribute in vars(tiled.model):
        if attribute.startswith("tile_"):
            setattr(model, attribute, getattr(tiled.model, attribute))
    f = backend.factor
    z = torch.randn(1, *backend.latent_shape(40 * f // 2, 24 * f // 2), generator=torch.Generator().manual_seed(2))
    try:
        expected = model.decode(z).sample
    finally:
        model.disable_tiling()
    if backend.spec.frames:
        expected = expected[:, :, 0]
    torch.testing.assert_close(tiled.decode(z), expected * 0.5 + 0.5, rtol=0, atol=1e-5)
    assert tiled.model.use_tiling  # 20 latent rows of factor 2 are 40 pixels, over the 16-pixel tile


def test_rgba_uploads_for_a_four_channel_model(loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]]) -> None:
    from PIL import Image

    backend, _ = loaded["tiny-qwenimage21"]
    pixels = np.random.default_rng(0).integers(0, 256, (4, 6, 4), dtype=np.uint8)
    x = backend.to_input(Image.fromarray(pixels, "RGBA"))
    assert x.shape == (4, 4, 6) and np.array_equal(x, pixels.transpose(2, 0, 1) / np.float32(255))
    assert backend.to_input(Image.fromarray(pixels[..., :3])).shape == (4, 4, 6)  # RGB: opaque alpha


def test_what_models_report(loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]]) -> None:
    facts = {name: backend.describe() for name, (backend, _) in loaded.items()}
    assert (
        facts["tiny-qwenimage"]["latent_layout"] == "[B, 4, 1, h, w]" and facts["tiny-qwenimage"]["downsampling"] == 4
    )
    assert facts["tiny-qwenimage21"]["image_channels"] == 4
    assert facts["tiny-dc"]["stochastic_encoder"] is False and facts["tiny-kvae"]["stochastic_encoder"] is True
    assert facts["tiny-dc"]["scaling_factor"] == pytest.approx(0.41407) and facts["tiny-vq"]["tile"] is None
    assert loaded["tiny-dc"][0].features == {"encoder", "decoder"}
    assert loaded["tiny-flux2"][0].features == {"encoder", "decoder", "prior", "posterior"}


@torch.inference_mode()
def test_a_bfloat16_model_takes_and_gives_float32(loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]]) -> None:
    # The bfloat16 path a GPU takes for Qwen-Image, run on the CPU: inputs cast to the model's
    # dtype, images back as float32, within bfloat16's precision of the float32 model's.
    full, reference = loaded["tiny-qwenimage"]
    half = DiffusersBackend(copy.deepcopy(reference).to(torch.bfloat16))
    x = images(3)
    q = half.encode(x)
    assert q.mean.dtype == torch.bfloat16
    torch.testing.assert_close(q.mean.float(), full.encode(x).mean, rtol=0, atol=5e-2)
    decoded = half.decode(full.encode(x).mean)
    assert decoded.dtype == torch.float32
    torch.testing.assert_close(decoded, full.decode(full.encode(x).mean), rtol=0, atol=5e-2)
