"""Every served diffusers audio autoencoder class over HTTP: a WAV file decoded that reads back
(soundfile) with the model's rate, channels and length and the samples the class gives in
diffusers (to 16-bit rounding), a waveform tensor encoded; the tiny Oobleck in depth: WAV and
FLAC, float32 waveform tensors within 1e-5, uploads, and clear refusals."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.diffusers_audio_models import (
    DECODE_ONLY,
    ENCODE,
    SAMPLE_RATE,
    TINY_AUDIO,
    build_audio,
    in_diffusers_decode,
    save_audio_classes,
)
from tests.diffusers_models import served

diffusers = pytest.importorskip("diffusers")
soundfile = pytest.importorskip("soundfile")  # the media extra
soxr = pytest.importorskip("soxr")
LATENT_STEPS = 100  # of 8 samples: 800 samples, stereo


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Path]]]:
    """A real server of every tiny audio model, and their folders; and MMAudio's without its vocoder."""
    folders = save_audio_classes(tmp_path_factory.mktemp("audio"))
    alone = folders["tiny-mmaudio"].parent / "mmaudio-alone"
    shutil.copytree(folders["tiny-mmaudio"], alone, ignore=shutil.ignore_patterns("vocoder"))
    with served(folders["tiny-oobleck"].parent, tmp_path_factory.mktemp("logs")) as replica:
        yield replica.url, folders


@pytest.fixture(scope="module")
def model(server: tuple[str, dict[str, Path]]) -> tuple[str, torch.nn.Module]:
    """The server, and the tiny Oobleck's folder loaded by diffusers itself."""
    url, folders = server
    reference = diffusers.AutoencoderOobleck.from_pretrained(
        folders["tiny-oobleck"], local_files_only=True, low_cpu_mem_usage=False
    )
    return url, reference.eval()


# Every class's tiny model: (channels, samples per latent step, latent channels), from its config.
SHAPES = {
    "tiny-oobleck": (2, 8, 6),
    "tiny-same": (2, 16, 8),
    "tiny-kvae-audio": (1, 4, 4),
    "tiny-minimax-audio": (1, 4, 8),
    "tiny-longcat": (1, 4, 8),
    "tiny-cosmos3-audio": (2, 4, 4),
    "tiny-mmaudio": (1, 32, 4),  # mel frames of 16 samples, 2 per latent step
    "tiny-ltx2-audio": (2, 4, 4),  # per mel frame: l latent steps make 1 + 4(l - 1) of them
}


def decoded(name: str, steps: int) -> tuple[tuple[int, ...], int]:
    """The shape of `steps` latent steps of model `name`, and the samples they decode to."""
    _, hop, latent_channels = SHAPES[name]
    if name == "tiny-ltx2-audio":  # latents [B, C, l, 16 mel bins / 4], decoded causally
        return (1, latent_channels, steps, 4), (1 + 4 * (steps - 1)) * hop
    return (1, latent_channels, steps), steps * hop


def test_every_audio_class_is_served() -> None:
    assert set(SHAPES) == set(TINY_AUDIO)


