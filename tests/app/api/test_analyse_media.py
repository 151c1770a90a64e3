"""Clips and sound files uploaded to /v1/reconstruct and /v1/score (multipart, as images are),
against a real server of a tiny Wan video VAE and a tiny Oobleck audio VAE: the answers equal
the same models in-process, the media answers read back with PyAV and soundfile, and corrupt,
truncated or hostile files are a 4xx, never a 500 or a hang."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.diffusers_audio_models import SAMPLE_RATE, TINY_AUDIO
from tests.diffusers_models import save, served
from tests.diffusers_video_models import TINY_VIDEO
from tests.media_files import clip, frames_read

diffusers = pytest.importorskip("diffusers")
av = pytest.importorskip("av")  # the media extra
soundfile = pytest.importorskip("soundfile")

FRAMES, HEIGHT, WIDTH = 9, 16, 24
SAMPLES = 800  # 100 latent steps of the tiny Oobleck


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, torch.nn.Module]]]:
    """A real server of tiny-wan and tiny-oobleck, and the same folders loaded by diffusers."""
    folder = tmp_path_factory.mktemp("media")
    folders = save(folder, {"tiny-wan": TINY_VIDEO["tiny-wan"], "tiny-oobleck": TINY_AUDIO["tiny-oobleck"]})
    loaded = {
        "tiny-wan": diffusers.AutoencoderKLWan.from_pretrained(folders["tiny-wan"], low_cpu_mem_usage=False),
        "tiny-oobleck": diffusers.AutoencoderOobleck.from_pretrained(folders["tiny-oobleck"], low_cpu_mem_usage=False),
    }
    with served(folder, tmp_path_factory.mktemp("logs"), max_pixels=13 * HEIGHT * WIDTH) as replica:
        yield replica.url, {name: model.eval() for name, model in loaded.items()}


def gif_screen(width: int, height: int) -> bytes:
    """A 3-frame GIF whose header declares another screen size than its frames have."""
    data = bytearray(clip(3, kind="gif"))
    data[6:10] = width.to_bytes(2, "little") + height.to_bytes(2, "little")
    return bytes(data)


def sound(samples: int = SAMPLES, channels: int = 2, rate: int = SAMPLE_RATE, audio_format: str = "WAV") -> bytes:
    t = np.arange(samples)[:, None] / rate
    wave = (0.5 * np.sin(2 * np.pi * 440 * t * np.arange(1, channels + 1))).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, rate, subtype="PCM_16", format=audio_format)
    return buffer.getvalue()


def post(url: str, endpoint: str, model: str, *files: bytes, **headers: str) -> httpx.Response:
    parts = [("files", (f"upload-{i}", data)) for i, data in enumerate(files)]
    return httpx.post(f"{url}/v1/{endpoint}", files=parts, data={"model": model}, headers=headers, timeout=120)


def wan_reconstruction(model: torch.nn.Module, video: np.ndarray) -> torch.Tensor:
    """[T, H, W, 3] uint8 -> the posterior mean's decode, [3, T, H, W] in [0, 1], clamped."""
    x = torch.from_numpy(video).permute(3, 0, 1, 2)[None].float() / 255
    with torch.inference_mode():
        decoded = model.decode(model.encode(x * 2 - 1).latent_dist.mean).sample
    return (decoded[0] * 0.5 + 0.5).clamp(0, 1)


def test_a_clip_reconstructs_as_an_mp4_and_as_its_frames(models: tuple[str, dict[str, torch.nn.Module]]) -> None:
    url, loaded = models
    data = clip(FRAMES)
    expected = (wan_reconstruction(loaded["tiny-wan"], frames_read(data)) * 255).round().permute(1, 2, 3, 0).numpy()
    answer = post(url, "reconstruct", "tiny-wan", data)  # */*: the model's own media
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "video/mp4" and answer.headers["vary"] == "Accept"
    frames = frames_read(answer.content)
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert np.abs(frames.astype(float) - expected).mean() < 4  # H.264 at CRF 18 keeps it close
    as_json = post(url, "reconstruct", "tiny-wan", data, accept="application/json").json()
    assert len(as_json["images"]) == FRAMES and np.asarray(as_json["latents"]).shape == (1, 16, 3, 2, 3)
    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(as_json["images"][0]))).convert("RGB"))
    assert np.abs(first.astype(int) - expected[0].astype(int)).max() <= 1  # PNG: lossless
    grid = post(url, "reconstruct", "tiny-wan", data, accept="image/png")
    assert grid.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(grid.content)).size == (FRAMES * WIDTH, HEIGHT)  # one row per video


