"""Every served diffusers video autoencoder class through diffusers' own `remote_decode` client
against a real server, each of the answers that client asks for (mp4, pt with a VideoProcessor,
partial_postprocess, pil with a processor), equal to the same model in-process (float32 within
1e-5, pixels within one level: tests/app/api/test_tensors.py says why not bit for bit); the mp4
read back with PyAV has the frames and size decoded."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from app.engine.backends.diffusers import DiffusersBackend, as_images, as_video
from app.engine.backends.diffusers_classes import VIDEO_CLASSES
from app.tensors import tensor_bytes
from tests.diffusers_models import served
from tests.diffusers_video_models import (
    ANY_SIZE,
    COSMOS_MEAN,
    COSMOS_SIGMA_DATA,
    COSMOS_STD,
    WAN_MEAN,
    WAN_STD,
    in_process_decode,
    save_cosmos_pipeline,
    save_video_classes,
)
from tests.media_files import clip, frames_read

diffusers = pytest.importorskip("diffusers")
av = pytest.importorskip("av")  # the media extra
from diffusers.utils.remote_utils import remote_decode
from diffusers.video_processor import VideoProcessor

FLOAT_TOLERANCE = 1e-5
RAW = {"do_scaling": False}  # the VAE's own latents, unscaled
FRAMES, HEIGHT, WIDTH = 9, 16, 24  # three latent frames of 1 + 4k (Mochi, 1 + 6k: 13; 1 + 8k: 17)
MOST_FRAMES = 17


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.nn.Module]:
    """Each tiny model, as diffusers itself loads its folder."""
    return load(save_video_classes(tmp_path_factory.mktemp("video-served"), ANY_SIZE))


def load(folders: dict[str, Path]) -> dict[str, torch.nn.Module]:
    loaded = {}
    for name, folder in folders.items():
        kind = json.loads((folder / "config.json").read_text())["_class_name"]
        model = getattr(diffusers, kind).from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
        loaded[name] = model.eval()
    return loaded


@pytest.fixture(scope="module")
def server(models: dict[str, torch.nn.Module], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = Path(str(models["tiny-wan"].config["_name_or_path"])).parent
    save_cosmos_pipeline(folder / "tiny-cosmos-pipeline")  # a pipeline folder: Cosmos's pipeline latents
    with served(folder, tmp_path_factory.mktemp("logs"), max_pixels=MOST_FRAMES * HEIGHT * WIDTH) as replica:
        yield replica.url


def frames_of(model: torch.nn.Module) -> int:
    """Three latent frames (SVD's, without compression in time: 9 frames; a class that encodes
    chunks of frames, non-causal VidTok's: one chunk)."""
    rule = DiffusersBackend(model).image.frames
    assert rule is not None
    frames = rule.decoded(rule.first_latent + 2) if rule.ratio > 1 else FRAMES
    return frames if rule.accepts(frames) else rule.first


def latents(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    """Latents of a 16x24 video of three latent frames: the encoder's posterior mean of a random one."""
    generator = torch.Generator().manual_seed(seed)
    video = torch.rand(1, 3, frames_of(model), HEIGHT, WIDTH, generator=generator) * 2 - 1
    with torch.inference_mode():
        if svd(model):
            return as_video(model.encode(as_images(video)).latent_dist.mean, 1).contiguous()
        if type(model).__name__ == "AutoencoderVidTok":  # its forward pads the video as its encode needs
            z = model(video, encoder_mode=True, sample_posterior=False)
            return (z[0] if isinstance(z, tuple) else z).contiguous()
        if VIDEO_CLASSES[type(model).__name__].encoder == "mode":  # deterministic latents (Cosmos, KVAE 3D)
            return model.encode(video).latent_dist.mode().contiguous()
        # Contiguous: diffusers' client sends a tensor's storage as it lies (Mochi's mean is a strided view).
        return model.encode(video).latent_dist.mean.contiguous()


def svd(model: torch.nn.Module) -> bool:
    """Stable Video Diffusion's VAE takes frames as a batch of images (its pipeline's layout)."""
    return type(model).__name__ == "AutoencoderKLTemporalDecoder"


def in_process(model: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        if svd(model):
            return as_video(model.decode(as_images(z), num_frames=z.shape[2]).sample, len(z))
        return in_process_decode(model, z)  # [B, C, F, H, W] in [-1, 1]


def pixels(video: torch.Tensor) -> np.ndarray:
    """[1, C, F, H, W] in [-1, 1] -> uint8 [F, H, W, C], as VideoProcessor makes them."""
    return (video[0].permute(1, 2, 3, 0).clamp(-1, 1) * 127.5 + 127.5).round().to(torch.uint8).numpy()


@pytest.mark.parametrize("name", ANY_SIZE)
def test_pt_with_a_video_processor_equals_diffusers(models: dict[str, torch.nn.Module], server: str, name: str) -> None:
    model = models[name]
    z = latents(model)
    endpoint = f"{server}/v1/models/{name}/decode"
    decoded = remote_decode(endpoint, z, processor=VideoProcessor(), output_type="pt", return_type="pt", **RAW)
    expected = in_process(model, z)
    assert decoded.shape == (1, 3, frames_of(model), HEIGHT, WIDTH) and decoded.dtype == torch.float32
    torch.testing.assert_close(decoded, expected, rtol=0, atol=FLOAT_TOLERANCE)
    frames = remote_decode(endpoint, z, processor=VideoProcessor(), output_type="pt", return_type="pil", **RAW)
    assert len(frames) == frames_of(model) and frames[0].size == (WIDTH, HEIGHT)


@pytest.mark.parametrize("name", ANY_SIZE)
def test_partial_postprocess_gives_uint8_frames(models: dict[str, torch.nn.Module], server: str, name: str) -> None:
    model = models[name]
    z = latents(model)
    endpoint = f"{server}/v1/models/{name}/decode"
    frames = remote_decode(endpoint, z, output_type="pt", partial_postprocess=True, return_type="pt", **RAW)
    assert frames.shape == (frames_of(model), HEIGHT, WIDTH, 3) and frames.dtype == torch.uint8
    difference = np.abs(frames.numpy().astype(int) - pixels(in_process(model, z)).astype(int))
    assert difference.max() <= 1
    images = remote_decode(endpoint, z, output_type="pt", partial_postprocess=True, return_type="pil", **RAW)
    assert len(images) == frames_of(model) and images[0].size == (WIDTH, HEIGHT)


@pytest.mark.parametrize("name", ANY_SIZE)
def test_pil_with_a_processor_gives_the_frames(models: dict[str, torch.nn.Module], server: str, name: str) -> None:
    model = models[name]
    z = latents(model)
    endpoint = f"{server}/v1/models/{name}/decode"
    images = remote_decode(endpoint, z, processor=VideoProcessor(), output_type="pil", return_type="pil", **RAW)
    assert len(images) == frames_of(model) and images[0].size == (WIDTH, HEIGHT)
    expected = pixels(in_process(model, z))
    assert np.abs(np.asarray(images[4]).astype(int) - expected[4].astype(int)).max() <= 1


@pytest.mark.parametrize("name", ANY_SIZE)
def test_mp4_reads_back_with_its_frames_and_size(models: dict[str, torch.nn.Module], server: str, name: str) -> None:
    model = models[name]
    z = latents(model)
    endpoint = f"{server}/v1/models/{name}/decode"
    data = remote_decode(endpoint, z, output_type="mp4", return_type="mp4", **RAW)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        rate = stream.average_rate
    assert len(decoded) == frames_of(model) and decoded[0].shape == (HEIGHT, WIDTH, 3)
    assert rate == httpx.get(f"{server}/v1/models/{name}").json()["details"]["fps"]  # the model's frame rate


def test_wan_pipeline_latents_are_denormalised_per_channel(models: dict[str, torch.nn.Module], server: str) -> None:
    model = models["tiny-wan"]
    z = latents(model)
    shape = (1, len(WAN_MEAN), 1, 1, 1)
    mean, std = torch.tensor(WAN_MEAN).reshape(shape), torch.tensor(WAN_STD).reshape(shape)
    normalised = (z - mean) / std  # what WanPipeline's transformer works on
    endpoint = f"{server}/v1/models/tiny-wan/decode?latents=pipeline"
    decoded = remote_decode(endpoint, normalised, processor=VideoProcessor(), output_type="pt", return_type="pt")
    torch.testing.assert_close(decoded, in_process(model, normalised * std + mean), rtol=0, atol=FLOAT_TOLERANCE)


@pytest.mark.parametrize("name", ["tiny-ltx", "tiny-ltx2"])
def test_ltx_pipeline_latents_are_denormalised_by_the_vae_buffers(
    models: dict[str, torch.nn.Module], server: str, name: str
) -> None:
    model = models[name]
    z = latents(model)
    shape = (1, -1, 1, 1, 1)
    mean, std = model.latents_mean.reshape(shape), model.latents_std.reshape(shape)
    assert not torch.equal(std, torch.ones_like(std))  # statistics that show (tests/diffusers_models.py)
    normalised = (z - mean) * model.config.scaling_factor / std  # LTXPipeline._normalize_latents
    endpoint = f"{server}/v1/models/{name}/decode?latents=pipeline"
    decoded = remote_decode(endpoint, normalised, processor=VideoProcessor(), output_type="pt", return_type="pt")
    denormalised = normalised * std / model.config.scaling_factor + mean  # LTXPipeline._denormalize_latents
    torch.testing.assert_close(decoded, in_process(model, denormalised), rtol=0, atol=FLOAT_TOLERANCE)


def test_cosmos_pipeline_latents_from_its_pipeline_folder(models: dict[str, torch.nn.Module], server: str) -> None:
    """CosmosTextToWorldPipeline's decode step: per channel and latent frame, its scheduler's sigma_data."""
    folder = Path(str(models["tiny-wan"].config["_name_or_path"])).parent / "tiny-cosmos-pipeline" / "vae"
    model = diffusers.AutoencoderKLCosmos.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
    normalised = torch.randn(1, 4, 3, 2, 3, generator=torch.Generator().manual_seed(4))
    mean = torch.tensor(COSMOS_MEAN).view(1, 4, -1, 1, 1)[:, :, :3]
    std = torch.tensor(COSMOS_STD).view(1, 4, -1, 1, 1)[:, :, :3]
    endpoint = f"{server}/v1/models/tiny-cosmos-pipeline/decode?latents=pipeline"
    decoded = remote_decode(endpoint, normalised, processor=VideoProcessor(), output_type="pt", return_type="pt")
    with torch.inference_mode():
        expected = model.eval().decode(normalised * std / COSMOS_SIGMA_DATA + mean).sample
    torch.testing.assert_close(decoded, expected, rtol=0, atol=FLOAT_TOLERANCE)
    longer = np.zeros((1, 4, 4, 2, 3), np.float32)  # 13 frames: past the 3 latent frames of its statistics
    query = {"shape": longer.shape, "output_type": "pt", "latents": "pipeline"}
    answer = httpx.post(endpoint.split("?")[0], params=query, content=longer.tobytes(), timeout=60)
    assert answer.status_code == 422 and "statistics cover 3 latent frames; got 4" in answer.json()["detail"]


def test_ltx_091_takes_its_decode_timestep_and_seed_from_the_request(
    models: dict[str, torch.nn.Module], server: str
) -> None:
    model = models["tiny-ltx091"]
    z = latents(model)
    endpoint = f"{server}/v1/models/tiny-ltx091/decode?decode_timestep=0.05&decode_noise_scale=0.025&seed=7"
    decoded = remote_decode(endpoint, z, processor=VideoProcessor(), output_type="pt", return_type="pt", **RAW)
    with torch.inference_mode():
        expected = in_process_decode(model, z, seed=7, timestep=0.05, noise_scale=0.025)
    torch.testing.assert_close(decoded, expected, rtol=0, atol=FLOAT_TOLERANCE)
    first = remote_decode(endpoint, z, output_type="mp4", return_type="mp4", **RAW)
    assert first == remote_decode(endpoint, z, output_type="mp4", return_type="mp4", **RAW)  # same seed, same bytes
    other = remote_decode(endpoint.replace("seed=7", "seed=8"), z, output_type="mp4", return_type="mp4", **RAW)
    assert other != first
    # decode_noise_scale left out is decode_timestep, as LTXPipeline's None is.
    endpoint = f"{server}/v1/models/tiny-ltx091/decode?decode_timestep=0.05&seed=7"
    decoded = remote_decode(endpoint, z, processor=VideoProcessor(), output_type="pt", return_type="pt", **RAW)
    with torch.inference_mode():
        expected = in_process_decode(model, z, seed=7, timestep=0.05)
    torch.testing.assert_close(decoded, expected, rtol=0, atol=FLOAT_TOLERANCE)


def test_encode_a_video_tensor_equals_diffusers(models: dict[str, torch.nn.Module], server: str) -> None:
    model = models["tiny-hunyuanvideo"]
    video = torch.rand(1, 3, FRAMES, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3)) * 2 - 1
    data, shape, _ = tensor_bytes(video.numpy())
    answer = httpx.post(f"{server}/v1/models/tiny-hunyuanvideo/encode", params={"shape": shape}, content=data)
    assert answer.status_code == 200, answer.text
    z = np.frombuffer(answer.content, np.float32).reshape(json.loads(answer.headers["shape"]))
    with torch.inference_mode():
        expected = model.encode(video).latent_dist.mean.numpy()
    assert z.shape == (1, 4, 3, 2, 3)
    np.testing.assert_allclose(z, expected, rtol=0, atol=FLOAT_TOLERANCE)


@pytest.mark.parametrize(
    ("name", "shape", "query", "message"),
    [
        ("tiny-cogvideox", [1, 4, 2, 2, 3], {}, "2 latent frames decode to 5 frames; model 'tiny-cogvideox' takes"),
        ("tiny-wan", [16, 2, 3], {}, "takes latents [B, C, t, h, w]"),
        ("tiny-wan", [1, 16, 66, 2, 3], {}, "frames of the video (VAE_MAX_FRAMES): at most 257 allowed, got 261"),
        ("tiny-wan", [2, 16, 3, 1, 1], {"output_type": "mp4"}, "output_type=mp4 returns one file"),
        ("tiny-wan", [1, 16, 3, 2, 3], {"output_type": "pil"}, "makes videos: use mp4 or pt"),
        ("tiny-wan", [1, 16, 3, 2, 3], {"fps": 8, "output_type": "pt"}, "fps: the frame rate of an mp4 answer"),
        ("tiny-cosmos", [1, 4, 3, 4, 6], {"latents": "pipeline", "output_type": "pt"}, "has no pipeline latents"),
        ("tiny-ltx", [1, 8, 3, 4, 6], {"decode_timestep": 0.05, "output_type": "pt"}, "model 'tiny-ltx' does not take"),
        ("tiny-ltx091", [1, 8, 3, 2, 3], {"decode_timestep": 2, "output_type": "pt"}, "between 0.0 and 1.0"),
        ("tiny-ltx091", [1, 8, 3, 2, 3], {"seed": 1, "steps": 2, "output_type": "pt"}, "steps: model 'tiny-ltx091'"),
    ],
)
def test_video_requests_the_model_cannot_take_are_refused(
    server: str, name: str, shape: list[int], query: dict[str, object], message: str
) -> None:
    body = np.zeros(shape, np.float32).tobytes()
    answer = httpx.post(f"{server}/v1/models/{name}/decode", params={"shape": shape, **query}, content=body)
    assert answer.status_code == 422 and message in answer.json()["detail"], answer.text


def test_what_the_listing_says_of_a_video_model(server: str) -> None:
    info = httpx.get(f"{server}/v1/models/tiny-wan").json()
    assert info["image_shape"] == [3, 5, 512, 512] and info["latent_shape"] == [16, None, None, None]
    assert info["details"]["media"] == "video" and info["details"]["frames"] == "1 + 4k"
    assert info["details"]["latent_layout"] == "[B, 16, t, h, w]" and info["details"]["fps"] == 16


def test_the_other_endpoints_take_a_still_as_a_one_frame_video(server: str) -> None:
    png = io.BytesIO()
    Image.fromarray(np.full((HEIGHT, WIDTH, 3), 128, np.uint8)).save(png, "PNG")
    files = {"files": ("still.png", png.getvalue())}
    grid = httpx.post(
        f"{server}/v1/reconstruct", files=files, data={"model": "tiny-wan"}, headers={"Accept": "image/png"}, timeout=60
    )
    assert grid.status_code == 200 and Image.open(io.BytesIO(grid.content)).size == (WIDTH, HEIGHT)
    video = httpx.post(f"{server}/v1/reconstruct", files=files, data={"model": "tiny-wan"}, timeout=60)
    assert video.headers["content-type"] == "video/mp4" and frames_read(video.content).shape == (1, HEIGHT, WIDTH, 3)
    scores = httpx.post(f"{server}/v1/score", files=files, data={"model": "tiny-wan"}, timeout=60)
    assert scores.status_code == 200 and scores.json()["scores"][0]["mse"] > 0
    v2 = httpx.get(f"{server}/v2/models/tiny-wan.decode").json()
    assert v2["inputs"][0]["shape"] == [-1, 16, -1, -1, -1] and v2["outputs"][0]["shape"] == [-1, -1, -1, -1, 3]


@pytest.mark.parametrize("kind", ["mp4", "webm", "gif"])
def test_an_uploaded_clip_encodes_as_its_frames_do(models: dict[str, torch.nn.Module], server: str, kind: str) -> None:
    data = clip(FRAMES, kind=kind)
    answer = httpx.post(f"{server}/v1/models/tiny-wan/encode", content=data, timeout=60)
    assert answer.status_code == 200, answer.text
    z = np.frombuffer(answer.content, np.float32).reshape(json.loads(answer.headers["shape"]))
    frames = torch.from_numpy(frames_read(data)).permute(3, 0, 1, 2)[None].float() / 255
    with torch.inference_mode():
        expected = models["tiny-wan"].encode(frames * 2 - 1).latent_dist.mean.numpy()
    assert z.shape == (1, 16, 3, 2, 3)
    np.testing.assert_allclose(z, expected, rtol=0, atol=FLOAT_TOLERANCE)


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (clip(10), 422, "the video has 10 frames; this model takes 1 + 4k frames"),
        (clip(1, 48, 144), 413, "frames are 144x48 pixels, over the 6528-pixel limit"),
        (clip(21), 413, "at most 257 frames (VAE_MAX_FRAMES) and 6528 pixels in all"),
        (clip(FRAMES, 20, 24), 422, "frames are 24x20; this model needs sides that are multiples of 8"),
        (clip(FRAMES)[:300], 422, "body: not a readable mp4 video"),
        (b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 4, 422, "body: not a readable mp4 video"),
        (b"\x1a\x45\xdf\xa3" + b"\xff" * 64, 422, "body: not a readable matroska video"),
        (b"GIF89a" + b"\x00" * 8, 422, "body: not a readable gif video"),
        (b"RIFF....WAVE", 422, "body: not an mp4, WebM or GIF video"),
    ],
)
def test_hostile_or_unfit_clips_are_refused(server: str, data: bytes, status: int, message: str) -> None:
    answer = httpx.post(f"{server}/v1/models/tiny-wan/encode", content=data, timeout=60)
    assert answer.status_code == status and message in answer.json()["detail"], answer.text


