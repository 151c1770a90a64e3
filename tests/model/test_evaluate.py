import json
import math
from pathlib import Path

import numpy as np
import pytest

from model import VAE, load_checkpoint, save_checkpoint
from model.evaluate import main
from tests.model.test_data import write_idx


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 2, 0, 1]))
    return tmp_path


def test_json_output_and_save(vae: VAE, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", vae)
    main([str(path), "--k", "8", "--limit", "4", "--json", "--save", "--data-dir", str(data_dir), "--device", "cpu"])
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["images"] == 4 and metrics["k"] == 8
    assert metrics["nll_nats"] <= metrics["neg_elbo_nats"] + 1.0
    assert metrics["kl_nats"] >= 0 and metrics["reconstruction_nats"] >= 0
    assert metrics["neg_elbo_nats"] == pytest.approx(metrics["kl_nats"] + metrics["reconstruction_nats"], abs=0.01)
    assert metrics["bits_per_dim"] == pytest.approx(metrics["nll_nats"] / (784 * math.log(2)), abs=1e-4)
    assert 0 <= metrics["active_units"] <= 4
    assert load_checkpoint(path).metadata["evaluation"] == metrics


def test_table_for_a_conditional_model(cvae: VAE, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_checkpoint(tmp_path / "c.safetensors", cvae)
    main([str(path), "--k", "2", "--limit", "2", "--data-dir", str(data_dir), "--device", "cpu"])
    out = capsys.readouterr().out
    assert "NLL(x|y), IWAE (nats)" in out and "test images            2" in out


def test_missing_checkpoint_is_one_line(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="error: .*nope.safetensors: checkpoint file does not exist"):
        main([str(tmp_path / "nope.safetensors"), "--data-dir", str(data_dir)])
