"""Every served diffusers audio autoencoder class, in-process: the backend computes what the
class computes in diffusers for waveforms [B, C, samples]."""

from __future__ import annotations

import pytest
import torch

from app.engine.backends.diffusers import DiffusersBackend, DiffusersError, LatentGaussian, load_diffusers
from app.engine.backends.diffusers_classes import AUDIO_CLASSES
from app.engine.passes import Passes
from tests.diffusers_audio_models import SAMPLE_RATE, TINY_AUDIO, save_audio_classes

diffusers = pytest.importorskip("diffusers")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[DiffusersBackend, torch.nn.Module]]:
    models = {}
    for name, folder in save_audio_classes(tmp_path_factory.mktemp("audio")).items():
        backend = load_diffusers(folder, CPU)
        cls = getattr(diffusers, backend.kind)
        models[name] = (backend, cls.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False).eval())
    return models


def test_every_audio_class_has_a_tiny_model() -> None:
    assert {kind for kind, _ in TINY_AUDIO.values()} == set(AUDIO_CLASSES)


@pytest.mark.parametrize("name", list(TINY_AUDIO))
@torch.inference_mode()
def test_encode_and_decode_equal_diffusers(
    loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]], name: str
) -> None:
    backend, model = loaded[name]
    wave = torch.rand(1, 2, 800, generator=torch.Generator().manual_seed(0))  # in [0, 1], as every backend takes
    if backend.spec.encoder == "latents":  # SAME's deterministic latents
        z = backend.encode(wave)
        assert isinstance(z, torch.Tensor) and backend.features == {"encoder", "decoder"}
        assert torch.equal(z, model.encode(wave * 2.0 - 1.0).latents) and z.shape == (1, 8, 800 // 16)
        torch.testing.assert_close(backend.decode(z), model.decode(z).sample * 0.5 + 0.5, rtol=0, atol=1e-5)
        return
    encoded = model.encode(wave * 2.0 - 1.0).latent_dist
    q = backend.encode(wave)
    assert isinstance(q, LatentGaussian)
    assert torch.equal(q.mean, encoded.mean)
    # Oobleck's variance is softplus(scale)^2; the backend's, exp(log of it): equal to rounding.
    torch.testing.assert_close(q.variance, encoded.var, rtol=1e-6, atol=0)
    assert tuple(q.mean.shape) == (1, *backend.latent_shape(1, 800)) == (1, 6, 100)
    decoded = backend.decode(q.mean)
    assert decoded.shape == wave.shape
    torch.testing.assert_close(decoded, model.decode(q.mean).sample * 0.5 + 0.5, rtol=0, atol=1e-5)


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
