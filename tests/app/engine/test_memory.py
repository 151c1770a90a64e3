"""Memory: the estimate fitted from probes, its tiled regime, the pool that running batches
share, and admission: 413 for what can never fit, a wait for what fits once running work ends,
503 for what would wait past its deadline; with fake work and with a backend whose memory use
the test sets."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.api.errors import status_code
from app.engine.backend import ImageSpec
from app.engine.batcher import Batcher, Limits, Worker
from app.engine.errors import MemoryBudgetExceeded, MemoryBusy
from app.engine.memory import IO_COPIES, MARGIN, Footprint, MemoryPool, Need, fit, grown, peak_of
from app.engine.operations import ArrayJob, Engine, costs_of, pass_rows, sample_units
from app.engine.passes import Passes
from app.engine.registry import LoadedModel, Registry
from tests.app.engine.toy_backend import ToyBackend

MiB = 1 << 20
CPU = torch.device("cpu")
LIMITS = Limits(max_size=8, max_delay=0.0, max_queue=100, timeout=5.0)


def test_the_fit_takes_the_smallest_probes_peak_and_the_largest_probes_peak_per_element() -> None:
    footprint = fit([(4000, 40 * MiB, 12000), (1000, 25 * MiB, 3000)])
    assert footprint == Footprint(25 * MiB, 40 * MiB / 4000, 3.0)
    need = footprint.need(10_000, 8000, 16_000)
    assert need.work == 80 * MiB  # 8000 elements at the largest probe's 10 KiB each
    assert need.buffers == IO_COPIES * 4 * (1 + 3) * 10_000
    assert need.most == 160 * MiB
    assert footprint.need(10, 10, 10).work == 25 * MiB  # never below the smallest probe's peak
    assert fit([(4000, 40 * MiB, 0)], margin=2).need(8000, 8000, 8000).work == 160 * MiB  # with a margin
    assert fit([]) == Footprint()


def test_requests_in_one_batch_share_its_passes_up_to_a_full_one_and_add_their_buffers() -> None:
    a, b = Need(30, 5, 50), Need(30, 7, 40)
    assert a + b == Need(50, 12, 50)
    assert Need(10, 1, 50) + Need(20, 2, 50) == Need(30, 3, 50)
    assert sum([a, b], Need()) == a + b


@dataclass
class Tiled:
    """The parts of a backend that pass_rows reads: 8x downsampling, tiles above 64 pixels."""

    image: ImageSpec = ImageSpec(3, 64, 64, fixed_size=False, multiple=8)
    tiled_above: int | None = 64


def test_a_tiled_row_counts_one_tiles_elements_and_an_untiled_row_all_of_its_own() -> None:
    backend = Tiled()
    small = ArrayJob(np.zeros((2, 4, 8, 8), np.float32), None)  # 64 px a side: not tiled
    large = ArrayJob(np.zeros((1, 4, 32, 16), np.float32), None)  # 256 x 128 px: tiles of 64 x 64
    assert pass_rows(small, "decode", backend, 0) == (2, 4 * 8 * 8)
    assert pass_rows(large, "decode", backend, 0) == (1, 4 * 32 * 16 // 8)
    images = ArrayJob(np.zeros((1, 3, 256, 128), np.float32), None)
    assert pass_rows(images, "encode", backend, 0) == (1, 3 * 256 * 128 // 8)
    assert pass_rows(large, "decode", Tiled(tiled_above=None), 0) == (1, 4 * 32 * 16)


def test_the_peak_counts_what_a_run_held_at_once_not_what_it_kept() -> None:
    def run() -> float:
        held = torch.ones(16 * MiB // 4)  # 16 MiB, its pages written
        return float(held.sum())

    result, peak = peak_of(run, CPU)
    assert result == 4 * MiB
    assert 16 * MiB <= peak < 24 * MiB


def test_the_pool_says_how_long_a_request_waits_for_running_batches_to_end() -> None:
    async def main() -> None:
        pool = MemoryPool(100)
        assert pool.fits(Need(1000), alone=True)  # nothing running: whatever passed the budget check runs
        assert not pool.fits(Need(1000))  # but a batch is not assembled past the budget
        first = pool.reserve(Need(60), seconds=5)
        pool.reserve(Need(30), seconds=20)
        assert pool.fits(Need(10)) and not pool.fits(Need(11))
        assert 4 < pool.wait(Need(50)) <= 5  # once the first batch ends
        assert 19 < pool.wait(Need(80)) <= 20  # once both end
        released = pool.released()  # asked before the release, awaited after it: not missed
        pool.release(first)
        await asyncio.wait_for(released, 1)
        assert pool.reserved == 30 and pool.wait(Need(70)) == 0

    asyncio.run(main())


class Work:
    """Fake work that doubles its inputs, records its batches, and checks that the memory
    the pool reserved for the batches running at once never exceeds the budget."""

    def __init__(self, pool: MemoryPool, seconds: float = 0.0) -> None:
        self.pool, self.seconds = pool, seconds
        self.batches: list[list[int]] = []
        self.most = 0
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self._lock:
            self.batches.append(items)
            self.most = max(self.most, self.pool.reserved)
        time.sleep(self.seconds)
        return [2 * item for item in items]


def run(main: Callable[[Worker], Awaitable[Any]], threads: int = 2) -> Any:
    async def scoped() -> Any:
        worker = Worker(threads=threads)
        try:
            return await main(worker)
        finally:
            worker.close()

    return asyncio.run(scoped())


def test_a_request_that_does_not_fit_beside_running_work_waits_for_it() -> None:
    pool = MemoryPool(100)
    work = Work(pool, seconds=0.2)

    async def main(worker: Worker) -> list[int]:
        # Two batchers on a lane of two threads: without the pool both batches would run at once.
        a, b = (Batcher(name, work, worker, LIMITS, memory=pool) for name in "ab")
        first = asyncio.ensure_future(a.submit(1, need=Need(70)))
        await asyncio.sleep(0.05)
        return await asyncio.gather(first, b.submit(2, need=Need(70)))

    assert run(main) == [2, 4]
    assert work.batches == [[1], [2]] and work.most == 70 and pool.reserved == 0


def test_a_batch_takes_only_the_queued_requests_that_fit_in_order() -> None:
    pool = MemoryPool(100)
    work = Work(pool)

    async def main(worker: Worker) -> list[int]:
        batcher = Batcher("fake", work, worker, LIMITS, memory=pool)
        needs = [Need(0, 40), Need(0, 40), Need(0, 40), Need(0, 10)]
        return await asyncio.gather(*(batcher.submit(i, need=need) for i, need in enumerate(needs)))

    assert run(main, threads=1) == [0, 2, 4, 6]
    # The first runs at once; then 40 + 40 fit, the third does not, and the fourth waits behind it.
    assert work.batches == [[0], [1, 2], [3]] or work.batches == [[0, 1], [2, 3]]
    assert work.most <= 100


def test_a_request_whose_memory_frees_after_its_deadline_gets_503_at_once() -> None:
    pool = MemoryPool(100)
    work = Work(pool, seconds=0.3)

    async def main(worker: Worker) -> BaseException:
        # Long work holds the memory on a lane of its own: the short lane has no backlog.
        lane = Worker(name="long")
        try:
            holder = Batcher("long", work, lane, LIMITS, memory=pool)
            long = asyncio.ensure_future(holder.submit(1, cost=60.0, need=Need(80)))
            await asyncio.sleep(0.05)
            started = time.perf_counter()
            with pytest.raises(MemoryBusy) as refused:
                await Batcher("short", work, worker, LIMITS, memory=pool).submit(2, need=Need(30))
            assert time.perf_counter() - started < 0.1
            assert await long == 2
            return refused.value
        finally:
            lane.close()

    error = run(main)
    assert status_code(error) == 503 and 55 <= error.retry_after <= 60


class Hungry(ToyBackend):
    """The toy model, whose decode holds MIB_PER_ROW MiB per latent row while it runs: a
    model whose memory the test sets."""

    MIB_PER_ROW = 16

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        scratch = torch.ones(len(z) * self.MIB_PER_ROW * MiB // 4)
        return super().decode(z + scratch[0] - 1, labels)


class Batches:
    """A metrics sink that keeps the size of each batch."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def observe_batch(self, model: str, op: str, size: int, wait_s: float, waited_s: float) -> None:
        self.sizes.append(size)

    def queue_counter(self, model: str) -> Callable[[int], None]:
        return lambda delta: None

    def observe_drop(self, model: str, op: str) -> None: ...

    def observe_isolation(self, model: str, op: str) -> None: ...


