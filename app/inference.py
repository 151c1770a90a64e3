"""Every model call of the service, batched across requests and run off the event loop.

Routes hand over NumPy arrays and get NumPy arrays back, images as uint8 pixels
(`app.images.to_pixels`): torch runs only in the inference thread, where a batch pays each
torch call's overhead (~5 us under load, with a hand-over of the GIL) once, not once per
request on the event loop. Each (model, operation) has a `Batcher` (app/batcher.py):
concurrent requests queue there and run together, in the one inference thread that all
batchers share, as batch-invariant passes (app/passes.py). All randomness comes from a
`torch.Generator` seeded by the request and drawn for that request's rows alone, so a
request's result never depends on what it was batched with: same seed, same bytes, with
batching on or off.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from app.batcher import Batcher, Limits, OnBatch, OnQueue, Worker
from app.config import Settings
from app.images import to_pixels
from app.passes import Passes
from model import VAE
from model.vae import DiagonalGaussian, log_importance_weights

if TYPE_CHECKING:
    from app.observability import Metrics
    from app.registry import LoadedModel

# A score batch holds at most this many forward passes' worth of decoder rows (images x (k + 1)).
SCORE_PASSES = 64


@dataclass
class Samples:
    pixels: np.ndarray  # [n, H, W, C] uint8
    latents: np.ndarray  # [n, latent_dim] float32
    labels: np.ndarray | None  # [n] class indices (conditional models)


@dataclass
class Posterior:
    mean: np.ndarray  # [B, latent_dim] float32
    variance: np.ndarray
    log_variance: np.ndarray


@dataclass
class Scores:
    reconstruction: np.ndarray  # [B] -E_q[log p(x|z)], nats
    kl: np.ndarray  # [B]
    elbo: np.ndarray  # [B]
    nll: np.ndarray  # [B] -(IWAE bound)
    bits_per_dim: np.ndarray  # [B]


@dataclass
class SampleJob:
    n: int
    seed: int
    temperature: float
    label: int | None


@dataclass
class ImagesJob:  # decode (x: latents), encode and reconstruct (x: images)
    x: np.ndarray  # float32
    labels: np.ndarray | None  # int64 class indices


@dataclass
class ScoreJob:
    x: np.ndarray
    labels: np.ndarray | None
    k: int
    seed: int


def seeded(vae: VAE, seed: int) -> torch.Generator:
    """A fresh generator on the model's device: same seed, same device, same draws."""
    return torch.Generator(device=vae.device).manual_seed(seed)


def usable_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity (taskset, cpusets), capped by a cgroup v2
    CPU quota (`docker run --cpus`, Kubernetes limits), which affinity does not show."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()
    except (OSError, ValueError):
        return cores
    return cores if quota == "max" else max(1, min(cores, math.ceil(int(quota) / int(period))))


