from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from PIL import Image

import model.train
from model import load_checkpoint
from model.data import DataError
from model.train import learning_rate, parse_args, train


# A tiny model and recipe for the 48 images of `image_folder`.
TINY = ["--latent-dim", "4", "--conv-channels", "4", "--hidden", "32", "--val-size", "8", "--kl-warmup-epochs", "1",
        "--lr", "3e-3"]  # fmt: skip


def run(folder: Path, out: Path, *extra: str) -> dict:
    return train(parse_args(["--data", str(folder), "--out", str(out), *TINY, "--batch-size", "8", *extra]))


def test_training_lowers_the_loss_and_keeps_the_best(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    record = run(image_folder, out, "--epochs", "6")
    val = [row["val_neg_elbo"] for row in record["history"]]
    assert len(val) == 6 and val[-1] < val[0] - 25
    vae = load_checkpoint(out)
    assert vae.config.latent_dim == 4 and vae.config.num_classes == 0
    training = vae.metadata["training"]
    assert training["best_epoch"] == record["best_epoch"]
    assert training["val_neg_elbo"] == pytest.approx(min(val))
    assert training["command"].startswith("python -m model.train --data ")


@contextmanager
def interrupted_at_validation(at: int) -> Iterator[None]:
    """The training run inside stops with KeyboardInterrupt at its `at`-th validation, counted
    from 0: one per epoch for image folders (no test split), after the epoch before it was saved."""
    real = model.train.mean_negative_elbo
    calls = iter(range(1 << 30))

    def interrupting(*args: object, **kwargs: object) -> float:
        if next(calls) == at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    model.train.mean_negative_elbo = interrupting
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        model.train.mean_negative_elbo = real


def test_resume_continues_bit_exactly(image_folder: Path, tmp_path: Path) -> None:
    straight, resumed = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    run(image_folder, straight, "--epochs", "3")
    with interrupted_at_validation(2):  # while it validates epoch 3, after epoch 2's state was saved
        run(image_folder, resumed, "--epochs", "3")
    record = run(image_folder, resumed, "--epochs", "3", "--resume")
    assert [row["epoch"] for row in record["history"]] == [1, 2, 3]
    sa, sb = load_checkpoint(straight).state_dict(), load_checkpoint(resumed).state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_conditional_training_on_class_folders(image_folder: Path, tmp_path: Path) -> None:
    run(image_folder, tmp_path / "c.safetensors", "--epochs", "1", "--conditional")
    vae = load_checkpoint(tmp_path / "c.safetensors")
    assert vae.config.num_classes == 2 and vae.label_names == ["bars", "squares"]


def test_conditional_training_needs_classes(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    Image.new("L", (28, 28)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="one subfolder per class"):
        run(tmp_path / "flat", tmp_path / "c.safetensors", "--epochs", "1", "--conditional")


def test_resume_without_state(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no training state"):
        run(image_folder, tmp_path / "none.safetensors", "--epochs", "1", "--resume")


def test_learning_rate_schedule() -> None:
    assert learning_rate(0, 100, 1e-3) == pytest.approx(1e-3)
    assert learning_rate(50, 100, 1e-3) == pytest.approx(0.505e-3)
    assert learning_rate(100, 100, 1e-3) == pytest.approx(1e-5)


def test_worker_processes_read_the_same_batches(image_folder: Path, tmp_path: Path) -> None:
    """Image folders stream from disk; DataLoader workers change where they are read, not what is trained."""
    run(image_folder, tmp_path / "a.safetensors", "--epochs", "2")
    run(image_folder, tmp_path / "b.safetensors", "--epochs", "2", "--workers", "2")
    sa, sb = load_checkpoint(tmp_path / "a.safetensors").state_dict(), load_checkpoint(tmp_path / "b.safetensors").state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_batch_size_must_cover_the_processes(image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model.train, "start_process", lambda device: (model.train.Process(0, 4, 0), torch.device("cpu")))
    with pytest.raises(DataError, match="--batch-size 2 is smaller than the 4 processes"):
        run(image_folder, tmp_path / "m.safetensors", "--epochs", "1", "--batch-size", "2")
