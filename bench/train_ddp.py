"""Time of one training epoch of the shipped model's recipe, in one process and split over
processes by torchrun; results in docs/benchmarks.md.

`python bench/train_ddp.py` trains docs/models/fashion-vae.md's recipe (Fashion-MNIST, batch
128, 64 latents, bf16) for --epochs 1 three ways, each in a temporary folder: one process with
one thread, one process with --nproc threads, and `torchrun --standalone --nproc-per-node
NPROC` with one thread per process. It prints each run's training seconds (per-epoch
evaluation excluded), read from the training state the run saved, and the command it ran.
Needs Debian's dataset-fashion-mnist (or --data-dir); about 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors import safe_open

from model.train import state_path

log = logging.getLogger("bench.train_ddp")
RECIPE = ["--latent-dim", "64", "--conv-channels", "32", "--hidden", "512", "--bf16", "--seed", "0"]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def train_seconds(command: list[str], out: Path) -> float:
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with safe_open(str(state_path(out)), framework="pt") as f:
        return json.loads(f.metadata()["record"])["seconds"]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc", type=int, default=2, help="processes for torchrun (and threads for the one-process run)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default: Debian's)")
    args = p.parse_args()
    common = [*RECIPE, "--epochs", str(args.epochs)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    python = [sys.executable, "-m", "model.train"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc)]
    runs = {
        "1 process, 1 thread": [*python, "--threads", "1"],
        f"1 process, {args.nproc} threads": [*python, "--threads", str(args.nproc)],
        f"torchrun, {args.nproc} processes of 1 thread": [*torchrun, "-m", "model.train", "--threads", "1"],
    }
    log.info("%s, %d cores, %s", cpu_model(), os.cpu_count(), time.strftime("%Y-%m-%d"))
    with tempfile.TemporaryDirectory() as folder:
        for i, (name, command) in enumerate(runs.items()):
            out = Path(folder) / f"run{i}.safetensors"
            full = [*command, "--out", str(out), *common]
            seconds = train_seconds(full, out) / args.epochs
            log.info("%-32s %7.1f s per epoch   (%s)", name, seconds, " ".join(full[1:]))


if __name__ == "__main__":
    main()
