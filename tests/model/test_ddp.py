"""Training under torchrun: one process trains epoch 1 and is interrupted; two CPU processes
(gloo), started by the real torchrun, resume the run with `--resume`; only rank 0 writes
files; and the result is what one process trains with the same global batch in one go.
(One torchrun start, as each costs seconds of imports on a busy machine.)

Tolerance: the processes' gradients are averaged by an all-reduce, which adds them in another
order than one process's backward pass, so weights may differ by float rounding; they must
agree within 1e-4 (seen: about 1e-7), and the validation -ELBO to the 0.01 nats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from model import load_checkpoint
from model.train import parse_args, state_path, train
from tests.model.test_train import TINY, interrupted_at_validation

ROOT = Path(__file__).resolve().parents[2]
# 40 training images in batches of 7: the last batch has 5, so the two shares differ (3 and 2).
RECIPE = [*TINY, "--batch-size", "7", "--epochs", "3"]


def torchrun(folder: Path, out: Path, writes: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "tests.model.torchrun_train", "--data", str(folder), "--out", str(out), *RECIPE, *extra]  # fmt: skip
    environment = os.environ | {"OMP_NUM_THREADS": "1", "TRAIN_WRITES_LOG": str(writes)}
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)


def test_two_processes_resume_a_run_and_train_as_one(image_folder: Path, tmp_path: Path) -> None:
    out, writes = tmp_path / "ddp" / "m.safetensors", tmp_path / "writes.log"
    argv = ["--data", str(image_folder), *RECIPE]
    with interrupted_at_validation(1):  # epoch 1's checkpoint and state are on disk
        train(parse_args([*argv, "--out", str(out)]))

    resumed = torchrun(image_folder, out, writes, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed" in resumed.stderr
    # Epochs 2 and 3: their checkpoints and states, written by rank 0 only.
    assert sorted(line.split()[:2] for line in writes.read_text().splitlines()) == [
        ["0", "save_checkpoint"], ["0", "save_checkpoint"], ["0", "save_state"], ["0", "save_state"],
    ]  # fmt: skip
    assert {p.name for p in out.parent.iterdir()} == {out.name, state_path(out).name}

    one = tmp_path / "one.safetensors"
    record = train(parse_args([*argv, "--out", str(one)]))
    with safe_open(str(state_path(out)), framework="pt") as f:
        resumed_record = json.loads(f.metadata()["record"])
    assert [row["epoch"] for row in resumed_record["history"]] == [1, 2, 3]
    for ours, theirs in zip(resumed_record["history"], record["history"], strict=True):
        assert ours["val_neg_elbo"] == pytest.approx(theirs["val_neg_elbo"], abs=0.01)
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], abs=0.01)
    two_processes, one_process = load_checkpoint(out), load_checkpoint(one)
    training = two_processes.metadata["training"]
    assert training["world_size"] == 2 and one_process.metadata["training"]["world_size"] == 1
    assert training["command"].startswith("torchrun --nnodes 1 --nproc-per-node 2 -m model.train ")
    assert training["best_epoch"] == record["best_epoch"] == 3
    a, b = two_processes.state_dict(), one_process.state_dict()
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-4) for k in a)
