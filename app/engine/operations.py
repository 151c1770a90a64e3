"""The served operations: every model call, batched across requests and run off the event loop.

Callers hand over NumPy arrays and get NumPy arrays back, images as uint8 pixels; each request
is checked (`LoadedModel.checked`) before it joins a batch, so that it cannot fail the requests
batched with it. Torch runs only in the inference threads, where a batch pays each torch call's
overhead (~5 us under load, with a hand-over of the GIL) once, not once per request on the
event loop. Each (model, operation) has a `Batcher` (app/engine/batcher.py): concurrent
requests queue there and run together as batch-invariant passes (app/engine/passes.py), on one
of two lanes that all batchers share: a request whose estimated cost (app/engine/cost.py) is
`long_cost` seconds or more runs on the long lane's threads, every other on the short lane's
thread, so short work never waits behind long work, and long work keeps its threads whatever
the flood of short work. Every lane thread runs torch with the same thread count, the one the
passes were calibrated with, so a request's bytes do not depend on its lane. The maths is the model side's (the backend's
`prior`, posterior draws and `log_weights`, model/vae.py's `seeded`, `elbo_terms` and
`iwae_bound`): each request draws from its own generator seeded by the request, for its own rows,
so a request's result never depends on what it was batched with (same seed, same bytes, with
batching on or off) and equals what `VAE.sample`, `VAE.elbo` and `VAE.iwae` give for it alone.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch

from app.engine import progress
from app.engine.backend import NEEDS, Backend, Operation
from app.engine.batcher import Batcher, Gone, Limits, OnBatch, OnDrop, OnIsolate, OnQueue, Worker
from app.engine.budget import default_budget, memory_limit
from app.engine.cost import Cost, measure
from app.engine.errors import EngineError, InvalidInput, MemoryBudgetExceeded, NeedsTooMuchMemory, OutOfMemory
from app.engine.latents import interpolate as latent_path
from app.engine.memory import MARGIN, Footprint, MemoryPool, Need, Recorder, grown, held
from app.engine.memory import fit as fit_memory
from app.engine.passes import Passes
from app.engine.registry import LoadedModel, Registry
from model.vae import DiagonalGaussian, elbo_terms, iwae_bound, seeded

# A score batch holds at most this many forward passes' worth of decoder rows (images x (k + 1)).
SCORE_PASSES = 64


class MetricsSink(Protocol):
    """Where the engine reports its batches, queue depth, dropped requests and isolated batches."""

    def observe_batch(self, model: str, op: str, size: int, wait_s: float, waited_s: float) -> None: ...
    def queue_counter(self, model: str) -> Callable[[int], None]: ...
    def observe_drop(self, model: str, op: str) -> None: ...
    def observe_isolation(self, model: str, op: str) -> None: ...


@dataclass
class Images:
    pixels: np.ndarray  # [n, H, W, C] uint8
    latents: np.ndarray  # [n, *latent shape] float32
    labels: np.ndarray | None  # [n] class indices (conditional models)


@dataclass
class Encoding:
    mean: np.ndarray  # [B, *latent shape] float32: the posterior mean, or the latents of a deterministic encoder
    variance: np.ndarray | None  # None for a deterministic encoder
    log_variance: np.ndarray | None
    sample: np.ndarray | None = None  # a posterior draw with the job's seed, where one was asked


@dataclass
class Scores:
    """Per image; None where the model does not define the quantity (no likelihood: no
    reconstruction nats, ELBO or NLL; a deterministic encoder: no KL either)."""

    reconstruction: np.ndarray | None  # [B] -E_q[log p(x|z)], nats
    kl: np.ndarray | None  # [B]
    elbo: np.ndarray | None  # [B]
    nll: np.ndarray | None  # [B] -(IWAE bound)
    bits_per_dim: np.ndarray | None  # [B]
    mse: np.ndarray | None = None  # [B] models without a likelihood: the reconstruction's error
    psnr_db: np.ndarray | None = None  # [B] 10 log10(1 / mse)


@dataclass
class SampleJob:
    n: int
    seed: int
    temperature: float
    label: int | None


@dataclass
class ArrayJob:  # decode (x: latents), encode and reconstruct (x: images)
    x: np.ndarray  # float32
    labels: np.ndarray | None  # int64 class indices
    values: bool = False  # decode, reconstruct: float32 images [B, C, H, W] in [0, 1], not uint8 pixels
    seed: int | None = None  # encode: also draw a posterior sample from `seeded(seed)`
    options: tuple[int, ...] = ()  # decode: the backend's `decode_options`' columns (option.column), in order


@dataclass
class ScoreJob:
    x: np.ndarray
    labels: np.ndarray | None
    k: int
    seed: int


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] in [0, 1] (any device) -> [B, H, W, C] uint8 pixels, once per batch; videos
    [B, C, T, H, W] -> [B, T, H, W, C]."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).movedim(1, -1).cpu().numpy()


def floats(t: torch.Tensor) -> np.ndarray:
    """Latents and moments as callers get them: float32 on the CPU, whatever the model computes
    in (float16 on a GPU)."""
    return t.float().cpu().numpy()


def tensor(parts: list[np.ndarray], device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The batch's rows of one input: the jobs' arrays, concatenated, on the model's device."""
    return torch.from_numpy(np.concatenate(parts)).to(device=device, dtype=dtype)


