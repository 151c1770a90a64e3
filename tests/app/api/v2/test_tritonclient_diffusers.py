"""tritonclient against a real server serving diffusers autoencoders: the v2 mapping follows from
what the backend says about itself (latents [C, h, w] of any image size, a Gaussian or a
deterministic encoder, no likelihood), and gives /v1's results for the same inputs."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.deploy.support import Replica
from tests.diffusers_models import TINY, save_every_class, served

pytest.importorskip("diffusers")
triton = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    folder = tmp_path_factory.mktemp("diffusers-v2")
    save_every_class(folder)
    with served(folder, tmp_path_factory.mktemp("logs")) as replica:
        yield replica


@pytest.fixture(scope="module")
def client(server: Replica) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120) as client:
        yield client


def binary_v1(server: Replica, path: str, body: bytes, **query: object) -> np.ndarray:
    """/v1's binary tensor answer as an array."""
    answer = httpx.post(server.url + path, content=body, params=query, timeout=120)
    assert answer.status_code == 200, answer.text
    shape = json.loads(answer.headers["shape"])
    return np.frombuffer(answer.content, dtype=answer.headers["dtype"]).reshape(shape)


def test_metadata_has_variable_sizes_and_only_what_each_model_defines(client: triton.InferenceServerClient) -> None:
    decode = client.get_model_metadata("tiny-kl.decode")
    assert decode["inputs"] == [{"name": "latents", "datatype": "FP32", "shape": [-1, 4, -1, -1]}]
    assert decode["outputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}]
    assert [o["name"] for o in client.get_model_metadata("tiny-kl.encode")["outputs"]] == ["mean", "log_variance"]
    assert [o["name"] for o in client.get_model_metadata("tiny-taesd.encode")["outputs"]] == ["mean"]
    score = client.get_model_metadata("tiny-kl.score")
    assert [i["name"] for i in score["inputs"]] == ["images"]  # no k: there is no likelihood to bound
    assert [o["name"] for o in score["outputs"]] == ["kl_nats", "mse", "psnr_db"]
    index = {model["name"] for model in client.get_model_repository_index()}
    assert {"tiny-kl.decode", "tiny-kl.encode", "tiny-taesd.decode", "tiny-taesd.encode"} <= index


@pytest.mark.parametrize("model", ["tiny-kl", "tiny-taesd", *TINY])
def test_decode_and_encode_equal_v1(client: triton.InferenceServerClient, server: Replica, model: str) -> None:
    info = httpx.get(f"{server.url}/v1/models/{model}").json()
    factor, channels = info["image_multiple"], info["image_shape"][0]
    shape = [1, *info["latent_shape"][:-2], 16 // factor, 12 // factor]  # [1, C, (1,) h, w] for 16x12 images
    z = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    latents = triton.InferInput("latents", list(z.shape), "FP32").set_data_from_numpy(z)
    images = client.infer(f"{model}.decode", [latents]).as_numpy("images")
    assert images.shape == (1, 16, 12, channels) and images.dtype == np.uint8
    shape = dict(shape=list(z.shape), dtype="float32", output_type="pt", partial_postprocess="true")
    expected = binary_v1(server, f"/v1/models/{model}/decode", z.tobytes(), **shape)
    np.testing.assert_array_equal(images, expected.reshape(images.shape))

    pixels = triton.InferInput("images", list(images.shape), "UINT8").set_data_from_numpy(images)
    mean = client.infer(f"{model}.encode", [pixels]).as_numpy("mean")
    chw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    expected = binary_v1(server, f"/v1/models/{model}/encode", chw.tobytes(), shape=list(chw.shape), dtype="uint8")
    np.testing.assert_array_equal(mean, expected)


def test_score_is_the_reconstruction_error_and_kl(client: triton.InferenceServerClient, server: Replica) -> None:
    images = np.random.default_rng(3).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    pixels = triton.InferInput("images", list(images.shape), "UINT8").set_data_from_numpy(images)
    result = client.infer("tiny-kl.score", [pixels])
    mse, psnr, kl = (result.as_numpy(name) for name in ("mse", "psnr_db", "kl_nats"))
    assert mse.shape == psnr.shape == kl.shape == (2,)
    np.testing.assert_allclose(psnr, 10 * np.log10(1 / mse), rtol=1e-5)
    assert (kl > 0).all() and (mse > 0).all()


def test_scores_follow_the_encoder(client: triton.InferenceServerClient) -> None:
    """A KL only where the encoder gives a posterior."""
    assert [o["name"] for o in client.get_model_metadata("tiny-dc.score")["outputs"]] == ["mse", "psnr_db"]
    outputs = client.get_model_metadata("tiny-qwenimage.score")["outputs"]
    assert [o["name"] for o in outputs] == ["kl_nats", "mse", "psnr_db"]
    images = np.random.default_rng(4).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    pixels = triton.InferInput("images", list(images.shape), "UINT8").set_data_from_numpy(images)
    assert client.infer("tiny-qwenimage.score", [pixels]).as_numpy("kl_nats")[0] > 0