@pytest.mark.parametrize("name", list(SHAPES))
def test_every_class_decodes_to_a_wav_and_encodes_a_waveform(server: tuple[str, dict[str, Path]], name: str) -> None:
    """WAV read back with the model's rate, channels and length, its samples those of the class in
    diffusers (16-bit rounding); a waveform tensor encodes to the class's latents within 1e-5 (LTX-2's
    audio, which diffusers cannot encode from a waveform: a 422)."""
    url, _ = server
    channels, _, latent_channels = SHAPES[name]
    reference = build_audio(name)
    shape, length = decoded(name, 30)
    z = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    answer = httpx.post(
        f"{url}/v1/models/{name}/decode", params={"shape": list(z.shape), "output_type": "wav"}, content=z.tobytes()
    )
    assert answer.status_code == 200 and answer.headers["content-type"] == "audio/wav", answer.text
    samples, rate = soundfile.read(io.BytesIO(answer.content), dtype="float32", always_2d=True)
    assert rate == SAMPLE_RATE and samples.shape == (length, channels)
    with torch.inference_mode():
        expected = in_diffusers_decode(reference, torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(samples, np.clip(expected[0].T, -1, 1), rtol=0, atol=1.5 / 2**15)

    wave = np.random.default_rng(5).uniform(-1, 1, (1, channels, decoded(name, 20)[1])).astype(np.float32)
    answer = httpx.post(f"{url}/v1/models/{name}/encode", params={"shape": list(wave.shape)}, content=wave.tobytes())
    if TINY_AUDIO[name][0] in DECODE_ONLY:
        assert answer.status_code == 422 and "cannot encode: it has no encoder" in answer.json()["detail"]
        return
    assert answer.status_code == 200, answer.text
    latents = np.frombuffer(answer.content, np.float32).reshape(json.loads(answer.headers["shape"]))
    with torch.inference_mode():
        mean, _ = ENCODE[TINY_AUDIO[name][0]](reference, torch.from_numpy(wave))
    assert latents.shape == (1, latent_channels, 20)
    np.testing.assert_allclose(latents, mean.numpy(), rtol=0, atol=1e-5)


def test_a_mel_class_without_its_vocoder_encodes_and_says_why_it_cannot_decode(
    server: tuple[str, dict[str, Path]],
) -> None:
    url, _ = server
    listed = httpx.get(f"{url}/v1/models/mmaudio-alone").json()
    assert listed["capabilities"] == ["encode"]
    z = np.zeros((1, 4, 10), np.float32)
    for output_type in ("wav", "pt"):
        query = {"shape": [1, 4, 10], "output_type": output_type}
        answer = httpx.post(f"{url}/v1/models/mmaudio-alone/decode", params=query, content=z.tobytes())
        assert answer.status_code == 422 and answer.json()["detail"].startswith(
            "model 'mmaudio-alone' cannot decode: it has no decoder (its mel spectrogram needs the MMAudioVocoder "
            "to become a waveform, and its folder has none: serve its pipeline folder (with its vocoder component), "
            "or put the vocoder's save_pretrained folder in vocoder/ inside the VAE's)"
        )
    assert httpx.post(f"{url}/v1/sample", json={"model": "mmaudio-alone"}).status_code == 422
    wave = np.random.default_rng(6).uniform(-1, 1, (1, 1, 20 * 32)).astype(np.float32)
    answer = httpx.post(f"{url}/v1/models/mmaudio-alone/encode", params={"shape": [1, 1, 640]}, content=wave.tobytes())
    assert answer.status_code == 200 and json.loads(answer.headers["shape"]) == [1, 4, 20]
    same = httpx.post(f"{url}/v1/models/tiny-mmaudio/encode", params={"shape": [1, 1, 640]}, content=wave.tobytes())
    assert answer.content == same.content  # the encoder needs no vocoder


def latents(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 6, LATENT_STEPS)).astype(np.float32)


def in_process(reference: torch.nn.Module, z: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return reference.decode(torch.from_numpy(z)).sample.numpy()  # [B, C, samples] in [-1, 1]


def decode(url: str, z: np.ndarray, **query: object) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/models/tiny-oobleck/decode", params={"shape": list(z.shape), **query}, content=z.tobytes()
    )


@pytest.mark.parametrize("audio_format", ["wav", "flac"])
def test_a_file_reads_back_with_the_models_rate_channels_and_length(
    model: tuple[str, torch.nn.Module], audio_format: str
) -> None:
    url, reference = model
    z = latents()
    answer = decode(url, z, output_type=audio_format)
    assert answer.status_code == 200 and answer.headers["content-type"] == f"audio/{audio_format}"
    samples, rate = soundfile.read(io.BytesIO(answer.content), dtype="float32")
    info = soundfile.info(io.BytesIO(answer.content))
    assert rate == SAMPLE_RATE and info.channels == 2 and info.frames == LATENT_STEPS * 8
    assert info.subtype == "PCM_16"
    expected = np.clip(in_process(reference, z)[0].T, -1, 1)
    np.testing.assert_allclose(samples, expected, rtol=0, atol=1.5 / 2**15)  # 16-bit rounding


def test_a_tensor_equals_diffusers(model: tuple[str, torch.nn.Module]) -> None:
    url, reference = model
    z = np.concatenate([latents(1), latents(2)])
    answer = decode(url, z, output_type="pt")
    assert answer.status_code == 200 and json.loads(answer.headers["shape"]) == [2, 2, LATENT_STEPS * 8]
    waves = np.frombuffer(answer.content, np.float32).reshape(2, 2, -1)
    np.testing.assert_allclose(waves, in_process(reference, z), rtol=0, atol=1e-5)


