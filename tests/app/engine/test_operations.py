"""The real operations: same bytes alone, batched with any neighbours, or with batching off;
other settings agree within the stated tolerance; results match the model's own maths."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
import torch
from starlette.datastructures import State

from app.config import Settings
from app.engine.backends.vae import VAEBackend
from app.engine.errors import NeedsTooMuchMemory
from app.engine.operations import Engine, out_of_memory, to_pixels
from app.engine.passes import Passes
from app.engine.registry import LoadedModel, Registry
from app.main import make_engine
from app.server.observability import Metrics
from model import VAE


def engine_for(settings: Settings, models: list[LoadedModel]) -> Callable[..., Any]:
    """Runs `main(engine)` against a fresh Engine serving `models`, with its metrics."""

    def go(main: Callable[[Engine], Awaitable[Any]], **overrides: object) -> Any:
        async def scoped() -> Any:
            registry = Registry(models, models[0].name)
            engine = make_engine(settings.model_copy(update=overrides), registry, Metrics(State()))
            try:
                await engine.start()
                return await main(engine)
            finally:
                engine.close()

        return asyncio.run(scoped())

    return go


@pytest.fixture(scope="module")
def serve(settings: Settings, vae: VAE, cvae: VAE) -> Callable[..., Any]:
    models = [LoadedModel("tiny-vae", VAEBackend(vae), ""), LoadedModel("tiny-cvae", VAEBackend(cvae), "")]
    return engine_for(settings, models)


def flat(result: object) -> list[np.ndarray]:
    """Every array of an operation's result, in a fixed order."""
    if isinstance(result, np.ndarray):
        return [result]
    if isinstance(result, tuple | list):
        return [a for part in result for a in flat(part)]
    return [a for part in vars(result).values() if part is not None for a in flat(part)]


def identical(a: object, b: object) -> bool:
    return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(flat(a), flat(b), strict=True))


def requests(vae: VAE, cvae: VAE) -> list[Callable[[Engine], Awaitable[object]]]:
    """A mix of every operation on both models, with different sizes, seeds and labels."""
    g = torch.Generator().manual_seed(7)
    x = torch.rand(6, 1, 28, 28, generator=g).numpy()
    z = torch.randn(9, 4, generator=g).numpy()
    y = np.array([2, 0, 1])
    return [
        lambda e: e.sample(e.model("tiny-vae"), 3, 11, 1.0, None),
        lambda e: e.sample(e.model("tiny-vae"), 1, 12, 0.5, None),
        lambda e: e.sample(e.model("tiny-cvae"), 5, 13, 1.0, None),
        lambda e: e.sample(e.model("tiny-cvae"), 2, 14, 1.0, 1),
        lambda e: e.decode(e.model("tiny-vae"), z[:1], None),
        lambda e: e.decode(e.model("tiny-vae"), z[1:6], None),
        lambda e: e.decode(e.model("tiny-cvae"), z[6:9], y),
        lambda e: e.encode(e.model("tiny-vae"), x[:1], None),
        lambda e: e.encode(e.model("tiny-vae"), x[1:4], None),
        lambda e: e.encode(e.model("tiny-cvae"), x[4:6], y[:2]),
        lambda e: e.reconstruct(e.model("tiny-vae"), x[:2], None),
        lambda e: e.reconstruct(e.model("tiny-cvae"), x[2:5], y),
        lambda e: e.score(e.model("tiny-vae"), x[:1], None, 7, 3),
        lambda e: e.score(e.model("tiny-vae"), x[1:3], None, 5, 3),
        lambda e: e.score(e.model("tiny-cvae"), x[3:4], y[:1], 7, 0),
    ]


def test_batched_results_are_byte_identical_whatever_the_neighbours(
    serve: Callable[..., Any], vae: VAE, cvae: VAE
) -> None:
    calls = requests(vae, cvae)
    everything = list(range(len(calls)))
    compositions = [everything, everything[::-1], everything[::2], everything[1::2], everything[5:] + everything[:5]]

    async def alone(engine: Engine) -> list[object]:
        return [await call(engine) for call in calls]

    async def batched(engine: Engine) -> list[dict[int, object]]:
        runs = []
        for order in compositions:
            results = await asyncio.gather(*(calls[i](engine) for i in order))
            runs.append(dict(zip(order, results, strict=True)))
        sizes = engine.metrics.registry.get_sample_value(  # type: ignore[union-attr]
            "vae_batch_size_sum", {"model": "tiny-vae", "op": "sample"}
        )
        batches = engine.metrics.registry.get_sample_value(  # type: ignore[union-attr]
            "vae_batch_size_count", {"model": "tiny-vae", "op": "sample"}
        )
        assert (sizes, batches) == (4 + 4 + 3 + 1 + 4, 5)  # one batch per composition: really batched
        return runs

    reference = serve(alone)
    for results in serve(batched):
        for i, result in results.items():
            assert identical(result, reference[i]), f"request {i} changed when batched"
    unbatched = serve(alone, batching=False)
    assert all(identical(a, b) for a, b in zip(unbatched, reference, strict=True))
    # Another deployment's own promise: passes of 8 rows, so the score requests span several.
    reference = serve(alone, max_batch=8)
    for results in serve(batched, max_batch=8):
        assert all(identical(result, reference[i]) for i, result in results.items())