def engine_run(main: Callable[[Engine], Awaitable[Any]], budget: int, batches: Batches | None = None) -> Any:
    async def scoped() -> Any:
        model = LoadedModel("hungry", Hungry(1.0), "0" * 64)
        engine = Engine(
            Registry([model], "hungry"),
            max_batch=4,
            max_delay=0.0,
            max_queue=16,
            queue_timeout=5.0,
            long_threads=0,
            memory_budget=budget,
            metrics=batches,
        )
        await engine.start()
        try:
            return await main(engine)
        finally:
            engine.close()

    return asyncio.run(scoped())


def latents(rows: int) -> np.ndarray:
    return np.zeros((rows, 3), np.float32)


def test_a_request_estimated_over_the_budget_gets_413_and_the_next_one_is_answered() -> None:
    async def main(engine: Engine) -> tuple[Need, BaseException, np.ndarray]:
        model = engine.model(None)
        need = engine.need(model, "decode", ArrayJob(latents(4), None))
        with pytest.raises(MemoryBudgetExceeded) as refused:
            await engine.decode(model, latents(4), None)
        return need, refused.value, await engine.decode(model, latents(1), None)

    need, error, pixels = engine_run(main, budget=80 * MiB)  # one row: 16 MiB, with the margin 24
    # Measured at load: a pass of 4 rows held 64 MiB (less what the process freed meanwhile).
    margin = MARGIN["cpu"]
    assert margin * (4 * Hungry.MIB_PER_ROW - 1) * MiB <= need.total < margin * 2 * 4 * Hungry.MIB_PER_ROW * MiB
    assert status_code(error) == 413
    assert "0.08 GiB this server has for requests" in str(error) and "smaller images or fewer items" in str(error)
    assert pixels.shape == (1, 8, 8, 3)


