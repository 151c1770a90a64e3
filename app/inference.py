"""Every model call of the service, batched across requests and run off the event loop.

Routes hand tensors over on the CPU and get CPU tensors back. Each (model, operation) has a
`Batcher` (app/batcher.py): concurrent requests queue there and run together, in the one
inference thread that all batchers share, as batch-invariant passes (app/passes.py). All
randomness comes from a `torch.Generator` seeded by the request and drawn for that request's
rows alone, so a request's result never depends on what it was batched with: same seed, same
bytes, with batching on or off.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from app.batcher import Batcher, Limits, OnBatch, OnQueue, Worker
from app.config import Settings
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
    images: torch.Tensor  # [n, C, H, W] pixel means in [0, 1]
    latents: torch.Tensor  # [n, latent_dim]
    labels: torch.Tensor | None  # [n] class indices (conditional models)


@dataclass
class Posterior:
    mean: torch.Tensor  # [B, latent_dim]
    variance: torch.Tensor
    log_variance: torch.Tensor


@dataclass
class Scores:
    reconstruction: torch.Tensor  # [B] -E_q[log p(x|z)], nats
    kl: torch.Tensor  # [B]
    elbo: torch.Tensor  # [B]
    nll: torch.Tensor  # [B] -(IWAE bound)
    bits_per_dim: torch.Tensor  # [B]


@dataclass
class SampleJob:
    n: int
    seed: int
    temperature: float
    label: int | None


@dataclass
class ImagesJob:  # decode (x: latents), encode and reconstruct (x: images)
    x: torch.Tensor
    labels: torch.Tensor | None


@dataclass
class ScoreJob:
    x: torch.Tensor
    labels: torch.Tensor | None
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


def stacked(parts: list[torch.Tensor | None], device: torch.device) -> torch.Tensor | None:
    """The batch's rows of one input, on the model's device; None for unconditional models."""
    if parts[0] is None:
        return None
    return torch.cat(parts).to(device)  # type: ignore[arg-type]  # all None or all tensors


def split(t: torch.Tensor, jobs: list[Any]) -> tuple[torch.Tensor, ...]:
    return t.cpu().split([len(job.x) for job in jobs])


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
    images = passes.decode(z, y).cpu().split([job.n for job in jobs])
    zs = z.cpu().split([job.n for job in jobs])
    ys = y.cpu().split([job.n for job in jobs]) if y is not None else [None] * len(jobs)
    return [Samples(*parts) for parts in zip(images, zs, ys, strict=True)]


@torch.inference_mode()
def run_decode(passes: Passes, jobs: list[ImagesJob]) -> list[torch.Tensor]:
    vae = passes.vae
    z = torch.cat([job.x for job in jobs]).to(vae.device, vae.dtype)
    return list(split(passes.decode(z, stacked([job.labels for job in jobs], vae.device)), jobs))


@torch.inference_mode()
def run_encode(passes: Passes, jobs: list[ImagesJob]) -> list[Posterior]:
    x = torch.cat([job.x for job in jobs]).to(passes.vae.device)
    moments = passes.encode(x, stacked([job.labels for job in jobs], passes.vae.device))
    return [Posterior(*parts) for parts in zip(*(split(t, jobs) for t in moments), strict=True)]


@torch.inference_mode()
def run_reconstruct(passes: Passes, jobs: list[ImagesJob]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Decode of the posterior mean: (images, means) per job."""
    x = torch.cat([job.x for job in jobs]).to(passes.vae.device)
    labels = stacked([job.labels for job in jobs], passes.vae.device)
    mean = passes.encode(x, labels)[0]
    return list(zip(split(passes.decode(mean, labels), jobs), split(mean, jobs), strict=True))


@torch.inference_mode()
def run_score(passes: Passes, jobs: list[ScoreJob]) -> list[Scores]:
    """Per image: vae.elbo and vae.iwae (Burda et al., arXiv 1509.00519) on that image alone,
    each drawing from a fresh `seeded(vae, seed)`, so an image's score depends on nothing else
    sent or batched with it. Every image's 1 + k decoder rows go through shared passes."""
    vae = passes.vae
    x = torch.cat([job.x for job in jobs]).to(vae.device)
    labels = stacked([job.labels for job in jobs], vae.device)
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
    for part in torch.stack(terms).split([len(job.x) for job in jobs]):
        reconstruction, kl, elbo, nll = part.T
        scores.append(Scores(reconstruction, kl, elbo, nll, nll / (vae.config.pixels * math.log(2))))
    return scores


class Inference:
    """The async model operations; each goes through its (model, operation) batcher."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        threads = torch_threads(settings)
        self.worker = Worker(initializer=partial(torch.set_num_threads, threads))
        self.max_batch = settings.max_batch
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
        passes = Passes(model.vae, self.max_batch)
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

    async def encode(self, vae: VAE, x: torch.Tensor, labels: torch.Tensor | None) -> Posterior:
        return await self._batcher(vae, "encode").submit(ImagesJob(x, labels), len(x))

    async def decode(self, vae: VAE, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return await self._batcher(vae, "decode").submit(ImagesJob(z, labels), len(z))

    async def reconstruct(
        self, vae: VAE, x: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode of the posterior mean: (images, means)."""
        return await self._batcher(vae, "reconstruct").submit(ImagesJob(x, labels), len(x))

    async def score(self, vae: VAE, x: torch.Tensor, labels: torch.Tensor | None, k: int, seed: int) -> Scores:
        """Per image: ELBO terms and the IWAE bound with k samples, each from a fresh generator
        seeded with `seed`, so an image's score does not depend on the other images."""
        return await self._batcher(vae, "score").submit(ScoreJob(x, labels, k, seed), len(x), len(x) * (1 + k))