def close(a: object, b: object) -> bool:
    """Equal up to the rounding that kernels, batch shapes and threads change: float32 within
    rtol 1e-4 and atol 1e-5, pixels within one level (docs/api.md, "Reproducibility")."""
    for x, y in zip(flat(a), flat(b), strict=True):
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if x.dtype == np.uint8 and np.abs(x.astype(int) - y).max(initial=0) > 1:
            return False
        if x.dtype != np.uint8 and not np.allclose(x, y, rtol=1e-4, atol=1e-5):
            return False
    return True


def test_other_settings_agree_within_the_stated_tolerance(serve: Callable[..., Any], vae: VAE, cvae: VAE) -> None:
    calls = requests(vae, cvae)

    async def alone(engine: Engine) -> list[object]:
        return [await call(engine) for call in calls]

    reference = serve(alone)
    threads = torch.get_num_threads()
    try:
        for overrides in ({"max_batch": 8}, {"max_batch": 3}, {"torch_threads": 2}):
            other = serve(alone, **overrides)
            assert all(close(a, b) for a, b in zip(other, reference, strict=True)), overrides
    finally:
        torch.set_num_threads(threads)  # the inference thread set it for the whole process


def test_results_match_the_model_up_to_rounding(serve: Callable[..., Any], vae: VAE) -> None:
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))

    async def main(engine: Engine) -> tuple[np.ndarray, object]:
        model = engine.model("tiny-vae")
        return await engine.decode(model, z.numpy(), None), await engine.sample(model, 2, 5, 1.0, None)

    pixels, samples = serve(main)
    # Pixels are rounded from the model's output: batched rows may differ from it by ~1e-7, one
    # level at most where that crosses a rounding boundary.
    assert np.abs(pixels.astype(int) - to_pixels(vae.decode(z))).max() <= 1
    expected = to_pixels(vae.sample(2, generator=torch.Generator().manual_seed(5)))
    assert np.abs(samples.pixels.astype(int) - expected).max() <= 1  # type: ignore[attr-defined]


def test_calibration_finds_row_independent_passes(vae: VAE) -> None:
    passes = Passes(VAEBackend(vae), 16)
    with torch.inference_mode():
        passes.calibrate()
        assert passes.max_rows == 16 and 16 % passes.quantum == 0
        z = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
        together = passes.decode(z, None)
        for i in range(16):
            assert torch.equal(passes.decode(z[i : i + 1], None), together[i : i + 1])


def test_a_batch_out_of_memory_frees_it_and_runs_its_requests_again_in_parts(
    serve: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    decode = VAEBackend.decode
    calls: list[int] = []

    def short_of_memory(self: VAEBackend, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        calls.append(len(z))
        if len(calls) <= 2:  # the batch of three, then its first half: one request alone
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return decode(self, z, labels)

    z = np.zeros((1, 4), np.float32)

    async def main(engine: Engine) -> tuple[list[object], np.ndarray]:
        model = engine.model("tiny-vae")
        alone = await engine.decode(model, z, None)
        monkeypatch.setattr(VAEBackend, "decode", short_of_memory)  # after start-up's calibration
        together = await asyncio.gather(*(engine.decode(model, z, None) for _ in range(3)), return_exceptions=True)
        return together, alone

    (failed, *fitted), alone = serve(main)
    assert isinstance(failed, NeedsTooMuchMemory)
    assert str(failed) == (
        "tiny-vae decode: this request alone needs more cpu memory than is free; send smaller or fewer images or latents"
    )
    assert all(np.array_equal(pixels, alone) for pixels in fitted)  # the other half ran, as alone
    assert len(calls) == 3


def test_what_counts_as_out_of_memory() -> None:
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: 1 bytes")
    assert out_of_memory(cpu) and out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert out_of_memory(MemoryError())
    assert not out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
