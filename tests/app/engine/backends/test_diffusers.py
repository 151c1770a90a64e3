"""The diffusers backend computes what diffusers computes, in-process, bit for bit; served, it
answers every endpoint with what its family defines."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.engine.backends.diffusers import (
    DiffusersBackend,
    DiffusersError,
    LatentGaussian,
    compute_dtype,
    load_diffusers,
)
from app.engine.backends.diffusers_folders import read_json
from app.engine import progress
from app.engine.errors import Abandoned, StartupError
from app.engine.operations import ArrayJob, SampleJob, run_encode, run_sample
from app.engine.passes import Passes
from app.main import create_app, load_models
from tests.diffusers_models import save_autoencoders

diffusers = pytest.importorskip("diffusers")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_autoencoders(tmp_path_factory.mktemp("diffusers"))


def reference(folder: Path) -> torch.nn.Module:
    config = read_json(folder / "config.json")
    return (
        getattr(diffusers, config["_class_name"])
        .from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
        .eval()
    )


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


def test_half_precision_on_a_gpu_unless_the_model_says_it_overflows() -> None:
    cuda = torch.device("cuda")
    assert compute_dtype(cuda, force_upcast=False) == torch.float16
    assert compute_dtype(cuda, force_upcast=True) == torch.float32  # SDXL's VAE sets force_upcast
    assert compute_dtype(CPU, force_upcast=False) == torch.float32
    assert compute_dtype(cuda, False, "bfloat16") == torch.bfloat16  # Flux.2, Qwen-Image: as their pipelines
    assert compute_dtype(cuda, True, "bfloat16") == torch.float32
    assert compute_dtype(CPU, False, "bfloat16") == torch.float32


@torch.inference_mode()
def test_a_half_precision_model_takes_and_gives_float32(folders: dict[str, Path]) -> None:
    # The float16 path a GPU takes, run on the CPU: inputs cast to the model's dtype, outputs
    # back to float32, results within float16's precision of the float32 model's.
    full, half = load_diffusers(folders["tiny-kl"], CPU), DiffusersBackend(reference(folders["tiny-kl"]).half())
    x = images(2)
    assert half.dtype == torch.float16 and half.describe()["dtype"] == "float16"
    q_full, q_half = full.encode(x), half.encode(x)
    assert q_half.mean.dtype == torch.float16
    torch.testing.assert_close(q_half.mean.float(), q_full.mean, rtol=0, atol=2e-2)
    decoded = half.decode(q_full.mean)
    assert decoded.dtype == torch.float32
    torch.testing.assert_close(decoded, full.decode(q_full.mean), rtol=0, atol=2e-2)
    assert half.max_rows == full.max_rows == 1  # on a CPU every row runs alone
    # What the engine hands back is float32 whatever the model computes in.
    passes = Passes(half, 1)
    passes.calibrate()
    (encoding,) = run_encode(passes, [ArrayJob(x[:1].numpy(), None, seed=4)])
    assert {a.dtype for a in (encoding.mean, encoding.variance, encoding.sample)} == {np.dtype("float32")}
    (drawn,) = run_sample(passes, [SampleJob(1, 5, 1.0, None)])
    assert drawn.latents.dtype == np.float32 and drawn.pixels.dtype == np.uint8


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


class Heard:
    def __init__(self) -> None:
        self.steps: list[tuple[int, int, str]] = []

    def admitted(self, model: str, operation: str) -> None:
        pass

    def progress(self, done: int, total: int, unit: str) -> None:
        self.steps.append((done, total, unit))


@torch.inference_mode()
def test_a_tiled_decode_reports_its_tiles_and_stops_between_them(folders: dict[str, Path]) -> None:
    backend = load_diffusers(folders["tiny-kl"], CPU, tile=16)
    z = torch.randn(1, 4, 20, 12, generator=torch.Generator().manual_seed(2))  # 4 x 2 tiles of 8, stride 6
    loop = asyncio.new_event_loop()
    try:
        heard = Heard()
        tracker = progress.BatchProgress("tiny-kl decode", loop, [heard], lambda: False)
        progress.tracked(backend.decode, tracker)(z)
        loop.run_until_complete(asyncio.sleep(0.01))  # the reports, queued on the loop
        assert heard.steps == [(i, 8, "tiles") for i in range(1, 9)]
        stopped = progress.BatchProgress("tiny-kl decode", loop, [], lambda: True)
        stopped.stop.set()  # what the check after a step sets once nobody waits
        with pytest.raises(Abandoned):
            progress.tracked(backend.decode, stopped)(z)
    finally:
        loop.close()


def test_uploads_must_fit_the_downsampling(folders: dict[str, Path]) -> None:
    backend = load_diffusers(folders["tiny-kl"], CPU)
    pixels = np.random.default_rng(0).integers(0, 256, (6, 4, 3), dtype=np.uint8)
    x = backend.to_input(Image.fromarray(pixels))
    assert x.shape == (3, 6, 4) and np.array_equal(x, pixels.transpose(2, 0, 1) / np.float32(255))
    with pytest.raises(DiffusersError, match="4x5; this model needs sides that are multiples of 2"):
        backend.to_input(Image.fromarray(pixels[:5]))


def test_folders_that_are_no_autoencoder_say_why(tmp_path: Path) -> None:
    with pytest.raises(DiffusersError, match="no config.json"):
        load_diffusers(tmp_path, CPU)
    (tmp_path / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(DiffusersError, match="_class_name is 'UNet2DModel'; served classes: AutoencoderKL"):
        load_diffusers(tmp_path, CPU)


@pytest.fixture(scope="module")
def client(folders: dict[str, Path]) -> Iterator[TestClient]:
    settings = Settings(model_dir=folders["tiny-kl"].parent, device="cpu", torch_threads=1, max_files=4)
    with TestClient(create_app(settings)) as client:
        yield client


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


PHOTO = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)


def test_served_like_the_shipped_models(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    kl, tiny = models["tiny-kl"], models["tiny-taesd"]
    assert kl["family"] == tiny["family"] == "diffusers"
    assert kl["capabilities"] == ["sample", "encode", "decode", "reconstruct", "score", "interpolate"]
    assert tiny["capabilities"] == ["encode", "decode", "reconstruct", "score", "interpolate"]  # no prior
    assert kl["latent_shape"] == [4, None, None] and kl["image_multiple"] == 2 and kl["likelihood"] is None
    assert kl["details"]["class"] == "AutoencoderKL" and kl["details"]["shift_factor"] == 0.25
    files = [("files", ("photo.png", png(PHOTO), "image/png"))]
    encoded = client.post("/v1/encode", data={"model": "tiny-kl"}, files=files).json()["latents"][0]
    assert np.array(encoded["mean"]).shape == (4, 6, 8) and np.array(encoded["variance"]).shape == (4, 6, 8)
    assert client.post("/v1/encode", data={"model": "tiny-taesd"}, files=files).json()["latents"][0]["variance"] is None
    reconstructed = client.post("/v1/reconstruct", data={"model": "tiny-kl"}, files=files)
    assert Image.open(io.BytesIO(reconstructed.content)).size == (16, 12)
    path = client.post("/v1/interpolate", data={"model": "tiny-taesd", "steps": 3}, files=files * 2)
    assert Image.open(io.BytesIO(path.content)).size == (3 * 16, 12)
    sample = client.get("/v1/sample", params={"model": "tiny-kl", "n": 2, "seed": 1, "nrow": 2})
    assert Image.open(io.BytesIO(sample.content)).size == (64, 32)  # sample_size 32, the prior's native size


def test_scores_are_what_each_family_defines(client: TestClient, folders: dict[str, Path]) -> None:
    files = [("files", ("photo.png", png(PHOTO), "image/png"))]
    kl = client.post("/v1/score", data={"model": "tiny-kl"}, files=files).json()["scores"][0]
    assert set(kl) == {"kl_nats", "mse", "psnr_db"}  # no likelihood: no nats, ELBO, NLL
    backend = load_diffusers(folders["tiny-kl"], CPU)
    x = torch.from_numpy(backend.to_input(Image.fromarray(PHOTO)))[None]
    with torch.inference_mode():
        q = backend.encode(x)
        mse = ((backend.decode(q.mean).clamp(0, 1) - x) ** 2).mean().item()
        assert kl["kl_nats"] == pytest.approx(q.kl().item(), rel=1e-5)
    assert kl["mse"] == pytest.approx(mse, rel=1e-4) and kl["psnr_db"] == pytest.approx(
        10 * np.log10(1 / mse), rel=1e-4
    )
    tiny = client.post("/v1/score", data={"model": "tiny-taesd"}, files=files).json()["scores"][0]
    assert set(tiny) == {"mse", "psnr_db"}  # deterministic encoder: no KL either
    asked = client.post("/v1/score", data={"model": "tiny-kl", "k": "10"}, files=files)
    assert (
        asked.status_code == 422 and "defines no likelihood p(x|z), so no NLL, ELBO or IWAE" in asked.json()["detail"]
    )


def test_what_a_model_lacks_is_a_4xx(client: TestClient) -> None:
    no_prior = client.get("/v1/sample", params={"model": "tiny-taesd"})
    assert no_prior.status_code == 422 and "has no prior p(z)" in no_prior.json()["detail"]
    as_json = client.post("/v1/decode", json={"model": "tiny-kl", "latents": [[0.0] * 4]})
    assert as_json.status_code == 422 and "[4, ?, ?]" in as_json.json()["detail"]
    odd = client.post(
        "/v1/encode", data={"model": "tiny-kl"}, files=[("files", ("a.png", png(PHOTO[:, :15]), "image/png"))]
    )
    assert odd.status_code == 422 and "multiples of 2" in odd.json()["detail"]
    sizes = [("files", ("a.png", png(PHOTO), "image/png")), ("files", ("b.png", png(PHOTO[:, :14]), "image/png"))]
    mixed = client.post("/v1/encode", data={"model": "tiny-kl"}, files=sizes)
    assert mixed.status_code == 422
    assert mixed.json()["detail"] == "files[1] (b.png): image is 14x12; the images of one request share one size (16x12)"


def test_an_out_of_memory_fails_its_batch_and_the_next_one_works(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = client.app.state.service.engine.registry.get("tiny-taesd").backend.model
    decode = model.decode
    calls = []

    def once_out_of_memory(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return decode(*args, **kwargs)

    monkeypatch.setattr(model, "decode", once_out_of_memory)
    body, params = np.zeros((1, 4, 4, 4), "<f4").tobytes(), {"shape": [1, 4, 4, 4], "output_type": "pt"}
    failed = client.post("/v1/models/tiny-taesd/decode", content=body, params=params)
    assert failed.status_code == 413
    assert failed.json()["detail"] == (
        "tiny-taesd decode: this request alone needs more cpu memory than is free; "
        "send smaller or fewer images or latents"
    )
    assert client.post("/v1/models/tiny-taesd/decode", content=body, params=params).status_code == 200


def test_one_folder_as_vae_checkpoint_and_a_bad_one_stops_start_up(folders: dict[str, Path], tmp_path: Path) -> None:
    registry = load_models(Settings(checkpoint=folders["tiny-taesd"], device="cpu"))
    assert list(registry.models) == ["tiny-taesd"] and registry.get(None).backend.family == "diffusers"
    bad = tmp_path / "unet"
    bad.mkdir()
    (bad / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    (bad / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(StartupError, match="^cannot load model .*unet/config.json: _class_name is 'UNet2DModel'"):
        load_models(Settings(checkpoint=bad, device="cpu"))
