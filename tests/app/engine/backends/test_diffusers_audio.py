"""Every served diffusers audio autoencoder class, in-process: the backend computes what the
class computes in diffusers for waveforms [B, C, samples]."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.engine.backends.diffusers import DiffusersBackend, DiffusersError, LatentGaussian, load_diffusers
from app.engine.backends.diffusers_classes import AUDIO_CLASSES
from app.engine.passes import Passes
from tests.diffusers_audio_models import (
    DECODE_ONLY,
    ENCODE,
    SAMPLE_RATE,
    TINY_AUDIO,
    build_audio,
    in_diffusers_decode,
    save_audio_classes,
)
from tests.diffusers_models import build

diffusers = pytest.importorskip("diffusers")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[DiffusersBackend, torch.nn.Module]]:
    """Each tiny model served, and the model it was saved from (the reference: built, not reloaded)."""
    models = {}
    for name, folder in save_audio_classes(tmp_path_factory.mktemp("audio")).items():
        models[name] = (load_diffusers(folder, CPU), build_audio(name))
    return models


def test_every_audio_class_has_a_tiny_model() -> None:
    assert {kind for kind, _ in TINY_AUDIO.values()} == set(AUDIO_CLASSES) == set(ENCODE) | DECODE_ONLY


@pytest.mark.parametrize("name", [name for name, (kind, _) in TINY_AUDIO.items() if kind in ENCODE])
@torch.inference_mode()
def test_encode_and_decode_equal_diffusers(
    loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]], name: str
) -> None:
    backend, model = loaded[name]
    kind, channels = backend.kind, backend.image.channels
    steps = 25
    wave = torch.rand(2, channels, steps * backend.factor, generator=torch.Generator().manual_seed(0))  # in [0, 1]
    wave[1] = 0.5 + 0.25 * (wave[1] - 0.5)  # quieter: a class that normalises over the batch would show it
    mean, variance = ENCODE[kind](model, wave * 2.0 - 1.0)
    encoded = backend.encode(wave)
    if variance is None:  # a deterministic encoder's latents
        assert isinstance(encoded, torch.Tensor) and backend.features == {"encoder", "decoder"}
        z = encoded
    else:
        assert isinstance(encoded, LatentGaussian) and "posterior" in backend.features
        z = encoded.mean
        # The backend keeps log variances: exp of them equals the class's variance to rounding.
        torch.testing.assert_close(encoded.variance, variance, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(z, mean, rtol=0, atol=1e-5)
    assert tuple(z.shape) == (2, *backend.latent_shape(1, wave.shape[-1])) == (2, backend.latent_channels, steps)
    decoded = backend.decode(z)
    expected = in_diffusers_decode(model, z)
    assert decoded.shape == wave.shape
    torch.testing.assert_close(decoded, expected * 0.5 + 0.5, rtol=0, atol=1e-5)


@torch.inference_mode()
def test_ltx2_audio_decodes_through_its_vocoder_and_does_not_encode(
    loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]],
) -> None:
    """Latents [B, 4, l, 16 / 4]; l steps decode causally to 1 + 4(l - 1) mel frames of 4 samples."""
    backend, model = loaded["tiny-ltx2-audio"]
    assert backend.features == {"decoder", "prior"}  # its encoder takes a mel diffusers cannot make
    assert backend.latent_shape() == (4, None, 4) and backend.image.multiple == 4
    z = torch.randn(2, 4, 6, 4, generator=torch.Generator().manual_seed(3))
    decoded = backend.decode(z)
    assert decoded.shape == (2, 2, (1 + 4 * 5) * 4)
    torch.testing.assert_close(decoded, in_diffusers_decode(model, z) * 0.5 + 0.5, rtol=0, atol=1e-5)
    assert backend.latent_shape(1, 84) == (4, 6, 4)  # 21 mel frames: 1 + 4 * 5
    spec = backend.image  # `sample` makes about a second: 1 + 4k mel frames
    assert spec.frames is not None and spec.width == spec.frames.native * 4 and spec.frames.accepts(spec.width // 4)
    assert backend.describe()["latent_layout"] == "[B, 4, l, 4]" and backend.describe()["frames"] is None


def test_what_an_audio_model_reports(loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]]) -> None:
    backend, _ = loaded["tiny-oobleck"]
    spec = backend.image
    assert spec.media == "audio" and spec.sample_rate == SAMPLE_RATE and spec.multiple == 8
    assert spec.item(spec.height, spec.width) == (2, SAMPLE_RATE)  # about one second: what `sample` makes
    facts = backend.describe()
    assert facts["latent_layout"] == "[B, 6, samples / 8]" and facts["sample_rate"] == SAMPLE_RATE
    assert backend.latent_shape() == (6, None)
    with pytest.raises(DiffusersError, match="encodes audio, not images"):
        from PIL import Image

        backend.to_input(Image.new("RGB", (8, 8)))


@torch.inference_mode()
def test_passes_calibrate_and_sample_on_audio(loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]]) -> None:
    backend, _ = loaded["tiny-oobleck"]
    passes = Passes(backend, max_rows=1)
    passes.calibrate()
    z = backend.prior(1, torch.Generator().manual_seed(0))
    assert z.shape == (1, 6, SAMPLE_RATE // 8)
    assert passes.decode(z, None).shape == (1, 2, SAMPLE_RATE)
    # LTX-2's: about a second of 1 + 4k mel frames of 4 samples (4000 hops: 3997 = 1 + 4 * 999).
    backend, _ = loaded["tiny-ltx2-audio"]
    passes = Passes(backend, max_rows=1)
    passes.calibrate()
    z = backend.prior(1, torch.Generator().manual_seed(0))
    assert z.shape == (1, 4, 1000, 4)
    assert passes.decode(z, None).shape == (1, 2, 3997 * 4) == (1, *backend.image.item(1, backend.image.width))


def test_decoder_only_weights_decode_and_do_not_encode(tmp_path: Path) -> None:
    """Cosmos3's sound tokenizer saved without its encoder (its decoder-only checkpoints): diffusers
    drops the encoder at load, and so does the model's list of what it can do."""
    model = build(*TINY_AUDIO["tiny-cosmos3-audio"])
    model.save_pretrained(tmp_path / "decoder-only")
    weights = tmp_path / "decoder-only" / "diffusion_pytorch_model.safetensors"
    save_file({k: v for k, v in load_file(weights).items() if not k.startswith("encoder.")}, weights)
    backend = load_diffusers(tmp_path / "decoder-only", CPU)
    assert backend.features == {"decoder", "prior"}
    z = torch.randn(1, 4, 10, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        torch.testing.assert_close(backend.decode(z), model.decode(z) * 0.5 + 0.5, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        (
            "tiny-kvae-audio",
            {"decoder_rates": [2, 4]},
            "its decoder_rates upsample by 8, its encoder_rates downsample by 4",
        ),
        (
            "tiny-longcat",
            {"downsampling_ratio": 2},
            "its downsampling_ratio (2), which its pipeline uses, is not the encoder's strides' product (4)",
        ),
    ],
)
def test_configs_whose_hop_is_not_one_are_refused(
    tmp_path: Path, name: str, change: dict[str, object], message: str
) -> None:
    kind, config = TINY_AUDIO[name]
    build(kind, {**config, **change}).save_pretrained(tmp_path / name)
    with pytest.raises(DiffusersError, match="this .* is not served: ") as error:
        load_diffusers(tmp_path / name, CPU)
    assert str(error.value).endswith(message)