def torch_threads(settings: Settings) -> int:
    """VAE_TORCH_THREADS, else each uvicorn worker's share of the usable cores (WEB_CONCURRENCY
    workers) less one, which its event loop keeps busy under load; at least 1."""
    if settings.torch_threads is not None:
        return settings.torch_threads
    workers = max(1, int(os.environ.get("WEB_CONCURRENCY") or 1))
    return max(1, usable_cores() // workers - 1)


def tensor(parts: list[np.ndarray], device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The batch's rows of one input: the jobs' arrays, concatenated, on the model's device."""
    return torch.from_numpy(np.concatenate(parts)).to(device=device, dtype=dtype)


def batch_labels(jobs: list[ImagesJob] | list[ScoreJob], device: torch.device) -> torch.Tensor | None:
    """The batch's class indices; None for unconditional models, whose jobs carry none."""
    parts = [job.labels for job in jobs]
    return None if parts[0] is None else tensor(parts, device)  # type: ignore[arg-type]  # all arrays


def sizes(jobs: list[ImagesJob] | list[ScoreJob]) -> list[int]:
    return [len(job.x) for job in jobs]


def split(array: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """A batch's output rows, `sizes[i]` of them for job i."""
    return np.split(array, np.cumsum(sizes)[:-1])


@torch.inference_mode()
def run_sample(passes: Passes, jobs: list[SampleJob]) -> list[Samples]:
    """vae.sample's draws per job with `seeded(vae, seed)`; a conditional model without a label
    first draws each image's class uniformly from the same generator."""
    vae = passes.vae
    latents, labels = [], []
    for job in jobs:
        generator = seeded(vae, job.seed)
        if vae.config.num_classes:
            if job.label is None:
                labels.append(torch.randint(vae.config.num_classes, (job.n,), generator=generator, device=vae.device))
            else:
                labels.append(torch.full((job.n,), job.label, dtype=torch.long, device=vae.device))
        z = torch.randn(job.n, vae.config.latent_dim, generator=generator, device=vae.device)
        latents.append(job.temperature * z)
    z = torch.cat(latents)
    y = torch.cat(labels) if labels else None
    n = [job.n for job in jobs]
    images = split(to_pixels(passes.decode(z, y)), n)
    ys = split(y.cpu().numpy(), n) if y is not None else [None] * len(jobs)
    return [Samples(*parts) for parts in zip(images, split(z.cpu().numpy(), n), ys, strict=True)]


@torch.inference_mode()
def run_decode(passes: Passes, jobs: list[ImagesJob]) -> list[np.ndarray]:
    vae = passes.vae
    z = tensor([job.x for job in jobs], vae.device, vae.dtype)
    return split(to_pixels(passes.decode(z, batch_labels(jobs, vae.device))), sizes(jobs))


@torch.inference_mode()
def run_encode(passes: Passes, jobs: list[ImagesJob]) -> list[Posterior]:
    device = passes.vae.device
    moments = passes.encode(tensor([job.x for job in jobs], device), batch_labels(jobs, device))
    return [Posterior(*parts) for parts in zip(*(split(t.cpu().numpy(), sizes(jobs)) for t in moments), strict=True)]


@torch.inference_mode()
def run_reconstruct(passes: Passes, jobs: list[ImagesJob]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Decode of the posterior mean: (pixels, means) per job."""
    device = passes.vae.device
    labels = batch_labels(jobs, device)
    mean = passes.encode(tensor([job.x for job in jobs], device), labels)[0]
    images = split(to_pixels(passes.decode(mean, labels)), sizes(jobs))
    return list(zip(images, split(mean.cpu().numpy(), sizes(jobs)), strict=True))


@torch.inference_mode()
def run_score(passes: Passes, jobs: list[ScoreJob]) -> list[Scores]:
    """Per image: vae.elbo and vae.iwae (Burda et al., arXiv 1509.00519) on that image alone,
    each drawing from a fresh `seeded(vae, seed)`, so an image's score depends on nothing else
    sent or batched with it. Every image's 1 + k decoder rows go through shared passes."""
    vae = passes.vae
    x = tensor([job.x for job in jobs], vae.device)
    labels = batch_labels(jobs, vae.device)
    mean, _, log_variance = passes.encode(x, labels)
    per_image = [(job.k, job.seed) for job in jobs for _ in range(len(job.x))]
    posteriors = [DiagonalGaussian(mean[i : i + 1], log_variance[i : i + 1]) for i in range(len(per_image))]
    latents = []  # per image: the ELBO's one draw (posterior.sample), then the IWAE's k
    size = vae.config.latent_dim
    for q, (k, seed) in zip(posteriors, per_image, strict=True):
        draws = [torch.randn(n, size, generator=seeded(vae, seed), device=vae.device) for n in (1, k)]
        latents.append(q.mean + q.std * torch.cat(draws))
    rows = torch.tensor([1 + k for k, _ in per_image], device=vae.device)
    index = torch.repeat_interleave(torch.arange(len(per_image), device=vae.device), rows)
    log_likelihood = passes.log_likelihood(torch.cat(latents), index, x, labels).split(rows.tolist())
    terms = []
    for q, z, ll, (k, _) in zip(posteriors, latents, log_likelihood, per_image, strict=True):
        reconstruction, kl = -ll[:1], q.kl()
        log_w = log_importance_weights(ll[1:], z[1:], q)
        nll = -(torch.logsumexp(log_w, dim=0, keepdim=True) - math.log(k))
        terms.append(torch.cat([reconstruction, kl, -(reconstruction + kl), nll]).cpu())
    scores = []
    for part in split(torch.stack(terms).numpy(), sizes(jobs)):
        reconstruction, kl, elbo, nll = part.T
        scores.append(Scores(reconstruction, kl, elbo, nll, nll / (vae.config.pixels * math.log(2))))
    return scores


class Inference:
    """The async model operations; each goes through its (model, operation) batcher."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        threads = torch_threads(settings)
        self.worker = Worker(initializer=partial(torch.set_num_threads, threads))
        self.max_batch = settings.max_batch
        self.batch_invariant = settings.batch_invariant
        self.limits = Limits(
            max_size=settings.max_batch,
            max_delay=settings.max_delay_ms / 1000,
            max_queue=settings.max_queue,
            timeout=settings.queue_timeout,
            batching=settings.batching,
        )
        self.metrics = metrics
        self._batchers: dict[VAE, dict[str, Batcher[Any, Any]]] = {}

    def close(self) -> None:
        for batchers in self._batchers.values():
            for batcher in batchers.values():
                batcher.close()
        self.worker.close()

    async def warm_up(self, model: LoadedModel) -> None:
        """Serve `model`: calibrate its passes (which also pays every pass shape's first-call
        costs before the first request) and make its batchers."""
        passes = Passes(model.vae, self.max_batch, self.batch_invariant)
        await self.worker.run(passes.calibrate)
        runs: dict[str, Callable[[Passes, list[Any]], list[Any]]] = {
            "sample": run_sample,
            "decode": run_decode,
            "encode": run_encode,
            "reconstruct": run_reconstruct,
            "score": run_score,
        }
        self._batchers[model.vae] = {
            op: Batcher(
                f"{model.name} {op}",
                partial(run, passes),
                self.worker,
                self.limits if op != "score" else replace(self.limits, max_size=self.limits.max_size * SCORE_PASSES),
                *self._observers(model.name, op),
            )
            for op, run in runs.items()
        }

    def _observers(self, name: str, op: str) -> tuple[OnBatch | None, OnQueue | None]:
        if self.metrics is None:
            return None, None
        depth = self.metrics.queue_depth.labels(name)
        return partial(self.metrics.observe_batch, name, op), depth.inc

    def _batcher(self, vae: VAE, op: str) -> Batcher[Any, Any]:
        return self._batchers[vae][op]

    async def sample(self, vae: VAE, n: int, seed: int, temperature: float, label: int | None) -> Samples:
        """n images from the prior; the draws are vae.sample's with `seeded(vae, seed)`."""
        return await self._batcher(vae, "sample").submit(SampleJob(n, seed, temperature, label), n)

    async def encode(self, vae: VAE, x: np.ndarray, labels: np.ndarray | None) -> Posterior:
        return await self._batcher(vae, "encode").submit(ImagesJob(x, labels), len(x))

    async def decode(self, vae: VAE, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        return await self._batcher(vae, "decode").submit(ImagesJob(z, labels), len(z))

    async def reconstruct(self, vae: VAE, x: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Decode of the posterior mean: (pixels, means)."""
        return await self._batcher(vae, "reconstruct").submit(ImagesJob(x, labels), len(x))

    async def score(self, vae: VAE, x: np.ndarray, labels: np.ndarray | None, k: int, seed: int) -> Scores:
        """Per image: ELBO terms and the IWAE bound with k samples, each from a fresh generator
        seeded with `seed`, so an image's score does not depend on the other images."""
        return await self._batcher(vae, "score").submit(ScoreJob(x, labels, k, seed), len(x), len(x) * (1 + k))