def test_encode_a_waveform_equals_diffusers(model: tuple[str, torch.nn.Module]) -> None:
    url, reference = model
    wave = np.random.default_rng(3).uniform(-1, 1, (1, 2, 400)).astype(np.float32)
    answer = httpx.post(f"{url}/v1/models/tiny-oobleck/encode", params={"shape": [1, 2, 400]}, content=wave.tobytes())
    assert answer.status_code == 200, answer.text
    z = np.frombuffer(answer.content, np.float32).reshape(json.loads(answer.headers["shape"]))
    with torch.inference_mode():
        expected = reference.encode(torch.from_numpy(wave)).latent_dist.mean.numpy()
    assert z.shape == (1, 6, 50)
    np.testing.assert_allclose(z, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-mmaudio", "tiny-minimax-audio"])
def test_a_stereo_file_encodes_as_its_mono_mix_on_a_mono_class(server: tuple[str, dict[str, Path]], name: str) -> None:
    """MMAudio (whose encode takes [B, samples] and computes its own mel) and MiniMax H3 audio."""
    url, _ = server
    data = audio_file(tone(640))
    answer = httpx.post(f"{url}/v1/models/{name}/encode", content=data)
    assert answer.status_code == 200, answer.text
    z = np.frombuffer(answer.content, np.float32).reshape(json.loads(answer.headers["shape"]))
    samples, _ = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    with torch.inference_mode():
        mean, _ = ENCODE[TINY_AUDIO[name][0]](build_audio(name), torch.from_numpy(samples.mean(axis=1))[None, None])
    assert z.shape == mean.shape == (1, TINY_AUDIO[name][1]["latent_channels"], 640 // SHAPES[name][1])
    np.testing.assert_allclose(z, mean.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([4, 30], "takes latents [B, 4, l, 4]; got [4, 30]"),
        ([1, 4, 30], "does not fit model 'tiny-ltx2-audio', whose latents are [4, 4, 4]"),  # read as [C, l, M]
        ([1, 4, 30, 5], "does not fit model 'tiny-ltx2-audio', whose latents are [4, 30, 4]"),
        ([1, 4, 0, 4], "needs waveforms of (1 + 4k) x 4 samples"),
    ],
)
def test_ltx2_audio_latents_of_another_layout_are_refused(
    server: tuple[str, dict[str, Path]], shape: list[int], message: str
) -> None:
    url, _ = server
    answer = httpx.post(f"{url}/v1/models/tiny-ltx2-audio/decode", params={"shape": shape}, content=b"")
    assert answer.status_code == 422 and message in answer.json()["detail"], answer.text


def test_minimax_pipeline_latents_are_normalised_per_channel(server: tuple[str, dict[str, Path]]) -> None:
    """latents=pipeline: its pipeline's (z - latents_mean) / latents_std, undone before decoding."""
    url, _ = server
    _, config = TINY_AUDIO["tiny-minimax-audio"]
    mean, std = (np.asarray(config[key], np.float32)[None, :, None] for key in ("latents_mean", "latents_std"))
    z = np.random.default_rng(6).standard_normal((1, 8, 30)).astype(np.float32)
    query = {"shape": list(z.shape), "output_type": "pt", "latents": "pipeline"}
    answer = httpx.post(f"{url}/v1/models/tiny-minimax-audio/decode", params=query, content=z.tobytes())
    assert answer.status_code == 200, answer.text
    waves = np.frombuffer(answer.content, np.float32).reshape(1, 1, 120)
    with torch.inference_mode():
        expected = in_diffusers_decode(build_audio("tiny-minimax-audio"), torch.from_numpy(z * std + mean)).numpy()
    np.testing.assert_allclose(waves, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "query", "message"),
    [
        ([1, 6, 100], {"output_type": "pil"}, "makes audio: use wav or flac or pt"),
        ([1, 6, 100], {"output_type": "mp4"}, "makes audio: use"),
        ([1, 6, 100], {"output_type": "pt", "partial_postprocess": True}, "waveforms have no 8-bit form"),
        ([2, 6, 100], {"output_type": "wav"}, "output_type=wav returns one file"),
        ([1, 5, 100], {"output_type": "wav"}, "does not fit model 'tiny-oobleck'"),
        ([1, 6, 1_300_000], {"output_type": "pt"}, "samples of audio at 16000 Hz in all (VAE_MAX_SECONDS)"),
    ],
)
def test_requests_the_model_cannot_take_are_refused(
    model: tuple[str, torch.nn.Module], shape: list[int], query: dict[str, object], message: str
) -> None:
    url, _ = model
    answer = httpx.post(f"{url}/v1/models/tiny-oobleck/decode", params={"shape": shape, **query}, content=b"")
    assert answer.status_code == 422 and message in answer.json()["detail"], answer.text


