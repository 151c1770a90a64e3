"""Every served diffusers image autoencoder class through diffusers' own client against a real
server: remote_decode and remote_encode give what the same model gives in-process (float32
within 1e-5, pixels within one level: tests/app/api/test_tensors.py says why not bit for bit),
pipeline latents (Flux.1 packed, Qwen-Image per-channel, Flux.2 batch-norm) give what the
pipelines' own decode step gives, and the consistency decoder's seed comes from the request."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from app.tensors import tensor_bytes
from tests.diffusers_models import TINY, save_every_class, served

diffusers = pytest.importorskip("diffusers")
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.remote_utils import remote_decode, remote_encode

from tests.diffusers_pipelines import functions

# The pipelines' own latent functions (tests/diffusers_pipelines.py says why not imported).
FluxPipeline = SimpleNamespace(
    **functions("pipelines.flux.pipeline_flux", {n: f"FluxPipeline.{n}" for n in ("_pack_latents", "_unpack_latents")})
)
QwenImagePipeline = SimpleNamespace(
    **functions("pipelines.qwenimage.pipeline_qwenimage", {"_unpack_latents": "QwenImagePipeline._unpack_latents"})
)
FLUX2 = ("_pack_latents", "_patchify_latents", "_unpatchify_latents", "_prepare_latent_ids", "_unpack_latents_with_ids")
Flux2Pipeline = SimpleNamespace(
    **functions(
        "pipelines.flux2.pipeline_flux2",
        {
            "retrieve_latents": "retrieve_latents",
            "_encode_vae_image": "Flux2Pipeline._encode_vae_image",
            **{n: f"Flux2Pipeline.{n}" for n in FLUX2},
        },
    )
)

FLOAT_TOLERANCE = 1e-5
PIXEL_TOLERANCE = 1
NAMES = ["tiny-kl", "tiny-taesd", *TINY]
RAW = {"do_scaling": False}  # the VAE's own latents, unscaled


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.nn.Module]]:
    """Each tiny model's folder, and the same folder loaded by diffusers itself."""
    folders = save_every_class(tmp_path_factory.mktemp("every-class-served"))
    loaded = {}
    for name, folder in folders.items():
        kind = json.loads((folder / "config.json").read_text())["_class_name"]
        model = getattr(diffusers, kind).from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
        loaded[name] = (folder, model.eval())
    return loaded


