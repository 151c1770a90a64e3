"""Train a VAE: `python -m model.train --out model/checkpoints/fashion-vae.safetensors`.

Maximises the ELBO (Kingma & Welling, eq. 7) with the reparameterisation trick on
dynamically binarised images (a fresh Bernoulli draw of every pixel each time an image is
seen), a linear KL warm-up (Sønderby et al. 2016) and a cosine learning-rate schedule.
The best model on a validation split is kept; `--resume` continues bit-exactly from the
training state saved beside it after every epoch.

Under torchrun (`torchrun --nproc-per-node N -m model.train ...`) the same run is split over N
processes with DistributedDataParallel: `--batch-size` stays the global batch, each process
computing the gradient of its share of every batch, so the batches, the random draws and the
learning rate are those of one process, and the result equals one process's within float
rounding (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from model.checkpoint import save_checkpoint
from model.data import (
    FASHION_MNIST_CLASSES,
    TEST_BINARIZATION_SEED,
    DataError,
    ImageFiles,
    TensorImages,
    batch_as_is,
    binarize,
    image_folder,
    load_fashion_mnist,
)
from model.device import resolve_device
from model.vae import VAE, VAEConfig

log = logging.getLogger("model.train")


@dataclass
class Dataset:
    name: str
    train: TensorImages | ImageFiles  # image folders: read from disk batch by batch
    val: tuple[torch.Tensor, torch.Tensor]  # in memory: --val-size images
    test: tuple[torch.Tensor, torch.Tensor] | None  # binarised once; None for image folders
    label_names: list[str]
    shape: tuple[int, int, int]  # channels, height, width


@dataclass
class Process:
    """This process's place in the run: rank 0 of 1 without torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's rows of a whole batch: r, r + W, r + 2W, ... (a view)."""
        return batch[self.rank :: self.world_size]


def load_dataset(args: argparse.Namespace, generator: torch.Generator) -> Dataset:
    """Fashion-MNIST (train minus a validation split, and the fixed binarised test set) or an image folder."""
    if args.data == "fashion-mnist":
        images, labels = load_fashion_mnist("train", args.data_dir)
        test_images, test_labels = load_fashion_mnist("test", args.data_dir)
        test = (binarize(test_images, TEST_BINARIZATION_SEED), test_labels)
        names = FASHION_MNIST_CLASSES
        everything: TensorImages | ImageFiles = TensorImages(images, labels)
    else:
        config = VAEConfig(channels=args.channels, height=args.height, width=args.width)
        everything, names = image_folder(args.data, config)
        test = None
    order = torch.randperm(len(everything), generator=generator)
    val_size = min(args.val_size, len(everything) // 5)
    val, train = order[:val_size], order[val_size:]
    # Validation, like the test set, is binarised once so its ELBO is comparable across epochs.
    val_images, val_labels = everything.__getitems__(val.tolist())
    val_split = (binarize(val_images, TEST_BINARIZATION_SEED + 1), val_labels)
    return Dataset(args.data, everything.subset(train), val_split, test, names, tuple(val_images.shape[1:]))


class GlobalBatches(torch.utils.data.Sampler[list[int]]):
    """This process's share of each batch of an epoch: batch i is `order[i*B : (i+1)*B]` (B the
    global --batch-size), and process r of W takes its items r, r + W, r + 2W, ... Every process
    draws the same `order` from the same generator, so the shares split each batch exactly.
    With W > 1 a last batch of fewer than W items is left out (each process needs one)."""

    def __init__(self, size: int, batch_size: int, process: Process) -> None:
        self.size, self.batch_size, self.process = size, batch_size, process
        self.order = torch.arange(size)

    def __len__(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        return full + (rest >= self.process.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(len(self)):
            batch = self.order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.process.share(batch).tolist()

    def rows(self, step: int) -> int:
        """The size of the whole batch `step`, all processes' shares together."""
        return min(self.batch_size, self.size - step * self.batch_size)


class NegativeELBO(torch.nn.Module):
    """The loss of one batch: -ELBO per image with the KL term weighted by beta, as a module,
    so that DistributedDataParallel wraps it and averages its gradients."""

    def __init__(self, vae: VAE, bf16: bool) -> None:
        super().__init__()
        self.vae, self.bf16 = vae, bf16

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None, eps: torch.Tensor, beta: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            posterior = self.vae.encode(x, y)
            z = posterior.mean + posterior.std * eps  # reparameterisation (Kingma & Welling, eq. 10)
            logits = self.vae.decode_logits(z, y).float()
        reconstruction = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
        kl = posterior.kl().float().mean()
        return reconstruction + beta * kl, reconstruction, kl


