"""Triton's own Python client (`tritonclient[http]`) against the real server on the shipped
models: every v2 call it makes, and answers equal to /v1's for the same inputs and seed."""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from app.config import SHIPPED_MODEL_DIR, Settings
from tests.deploy.support import Replica, started_replicas
from tests.scrape import metric

MODELS = ["fashion-vae", "fashion-cvae"]
CLASSES = 10
SNEAKER = 7
SCORES = ("reconstruction_nats", "kl_nats", "elbo_nats", "nll_nats", "bits_per_dim")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    logs = tmp_path_factory.mktemp("v2-logs")
    with started_replicas(SHIPPED_MODEL_DIR, lambda name: logs / f"{name}.log") as start:
        yield start("v2")


@pytest.fixture(scope="module")
def client(server: Replica) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def v1(server: Replica) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    return triton.InferInput(name, list(array.shape), datatype).set_data_from_numpy(array, binary_data=binary)


def outputs(*names: str, binary: bool) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(name, binary_data=binary) for name in names]


def png_pixels(encoded: str) -> np.ndarray:
    """A /v1 JSON image as [H, W, 1] uint8."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))))[..., None]


def some_images(v1: httpx.Client, model: str, binary: bool) -> tuple[list[triton.InferInput], dict, list]:
    """Two sampled images (and, for the conditional model, their classes): as v2 inputs, and as
    /v1 form fields and PNG uploads."""
    pngs = v1.get("/v1/sample", params={"model": "fashion-cvae", "n": 2, "seed": 3, "format": "json"}).json()["images"]
    inputs = [tensor("images", np.stack([png_pixels(image) for image in pngs]), "UINT8", binary)]
    form: dict = {"model": model}
    if model == "fashion-cvae":
        inputs.append(tensor("labels", np.array([SNEAKER, 2], dtype=np.int64), "INT64", binary))
        form["labels"] = [str(SNEAKER), "2"]
    files = [("files", (f"{i}.png", base64.b64decode(image), "image/png")) for i, image in enumerate(pngs)]
    return inputs, form, files


def test_server_health_metadata_and_repository_index(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata() == {
        "name": "vaeserve",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }
    index = client.get_model_repository_index()
    operations = ("decode", "encode", "sample", "reconstruct", "score")
    names = [f"{model}.{op}" for model in sorted(MODELS) for op in operations]
    assert index == [{"name": name, "version": "1", "state": "READY", "reason": ""} for name in names]
    for name in names:
        assert client.is_model_ready(name) and client.is_model_ready(name, "1")
    assert not client.is_model_ready("fashion-vae.train") and not client.is_model_ready("fashion-vae.decode", "2")


def test_model_metadata_describes_every_tensor(client: triton.InferenceServerClient) -> None:
    images = {"name": "images", "datatype": "UINT8", "shape": [-1, 28, 28, 1]}
    latents = {"name": "latents", "datatype": "FP32", "shape": [-1, 64]}
    labels = {"name": "labels", "datatype": "INT64", "shape": [-1]}
    decode = client.get_model_metadata("fashion-cvae.decode")
    assert decode["name"] == "fashion-cvae.decode" and decode["versions"] == ["1"]
    assert decode["inputs"] == [latents, labels] and decode["outputs"] == [images]
    assert client.get_model_metadata("fashion-vae.decode", "1")["inputs"] == [latents]
    encode = client.get_model_metadata("fashion-vae.encode")
    assert encode["inputs"] == [images]
    assert encode["outputs"] == [{**latents, "name": "mean"}, {**latents, "name": "log_variance"}]
    sample = client.get_model_metadata("fashion-cvae.sample")
    assert [(t["name"], t["datatype"], t["shape"]) for t in sample["inputs"]] == [
        ("n", "INT64", [1]),
        ("seed", "INT64", [1]),
        ("temperature", "FP32", [1]),
        ("label", "INT64", [1]),
    ]
    assert [t.get("parameters") for t in sample["inputs"]] == [None] + [{"optional": True}] * 3
    assert sample["outputs"] == [images, latents, labels, {"name": "seed", "datatype": "INT64", "shape": [1]}]
    with pytest.raises(InferenceServerException, match="unknown model 'fashion-vae.train'"):
        client.get_model_metadata("fashion-vae.train")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", MODELS)
def test_decode_equals_v1(client: triton.InferenceServerClient, v1: httpx.Client, model: str, binary: bool) -> None:
    z = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    inputs = [tensor("latents", z, "FP32", binary)]
    body: dict = {"model": model, "latents": z.tolist(), "format": "json"}
    if model == "fashion-cvae":
        labels = np.array([SNEAKER, 0, 9], dtype=np.int64)
        inputs.append(tensor("labels", labels, "INT64", binary))
        body["labels"] = labels.tolist()
    result = client.infer(f"{model}.decode", inputs, outputs=outputs("images", binary=binary), request_id="d-1")
    assert result.get_response()["id"] == "d-1"
    expected = np.stack([png_pixels(image) for image in v1.post("/v1/decode", json=body).json()["images"]])
    np.testing.assert_array_equal(result.as_numpy("images"), expected)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", MODELS)
def test_encode_equals_v1(client: triton.InferenceServerClient, v1: httpx.Client, model: str, binary: bool) -> None:
    inputs, form, files = some_images(v1, model, binary)
    result = client.infer(f"{model}.encode", inputs, outputs=outputs("mean", "log_variance", binary=binary))
    posteriors = v1.post("/v1/encode", data=form, files=files).json()["latents"]
    for field in ("mean", "log_variance"):
        expected = np.array([q[field] for q in posteriors], dtype=np.float32)
        np.testing.assert_array_equal(result.as_numpy(field), expected)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", MODELS)
def test_reconstruct_and_score_equal_v1(
    client: triton.InferenceServerClient, v1: httpx.Client, model: str, binary: bool
) -> None:
    inputs, form, files = some_images(v1, model, binary)
    result = client.infer(f"{model}.reconstruct", inputs, outputs=outputs("images", "mean", binary=binary))
    expected = v1.post("/v1/reconstruct", data={**form, "format": "json"}, files=files).json()
    np.testing.assert_array_equal(result.as_numpy("images"), np.stack([png_pixels(i) for i in expected["images"]]))
    np.testing.assert_array_equal(result.as_numpy("mean"), np.array(expected["latents"], dtype=np.float32))
    k, seed = tensor("k", np.array([20]), "INT64", binary), tensor("seed", np.array([3]), "INT64", binary)
    result = client.infer(f"{model}.score", [*inputs, k, seed], outputs=outputs(*SCORES, binary=binary))
    scores = v1.post("/v1/score", data={**form, "k": "20", "seed": "3"}, files=files).json()["scores"]
    for name in SCORES:
        np.testing.assert_array_equal(result.as_numpy(name), np.array([s[name] for s in scores], dtype=np.float32))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize(("model", "label"), [("fashion-vae", None), ("fashion-cvae", SNEAKER), ("fashion-cvae", None)])
def test_sample_equals_v1(
    client: triton.InferenceServerClient, v1: httpx.Client, model: str, label: int | None, binary: bool
) -> None:
    inputs = [
        tensor("n", np.array([3]), "INT64", binary),
        tensor("seed", np.array([7], dtype=np.int32), "INT32", binary),
        tensor("temperature", np.array([0.8], dtype=np.float32), "FP32", binary),
    ]
    params: dict = {"model": model, "n": 3, "seed": 7, "temperature": 0.8, "format": "json"}
    if label is not None:
        inputs.append(tensor("label", np.array([label]), "INT64", binary))
        params["label"] = label
    result = client.infer(f"{model}.sample", inputs)  # no outputs named: all of them, binary
    expected = v1.get("/v1/sample", params=params).json()
    np.testing.assert_array_equal(result.as_numpy("images"), np.stack([png_pixels(i) for i in expected["images"]]))
    np.testing.assert_array_equal(result.as_numpy("latents"), np.array(expected["latents"], dtype=np.float32))
    assert result.as_numpy("seed").tolist() == [7]
    if model == "fashion-cvae":
        names = v1.get(f"/v1/models/{model}").json()["labels"]
        assert [names[i] for i in result.as_numpy("labels")] == expected["labels"]
        assert label is None or result.as_numpy("labels").tolist() == [label] * 3
    else:
        assert result.as_numpy("labels") is None


def test_sample_without_seed_returns_the_one_drawn(client: triton.InferenceServerClient) -> None:
    first = client.infer("fashion-vae.sample", [tensor("n", np.array([2]), "INT64", True)])
    seed = first.as_numpy("seed")
    again = client.infer(
        "fashion-vae.sample", [tensor("n", np.array([2]), "INT64", True), tensor("seed", seed, "INT64", True)]
    )
    np.testing.assert_array_equal(again.as_numpy("images"), first.as_numpy("images"))


def test_only_the_requested_outputs_each_in_its_format(client: triton.InferenceServerClient) -> None:
    inputs = [tensor("n", np.array([2]), "INT64", False), tensor("seed", np.array([1]), "INT64", False)]
    result = client.infer(
        "fashion-vae.sample", inputs, outputs=[triton.InferRequestedOutput("latents", binary_data=False)]
    )
    response = result.get_response()
    assert [output["name"] for output in response["outputs"]] == ["latents"]
    assert len(response["outputs"][0]["data"]) == 2 * 64 and result.as_numpy("latents").shape == (2, 64)


def raw_infer(v1: httpx.Client, model: str, document: dict, binary: bytes = b"", **headers: str) -> httpx.Response:
    header = json.dumps(document).encode()
    if binary:
        headers.setdefault("Inference-Header-Content-Length", str(len(header)))
    return v1.post(f"/v2/models/{model}/infer", content=header + binary, headers=headers)


def latents(shape: list[int], datatype: str = "FP32", **fields: object) -> dict:
    return {"name": "latents", "shape": shape, "datatype": datatype, **fields}


ONE = latents([1, 64], data=[0.0] * 64)
MALFORMED = {
    "wrong datatype": ({"inputs": [latents([1, 64], "INT64", data=[0] * 64)]}, b"", "datatype 'INT64' is not accepted"),
    "shape/data mismatch": (
        {"inputs": [latents([2, 64], data=[0.0] * 64)]},
        b"",
        "data has 64 values; the shape takes 128",
    ),
    "binary size mismatch": (
        {"inputs": [latents([1, 64], parameters={"binary_data_size": 256})]},
        b"\0" * 200,
        "binary data ends at byte 256 after the JSON header; the body has 200",
    ),
    "unknown input": ({"inputs": [ONE, {**ONE, "name": "noise"}]}, b"", "unknown input 'noise'"),
    "missing input": ({"inputs": []}, b"", "missing input: latents FP32 [-1, 64]"),
    "huge declared shape": (
        {"inputs": [latents([2**62, 64], parameters={"binary_data_size": 2**70})]},
        b"\0" * 16,
        "at most 64 rows allowed, got 4611686018427387904",
    ),
    "not finite": ({"inputs": [latents([1, 64], data=[float("nan")] * 64)]}, b"", "64 values are not finite"),
    "broken JSON": (None, b"", "not valid JSON"),
}


def batches(v1: httpx.Client) -> float:
    return metric(v1.get("/metrics").text, "vae_batch_size_count", model="fashion-vae", op="decode") or 0.0


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_bodies_get_400_and_run_nothing(
    client: triton.InferenceServerClient, v1: httpx.Client, case: str
) -> None:
    document, binary, message = MALFORMED[case]
    before = batches(v1)
    if document is None:
        response = v1.post("/v2/models/fashion-vae.decode/infer", content=b'{"inputs": [')
    else:
        response = raw_infer(v1, "fashion-vae.decode", document, binary)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert batches(v1) == before
    ok = client.infer("fashion-vae.decode", [tensor("latents", np.zeros((1, 64), np.float32), "FP32", True)])
    assert ok.as_numpy("images").shape == (1, 28, 28, 1)
    assert batches(v1) == before + 1


def test_the_client_reports_the_server_message(client: triton.InferenceServerClient) -> None:
    z = tensor("latents", np.zeros((1, 64), np.int32), "INT32", True)
    with pytest.raises(InferenceServerException) as error:
        client.infer("fashion-vae.decode", [z])
    assert error.value.status() == "400"
    assert "latents: datatype 'INT32' is not accepted; declared FP32" in error.value.message()
    with pytest.raises(InferenceServerException, match="unknown model 'fashion-vae.nope'"):
        client.infer("fashion-vae.nope", [z])


def api_v2_section() -> str:
    text = (Path(__file__).resolve().parents[4] / "docs" / "api.md").read_text()
    return text.split("\n## Open Inference Protocol (v2)\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.skipif(shutil.which("curl") is None, reason="the examples need curl (apt-get install curl)")
def test_every_docs_example(server: Replica, tmp_path: Path) -> None:
    """docs/api.md's v2 examples, curl and Python, against the server."""
    section = api_v2_section()
    commands = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert len(commands) == 5
    for block in commands:
        command = next(line for line in block.splitlines() if line.startswith("curl"))
        script = command.replace("curl ", "curl --fail-with-body -sS ", 1).replace("localhost:8000", server.url)
        done = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, check=False, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        body = done.stdout.encode()
        if written := re.search(r" -o (\S+)", command):  # the body in a file, the headers (-D -) shown
            body = (tmp_path / written[1]).read_bytes()
            length = int(re.search(r"(?i)inference-header-content-length: (\d+)", done.stdout)[1])
            body, binary = body[:length], body[length:]
            assert len(binary) == sum(o["parameters"]["binary_data_size"] for o in json.loads(body)["outputs"])
        got, shown = json.loads(body), block.split("\n# ", 1)[1]  # the answer the docs show
        assert got["model_name"] in command and shown.startswith(f'{{"model_name":"{got["model_name"]}"')
        assert all(f'"name":"{output["name"]}"' in shown for output in got["outputs"])
    python = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(python) == 1
    script = python[0].replace('"localhost:8000"', repr(server.url.removeprefix("http://")))
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_compressed_requests(client: triton.InferenceServerClient, compression: str) -> None:
    z = np.random.default_rng(2).standard_normal((2, 64)).astype(np.float32)
    plain = client.infer("fashion-vae.decode", [tensor("latents", z, "FP32", True)])
    packed = client.infer(
        "fashion-vae.decode",
        [tensor("latents", z, "FP32", True)],
        request_compression_algorithm=compression,
        response_compression_algorithm=compression,
    )
    np.testing.assert_array_equal(packed.as_numpy("images"), plain.as_numpy("images"))


def test_a_body_that_inflates_past_the_upload_limit_gets_413(v1: httpx.Client) -> None:
    bomb = gzip.compress(b" " * (Settings.model_fields["max_upload_bytes"].default + 1))
    response = v1.post("/v2/models/fashion-vae.decode/infer", content=bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413 and "inflates to more than" in response.json()["error"]
    broken = v1.post("/v2/models/fashion-vae.decode/infer", content=bomb[:100], headers={"Content-Encoding": "gzip"})
    assert broken.status_code == 400 and "gzip data ends early" in broken.json()["error"]
