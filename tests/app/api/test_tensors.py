"""The binary tensor endpoints, driven by diffusers' own client against a real server: what
remote_decode and remote_encode return equals what the same models give in-process.

Equal within a stated tolerance, not bit for bit: the service runs every pass at a padded
batch size (app/engine/passes.py), and a convolution on CPU can round a row differently in a
batch of 2 than alone; diffusers' preprocess also hands over channels-last images, whose
convolutions round differently again. tests/app/engine/backends/test_diffusers.py checks the
backend bit for bit against diffusers where the arithmetic is the same.

A conditional model's labels on these routes are tested in process, on tests/app's tiny-cvae."""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.tensors import tensor_bytes
from tests.diffusers_models import save_autoencoders, served

diffusers = pytest.importorskip("diffusers")
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.remote_utils import remote_decode, remote_encode

# Floats (latents, decoded images in [-1, 1]) and 8-bit pixels: served against in-process.
FLOAT_TOLERANCE = 1e-5
PIXEL_TOLERANCE = 1
MAX_PIXELS = 64 * 64
# diffusers' image processor for the tiny models, whose downsampling factor is 2 (SD's: 8).
PROCESSOR = VaeImageProcessor(vae_scale_factor=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> dict[str, Path]:
    """The tiny diffusers autoencoders and the project's tiny VAE, in one model folder."""
    folder = tmp_path_factory.mktemp("served-models")
    shutil.copy(model_dir / "tiny-vae.safetensors", folder)
    return save_autoencoders(folder)


@pytest.fixture(scope="module")
def server(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served(next(iter(models.values())).parent, tmp_path_factory.mktemp("logs"), MAX_PIXELS) as replica:
        yield replica.url


def reference(folder: Path) -> torch.nn.Module:
    config = (folder / "config.json").read_text()
    cls = diffusers.AutoencoderTiny if "AutoencoderTiny" in config else diffusers.AutoencoderKL
    return cls.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False).eval()


def latents(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def photo(width: int = 16, height: int = 12) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@torch.inference_mode()
def decoded(model: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    return model.decode(z).sample


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_remote_decode_pil_equals_in_process(server: str, models: dict[str, Path], dtype: torch.dtype) -> None:
    z = latents(1, 4, 6, 8).to(dtype)
    image = remote_decode(
        f"{server}/v1/models/tiny-kl/decode", z, scaling_factor=0.5, shift_factor=0.25, image_format="png"
    )
    expected = VaeImageProcessor().postprocess(decoded(reference(models["tiny-kl"]), z.float() / 0.5 + 0.25))[0]
    assert image.size == (16, 12) and image.format == "png"
    assert_pixels_close(np.asarray(image), np.asarray(expected))


def test_remote_decode_jpeg(server: str) -> None:
    image = remote_decode(f"{server}/v1/models/tiny-taesd/decode", latents(1, 4, 8, 8), image_format="jpg")
    assert image.size == (16, 16) and image.format == "jpeg"


def test_remote_decode_pt_pixels_equal_in_process(server: str, models: dict[str, Path]) -> None:
    z = latents(2, 4, 4, 6, seed=1).half()
    pixels = remote_decode(
        f"{server}/v1/models/tiny-taesd/decode", z, output_type="pt", partial_postprocess=True, return_type="pt"
    )
    expected = VaeImageProcessor().postprocess(decoded(reference(models["tiny-taesd"]), z.float()), output_type="np")
    assert pixels.dtype == torch.uint8 and tuple(pixels.shape) == (2, 8, 12, 3)
    assert_pixels_close(pixels.numpy(), (expected * 255).round())


def test_remote_decode_pt_floats_within_tolerance(server: str, models: dict[str, Path]) -> None:
    z = latents(2, 4, 6, 6, seed=2)
    out = remote_decode(
        f"{server}/v1/models/tiny-kl/decode",
        z,
        output_type="pt",
        return_type="pt",
        processor=VaeImageProcessor(),
        scaling_factor=0.5,
    )
    expected = decoded(reference(models["tiny-kl"]), z / 0.5)
    assert out.dtype == torch.float32
    assert_floats_close(out, expected)
    image = remote_decode(
        f"{server}/v1/models/tiny-kl/decode", z[:1], output_type="pt", processor=VaeImageProcessor(), scaling_factor=0.5
    )
    assert_pixels_close(np.asarray(image), np.asarray(VaeImageProcessor().postprocess(expected[:1])[0]))


def test_remote_encode_image_equals_in_process(server: str, models: dict[str, Path]) -> None:
    image = photo()
    x = PROCESSOR.preprocess(image)
    with torch.inference_mode():
        model = reference(models["tiny-kl"])
        q = model.encode(x).latent_dist
        mean = (q.mean - 0.25) * 0.5
        draw = (q.sample(torch.Generator().manual_seed(5)) - 0.25) * 0.5
        tiny = reference(models["tiny-taesd"]).encode(x).latents
    endpoint = f"{server}/v1/models/tiny-kl/encode"
    assert_floats_close(remote_encode(endpoint, image, scaling_factor=0.5, shift_factor=0.25), mean)
    params = {"sample": "true", "seed": 5, "scaling_factor": 0.5, "shift_factor": 0.25}
    assert_floats_close(from_response(httpx.post(endpoint, content=png(image), params=params)), draw)
    assert_floats_close(remote_encode(f"{server}/v1/models/tiny-taesd/encode", image), tiny)


def test_remote_encode_tensor(server: str, models: dict[str, Path]) -> None:
    # [-1, 1], diffusers' model input. Contiguous: for a channels-last tensor, as preprocess makes,
    # remote_encode reads the bytes of a temporary copy already freed, and sends garbage.
    x = PROCESSOR.preprocess(photo()).contiguous()
    with torch.inference_mode():
        expected = reference(models["tiny-kl"]).encode(x).latent_dist.mean
    endpoint = f"{server}/v1/models/tiny-kl/encode"
    assert_floats_close(remote_encode(endpoint, x), expected)
    pixels = torch.from_numpy(np.asarray(photo()).transpose(2, 0, 1).copy())[None]  # uint8 [1, 3, H, W]
    assert torch.equal(remote_encode(endpoint, pixels), remote_encode(endpoint, photo()))  # the same arithmetic


def test_the_projects_own_models_take_binary_tensors(server: str) -> None:
    z = latents(3, 4, seed=3)
    pixels = remote_decode(
        f"{server}/v1/models/tiny-vae/decode", z, output_type="pt", partial_postprocess=True, return_type="pt"
    )
    as_json = httpx.post(f"{server}/v1/decode", json={"model": "tiny-vae", "latents": z.tolist(), "format": "json"})
    expected = [np.asarray(Image.open(io_bytes(b64))) for b64 in as_json.json()["images"]]
    assert tuple(pixels.shape) == (3, 28, 28, 1)
    assert np.array_equal(pixels.numpy()[..., 0], np.stack(expected))
    shirt = np.zeros((1, 1, 28, 28), np.uint8)
    shirt[..., 8:20, 10:18] = 255
    binary = remote_encode(f"{server}/v1/models/tiny-vae/encode", torch.from_numpy(shirt))
    files = {"files": ("shirt.png", png(Image.fromarray(shirt[0, 0])), "image/png")}
    means = httpx.post(f"{server}/v1/encode", data={"model": "tiny-vae"}, files=files).json()["latents"][0]["mean"]
    assert binary.shape == (1, 4) and np.allclose(binary.numpy()[0], means, rtol=0, atol=0)


def test_concurrent_requests_of_several_shapes(server: str, models: dict[str, Path]) -> None:
    zs = [latents(1, 4, 4 + 2 * (i % 3), 6, seed=10 + i) for i in range(9)]

    def one(z: torch.Tensor) -> torch.Tensor:
        return remote_decode(
            f"{server}/v1/models/tiny-kl/decode",
            z,
            do_scaling=False,  # the latents as they are; do_scaling alone would apply the model's factors
            output_type="pt",
            partial_postprocess=True,
            return_type="pt",
        )

    with ThreadPoolExecutor(9) as pool:
        results = list(pool.map(one, zs))
    model = reference(models["tiny-kl"])
    for z, got in zip(zs, results, strict=True):
        expected = VaeImageProcessor().postprocess(decoded(model, z), output_type="np")
        assert_pixels_close(got.numpy(), (expected * 255).round())


def assert_floats_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=0, atol=FLOAT_TOLERANCE), (got - expected).abs().max()


def assert_pixels_close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    assert np.abs(got.astype(np.int16) - expected.astype(np.int16)).max() <= PIXEL_TOLERANCE


def post(server: str, name: str, op: str, body: bytes, **params: object) -> httpx.Response:
    return httpx.post(f"{server}/v1/models/{name}/{op}", content=body, params=params, timeout=30)


@pytest.mark.parametrize(
    ("name", "body", "params", "status", "message"),
    [
        (
            "tiny-kl",
            b"\0" * 10,
            {"shape": [1, 4, 2, 2], "dtype": "float32"},
            422,
            "body: 10 bytes, but shape [1, 4, 2, 2]",
        ),
        ("tiny-kl", b"", {"shape": [1, 4, 2000, 2000], "dtype": "float32"}, 422, "at most 4096 allowed"),
        ("tiny-kl", b"", {"shape": [100, 4, 2, 2], "dtype": "float32"}, 422, "shape[0]: latents: at most 4 allowed"),
        ("tiny-kl", b"\0" * 64, {"shape": [1, 4, 2, 2], "dtype": "float64"}, 422, "dtype: 'float64' is not one of"),
        ("tiny-kl", b"\0" * 64, {"shape": [1, 3, 2, 2], "dtype": "float32"}, 422, "does not fit model 'tiny-kl'"),
        ("tiny-vae", b"\0" * 20, {"shape": [5], "dtype": "float32"}, 422, "does not fit model 'tiny-vae'"),
        ("tiny-kl", b"\0" * 64, {"dtype": "float32"}, 422, "shape: required"),
        ("tiny-vae", b"\0" * 16, {"shape": [1, 4], "latents": "pipeline"}, 422, "has no pipeline latents"),
        ("tiny-vae", b"\0" * 16, {"shape": [1, 1, 4], "height": 4, "width": 4}, 422, "which are never packed"),
        ("nope", b"", {"shape": [1]}, 404, "unknown model 'nope'"),
    ],
)
def test_hostile_tensors_get_4xx_and_the_server_stays_fine(
    server: str, name: str, body: bytes, params: dict[str, object], status: int, message: str
) -> None:
    answer = post(server, name, "decode", body, **params)
    assert answer.status_code == status and message in answer.json()["detail"], answer.text
    healthy = remote_decode(
        f"{server}/v1/models/tiny-kl/decode",
        latents(1, 4, 2, 2),
        output_type="pt",
        partial_postprocess=True,
        return_type="pt",
    )
    assert tuple(healthy.shape) == (1, 4, 4, 3)


def test_nan_and_inf_latents_are_refused(server: str) -> None:
    z = latents(1, 4, 2, 2)
    z[0, 1, 1, 0] = math.nan
    data, shape, dtype = tensor_bytes(z)
    answer = post(server, "tiny-kl", "decode", data, shape=shape, dtype=dtype)
    assert answer.status_code == 422 and "1 values are NaN or infinite" in answer.json()["detail"]
    huge = np.full((1, 4, 2, 2), 1e38, "<f4").tobytes()
    overflow = post(server, "tiny-kl", "decode", huge, shape=[1, 4, 2, 2], scaling_factor=0.001)
    assert overflow.status_code == 422 and "overflow float32" in overflow.json()["detail"]
    odd = post(server, "tiny-kl", "encode", png(photo(15, 12)))
    assert odd.status_code == 422 and "multiples of 2" in odd.json()["detail"]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def io_bytes(b64: str) -> io.BytesIO:
    return io.BytesIO(base64.b64decode(b64))


def from_response(response: httpx.Response) -> torch.Tensor:
    assert response.status_code == 200, response.text
    shape, dtype = json.loads(response.headers["shape"]), response.headers["dtype"]
    return torch.frombuffer(bytearray(response.content), dtype=getattr(torch, dtype)).reshape(shape)


def test_do_scaling_alone_applies_the_models_own_factors(server: str) -> None:
    """What diffusers' client sends when given no scaling_factor, as its hosted endpoints read it."""
    z = latents(1, 4, 4, 4, seed=4)
    options = {"output_type": "pt", "partial_postprocess": True, "return_type": "pt"}
    own = remote_decode(f"{server}/v1/models/tiny-kl/decode", z, **options)
    explicit = remote_decode(f"{server}/v1/models/tiny-kl/decode", z, scaling_factor=0.5, shift_factor=0.25, **options)
    assert torch.equal(own, explicit)


def test_unknown_query_parameters_are_refused(server: str) -> None:
    answer = post(server, "tiny-kl", "decode", b"\0" * 64, shape=[1, 4, 2, 2], sclaing_factor=0.5)
    assert answer.status_code == 422 and answer.json()["detail"].startswith("sclaing_factor: unknown query parameter")


def floats(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.frombuffer(response.content, "<f4").reshape(json.loads(response.headers["shape"]))


def test_a_conditional_model_takes_one_label_per_row_on_the_binary_routes(client: TestClient, shirt: bytes) -> None:
    encode, decode = "/v1/models/tiny-cvae/encode", "/v1/models/tiny-cvae/decode"
    missing = client.post(encode, content=shirt)
    assert missing.status_code == 422
    assert missing.json() == {
        "detail": "labels: model 'tiny-cvae' is conditional: give one label per image, a class name or index "
        "(Circle, Square, Cross)"
    }
    by_name = floats(client.post(encode, content=shirt, params={"labels": "Square"}))
    assert np.array_equal(floats(client.post(encode, content=shirt, params={"labels": "1"})), by_name)
    files = {"files": ("shirt.png", shirt, "image/png")}
    as_json = client.post("/v1/encode", data={"model": "tiny-cvae", "labels": "Square"}, files=files)
    assert np.array_equal(by_name, np.array([as_json.json()["latents"][0]["mean"]], np.float32))
    z = np.zeros((2, 4), "<f4").tobytes()
    params = {"shape": [2, 4], "output_type": "pt", "partial_postprocess": "true"}
    pixels = client.post(decode, content=z, params={**params, "labels": ["Circle", "Cross"]})
    assert pixels.status_code == 200 and pixels.headers["shape"] == "[2, 28, 28, 1]"
    assert client.post(decode, content=z, params={**params, "labels": ["0", "2"]}).content == pixels.content
    one = client.post(decode, content=z, params={**params, "labels": "Circle"})
    assert (one.status_code, one.json()) == (422, {"detail": "labels: 1 labels for 2 latents; give one per latent"})
    unconditional = client.post("/v1/models/tiny-vae/encode", content=shirt, params={"labels": "Circle"})
    assert unconditional.status_code == 422
    assert unconditional.json() == {"detail": "labels: model 'tiny-vae' is unconditional; leave labels out"}


def test_requests_without_labels_for_a_conditional_model_fail_alone(client: TestClient, shirt: bytes) -> None:
    """The issue's case: binary encodes without labels raced against good JSON encodes used to
    share their batches and fail them all with 500; now they are refused before batching."""
    body = {"model": "tiny-cvae", "images": [base64.b64encode(shirt).decode()], "labels": ["Circle"]}
    alone = client.post("/v1/encode", json=body).content
    with ThreadPoolExecutor(8) as pool:
        bad = [pool.submit(client.post, "/v1/models/tiny-cvae/encode", content=shirt) for _ in range(10)]
        good = [pool.submit(client.post, "/v1/encode", json=body) for _ in range(10)]
        assert {(f.result().status_code, f.result().content) for f in good} == {(200, alone)}
        assert {f.result().status_code for f in bad} == {422}