def test_requests_that_fit_alone_but_not_together_run_one_after_the_other() -> None:
    async def main(engine: Engine) -> list[np.ndarray]:
        model = engine.model(None)
        return await asyncio.gather(*(engine.decode(model, latents(2), None) for _ in range(3)))

    batches = Batches()
    # Two rows: 32 MiB measured, 48 estimated with the margin; four: 96.
    results = engine_run(main, budget=72 * MiB, batches=batches)
    assert [r.shape for r in results] == [(2, 8, 8, 3)] * 3
    assert batches.sizes == [2, 2, 2]  # without the budget: [2, 4], the last two batched


def test_frames_past_the_probes_count_at_the_growth_measured() -> None:
    footprint = grown(Footprint(0, 1000.0), (1000, 10 * MiB, 0), (2000, 15 * MiB, 0), frames=2)
    assert footprint.frames == 2 and footprint.growth == 0.5  # twice the frames, 1.5x the peak
    # 8 frames: 2 + 0.5 x 6 = 5 frames' worth of working memory.
    assert footprint.need(4000, 4000, 4000, frames=8).work == 1000 * 4000 * 5 // 8
    assert footprint.need(1000, 1000, 1000, frames=2).work == 1000 * 1000  # the probes' own frames
    assert grown(Footprint(), (1000, 10, 0), (2000, 30, 0), 2).growth == 1.0  # never more than per element


def test_a_video_models_probes_measure_the_growth_of_its_memory_with_the_frames(tmp_path: Path) -> None:
    diffusers_backend = pytest.importorskip("app.engine.backends.diffusers")
    from tests.diffusers_video_models import save_video_classes

    backend = diffusers_backend.load_diffusers(save_video_classes(tmp_path, ["tiny-wan"])["tiny-wan"], CPU)
    passes = Passes(backend, 1)
    passes.calibrate()
    _, measured = costs_of(passes, sample_units(passes))
    decode, encode = measured["decode"], measured["encode"]
    assert decode.frames == 2 and encode.frames == 5  # latent frames of the probes, and frames
    assert 0 <= decode.growth <= 1 and 0 <= encode.growth <= 1