def batch_labels(jobs: list[ArrayJob] | list[ScoreJob], device: torch.device) -> torch.Tensor | None:
    """The batch's class indices; None for unconditional models, whose jobs carry none."""
    parts = [job.labels for job in jobs]
    return None if parts[0] is None else tensor(parts, device)  # type: ignore[arg-type]  # all arrays


def sizes(jobs: list[ArrayJob] | list[ScoreJob]) -> list[int]:
    return [len(job.x) for job in jobs]


def split(array: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """A batch's output rows, `sizes[i]` of them for job i."""
    return np.split(array, np.cumsum(sizes)[:-1])


def by_shape(run: Callable[[Passes, list[Any]], list[Any]]) -> Callable[[Passes, list[Any]], list[Any]]:
    """`run` once per group of jobs whose arrays have one shape (images of one size), results
    back in the jobs' order: rows of different shapes cannot share a pass."""

    def grouped(passes: Passes, jobs: list[Any]) -> list[Any]:
        groups: dict[Hashable, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.x.shape[1:], []).append(i)
        if len(groups) == 1:
            return run(passes, jobs)
        results: list[Any] = [None] * len(jobs)
        for members in groups.values():
            for i, result in zip(members, run(passes, [jobs[i] for i in members]), strict=True):
                results[i] = result
        return results

    return grouped


@torch.inference_mode()
def run_sample(passes: Passes, jobs: list[SampleJob]) -> list[Images]:
    """The backend's prior draws per job with `seeded(seed)`, scaled by the temperature; a
    conditional model without a label first draws each image's class uniformly from the same
    generator (as `VAE.sample` with those labels)."""
    backend = passes.backend
    classes = len(backend.label_names)
    latents, labels = [], []
    for job in jobs:
        generator = seeded(job.seed, backend.device)
        if classes:
            if job.label is None:
                labels.append(torch.randint(classes, (job.n,), generator=generator, device=backend.device))
            else:
                labels.append(torch.full((job.n,), job.label, dtype=torch.long, device=backend.device))
        latents.append(job.temperature * backend.prior(job.n, generator))
    z = torch.cat(latents)
    y = torch.cat(labels) if labels else None
    n = [job.n for job in jobs]
    images = split(to_pixels(passes.decode(z, y)), n)
    ys = split(y.cpu().numpy(), n) if y is not None else [None] * len(jobs)
    return [Images(*parts) for parts in zip(images, split(floats(z), n), ys, strict=True)]


@torch.inference_mode()
def run_decode(passes: Passes, jobs: list[ArrayJob]) -> list[np.ndarray]:
    backend = passes.backend
    z = tensor([job.x for job in jobs], backend.device, backend.dtype)
    options = None
    if any(job.options for job in jobs):  # every job of a model with decode options carries them
        options = tensor([np.tile(np.array(job.options, np.int64), (len(job.x), 1)) for job in jobs], backend.device)
    return answers(passes.decode(z, batch_labels(jobs, backend.device), options), jobs)


def answers(images: torch.Tensor, jobs: list[ArrayJob]) -> list[np.ndarray]:
    """Each job's part of a batch's decoded images: uint8 pixels, or with `values` the float32
    images in [0, 1] (what a waveform needs: 8 bits are too coarse for sound)."""
    pixels = split(to_pixels(images), sizes(jobs))
    if not any(job.values for job in jobs):
        return pixels
    values = split(floats(images), sizes(jobs))
    return [v if job.values else p for job, p, v in zip(jobs, pixels, values, strict=True)]


@torch.inference_mode()
def run_encode(passes: Passes, jobs: list[ArrayJob]) -> list[Encoding]:
    device = passes.backend.device
    moments = passes.encode(tensor([job.x for job in jobs], device), batch_labels(jobs, device))
    parts = [split(floats(t), sizes(jobs)) for t in moments]
    if len(parts) == 1:  # a deterministic encoder: latents only
        return [Encoding(mean, None, None) for mean in parts[0]]
    encodings = [Encoding(*moment) for moment in zip(*parts, strict=True)]
    start = 0
    for job, encoding in zip(jobs, encodings, strict=True):
        if job.seed is not None:  # the job's rows alone, as the posterior of those images alone draws
            rows = slice(start, start + len(job.x))
            q = DiagonalGaussian(moments[0][rows], moments[2][rows])
            encoding.sample = floats(q.sample(seeded(job.seed, device)))
        start += len(job.x)
    return encodings


@torch.inference_mode()
def run_reconstruct(passes: Passes, jobs: list[ArrayJob]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Decode of the posterior mean: (pixels, or with `values` images, and means) per job."""
    device = passes.backend.device
    labels = batch_labels(jobs, device)
    mean = passes.encode(tensor([job.x for job in jobs], device), labels)[0]
    images = answers(passes.decode(mean, labels), jobs)
    return list(zip(images, split(floats(mean), sizes(jobs)), strict=True))


@torch.inference_mode()
def run_score(passes: Passes, jobs: list[ScoreJob]) -> list[Scores]:
    """Per image, alone: the ELBO (`elbo_terms` at one `posterior.sample`) and the IWAE bound
    (`iwae_bound` of the backend's `log_weights` at k `posterior.draws`), each drawing from a
    fresh `seeded(seed)` as `VAE.elbo` and `VAE.iwae` do, so an image's score depends on nothing
    else sent or batched with it. Every image's 1 + k likelihood rows go through shared passes."""
    backend = passes.backend
    device = backend.device
    x = tensor([job.x for job in jobs], device)
    labels = batch_labels(jobs, device)
    mean, _, log_variance = passes.encode(x, labels)
    per_image = [(job.k, job.seed) for job in jobs for _ in range(len(job.x))]
    posteriors = [DiagonalGaussian(mean[i : i + 1], log_variance[i : i + 1]) for i in range(len(per_image))]
    latents = []  # per image: the ELBO's one draw, then the IWAE's k
    for q, (k, seed) in zip(posteriors, per_image, strict=True):
        draws = q.draws(k, seeded(seed, device)).flatten(0, 1)
        latents.append(torch.cat([q.sample(seeded(seed, device)), draws]))
    rows = torch.tensor([1 + k for k, _ in per_image], device=device)
    index = torch.repeat_interleave(torch.arange(len(per_image), device=device), rows)
    log_likelihood = passes.log_likelihood(torch.cat(latents), index, x, labels).split(rows.tolist())
    terms = []
    for q, z, ll in zip(posteriors, latents, log_likelihood, strict=True):
        elbo = elbo_terms(ll[:1], q)
        nll = -iwae_bound(backend.log_weights(ll[1:], z[1:], q)).reshape(1)
        terms.append(torch.cat([elbo.reconstruction, elbo.kl, elbo.elbo, nll]).cpu())
    pixels = math.prod(x.shape[1:])
    scores = []
    for part in split(torch.stack(terms).numpy(), sizes(jobs)):
        reconstruction, kl, elbo, nll = part.T
        scores.append(Scores(reconstruction, kl, elbo, nll, nll / (pixels * math.log(2))))
    return scores


Job = SampleJob | ArrayJob | ScoreJob


def default_options(backend: Backend) -> tuple[int, ...]:
    """The defaults of the backend's `decode_options`, as columns in their order (none for most models)."""
    return tuple(option.column(option.default) for option in getattr(backend, "decode_options", {}).values())


def units(job: Job, latent_size: int) -> int:
    """The elements a job feeds the model, the unit of its cost: latents (`latent_size` per
    sampled image), images, and for score those times the 1 + k likelihood rows per image."""
    if isinstance(job, SampleJob):
        return job.n * latent_size
    if isinstance(job, ScoreJob):
        return job.x.size * (1 + job.k)
    return job.x.size


def row_shape(job: Job) -> Hashable:
    """The shape of a job's rows, by which its cost per element is learnt (None: the model's own)."""
    return None if isinstance(job, SampleJob) else job.x.shape[1:]


def pass_rows(job: Job, op: str, backend: Backend, latent_size: int) -> tuple[int, int]:
    """The rows of `job`'s passes and the elements of each whose working memory counts at
    once: at most one tile a side where the backend tiles (`tiled_above`: pixels a side;
    latents count at their decoded size). app/engine/memory.py."""
    if isinstance(job, SampleJob):
        rows, row = job.n, latent_size
        height, width = backend.image.height, backend.image.width
    else:
        rows = len(job.x) * (1 + job.k if isinstance(job, ScoreJob) else 1)
        row = job.x[0].size
        scale = backend.image.multiple if op in ("decode", "sample") else 1
        height, width = (side * scale for side in job.x.shape[-2:])
    tile = getattr(backend, "tiled_above", None)
    share = 1.0
    if tile and not backend.image.sample_rate and max(height, width) > tile:
        share = min(1.0, tile / height) * min(1.0, tile / width)
    return rows, math.ceil(row * share)


def probe_jobs(passes: Passes, op: str, rows: int, side: int, longer: bool = False) -> list[Job]:
    """A job of `rows` random rows for `op`'s cost measurement: images `side` latent cells a
    side (or the model's own size); score with k = 8. A video model's have its native frame
    count, or with `longer` twice its latent frames."""
    backend = passes.backend
    image = backend.image
    height, width = (image.height, image.width) if image.fixed_size else (side * image.multiple,) * 2
    if image.grid:  # sizes off its grid would not be its passes
        height, width = image.grid.at_least(height, width)
    generator = np.random.default_rng(0)
    labels = np.zeros(rows, np.int64) if backend.label_names else None
    video = image.frames
    frames = video.decoded(2 * video.latent(video.native)) if video and longer else None
    if op == "decode":
        latent = backend.latent_shape(height, width, *([frames] if frames else []))  # type: ignore[call-arg]
        z = generator.standard_normal((rows, *latent), dtype=np.float32)  # type: ignore[arg-type]
        return [ArrayJob(z, labels, options=default_options(backend))]
    x = generator.random((rows, *image.item(height, width, frames)), dtype=np.float32)
    return [ScoreJob(x, labels, 8, 0) if op == "score" else ArrayJob(x, labels)]


RUNS: dict[str, Callable[[Passes, list[Any]], list[Any]]] = {
    "sample": run_sample,
    "decode": by_shape(run_decode),
    "encode": by_shape(run_encode),
    "reconstruct": by_shape(run_reconstruct),
    "score": by_shape(run_score),
}


# The operations whose cost is measured at load, each only where the model has what it needs;
# sample shares decode's cost (the same decoder passes, per latent element).
MEASURED: dict[str, tuple[str, ...]] = {
    "decode": NEEDS["decode"],
    "encode": NEEDS["encode"],
    "reconstruct": NEEDS["reconstruct"],
    "score": ("encoder", "likelihood"),
}
# Measured jobs, (rows, latent cells a side): a row at the smallest probe size, then a full pass
# (max_rows) at twice the side. One row and a few would run the same pass: passes are padded.
PROBES = ((1, 4), (None, 8))
# A variable-size model whose probes peaked under MEMORY_PROBE_BYTES runs one more, at twice the
# side, for its memory alone: under it, what the allocator happens to reuse is too large a part
# of a peak for its per-element rate to be extrapolated (app/engine/memory.py).
MEMORY_PROBE = (None, 16)
MEMORY_PROBE_BYTES = 32 << 20


def sample_units(passes: Passes) -> int:
    """The elements of one latent at the model's own image size: what one sampled image costs."""
    image = passes.backend.image
    return math.prod(passes.backend.latent_shape(image.height, image.width))  # type: ignore[arg-type]


def costs_of(passes: Passes, latent_size: int) -> tuple[dict[str, Cost], dict[str, Footprint]]:
    """Each operation's cost line and memory footprint, measured on the same probe jobs in the
    thread that serves."""
    features = passes.backend.features
    found: dict[str, Cost] = {}
    footprints: dict[str, Footprint] = {}
    for op, needs in MEASURED.items():
        if all(feature in features for feature in needs):
            jobs = [probe_jobs(passes, op, rows or passes.max_rows, side) for rows, side in PROBES]
            count = partial(units, latent_size=latent_size)
            recorded = Recorder(partial(RUNS[op], passes), count, passes.backend.device)
            run = memory_guarded(lambda _, jobs: recorded(jobs), passes, f"measuring {op}")
            found[op] = measure(run, jobs, count)
            footprints[op] = measure_memory(passes, op, recorded, run)
    for table in (found, footprints):
        if "decode" in table:
            table["sample"] = table["decode"]
    return found, footprints


def measure_memory(
    passes: Passes, op: str, recorded: Recorder, run: Callable[[list[Any]], list[Any]]
) -> Footprint:
    """`op`'s footprint from the peaks `recorded` on the cost probes, after one more probe at
    twice the side where they peaked under MEMORY_PROBE_BYTES, and, for a video model, one with
    twice the latent frames (app/engine/memory.py)."""
    backend = passes.backend
    device, video = backend.device.type, backend.image.frames
    rows, side = PROBES[-1]
    try:
        if not backend.image.fixed_size and max((p for _, p, _ in recorded.points), default=0) < MEMORY_PROBE_BYTES:
            rows, side = MEMORY_PROBE
            run(probe_jobs(passes, op, rows or passes.max_rows, side))
        footprint = fit_memory(recorded.points, MARGIN[device])
        if video is None or not recorded.points:
            return footprint
        shorter = max(recorded.points)
        run(probe_jobs(passes, op, rows or passes.max_rows, side, longer=True))
    except EngineError:  # out of memory at load: what was measured stands
        return fit_memory(recorded.points, MARGIN[device])
    frames = video.latent(video.native) if op == "decode" else video.native
    return grown(footprint, shorter, recorded.points[-1], frames)


def observed(
    run: Callable[[list[Any]], list[Any]], cost: Cost, latent_size: int
) -> Callable[[list[Any]], list[Any]]:
    """`run`, each batch's time moving `cost` (app/engine/cost.py)."""

    def timed(jobs: list[Any]) -> list[Any]:
        start = time.perf_counter()
        results = run(jobs)
        shapes = {row_shape(job) for job in jobs}
        if len(shapes) == 1:  # rows of several shapes say nothing about one
            cost.observe(sum(units(job, latent_size) for job in jobs), time.perf_counter() - start, shapes.pop())
        return results

    return timed


def lane_setup(threads: int, devices: set[torch.device]) -> Callable[[], None]:
    """What each lane thread does first: take torch's thread count (the one calibration ran
    with), and on each GPU a CUDA stream of its own, so that one lane's kernels do not queue
    behind those another lane has launched."""

    def setup() -> None:
        torch.set_num_threads(threads)
        for device in devices:
            torch.cuda.set_stream(torch.cuda.Stream(device))

    return setup


def out_of_memory(error: Exception) -> bool:
    """A GPU allocation that failed, or a CPU one (torch's CPU allocator raises a RuntimeError)."""
    return isinstance(error, torch.OutOfMemoryError | MemoryError) or "can't allocate memory" in str(error)


def memory_guarded(
    run: Callable[[Passes, list[Any]], list[Any]], passes: Passes, name: str
) -> Callable[[list[Any]], list[Any]]:
    """`run` for the batcher: a batch that runs out of memory fails with an error that says so
    (`OutOfMemory`, which the batcher answers by running the batch again in parts, or
    `NeedsTooMuchMemory` for a request alone), after the memory is freed, so that the next
    batch starts with it free."""

    def guarded(jobs: list[Any]) -> list[Any]:
        try:
            return run(passes, jobs)
        except Exception as error:
            if not out_of_memory(error):
                raise
        # Out of the except block: the error's traceback, which holds the batch's tensors, is gone.
        gc.collect()
        device = passes.backend.device
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if len(jobs) == 1:
            raise NeedsTooMuchMemory(name, device.type)
        raise OutOfMemory(name, device.type, len(jobs))

    return guarded


def smaller(model: LoadedModel) -> str:
    """What a request to `model` can send less of, to need less memory."""
    media = model.backend.image.media
    less = {"video": "fewer or smaller frames", "audio": "shorter audio"}.get(media, "smaller images")
    return f"{less} or fewer items"


class Engine:
    """The async model operations of the served models; each goes through its (model,
    operation, lane) batcher. `start` calibrates every model's passes, measures its costs and
    makes its batchers; `close` answers whatever still waits with `ShuttingDown`.

    `long_threads` threads run the requests estimated at `long_cost` seconds or more, one thread
    the others; with `long_threads=0` one thread runs everything, in turn."""

    def __init__(
        self,
        registry: Registry,
        *,
        max_batch: int,
        max_delay: float,
        max_queue: int,
        queue_timeout: float,
        batching: bool = True,
        batch_invariant: bool = True,
        threads: int = 1,
        long_threads: int = 1,
        long_cost: float = 0.25,
        metrics: MetricsSink | None = None,
        memory_budget: int | None = None,
        processes: int = 1,
    ) -> None:
        """`memory_budget`: bytes the running batches may hold at once; None: the device's or
        cgroup's limit, shared by `processes`, less what the loaded models hold (app/engine/budget.py)."""
        self.registry = registry
        setup = lane_setup(threads, {m.backend.device for m in registry if m.backend.device.type == "cuda"})
        self.lanes = {"short": Worker(setup, name="short")}
        if long_threads:
            self.lanes["long"] = Worker(setup, long_threads, "long")
        self.long_cost = long_cost
        self.max_batch = max_batch
        self.batch_invariant = batch_invariant
        self.limits = Limits(max_batch, max_delay, max_queue, queue_timeout, batching)
        self.metrics = metrics
        self._batchers: dict[str, dict[str, dict[str, Batcher[Any, Any]]]] = {}  # model, op, lane
        self._costs: dict[str, dict[str, Cost]] = {}  # model, op
        self._latent_sizes: dict[str, int] = {}
        self._footprints: dict[str, dict[str, Footprint]] = {}  # model, op
        self._passes: dict[str, Passes] = {}  # by model
        self.memory = MemoryPool(memory_budget if memory_budget is not None else 0)
        self._memory_budget, self._processes = memory_budget, processes

    def model(self, name: str | None) -> LoadedModel:
        """The named model, or the default one; `UnknownModel` otherwise."""
        return self.registry.get(name)

    async def start(self) -> None:
        for model in self.registry:
            await self.serve(model)
        if self._memory_budget is None:
            device = next(iter(self.registry)).backend.device
            self.memory.budget = default_budget(memory_limit(device), held(device), self._processes)

    async def serve(self, model: LoadedModel) -> None:
        """Calibrate `model`'s passes (which also pays every pass shape's first-call costs before
        the first request) and make its batchers."""
        passes = Passes(model.backend, self.max_batch, self.batch_invariant)
        short = self.lanes["short"]
        await short.run(passes.calibrate)
        latent_size = self._latent_sizes[model.name] = sample_units(passes)
        costs, self._footprints[model.name] = await short.run(costs_of, passes, latent_size)
        self._costs[model.name] = costs
        self._passes[model.name] = passes
        score_limits = replace(self.limits, max_size=self.limits.max_size * SCORE_PASSES)
        self._batchers[model.name] = {
            op: {
                lane: Batcher(
                    f"{model.name} {op}",
                    observed(memory_guarded(run, passes, f"{model.name} {op}"), costs[op], latent_size),
                    worker,
                    self.limits if op != "score" else score_limits,
                    *self._observers(model.name, op),
                    memory=self.memory,
                )
                for lane, worker in self.lanes.items()
            }
            for op, run in RUNS.items()
            if op in costs
        }

    def close(self) -> None:
        for batchers in self._batchers.values():
            for lanes in batchers.values():
                for batcher in lanes.values():
                    batcher.close()
        for lane in self.lanes.values():
            lane.close()

    def _observers(self, name: str, op: str) -> tuple[OnBatch | None, OnQueue | None, OnDrop | None, OnIsolate | None]:
        if self.metrics is None:
            return None, None, None, None
        return (
            partial(self.metrics.observe_batch, name, op),
            self.metrics.queue_counter(name),
            partial(self.metrics.observe_drop, name, op),
            partial(self.metrics.observe_isolation, name, op),
        )

    async def _submit(
        self,
        model: LoadedModel,
        operation: Operation,
        job: Job,
        items: int,
        size: int | None = None,
        gone: Gone | None = None,
        run: str | None = None,
    ) -> Any:
        """`job`, a request already checked (`LoadedModel.checked`), through `model`'s batcher of
        `run` (default: `operation`) on the lane that its estimated cost picks."""
        op = run or operation
        need = self.need(model, op, job)
        if need.total > self.memory.budget:  # before a job is admitted: it would never run either
            name, budget = f"model '{model.name}' {operation}", self.memory.budget
            raise MemoryBudgetExceeded(name, need.total, budget, smaller(model))
        progress.admitted(model.name, operation)
        cost = self._costs[model.name][op]
        amount, shape = units(job, self._latent_sizes[model.name]), row_shape(job)
        lane = "long" if "long" in self.lanes and cost.seconds(amount, shape) >= self.long_cost else "short"
        batcher = self._batchers[model.name][op][lane]
        rows = items if size is None else size
        share = cost.share(amount, shape, rows, batcher.limits.max_size)
        return await batcher.submit(job, items, size, gone, share, need)

    def need(self, model: LoadedModel, op: str, job: Job) -> Need:
        """The estimated memory of `job` run alone by `model`'s `op` (app/engine/memory.py)."""
        footprint = self._footprints[model.name].get(op, Footprint())
        latent_size, passes = self._latent_sizes[model.name], self._passes[model.name]
        rows, row = pass_rows(job, op, model.backend, latent_size)
        frames = job.x.shape[2] if model.backend.image.frames and not isinstance(job, SampleJob) else 0
        return footprint.need(units(job, latent_size), passes.shape(rows) * row, passes.max_rows * row, frames)

    async def sample(
        self, model: LoadedModel, n: int, seed: int, temperature: float, label: int | None, gone: Gone | None = None
    ) -> Images:
        """n images from the prior; the draws are `VAE.sample`'s with `seeded(seed)`."""
        label = model.checked_label(label)
        return await self._submit(model, "sample", SampleJob(n, seed, temperature, label), n, gone=gone)

    async def encode(
        self,
        model: LoadedModel,
        x: np.ndarray,
        labels: np.ndarray | None,
        gone: Gone | None = None,
        seed: int | None = None,
    ) -> Encoding:
        """The posterior (or a deterministic encoder's latents); with `seed`, also one posterior
        draw per image from `seeded(seed)`, as `posterior.sample` of these images alone."""
        x, labels = model.checked("encode", x, labels, *(("posterior",) if seed is not None else ()))
        return await self._submit(model, "encode", ArrayJob(x, labels, seed=seed), len(x), gone=gone)

    async def decode(
        self,
        model: LoadedModel,
        z: np.ndarray,
        labels: np.ndarray | None,
        gone: Gone | None = None,
        values: bool = False,
        options: tuple[int, ...] = (),
    ) -> np.ndarray:
        """uint8 pixels [B, H, W, C]; with `values`, the float32 images [B, C, H, W] in [0, 1].
        `options`: the backend's `decode_options` as columns (e.g. a seeded decoder's seed and steps)."""
        options = options or default_options(model.backend)
        z, labels = model.checked("decode", z, labels)
        job = ArrayJob(z, labels, values, options=options)
        return await self._submit(model, "decode", job, len(z), gone=gone)

    async def reconstruct(
        self,
        model: LoadedModel,
        x: np.ndarray,
        labels: np.ndarray | None,
        gone: Gone | None = None,
        values: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decode of the posterior mean: (pixels, means); with `values`, the float32 images in
        [0, 1] (as `decode`'s) for the pixels."""
        x, labels = model.checked("reconstruct", x, labels)
        return await self._submit(model, "reconstruct", ArrayJob(x, labels, values), len(x), gone=gone)

    async def score(
        self, model: LoadedModel, x: np.ndarray, labels: np.ndarray | None, k: int, seed: int, gone: Gone | None = None
    ) -> Scores:
        """Per image: ELBO terms and the IWAE bound with k samples, each from a fresh generator
        seeded with `seed`, so an image's score does not depend on the other images. A model
        without a likelihood gets `distortion` instead."""
        x, labels = model.checked("score", x, labels)
        if "likelihood" not in model.backend.features:
            return await self.distortion(model, x, labels, gone)
        job = ScoreJob(x, labels, k, seed)
        return await self._submit(model, "score", job, len(x), len(x) * (1 + k), gone=gone)

    async def distortion(
        self, model: LoadedModel, x: np.ndarray, labels: np.ndarray | None, gone: Gone | None = None
    ) -> Scores:
        """What a model without a likelihood defines: the error of its reconstruction from the
        posterior mean (mean squared error of pixel values in [0, 1], the decoded image clamped
        as it is shown; PSNR from it), and KL(q(z|x) || N(0, I)) where its encoder is Gaussian."""
        encoding = await self.encode(model, x, labels, gone)
        images = await self.decode(model, encoding.mean, labels, gone, values=True)
        rows = (len(x), -1)
        mse = ((np.clip(images, 0, 1) - x) ** 2).reshape(rows).mean(axis=1)
        psnr = 10 * np.log10(1 / np.maximum(mse, 1e-12))  # finite for a perfect reconstruction
        kl = None
        if encoding.variance is not None and encoding.log_variance is not None:
            terms = encoding.mean**2 + encoding.variance - 1 - encoding.log_variance
            kl = 0.5 * terms.reshape(rows).sum(axis=1)  # Kingma & Welling, appendix B
        return Scores(None, kl, None, None, None, mse, psnr)

    async def interpolate(
        self,
        model: LoadedModel,
        steps: int,
        method: str,
        ends: np.ndarray,
        labels: np.ndarray | None,
        images: bool,
        gone: Gone | None = None,
    ) -> Images:
        """`steps` latents from one end to the other, decoded. `ends` are two images (`images`),
        encoded to their posterior means, or two latents; `labels`, one class per end: the
        path switches class at its midpoint, where the latent is as far from both ends."""
        if images:
            model.require("interpolate", "encoder")
            ends = (await self.encode(model, ends, labels, gone)).mean
        ends, labels = model.checked("interpolate", ends, labels)
        if len(ends) != 2:
            raise InvalidInput(f"latents: give exactly 2 (start and end), got {len(ends)}")
        path = latent_path(ends[0], ends[1], steps, method)
        path_labels = None
        if labels is not None:
            path_labels = np.where(np.linspace(0, 1, steps) < 0.5, labels[0], labels[1])
        job = ArrayJob(path, path_labels)
        pixels = await self._submit(model, "interpolate", job, len(path), gone=gone, run="decode")
        return Images(pixels, path, path_labels)