@pytest.fixture(scope="module")
def server(models: dict[str, tuple[Path, torch.nn.Module]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served(next(iter(models.values()))[0].parent, tmp_path_factory.mktemp("logs")) as replica:
        yield replica.url


def model_of(models: dict[str, tuple[Path, torch.nn.Module]], name: str) -> torch.nn.Module:
    return models[name][1]


def frames(model: torch.nn.Module) -> bool:
    return type(model).__name__.startswith("AutoencoderKLQwenImage")


def factor(name: str) -> int:
    return 4 if name == "tiny-qwenimage" else 2


def latents_for(model: torch.nn.Module, name: str, batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Random latents of `name` for images height x width ([B, C, 1, h, w] for a single-frame model)."""
    config = model.config
    channels = config.get("z_dim") or config.get("z_channels") or config["latent_channels"]
    f = factor(name)
    shape = (batch, channels, *((1,) if frames(model) else ()), height // f, width // f)
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def decoded(model: torch.nn.Module, z: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """What the class's decode gives, in [-1, 1], [B, C, H, W] (a single-frame model's frame 0)."""
    if isinstance(model, diffusers.ConsistencyDecoderVAE):
        images = torch.cat(
            [model.decode(z[i : i + 1], generator=torch.Generator().manual_seed(seed)).sample for i in range(len(z))]
        )
    else:
        images = model.decode(z).sample
    return images[:, :, 0] if frames(model) else images


def photo(channels: int = 3, width: int = 16, height: int = 16) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA" if channels == 4 else "RGB")


def assert_floats_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape, (got.shape, expected.shape)
    assert torch.allclose(got, expected, rtol=0, atol=FLOAT_TOLERANCE), (got - expected).abs().max()


def assert_pixels_close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape, (got.shape, expected.shape)
    assert np.abs(got.astype(np.int16) - expected.astype(np.int16)).max() <= PIXEL_TOLERANCE


@pytest.mark.parametrize("name", NAMES)
def test_remote_decode_equals_in_process(
    server: str, models: dict[str, tuple[Path, torch.nn.Module]], name: str
) -> None:
    model = model_of(models, name)
    z = latents_for(model, name, 2, 16, 24, seed=1)
    endpoint = f"{server}/v1/models/{name}/decode"
    expected = decoded(model, z)
    floats = remote_decode(endpoint, z, output_type="pt", return_type="pt", processor=VaeImageProcessor(), **RAW)
    assert floats.dtype == torch.float32
    assert_floats_close(floats, expected)
    image = remote_decode(endpoint, z[:1].half(), image_format="png", **RAW)  # the client makes it RGB
    reference = VaeImageProcessor().postprocess(decoded(model, z[:1].half().float()))[0]
    assert image.size == (24, 16)
    assert_pixels_close(np.asarray(image), np.asarray(reference.convert("RGB")))
    data, _, _ = tensor_bytes(z[:1].numpy())
    png = post(server, name, "decode", data, shape=[1, *z.shape[1:]], image_format="png", do_scaling="false")
    assert Image.open(io.BytesIO(png.content)).mode == reference.mode  # RGBA for a four-channel model
    # pil with a processor: the client asks a tensor in [0, 1] (Accept: tensor/binary) and makes the images.
    images = remote_decode(endpoint, z, output_type="pil", return_type="pil", processor=VaeImageProcessor(), **RAW)
    references = VaeImageProcessor().postprocess(expected)
    assert len(images) == 2 and images[1].size == (24, 16)
    assert_pixels_close(np.asarray(images[1]), np.asarray(references[1].convert(images[1].mode)))


@pytest.mark.parametrize("name", NAMES)
def test_remote_encode_equals_in_process(
    server: str, models: dict[str, tuple[Path, torch.nn.Module]], name: str
) -> None:
    model = model_of(models, name)
    channels = 4 if name == "tiny-qwenimage21" else 3
    image = photo(channels)
    x = torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())[None] / 255.0 * 2 - 1
    with torch.inference_mode():
        encoded = model.encode(x[:, :, None] if frames(model) else x)
    latent = getattr(encoded, "latent_dist", None)
    expected = latent.mean if latent is not None else getattr(encoded, "latents", None)
    expected = expected if expected is not None else encoded.latent
    assert_floats_close(remote_encode(f"{server}/v1/models/{name}/encode", image), expected)


def test_packed_flux_latents_equal_the_unpacked_decode(
    server: str, models: dict[str, tuple[Path, torch.nn.Module]]
) -> None:
    """Flux.1 hands remote_decode [B, S, 4C] latents with the images' height and width."""
    z = latents_for(model_of(models, "tiny-kl"), "tiny-kl", 1, 16, 24, seed=2)
    packed = FluxPipeline._pack_latents(z, 1, 4, 8, 12).contiguous()
    assert torch.equal(FluxPipeline._unpack_latents(packed, 16, 24, 2), z)
    endpoint = f"{server}/v1/models/tiny-kl/decode"
    options = {"output_type": "pt", "partial_postprocess": True, "return_type": "pt", "scaling_factor": 0.5}
    got = remote_decode(endpoint, packed, height=16, width=24, shift_factor=0.25, **options)
    assert torch.equal(got, remote_decode(endpoint, z, shift_factor=0.25, **options))
    # latents=pipeline: the model's own factors, as FluxPipeline's decode step applies them.
    pipeline = remote_decode(f"{endpoint}?latents=pipeline", packed, height=16, width=24, **{**options, **RAW})
    assert torch.equal(pipeline, got)


def test_qwenimage_pipeline_latents_equal_the_pipelines_decode_step(
    server: str, models: dict[str, tuple[Path, torch.nn.Module]]
) -> None:
    model = model_of(models, "tiny-qwenimage")
    # [1, S, 16] for a 32x48 image: latents [1, 4, 1, 8, 12], 2x2 patches of them.
    packed = torch.randn(1, (8 // 2) * (12 // 2), 16, generator=torch.Generator().manual_seed(3))
    unpacked = QwenImagePipeline._unpack_latents(packed, 32, 48, 4)
    mean = torch.tensor(model.config.latents_mean).view(1, 4, 1, 1, 1)
    std = 1.0 / torch.tensor(model.config.latents_std).view(1, 4, 1, 1, 1)
    with torch.inference_mode():
        expected = model.decode(unpacked / std + mean, return_dict=False)[0][:, :, 0]
    endpoint = f"{server}/v1/models/tiny-qwenimage/decode?latents=pipeline"
    got = remote_decode(endpoint, packed, height=32, width=48, output_type="pt", return_type="pt",
                        processor=VaeImageProcessor(), **RAW)  # fmt: skip
    assert_floats_close(got, expected)
    # Unpacked pipeline latents [B, C, 1, h, w] too.
    got = remote_decode(endpoint, unpacked, output_type="pt", return_type="pt", processor=VaeImageProcessor(), **RAW)
    assert_floats_close(got, expected)


def test_flux2_pipeline_latents_equal_the_pipelines_decode_step_and_encode_is_its_inverse(
    server: str, models: dict[str, tuple[Path, torch.nn.Module]]
) -> None:
    model = model_of(models, "tiny-flux2")
    raw = latents_for(model, "tiny-flux2", 1, 16, 24, seed=4)  # [1, 2, 8, 12]
    # Contiguous: remote_decode sends a strided tensor's bytes in memory order, not its own.
    packed = Flux2Pipeline._pack_latents(Flux2Pipeline._patchify_latents(raw)).contiguous()  # [1, 24, 8]
    ids = Flux2Pipeline._prepare_latent_ids(Flux2Pipeline._patchify_latents(raw))
    # Flux2Pipeline.__call__'s decode step, on the same packed latents.
    latents = Flux2Pipeline._unpack_latents_with_ids(packed, ids)
    bn_mean = model.bn.running_mean.view(1, -1, 1, 1)
    bn_std = torch.sqrt(model.bn.running_var.view(1, -1, 1, 1) + model.config.batch_norm_eps)
    with torch.inference_mode():
        expected = model.decode(Flux2Pipeline._unpatchify_latents(latents * bn_std + bn_mean)).sample
    endpoint = f"{server}/v1/models/tiny-flux2/decode?latents=pipeline"
    got = remote_decode(endpoint, packed, height=16, width=24, output_type="pt", return_type="pt",
                        processor=VaeImageProcessor(), **RAW)  # fmt: skip
    assert_floats_close(got, expected)
    unpacked = httpx.post(
        f"{server}/v1/models/tiny-flux2/decode",
        content=raw.numpy().tobytes(),
        params={"shape": list(raw.shape), "latents": "pipeline", "output_type": "pt"},
    )
    assert unpacked.status_code == 422 and "send [B, S, 4C] with height and width" in unpacked.json()["detail"]
    unpacked = httpx.post(f"{server}/v1/models/tiny-flux2/encode", content=b"not read", params={"latents": "pipeline"})
    assert unpacked.status_code == 422 and "pipeline latents are packed: ask for pack=true" in unpacked.text

    image = photo()
    x = VaeImageProcessor(vae_scale_factor=2).preprocess(image)
    pipeline = SimpleNamespace(vae=model, _patchify_latents=Flux2Pipeline._patchify_latents)
    with torch.inference_mode():
        encoded = Flux2Pipeline._encode_vae_image(pipeline, x, torch.Generator().manual_seed(0))
    expected = Flux2Pipeline._pack_latents(encoded)
    got = remote_encode(f"{server}/v1/models/tiny-flux2/encode?latents=pipeline&pack=true", image)
    assert_floats_close(got, expected)


def test_the_consistency_decoder_seed_comes_from_the_request(
    server: str, models: dict[str, tuple[Path, torch.nn.Module]]
) -> None:
    model = model_of(models, "tiny-consistency")
    z = latents_for(model, "tiny-consistency", 1, 16, 16, seed=5)
    endpoint = f"{server}/v1/models/tiny-consistency/decode"
    options = {"output_type": "pt", "return_type": "pt", "processor": VaeImageProcessor(), **RAW}
    seeded = remote_decode(f"{endpoint}?seed=7", z, **options)
    assert_floats_close(seeded, decoded(model, z, seed=7))
    assert torch.equal(remote_decode(f"{endpoint}?seed=7", z, **options), seeded)  # same seed, same bytes
    assert not torch.equal(remote_decode(f"{endpoint}?seed=8", z, **options), seeded)


def post(server: str, name: str, op: str, body: bytes, **params: object) -> httpx.Response:
    return httpx.post(f"{server}/v1/models/{name}/{op}", content=body, params=params, timeout=30)


ZEROS = np.zeros((1, 24, 16), "<f4").tobytes()


@pytest.mark.parametrize(
    ("name", "body", "params", "message"),
    [
        ("tiny-kl", ZEROS, {"shape": [1, 24, 16], "height": 16}, "height, width: packed latents need both"),
        ("tiny-kl", ZEROS, {"shape": [1, 24, 16], "height": 16, "width": 16}, "are [B, 16, 16]; got [1, 24, 16]"),
        ("tiny-kl", ZEROS, {"shape": [1, 24, 16], "height": 2, "width": 2}, "under one 2x2 latent patch"),
        ("tiny-kl", ZEROS, {"shape": [1, 4, 8, 12], "seed": 3}, "seed: model 'tiny-kl' does not take it in its decode"),
        ("tiny-consistency", ZEROS, {"shape": [1, 4, 8, 12], "steps": 3}, "steps: between 2 and 2"),
        ("tiny-qwenimage21", ZEROS, {"shape": [1, 4, 1, 8, 12]}, "RGBA images, which JPEG cannot hold"),
        ("tiny-qwenimage", ZEROS, {"shape": [1, 4, 8, 12]}, "does not fit model 'tiny-qwenimage'"),
        (
            "tiny-qwenimage",
            ZEROS,
            {"shape": [1, 4, 1, 4, 6], "latents": "pipeline", "scaling_factor": 0.5},
            "latents=pipeline normalises as the model's pipeline does",
        ),
        ("tiny-kl", ZEROS, {"shape": [1, 24, 16], "height": 10**7, "width": 16}, "less than or equal to"),
    ],
)
def test_hostile_latent_layouts_get_4xx(
    server: str, name: str, body: bytes, params: dict[str, object], message: str
) -> None:
    answer = post(server, name, "decode", body, **params)
    assert answer.status_code == 422 and message in answer.text, answer.text


def test_encode_to_packed_pipeline_latents_is_the_inverse_of_decode(server: str) -> None:
    image = VaeImageProcessor().pil_to_numpy(photo())  # [1, 16, 16, 3] in [0, 1]
    body = np.ascontiguousarray(image.transpose(0, 3, 1, 2) * 2 - 1, "<f4")
    for name, count in (("tiny-kl", 16), ("tiny-qwenimage", 4)):
        answer = post(server, name, "encode", body.tobytes(), shape=list(body.shape), latents="pipeline", pack="true")
        assert answer.status_code == 200, answer.text
        packed = np.frombuffer(answer.content, "<f4").reshape(json.loads(answer.headers["shape"]))
        assert packed.shape == (1, count, 16)
        params = {"shape": list(packed.shape), "latents": "pipeline", "height": 16, "width": 16, "output_type": "pt"}
        again = post(server, name, "decode", packed.tobytes(), **params)
        raw = post(server, name, "encode", body.tobytes(), shape=list(body.shape))
        params = {"shape": json.loads(raw.headers["shape"]), "output_type": "pt"}
        direct = post(server, name, "decode", raw.content, **params)
        np.testing.assert_allclose(
            np.frombuffer(again.content, "<f4"), np.frombuffer(direct.content, "<f4"), rtol=0, atol=FLOAT_TOLERANCE
        )


def test_models_report_what_each_class_is(server: str) -> None:
    listed = {m["name"]: m for m in httpx.get(f"{server}/v1/models").json()["models"]}
    assert set(NAMES) <= set(listed)
    for name in NAMES:
        details, capabilities = listed[name]["details"], listed[name]["capabilities"]
        assert {"class", "latent_channels", "downsampling", "scaling_factor", "shift_factor"} <= set(details)
        stochastic = details["stochastic_encoder"]
        assert ("sample" in capabilities) == stochastic  # the N(0, I) prior of a posterior's KL term
        assert {"encode", "decode", "reconstruct", "score", "interpolate"} <= set(capabilities)
    qwen = listed["tiny-qwenimage"]
    assert qwen["latent_shape"] == [4, 1, None, None] and qwen["image_multiple"] == 4
    assert qwen["details"]["pipeline_latents"] == "(z - latents_mean) / latents_std, per channel"
    assert listed["tiny-qwenimage21"]["image_shape"][0] == 4
    assert listed["tiny-dc"]["details"]["stochastic_encoder"] is False
    assert listed["tiny-consistency"]["details"]["decode_options"].keys() == {"seed", "steps"}


@pytest.mark.parametrize("name", NAMES)
def test_uploads_are_reconstructed_and_scored_as_each_class_defines(server: str, name: str) -> None:
    channels = 4 if name == "tiny-qwenimage21" else 3
    buffer = io.BytesIO()
    photo(channels).save(buffer, format="PNG")
    files = [("files", ("photo.png", buffer.getvalue(), "image/png"))]
    reconstructed = httpx.post(f"{server}/v1/reconstruct", data={"model": name}, files=files, timeout=60)
    assert reconstructed.status_code == 200 and Image.open(io.BytesIO(reconstructed.content)).size == (16, 16)
    path = httpx.post(f"{server}/v1/interpolate", data={"model": name, "steps": 3}, files=files * 2, timeout=60)
    assert path.status_code == 200 and Image.open(io.BytesIO(path.content)).size == (3 * 16, 16)
    score = httpx.post(f"{server}/v1/score", data={"model": name}, files=files, timeout=60).json()["scores"][0]
    stochastic = name not in ("tiny-taesd", "tiny-dc", "tiny-vq")
    assert set(score) == ({"kl_nats", "mse", "psnr_db"} if stochastic else {"mse", "psnr_db"})


def test_a_single_frame_model_samples_its_prior(server: str) -> None:
    """N(0, I) latents [C, 1, h, w] at the native size (Qwen-Image's config has none: 512)."""
    sample = httpx.get(f"{server}/v1/sample", params={"model": "tiny-qwenimage", "n": 1, "seed": 2}, timeout=120)
    assert sample.status_code == 200 and Image.open(io.BytesIO(sample.content)).size == (512, 512)