ALLEGRO_FRAMES, ALLEGRO_SIDE = 24, 128  # its smallest tile (the engine's test decodes two side by side)


@pytest.fixture(scope="module")
def allegro(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[torch.nn.Module, str]]:
    """Allegro's tiny model, served alone: its smallest tile is 24 frames of 128 x 128."""
    folders = save_video_classes(tmp_path_factory.mktemp("allegro"), ["tiny-allegro"])
    model = load(folders)["tiny-allegro"]
    model.use_tiling = True  # as AllegroPipeline's example enables it: without, diffusers raises
    pixels = ALLEGRO_FRAMES * ALLEGRO_SIDE**2
    with served(folders["tiny-allegro"].parent, tmp_path_factory.mktemp("allegro-logs"), max_pixels=pixels) as replica:
        yield model, replica.url


def test_allegro_decodes_on_its_grid_through_remote_decode(allegro: tuple[torch.nn.Module, str]) -> None:
    model, url = allegro
    shape = (1, 4, ALLEGRO_FRAMES // 4, ALLEGRO_SIDE // 8, ALLEGRO_SIDE // 8)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model.decode(z).sample.transpose(1, 2)  # frames first in diffusers: [B, T, C, H, W]
    endpoint = f"{url}/v1/models/tiny-allegro/decode"
    decoded = remote_decode(endpoint, z, processor=VideoProcessor(), output_type="pt", return_type="pt", **RAW)
    assert decoded.shape == (1, 3, ALLEGRO_FRAMES, ALLEGRO_SIDE, ALLEGRO_SIDE)
    torch.testing.assert_close(decoded, expected, rtol=0, atol=FLOAT_TOLERANCE)
    data = remote_decode(endpoint, z, output_type="mp4", return_type="mp4", **RAW)
    frames = frames_read(data)
    assert frames.shape == (ALLEGRO_FRAMES, ALLEGRO_SIDE, ALLEGRO_SIDE, 3)
    info = httpx.get(f"{url}/v1/models/tiny-allegro").json()["details"]
    assert (info["frames"], info["fps"], info["latent_layout"]) == ("24 + 16k", 15, "[B, 4, t, h, w]")


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([1, 4, 6, 2, 3], "latents: [1, 4, 6, 2, 3] decode to height 16 is not 128 + 8k pixels (its tile grid)"),
        ([1, 4, 6, 16, 15], "decode to width 120 is not 128 + 48k pixels (its tile grid)"),
        ([1, 4, 7, 16, 16], "7 latent frames decode to 28 frames; model 'tiny-allegro' takes 24 + 16k frames"),
    ],
)
def test_allegro_latents_off_its_grid_are_refused(
    allegro: tuple[torch.nn.Module, str], shape: list[int], message: str
) -> None:
    """diffusers would decode them to zeros where no tile reaches."""
    _, url = allegro
    body = np.zeros(shape, np.float32).tobytes()
    answer = httpx.post(
        f"{url}/v1/models/tiny-allegro/decode", params={"shape": shape, "output_type": "pt"}, content=body, timeout=60
    )
    assert answer.status_code == 422 and message in answer.json()["detail"], answer.text
