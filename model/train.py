"""Train a VAE: `python -m model.train --out model/checkpoints/fashion-vae.safetensors`.

Maximises the ELBO (Kingma & Welling, eq. 7) with the reparameterisation trick on
dynamically binarised images (a fresh Bernoulli draw of every pixel each time an image is
seen), a linear KL warm-up (Sønderby et al. 2016) and a cosine learning-rate schedule.
The best model on a validation split is kept; `--resume` continues bit-exactly from the
training state saved beside it after every epoch.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from model.checkpoint import save_checkpoint
from model.data import (
    FASHION_MNIST_CLASSES,
    TEST_BINARIZATION_SEED,
    DataError,
    binarize,
    load_fashion_mnist,
    load_image_folder,
)
from model.device import resolve_device
from model.vae import VAE, VAEConfig

log = logging.getLogger("model.train")


@dataclass
class Dataset:
    name: str
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor] | None  # binarised once; None for image folders
    label_names: list[str]


def load_dataset(args: argparse.Namespace, generator: torch.Generator) -> Dataset:
    """Fashion-MNIST (train minus a validation split, and the fixed binarised test set) or an image folder."""
    if args.data == "fashion-mnist":
        images, labels = load_fashion_mnist("train", args.data_dir)
        test_images, test_labels = load_fashion_mnist("test", args.data_dir)
        test = (binarize(test_images, TEST_BINARIZATION_SEED), test_labels)
        names = FASHION_MNIST_CLASSES
    else:
        config = VAEConfig(channels=args.channels, height=args.height, width=args.width)
        images, labels, names = load_image_folder(args.data, config)
        test = None
    order = torch.randperm(images.shape[0], generator=generator)
    val_size = min(args.val_size, images.shape[0] // 5)
    val, train = order[:val_size], order[val_size:]
    # Validation, like the test set, is binarised once so its ELBO is comparable across epochs.
    val_split = (binarize(images[val], TEST_BINARIZATION_SEED + 1), labels[val])
    return Dataset(args.data, (images[train], labels[train]), val_split, test, names)


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
    p.add_argument("--resume", action="store_true", help="continue from the training state beside --out")
    args = p.parse_args(argv)
    args.command = "python -m model.train " + shlex.join(sys.argv[1:] if argv is None else argv)
    return args


def train(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)  # parameter initialisation only; training draws use `generator`
    data = load_dataset(args, generator)
    images, labels = data.train
    num_classes = len(data.label_names) if args.conditional else 0
    if args.conditional and num_classes < 2:
        raise DataError("--conditional needs labelled data: one subfolder per class")
    config = VAEConfig(
        channels=images.shape[1], height=images.shape[2], width=images.shape[3],
        latent_dim=args.latent_dim, conv_channels=args.conv_channels, hidden=args.hidden, num_classes=num_classes,
    )  # fmt: skip
    vae = VAE(config, label_names=data.label_names if args.conditional else None).to(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(images.shape[0] / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    record = {"epoch": 0, "best_val": math.inf, "best_epoch": 0, "seconds": 0.0, "history": []}
    if args.resume:
        record = load_state(args.out, vae, optimizer, generator)
        log.info("resumed %s at epoch %d", args.out, record["epoch"])
    for epoch in range(record["epoch"] + 1, args.epochs + 1):
        vae.train()
        start = time.perf_counter()
        order = torch.randperm(images.shape[0], generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{args.epochs}", leave=False, file=sys.stderr, disable=None)
        for i in bar:
            step = (epoch - 1) * steps_per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total_steps, args.lr)
            beta = min(1.0, step / (args.kl_warmup_epochs * steps_per_epoch)) if args.kl_warmup_epochs else 1.0
            index = order[i * args.batch_size : (i + 1) * args.batch_size]
            x = torch.bernoulli(images[index], generator=generator).to(device)  # dynamic binarisation
            y = labels[index].to(device) if num_classes else None
            eps = torch.randn(x.shape[0], config.latent_dim, generator=generator).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                posterior = vae.encode(x, y)
                z = posterior.mean + posterior.std * eps  # reparameterisation (Kingma & Welling, eq. 10)
                logits = vae.decode_logits(z, y).float()
            reconstruction = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
            kl = posterior.kl().float().mean()
            loss = reconstruction + beta * kl
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss became {loss.item()} at epoch {epoch}, step {i}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.1f}", rec=f"{reconstruction.item():.1f}", kl=f"{kl.item():.1f}")
        record["seconds"] += time.perf_counter() - start
        val = mean_negative_elbo(vae, data.val, bool(num_classes))
        test = mean_negative_elbo(vae, data.test, bool(num_classes)) if data.test else None
        row = {"epoch": epoch, "train_loss": round(loss.item(), 3), "val_neg_elbo": round(val, 3)}
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
                },
                "evaluation": {},
            }
            save_checkpoint(args.out, vae)
        save_state(args.out, vae, optimizer, generator, record)
    return record


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    try:
        record = train(args)
    except DataError as e:
        sys.exit(f"error: {e}")
    log.info("best epoch %d with validation -ELBO %.2f nats; wrote %s", record["best_epoch"], record["best_val"], args.out)


if __name__ == "__main__":
    main()