def start_process(device_name: str) -> tuple[Process, torch.device]:
    """Join torchrun's process group when torchrun started this process (its RANK, WORLD_SIZE,
    LOCAL_RANK and rendezvous variables): NCCL on GPUs, one per process, else gloo."""
    device = resolve_device(device_name)
    if "WORLD_SIZE" not in os.environ:
        return Process(), device
    process = Process(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        device = torch.device("cuda", process.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return process, device


def learning_rate(step: int, total: int, base: float) -> float:
    """Cosine decay from `base` to base/100 over the run."""
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1.0))))


@torch.no_grad()
def mean_negative_elbo(vae: VAE, split: tuple[torch.Tensor, torch.Tensor], conditional: bool, batch: int = 1000) -> float:
    """Mean -ELBO in nats over a binarised split, with a fixed seed for the one-sample estimate."""
    vae.eval()
    generator = torch.Generator(vae.device).manual_seed(0)
    total = 0.0
    images, labels = split
    for i in range(0, images.shape[0], batch):
        x = images[i : i + batch].to(vae.device)
        y = labels[i : i + batch].to(vae.device) if conditional else None
        total += -vae.elbo(x, y, generator=generator).elbo.sum().item()
    return total / images.shape[0]


def state_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".safetensors") + ".state.safetensors")


