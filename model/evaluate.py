"""Evaluate a checkpoint on the Fashion-MNIST test set.

`python -m model.evaluate CHECKPOINT [--k 5000] [--limit N] [--json] [--save]`

The test images are binarised once with `TEST_BINARIZATION_SEED` (model/data.py), so every
run and every model sees the same bits. Reports the negative ELBO, the IWAE estimate of the
negative log-likelihood (Burda et al., arXiv 1509.00519) in nats and bits per dimension, the
mean KL and reconstruction terms, and the number of active latent units (Burda et al. §5.2:
units whose posterior mean varies across the data, Cov_x(E_q[z_u]) > 0.01). Conditional
models are scored given the true label, so their figure is NLL(x|y).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time

import torch
from tqdm import tqdm

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.data import TEST_BINARIZATION_SEED, DataError, binarize, load_fashion_mnist
from model.device import resolve_device
from model.vae import VAE

log = logging.getLogger("model.evaluate")
ACTIVE_UNIT_THRESHOLD = 0.01


@torch.no_grad()
def evaluate(
    vae: VAE, images: torch.Tensor, labels: torch.Tensor, k: int, batch_size: int = 50, seed: int = 0
) -> dict[str, float | int]:
    """Test metrics of `vae` on binarised `images`, averaged per image."""
    generator = torch.Generator(vae.device).manual_seed(seed)
    conditional = vae.config.num_classes > 0
    sums = {"neg_elbo": 0.0, "nll": 0.0, "kl": 0.0, "reconstruction": 0.0}
    means = []
    for i in tqdm(range(0, images.shape[0], batch_size), desc=f"k={k}", disable=None, file=sys.stderr):
        x = images[i : i + batch_size].to(vae.device)
        y = labels[i : i + batch_size].to(vae.device) if conditional else None
        terms = vae.elbo(x, y, generator=generator)
        sums["neg_elbo"] += -terms.elbo.sum().item()
        sums["kl"] += terms.kl.sum().item()
        sums["reconstruction"] += terms.reconstruction.sum().item()
        sums["nll"] += -vae.iwae(x, k, y, generator=generator).sum().item()
        means.append(vae.encode(x, y).mean.cpu())
    n = images.shape[0]
    nll = sums["nll"] / n
    active = int((torch.cat(means).var(dim=0) > ACTIVE_UNIT_THRESHOLD).sum()) if n > 1 else 0
    return {
        "images": n,
        "k": k,
        "neg_elbo_nats": round(sums["neg_elbo"] / n, 3),
        "nll_nats": round(nll, 3),
        "bits_per_dim": round(nll / (vae.config.pixels * math.log(2)), 5),
        "kl_nats": round(sums["kl"] / n, 3),
        "reconstruction_nats": round(sums["reconstruction"] / n, 3),
        "active_units": active,
        "latent_dim": vae.config.latent_dim,
        "binarization_seed": TEST_BINARIZATION_SEED,
        "sample_seed": seed,
    }


def table(metrics: dict[str, float | int], conditional: bool) -> str:
    names = {
        "neg_elbo_nats": "-ELBO (nats)",
        "nll_nats": "NLL(x|y), IWAE (nats)" if conditional else "NLL, IWAE (nats)",
        "bits_per_dim": "bits/dim",
        "kl_nats": "KL (nats)",
        "reconstruction_nats": "reconstruction (nats)",
        "active_units": "active units",
        "k": "importance samples k",
        "images": "test images",
    }
    width = max(map(len, names.values()))
    return "\n".join(f"{label:<{width}}  {metrics[key]}" for key, label in names.items())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m model.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--k", type=int, default=5000, help="importance samples for the IWAE bound")
    p.add_argument("--limit", type=int, default=None, help="first N test images only")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo samples")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default: $VAE_FASHION_MNIST_DIR or Debian's)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--save", action="store_true", help="record the results in the checkpoint's metadata")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    if args.k < 1 or (args.limit is not None and args.limit < 1):
        sys.exit("error: --k and --limit must be >= 1")
    try:
        vae = load_checkpoint(args.checkpoint, device=resolve_device(args.device))
        images, labels = load_fashion_mnist("test", args.data_dir)
    except (CheckpointError, DataError) as e:
        sys.exit(f"error: {e}")
    if tuple(images.shape[1:]) != (vae.config.channels, vae.config.height, vae.config.width):
        sys.exit(f"error: {args.checkpoint} models {vae.config.channels}x{vae.config.height}x{vae.config.width} images, not Fashion-MNIST")
    images = binarize(images, TEST_BINARIZATION_SEED)[: args.limit]
    labels = labels[: args.limit]
    start = time.perf_counter()
    metrics = evaluate(vae, images, labels, args.k, args.batch_size, args.seed)
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    if args.save:
        vae.metadata["evaluation"] = metrics
        save_checkpoint(args.checkpoint, vae)
        log.info("recorded the evaluation in %s", args.checkpoint)
    print(json.dumps(metrics, indent=2) if args.json else table(metrics, vae.config.num_classes > 0))


if __name__ == "__main__":
    main()
