"""Every served diffusers audio autoencoder class, in-process: the backend computes what the
class computes in diffusers for waveforms [B, C, samples]."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from app.engine.backends.diffusers import DiffusersBackend, DiffusersError, LatentGaussian, load_diffusers
from app.engine.backends.diffusers_classes import AUDIO_CLASSES
from app.engine.passes import Passes
from tests.diffusers_audio_models import SAMPLE_RATE, TINY_AUDIO, TINY_VOCODERS, save_audio_classes
from tests.diffusers_models import build

diffusers = pytest.importorskip("diffusers")
CPU = torch.device("cpu")


# How each class is called in diffusers (its docs and pipelines), waveforms in [-1, 1]: encode ->
# (latents or the posterior's mean, the posterior's variance or None); decode -> waveforms.
Encoded = tuple[torch.Tensor, torch.Tensor | None]


def posterior(q: object) -> Encoded:
    return q.mean, q.var  # type: ignore[attr-defined]


ENCODE: dict[str, Callable[[torch.nn.Module, torch.Tensor], Encoded]] = {
    "AutoencoderOobleck": lambda model, x: posterior(model.encode(x).latent_dist),
    "AutoencoderSAME": lambda model, x: (model.encode(x).latents, None),
    "AutoencoderKLKVAEAudio": lambda model, x: posterior(model.encode(x).latent_dist),
    # Mean and log standard deviation (`logs`), no `var`.
    "AutoencoderKLMiniMaxH3Audio": lambda model, x: (model.encode(x).latent_dist.mean, model.encode(x).latent_dist.std ** 2),
    "LongCatAudioDiTVae": lambda model, x: (model.encode(x, sample_posterior=False).latents, None),
    # Its volume normalisation is over the whole batch: each row alone is what a row should get.
    "Cosmos3AVAEAudioTokenizer": lambda model, x: tuple(  # type: ignore[return-value]
        torch.cat(part) for part in zip(*(posterior(model.encode(row).latent_dist) for row in x.split(1)))
    ),
    "MMAudioVAE": lambda model, x: posterior(model.encode(x[:, 0]).latent_dist),  # mono [B, samples]
}
DECODE: dict[str, Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]] = {
    "Cosmos3AVAEAudioTokenizer": lambda model, z: model.decode(z),  # the tensor itself
}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[DiffusersBackend, torch.nn.Module]]:
    """Each tiny model served, and the model it was saved from (the reference: built, not reloaded)."""
    models = {}
    for name, folder in save_audio_classes(tmp_path_factory.mktemp("audio")).items():
        models[name] = (load_diffusers(folder, CPU), build(*TINY_AUDIO[name]))
    return models


def test_every_audio_class_has_a_tiny_model() -> None:
    assert {kind for kind, _ in TINY_AUDIO.values()} == set(AUDIO_CLASSES) == set(ENCODE)


@pytest.mark.parametrize("name", list(TINY_AUDIO))
@torch.inference_mode()
def test_encode_and_decode_equal_diffusers(
    loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]], name: str
) -> None:
    backend, model = loaded[name]
    kind, channels = backend.kind, backend.image.channels
    steps = 25
    wave = torch.rand(2, channels, steps * backend.factor, generator=torch.Generator().manual_seed(0))  # in [0, 1]
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
    expected = DECODE.get(kind, lambda model, z: model.decode(z).sample)(model, z)
    if backend.vocoder is not None:
        vocoder = build(*TINY_VOCODERS[name])
        assert expected.shape[1] == vocoder.config.num_mels  # a mel spectrogram, which its vocoder makes a waveform
        expected = vocoder(expected).sample
    assert decoded.shape == wave.shape
    torch.testing.assert_close(decoded, expected * 0.5 + 0.5, rtol=0, atol=1e-5)


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