def save_state(out: Path, vae: VAE, optimizer: torch.optim.Optimizer, generator: torch.Generator, record: dict) -> None:
    """Everything `--resume` needs, as tensors plus JSON metadata (no pickles)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
    tensors["generator"] = generator.get_state()
    path = state_path(out)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"record": json.dumps(record)})
    tmp.replace(path)


def load_state(out: Path, vae: VAE, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> dict:
    path = state_path(out)
    if not path.is_file():
        raise DataError(f"--resume: no training state at {path}")
    with safe_open(str(path), framework="pt") as f:
        record = json.loads(f.metadata()["record"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    vae.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    state = optimizer.state_dict()
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(state)
    generator.set_state(tensors["generator"])
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or a folder of images (one subfolder per class optional)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default: $VAE_FASHION_MNIST_DIR or Debian's)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (the best model by validation ELBO)")
    p.add_argument("--conditional", action="store_true", help="condition on the class labels (a CVAE)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kl-warmup-epochs", type=float, default=10.0, help="KL weight rises linearly from 0 to 1")
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--conv-channels", type=int, default=32)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--channels", type=int, default=1, help="image folders only: 1 (grey) or 3 (RGB)")
    p.add_argument("--height", type=int, default=28, help="image folders only")
    p.add_argument("--width", type=int, default=28, help="image folders only")
    p.add_argument("--val-size", type=int, default=5000, help="images held out of training to pick the best epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the forward pass (weights stay float32)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes reading images (0: read in this process)")
    p.add_argument("--resume", action="store_true", help="continue from the training state beside --out")
    args = p.parse_args(argv)
    launcher = "python -m model.train"
    if "WORLD_SIZE" in os.environ:  # torchrun; one node's processes times the nodes
        local, world = int(os.environ["LOCAL_WORLD_SIZE"]), int(os.environ["WORLD_SIZE"])
        launcher = f"torchrun --nnodes {world // local} --nproc-per-node {local} -m model.train"
    args.command = f"{launcher} " + shlex.join(sys.argv[1:] if argv is None else argv)
    return args


def train(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    process, device = start_process(args.device)
    try:
        record = train_process(args, process, device)
        if dist.is_initialized():
            # Tear the group down together: the other ranks would otherwise destroy theirs while
            # rank 0 still evaluates and writes, and exit on their own schedule.
            dist.barrier()
        return record
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def train_process(args: argparse.Namespace, process: Process, device: torch.device) -> dict:
    """The training loop of one process; the only one without torchrun. Every process makes
    the same draws from `generator`; only rank 0 evaluates and writes files."""
    if args.batch_size < process.world_size:
        raise DataError(f"--batch-size {args.batch_size} is smaller than the {process.world_size} processes")
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)  # parameter initialisation only; training draws use `generator`
    data = load_dataset(args, generator)
    num_classes = len(data.label_names) if args.conditional else 0
    if args.conditional and num_classes < 2:
        raise DataError("--conditional needs labelled data: one subfolder per class")
    channels, height, width = data.shape
    config = VAEConfig(
        channels=channels, height=height, width=width,
        latent_dim=args.latent_dim, conv_channels=args.conv_channels, hidden=args.hidden, num_classes=num_classes,
    )  # fmt: skip
    vae = VAE(config, label_names=data.label_names if args.conditional else None).to(device)
    loss_fn: torch.nn.Module = NegativeELBO(vae, args.bf16)
    if dist.is_initialized():
        loss_fn = torch.nn.parallel.DistributedDataParallel(loss_fn, device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(vae.parameters(), lr=args.lr)
    batches = GlobalBatches(len(data.train), args.batch_size, process)
    loader = torch.utils.data.DataLoader(
        data.train, batch_sampler=batches, collate_fn=batch_as_is, num_workers=args.workers,
        persistent_workers=args.workers > 0, pin_memory=device.type == "cuda",
    )  # fmt: skip
    steps_per_epoch = len(batches)
    total_steps = args.epochs * steps_per_epoch
    record = {"epoch": 0, "best_val": math.inf, "best_epoch": 0, "seconds": 0.0, "history": []}
    if args.resume:
        record = load_state(args.out, vae, optimizer, generator)
        log.info("resumed %s at epoch %d", args.out, record["epoch"])
    for epoch in range(record["epoch"] + 1, args.epochs + 1):
        vae.train()
        start = time.perf_counter()
        batches.order = torch.randperm(len(data.train), generator=generator)
        bar = tqdm(loader, desc=f"epoch {epoch}/{args.epochs}", leave=False, file=sys.stderr, disable=None if process.main else True)
        for i, (images, labels) in enumerate(bar):
            step = (epoch - 1) * steps_per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total_steps, args.lr)
            beta = min(1.0, step / (args.kl_warmup_epochs * steps_per_epoch)) if args.kl_warmup_epochs else 1.0
            # The noise is drawn for the whole batch, so each image gets the same draws whatever
            # the number of processes; a bernoulli draw's stream does not depend on the
            # probabilities, so the other processes' rows can be zeros.
            rows = batches.rows(i)
            probabilities = images.new_zeros((rows, *images.shape[1:]))
            process.share(probabilities)[:] = images
            x = process.share(torch.bernoulli(probabilities, generator=generator)).to(device)  # dynamic binarisation
            y = labels.to(device) if num_classes else None
            eps = process.share(torch.randn(rows, config.latent_dim, generator=generator)).to(device)
            loss, reconstruction, kl = loss_fn(x, y, eps, beta)
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss became {loss.item()} at epoch {epoch}, step {i}")
            optimizer.zero_grad(set_to_none=True)
            # DistributedDataParallel averages the processes' gradients; weighting each share by
            # its size makes that the gradient of the whole batch's mean (exactly 1 in one process).
            (loss * (x.shape[0] * process.world_size / rows)).backward()
            optimizer.step()
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.1f}", rec=f"{reconstruction.item():.1f}", kl=f"{kl.item():.1f}")
        record["seconds"] += time.perf_counter() - start
        last_loss = loss.detach() * (x.shape[0] / rows)  # this share's part of the last batch's mean
        if dist.is_initialized():
            dist.all_reduce(last_loss)
        if not process.main:
            record["epoch"] = epoch
            continue
        val = mean_negative_elbo(vae, data.val, bool(num_classes))
        test = mean_negative_elbo(vae, data.test, bool(num_classes)) if data.test else None
        row = {"epoch": epoch, "train_loss": round(last_loss.item(), 3), "val_neg_elbo": round(val, 3)}
        if test is not None:
            row["test_neg_elbo"] = round(test, 3)
        record["history"].append(row)
        record["epoch"] = epoch
        log.info("epoch %d  %s  (%.0fs total)", epoch, "  ".join(f"{k} {v}" for k, v in row.items() if k != "epoch"), record["seconds"])
        if val < record["best_val"]:
            record["best_val"], record["best_epoch"] = val, epoch
            vae.metadata = {
                "training": {
                    "command": args.command,
                    "dataset": data.name,
                    "epochs": args.epochs,
                    "best_epoch": epoch,
                    "val_neg_elbo": round(val, 3),
                    "test_neg_elbo": row.get("test_neg_elbo"),
                    "wall_seconds": round(record["seconds"]),
                    "machine": f"{platform.machine()} {platform.processor() or platform.platform()}, "
                    f"{torch.get_num_threads()} threads, {device}, torch {torch.__version__}",
                    "seed": args.seed,
                    "world_size": process.world_size,
                },
                "evaluation": {},
            }
            save_checkpoint(args.out, vae)
        save_state(args.out, vae, optimizer, generator, record)
    return record


def main(argv: list[str] | None = None) -> None:
    # Under torchrun only rank 0 reports; the others log warnings and errors.
    main_process = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    try:
        record = train(args)
    except DataError as e:
        sys.exit(f"error: {e}")
    log.info("best epoch %d with validation -ELBO %.2f nats; wrote %s", record["best_epoch"], record["best_val"], args.out)


if __name__ == "__main__":
    main()
