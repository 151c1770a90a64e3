"""Training under torchrun: two CPU processes (gloo), started by the real torchrun, train the
same model as one process with the same global batch; only rank 0 writes files; `--resume`
continues a two-process run.

Tolerance: the processes' gradients are averaged by an all-reduce, which adds them in another
order than one process's backward pass, so weights may differ by float rounding; they must
agree within 1e-4 (seen: about 1e-7), and the validation -ELBO to the 0.01 nats."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import load_checkpoint
from model.train import parse_args, state_path, train
from tests.model.test_train import TINY

ROOT = Path(__file__).resolve().parents[2]
# 40 training images in batches of 7: the last batch has 5, so the two shares differ (3 and 2).
RECIPE = [*TINY, "--batch-size", "7", "--epochs", "3"]


def torchrun(folder: Path, out: Path, writes: Path, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "tests.model.torchrun_train", "--data", str(folder), "--out", str(out), *RECIPE, *extra]  # fmt: skip
    environment = os.environ | {"OMP_NUM_THREADS": "1", "TRAIN_WRITES_LOG": str(writes), **env}
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)


def writers(writes: Path) -> set[str]:
    return {line.split()[0] for line in writes.read_text().splitlines()}


def test_two_processes_train_as_one_and_resume(image_folder: Path, tmp_path: Path) -> None:
    out, writes = tmp_path / "ddp" / "m.safetensors", tmp_path / "writes.log"
    out.parent.mkdir()
    # Rank 0 stops at epoch 2's validation: epoch 1's checkpoint and state are on disk.
    stopped = torchrun(image_folder, out, writes, TRAIN_STOP_AT_VALIDATION="1")
    assert stopped.returncode != 0 and "stopped by the test" in stopped.stderr
    assert writers(writes) == {"0"}
    assert {p.name for p in out.parent.iterdir()} == {out.name, state_path(out).name}

    resumed = torchrun(image_folder, out, writes, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed" in resumed.stderr and writers(writes) == {"0"}
    assert {p.name for p in out.parent.iterdir()} == {out.name, state_path(out).name}

    one = tmp_path / "one.safetensors"
    record = train(parse_args(["--data", str(image_folder), "--out", str(one), *RECIPE]))
    two_processes, one_process = load_checkpoint(out), load_checkpoint(one)
    training = two_processes.metadata["training"]
    assert training["world_size"] == 2 and one_process.metadata["training"]["world_size"] == 1
    assert training["command"].startswith("torchrun --nnodes 1 --nproc-per-node 2 -m model.train ")
    assert training["best_epoch"] == record["best_epoch"]
    assert training["val_neg_elbo"] == pytest.approx(record["best_val"], abs=0.01)
    a, b = two_processes.state_dict(), one_process.state_dict()
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-4) for k in a)