@pytest.mark.parametrize("kind", ["webm", "gif"])
def test_a_clip_scores_as_in_process(models: tuple[str, dict[str, torch.nn.Module]], kind: str) -> None:
    url, loaded = models
    data = clip(FRAMES, kind=kind)
    answer = post(url, "score", "tiny-wan", data)
    assert answer.status_code == 200, answer.text
    video = frames_read(data)
    x = torch.from_numpy(video).permute(3, 0, 1, 2).float() / 255
    expected = ((wan_reconstruction(loaded["tiny-wan"], video) - x) ** 2).mean().item()
    score = answer.json()["scores"][0]
    assert score["mse"] == pytest.approx(expected, rel=1e-4) and score["kl_nats"] > 0


def test_two_clips_score_as_a_batch_and_answer_in_json_only(models: tuple[str, dict[str, torch.nn.Module]]) -> None:
    url, _ = models
    one, two = clip(FRAMES), clip(FRAMES, kind="webm")
    scores = post(url, "score", "tiny-wan", one, two).json()["scores"]
    alone = post(url, "score", "tiny-wan", two).json()["scores"][0]
    assert len(scores) == 2 and scores[1]["mse"] == pytest.approx(alone["mse"], rel=1e-5)
    grid = post(url, "reconstruct", "tiny-wan", one, two)  # two videos: no mp4 holds both
    assert grid.headers["content-type"] == "image/png"
    answer = httpx.post(
        f"{url}/v1/reconstruct", params={"format": "mp4"}, files=[("files", ("a", one)), ("files", ("b", two))],
        data={"model": "tiny-wan"}, timeout=120,
    )  # fmt: skip
    assert answer.status_code == 422 and "one mp4 file holds one video; got 2" in answer.json()["detail"]


def test_a_sound_reconstructs_as_a_wav_and_scores_as_in_process(
    models: tuple[str, dict[str, torch.nn.Module]],
) -> None:
    url, loaded = models
    data = sound()
    answer = post(url, "reconstruct", "tiny-oobleck", data)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "audio/wav"
    samples, rate = soundfile.read(io.BytesIO(answer.content), dtype="float32", always_2d=True)
    assert rate == SAMPLE_RATE and samples.shape == (SAMPLES, 2)
    wave, _ = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    x = torch.from_numpy(np.ascontiguousarray(wave.T))[None]
    model = loaded["tiny-oobleck"]
    with torch.inference_mode():
        expected = model.decode(model.encode(x).latent_dist.mean).sample[0].clamp(-1, 1).numpy()
    np.testing.assert_allclose(samples.T, expected, rtol=0, atol=1 / 32768 + 1e-6)  # 16-bit PCM
    flac = post(url, "reconstruct", "tiny-oobleck", data, accept="audio/flac")
    assert flac.headers["content-type"] == "audio/flac"
    score = post(url, "score", "tiny-oobleck", data).json()["scores"][0]
    mse = (((np.clip(expected, -1, 1) - x[0].numpy()) / 2) ** 2).mean()  # in the [0, 1] range scores use
    assert score["mse"] == pytest.approx(mse, rel=1e-4)


def test_what_an_audio_model_cannot_answer_says_so(models: tuple[str, dict[str, torch.nn.Module]]) -> None:
    url, _ = models
    two = post(url, "reconstruct", "tiny-oobleck", sound(), sound())
    assert two.status_code == 422 and "one wav file holds one audio; got 2: send one" in two.json()["detail"]
    as_json = post(url, "reconstruct", "tiny-oobleck", sound(), accept="application/json")
    assert as_json.headers["content-type"] == "audio/wav"  # Accept is a preference; format is an order
    answer = httpx.post(
        f"{url}/v1/reconstruct", params={"format": "json"}, files={"files": ("a.wav", sound())},
        data={"model": "tiny-oobleck"}, timeout=120,
    )  # fmt: skip
    assert answer.status_code == 422 and "answers audio as wav or flac" in answer.json()["detail"]
    lengths = post(url, "score", "tiny-oobleck", sound(), sound(1600))
    assert lengths.status_code == 422
    assert "1600 samples at 16000 Hz; the files of one request share one length" in lengths.json()["detail"]