def test_image_endpoints_refuse_an_audio_model(model: tuple[str, torch.nn.Module]) -> None:
    url, _ = model
    answer = httpx.get(f"{url}/v1/sample", params={"model": "tiny-oobleck", "n": 1}, timeout=60)
    assert answer.status_code == 422 and "makes audio, not images" in answer.json()["detail"]
    image = io.BytesIO()
    Image.new("RGB", (8, 8)).save(image, "PNG")
    files = {"files": ("a.png", image.getvalue())}
    answer = httpx.post(f"{url}/v1/reconstruct", files=files, data={"model": "tiny-oobleck"})
    assert answer.status_code == 422 and "files[0] (a.png): not a WAV or FLAC file" in answer.json()["detail"]


def audio_file(samples: np.ndarray, rate: int = SAMPLE_RATE, audio_format: str = "WAV") -> bytes:
    """[samples, C] float32 as a 16-bit file."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, subtype="PCM_16", format=audio_format)
    return buffer.getvalue()


def tone(samples: int, channels: int = 2) -> np.ndarray:
    t = np.arange(samples)[:, None] / SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * 440 * t * np.arange(1, channels + 1))).astype(np.float32)


@pytest.mark.parametrize(("audio_format", "channels"), [("WAV", 2), ("FLAC", 2), ("WAV", 1)])
def test_an_uploaded_file_encodes_as_its_samples_do(
    model: tuple[str, torch.nn.Module], audio_format: str, channels: int
) -> None:
    url, reference = model
    data = audio_file(tone(797, channels), audio_format=audio_format)  # padded with silence to 800
    answer = httpx.post(f"{url}/v1/models/tiny-oobleck/encode", content=data)
    assert answer.status_code == 200, answer.text
    z = np.frombuffer(answer.content, np.float32).reshape(json.loads(answer.headers["shape"]))
    samples, _ = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    wave = np.pad(np.repeat(samples.T, 2 // channels, axis=0), ((0, 0), (0, 3)))[None]
    with torch.inference_mode():
        expected = reference.encode(torch.from_numpy(wave)).latent_dist.mean.numpy()
    assert z.shape == (1, 6, 100)
    np.testing.assert_allclose(z, expected, rtol=0, atol=1e-5)


def test_another_rate_is_resampled_to_the_models(model: tuple[str, torch.nn.Module]) -> None:
    url, reference = model
    samples = tone(1102)  # 22050 Hz: 800 samples at 16000 Hz
    answer = httpx.post(f"{url}/v1/models/tiny-oobleck/encode", content=audio_file(samples, rate=22050))
    assert answer.status_code == 200, answer.text
    z = np.frombuffer(answer.content, np.float32).reshape(json.loads(answer.headers["shape"]))
    stored, _ = soundfile.read(io.BytesIO(audio_file(samples, rate=22050)), dtype="float32", always_2d=True)
    wave = soxr.resample(stored, 22050, SAMPLE_RATE, quality="HQ").T
    wave = np.pad(wave, ((0, 0), (0, -wave.shape[1] % 8)))[None]
    with torch.inference_mode():
        expected = reference.encode(torch.from_numpy(np.ascontiguousarray(wave))).latent_dist.mean.numpy()
    assert z.shape == expected.shape == (1, 6, 100)
    np.testing.assert_allclose(z, expected, rtol=0, atol=1e-5)


def too_long() -> bytes:
    """601 s of mono silence (19 MB, under the body limit): refused from the header, no sample read.
    (A header that claims more samples than the file holds is clamped by libsndfile to what it holds.)"""
    return audio_file(np.zeros((601 * SAMPLE_RATE, 1), np.float32))


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (audio_file(np.zeros((800, 3), np.float32)), 422, "3 channels; this model takes 2"),
        (too_long(), 413, "601.0 s of audio, over the 600 s limit (VAE_MAX_SECONDS)"),
        (b"RIFF\x00\x00\x00\x00WAVEjunkjunk", 422, "body: not a readable WAV file"),
        (b"fLaC" + b"\x00" * 40, 422, "body: not a readable FLAC file"),
        (b"ID3\x03" + b"\x00" * 40, 422, "body: not a WAV or FLAC file"),
    ],
)
def test_hostile_or_unfit_files_are_refused(
    model: tuple[str, torch.nn.Module], data: bytes, status: int, message: str
) -> None:
    url, _ = model
    answer = httpx.post(f"{url}/v1/models/tiny-oobleck/encode", content=data)
    assert answer.status_code == status and message in answer.json()["detail"], answer.text
