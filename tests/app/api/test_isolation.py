"""One poisoned request batched among good ones, on each protocol: the good ones get the bytes
they get alone, the poisoned one its 4xx. The model is the test-only poison family
(tests/app/engine/poison_backend.py), whose decoder refuses one particular row inside the
batch, past every check made before batching: the isolation path, end to end."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.app.engine.poison_backend import HOLD, POISON, PoisonBackend
from tests.scrape import metric

POISON_FAMILY = "tests.app.engine.poison_backend:family"


@pytest.fixture(scope="module")
def client(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    folder = tmp_path_factory.mktemp("poison")
    (folder / "poison.poison.json").write_text('{"gain": 2.0}')
    with TestClient(create_app(settings.model_copy(update={"model_dir": folder, "backends": [POISON_FAMILY]}))) as c:
        yield c


def v1_json(client: TestClient, z: list[float]) -> httpx.Response:
    return client.post("/v1/decode", json={"model": "poison", "latents": [z], "format": "json"})


def binary(client: TestClient, z: list[float]) -> httpx.Response:
    params = {"shape": [1, 3], "output_type": "pt", "partial_postprocess": "true"}
    return client.post("/v1/models/poison/decode", params=params, content=np.array([z], "<f4").tobytes())


def v2(client: TestClient, z: list[float]) -> httpx.Response:
    latents = {"name": "latents", "shape": [1, 3], "datatype": "FP32", "data": z}
    return client.post("/v2/models/poison.decode/infer", json={"inputs": [latents]})


PROTOCOLS: dict[str, Callable[[TestClient, list[float]], httpx.Response]] = {
    "v1 json": v1_json,
    "binary tensor": binary,
    "v2": v2,
}
# What each protocol answers the poisoned request: its 4xx, in its own error body.
POISONED = {
    "v1 json": {"detail": "latents[0]: a first value of 13 is poison to this model"},
    "binary tensor": {"detail": "latents[0]: a first value of 13 is poison to this model"},
    "v2": {"error": "latents[0]: a first value of 13 is poison to this model"},
}


def until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.01)


def isolations(client: TestClient) -> float:
    return metric(client.get("/metrics").text, "vae_isolated_batches_total", model="poison", op="decode") or 0.0


@pytest.mark.parametrize("poisoned", list(PROTOCOLS))
def test_a_poisoned_request_fails_alone_and_its_batch_gets_the_bytes_it_gets_alone(
    client: TestClient, poisoned: str
) -> None:
    backend: PoisonBackend = client.app.state.service.engine.registry.get("poison").backend
    good = {name: [0.25 * i, -0.5, 1.5] for i, name in enumerate(PROTOCOLS, start=1)}
    alone = {name: send(client, good[name]) for name, send in PROTOCOLS.items()}
    assert all(answer.status_code == 200 for answer in alone.values())
    before = isolations(client)
    backend.gate.clear()
    backend.calls.clear()
    with ThreadPoolExecutor(5) as pool:
        try:
            holding = pool.submit(v1_json, client, [HOLD, 0.0, 0.0])  # holds the worker until the gate opens
            until(backend.holding.is_set)
            together = {name: pool.submit(send, client, good[name]) for name, send in PROTOCOLS.items()}
            bad = pool.submit(PROTOCOLS[poisoned], client, [POISON, 0.0, 0.0])
            until(lambda: metric(client.get("/metrics").text, "vae_queue_depth", model="poison") == 4)
        finally:
            backend.gate.set()
        assert holding.result().status_code == 200
        for name, answer in together.items():
            assert answer.result().status_code == 200, answer.result().text
            assert answer.result().content == alone[name].content, name
        assert bad.result().status_code == 422
        assert bad.result().json() == POISONED[poisoned]
    # The four ran as one batch (every row in one decode call), which failed and was isolated.
    rows = {good[name][0] for name in PROTOCOLS} | {POISON}  # each exact in float32
    assert any(rows <= set(call) for call in backend.calls)
    assert isolations(client) == before + 1


def test_a_poisoned_request_alone_is_its_4xx_and_nothing_is_isolated(client: TestClient) -> None:
    before = isolations(client)
    for name, send in PROTOCOLS.items():
        answer = send(client, [POISON, 1.0, 2.0])
        assert (answer.status_code, answer.json()) == (422, POISONED[name])
    assert isolations(client) == before