HOSTILE_CLIPS = [
    (clip(10), 422, "the video has 10 frames; this model takes 1 + 4k frames"),
    (clip(FRAMES)[:300], 422, "not a readable mp4 video"),
    (b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 4, 422, "not a readable mp4 video"),
    (b"\x1a\x45\xdf\xa3" + b"\xff" * 64, 422, "not a readable matroska video"),
    (gif_screen(8000, 8000), 413, "frames are 8000x8000 pixels, over the 4992-pixel limit"),  # from the header
    (gif_screen(65535, 65535), 422, "the gif header gives no usable frame size"),  # past FFmpeg's own bound
    (clip(300, 8, 8), 413, "the video declares 300 frames, over 257 (VAE_MAX_FRAMES)"),  # 4 kB, before decoding
    (clip(300, 8, 8, kind="webm"), 413, "at most 257 frames (VAE_MAX_FRAMES) and 4992 pixels in all"),  # no count
    (sound(), 422, "not an mp4, WebM or GIF video"),
]
def flac_of_unknown_length() -> bytes:
    """A FLAC stream whose STREAMINFO hides its length (total samples 0, as a live encoder writes)."""
    data = bytearray(sound(SAMPLES, audio_format="FLAC"))
    data[21] &= 0xF0  # STREAMINFO (from byte 8): its 36-bit sample count starts at byte 13's low nibble
    data[22:26] = bytes(4)
    return bytes(data)


HOSTILE_SOUNDS = [
    (sound(channels=3), 422, "3 channels; this model takes 2"),
    (sound(601 * 8000, channels=1, rate=8000), 413, "601.0 s of audio, over the 600 s limit (VAE_MAX_SECONDS)"),
    (flac_of_unknown_length(), 413, "s of audio, over the 600 s limit (VAE_MAX_SECONDS)"),  # never decoded
    (sound()[:30], 422, "not a readable WAV file"),
    (b"fLaC" + b"\x00" * 40, 422, "not a readable FLAC file"),
    (clip(FRAMES), 422, "not a WAV or FLAC file"),
]


@pytest.mark.parametrize("endpoint", ["reconstruct", "score"])
@pytest.mark.parametrize(
    ("model", "data", "status", "message"),
    [("tiny-wan", *case) for case in HOSTILE_CLIPS] + [("tiny-oobleck", *case) for case in HOSTILE_SOUNDS],
)
def test_corrupt_truncated_or_hostile_files_are_refused(
    models: tuple[str, dict[str, torch.nn.Module]], endpoint: str, model: str, data: bytes, status: int, message: str
) -> None:
    url, _ = models
    answer = post(url, endpoint, model, clip(FRAMES) if model == "tiny-wan" else sound(), data)  # the second file
    assert answer.status_code == status, answer.text
    assert answer.json()["detail"].startswith("files[1] (upload-1): ") and message in answer.json()["detail"]


def test_clips_come_as_json_and_encode_and_interpolate_too(models: tuple[str, dict[str, torch.nn.Module]]) -> None:
    url, _ = models
    data = clip(FRAMES)
    as_json = httpx.post(
        f"{url}/v1/score", json={"model": "tiny-wan", "images": [base64.b64encode(data).decode()]}, timeout=120
    )
    assert as_json.json()["scores"] == post(url, "score", "tiny-wan", data).json()["scores"]
    encoded = post(url, "encode", "tiny-wan", data).json()["latents"][0]
    assert np.asarray(encoded["mean"]).shape == np.asarray(encoded["variance"]).shape == (16, 3, 2, 3)
    path = httpx.post(
        f"{url}/v1/interpolate",
        files=[("files", ("a.mp4", data)), ("files", ("b.webm", clip(FRAMES, kind="webm")))],
        data={"model": "tiny-wan", "steps": "3", "format": "json"},
        timeout=120,
    )
    assert path.status_code == 200, path.text
    assert len(path.json()["images"]) == 3 * FRAMES  # each step's frames, in order
    png = io.BytesIO()
    Image.new("RGB", (WIDTH, HEIGHT)).save(png, "PNG")
    mixed = post(url, "score", "tiny-wan", data, png.getvalue())
    assert mixed.status_code == 422 and "files[1] (upload-1): not an mp4, WebM or GIF video" in mixed.json()["detail"]
