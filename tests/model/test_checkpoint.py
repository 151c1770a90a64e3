import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from model import VAE, CheckpointError, VAEConfig, load_checkpoint, save_checkpoint


def test_round_trip_is_bit_exact(cvae: VAE, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", cvae, training={"command": "x"}, evaluation={"nll_nats": 1.5})
    loaded = load_checkpoint(path)
    assert loaded.config == cvae.config
    assert loaded.label_names == ["a", "b", "c"]
    assert loaded.metadata == {"training": {"command": "x"}, "evaluation": {"nll_nats": 1.5}}
    for name, tensor in cvae.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert not loaded.training


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.safetensors: checkpoint file does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_truncated_file(vae: VAE, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", vae)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="m.safetensors: not a readable safetensors checkpoint"):
        load_checkpoint(path)


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "g.safetensors"
    path.write_bytes(b"\x00" * 7)
    with pytest.raises(CheckpointError, match="g.safetensors"):
        load_checkpoint(path)


def test_flipped_byte_in_tensor_data(vae: VAE, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", vae)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its recorded sha256"):
        load_checkpoint(path)


def test_config_that_does_not_match_the_tensors(vae: VAE, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", vae)
    from model.checkpoint import read_checkpoint

    metadata, tensors = read_checkpoint(path)
    metadata["config"] = json.dumps(VAEConfig(latent_dim=5, conv_channels=4, hidden=16).to_dict())
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="has shape .* the config expects"):
        load_checkpoint(path)


def test_file_without_our_metadata(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="format version None"):
        load_checkpoint(path)
