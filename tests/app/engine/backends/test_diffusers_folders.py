"""diffusers autoencoders as users keep them on disk, served offline: a pipeline folder
(model_index.json with a vae component), a Hugging Face hub cache entry (models--org--name,
its snapshot named by refs/main, files as links into blobs/), a float16 weight variant; and
a class that decodes to a mel spectrogram with its vocoder (a pipeline folder naming audio_vae and
vocoder); and what cannot be served stops start-up with one line naming the folder."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.engine.backends.diffusers import DiffusersBackend, family, load_diffusers
from app.engine.errors import StartupError
from app.main import create_app, load_models
from tests.diffusers_audio_models import TINY_AUDIO, TINY_VOCODERS, build_audio, in_diffusers_decode, save_audio_classes
from tests.diffusers_models import TINY_KL, build

diffusers = pytest.importorskip("diffusers")
CPU = torch.device("cpu")
REVISION = "0123456789abcdef0123456789abcdef01234567"


def pipeline_folder(folder: Path, vae: torch.nn.Module) -> Path:
    """A pipeline as save_pretrained writes one: model_index.json and a folder per component."""
    folder.mkdir(parents=True)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "vae": ["diffusers", "AutoencoderKL"],
    }
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    vae.save_pretrained(folder / "vae")
    (folder / "unet").mkdir()
    (folder / "unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    return folder


def hub_entry(cache: Path, repo: str, snapshot: Path) -> Path:
    """`snapshot`'s files as huggingface_hub caches them: blobs by hash, the snapshot's files as
    relative links to them, refs/main naming the revision."""
    entry = cache / ("models--" + repo.replace("/", "--"))
    (entry / "blobs").mkdir(parents=True)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(REVISION)
    for path in sorted(p for p in snapshot.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = entry / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = entry / "snapshots" / REVISION / path.relative_to(snapshot)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (len(path.relative_to(snapshot).parts) + 1), "blobs", blob.name))
    return entry


@pytest.fixture(scope="module")
def kl() -> torch.nn.Module:
    return build("AutoencoderKL", TINY_KL)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, kl: torch.nn.Module) -> Path:
    """A model folder with a pipeline folder, a hub cache entry (of a pipeline) and an fp16 variant."""
    root = tmp_path_factory.mktemp("on-disk")
    models = root / "models"
    pipeline_folder(models / "sd-pipeline", kl)
    hub_entry(models, "org/sd-tiny", pipeline_folder(root / "staging", kl))
    copy.deepcopy(kl).half().save_pretrained(models / "kl-fp16", variant="fp16")  # float16 weights
    return models


@pytest.fixture(scope="module")
def client(folders: Path) -> Iterator[TestClient]:
    def no_network(*args: object) -> None:
        raise OSError("no network in this test: nothing may be downloaded")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(socket.socket, "connect", no_network)  # the test client needs no socket
        with TestClient(create_app(Settings(model_dir=folders, device="cpu", torch_threads=1))) as client:
            yield client


def test_pipeline_folders_hub_snapshots_and_variants_are_served(client: TestClient, kl: torch.nn.Module) -> None:
    listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(listed) == {"sd-pipeline", "org--sd-tiny", "kl-fp16"}
    assert all(m["details"]["class"] == "AutoencoderKL" for m in listed.values())
    # One set of weights: the pipeline's and the snapshot's sha256 (config and weights) agree.
    assert listed["sd-pipeline"]["sha256"] == listed["org--sd-tiny"]["sha256"] != listed["kl-fp16"]["sha256"]
    z = np.random.default_rng(0).standard_normal((1, 4, 4, 6)).astype("<f4")
    with torch.inference_mode():
        expected = kl.decode(torch.from_numpy(z)).sample.numpy()
    for name, tolerance in (("sd-pipeline", 1e-5), ("org--sd-tiny", 1e-5), ("kl-fp16", 2e-2)):
        answer = client.post(
            f"/v1/models/{name}/decode", content=z.tobytes(), params={"shape": [1, 4, 4, 6], "output_type": "pt"}
        )
        assert answer.status_code == 200, answer.text
        got = np.frombuffer(answer.content, "<f4").reshape(expected.shape)
        np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)  # fp16: weights rounded to float16


def test_the_variant_is_loaded_as_diffusers_loads_it(folders: Path) -> None:
    backend = load_diffusers(folders / "kl-fp16", CPU)
    reference = diffusers.AutoencoderKL.from_pretrained(
        folders / "kl-fp16", variant="fp16", torch_dtype=torch.float32, low_cpu_mem_usage=False
    ).eval()
    assert backend.dtype == torch.float32
    z = torch.randn(1, 4, 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(backend.decode(z), reference.decode(z).sample * 0.5 + 0.5)


def one_line(path: Path) -> str:
    with pytest.raises(StartupError) as error:
        load_models(Settings(checkpoint=path, device="cpu"))
    message = str(error.value)
    assert "\n" not in message
    return message


def test_what_cannot_be_served_stops_start_up_with_one_line(tmp_path: Path, kl: torch.nn.Module) -> None:
    pickled = tmp_path / "pickled"
    kl.save_pretrained(pickled)
    (pickled / "diffusion_pytorch_model.safetensors").rename(pickled / "diffusion_pytorch_model.bin")
    assert one_line(pickled).endswith(
        "pickled: weights only as diffusion_pytorch_model.bin (pickle, which is never loaded here): "
        "convert them to diffusion_pytorch_model.safetensors"
    )
    no_vae = tmp_path / "no-vae"
    no_vae.mkdir()
    (no_vae / "model_index.json").write_text('{"_class_name": "FluxPipeline", "transformer": ["diffusers", "X"]}')
    assert "model_index.json: the pipeline FluxPipeline has no vae or audio_vae component" in one_line(no_vae)
    rae = tmp_path / "rae"
    rae.mkdir()
    (rae / "config.json").write_text('{"_class_name": "AutoencoderRAE"}')
    (rae / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert (
        "AutoencoderRAE is not served: its encoder (DINOv2, SigLIP2 or MAE) is built by the transformers"
        in one_line(rae)
    )
    entry = tmp_path / "models--org--two"
    for revision in ("a", "b"):
        shutil.copytree(pickled, entry / "snapshots" / revision)
    assert "models--org--two: no refs/main and 2 snapshots; keep one, or write refs/main" in one_line(entry)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("c")
    assert "refs/main names revision c, which is not in snapshots/" in one_line(entry)


@torch.inference_mode()
def test_a_mel_class_is_served_from_a_pipeline_folder_with_its_vocoder(tmp_path: Path) -> None:
    """Kandinsky 6's layout: model_index.json naming audio_vae and vocoder; the sha256 covers both."""
    saved = save_audio_classes(tmp_path / "saved")["tiny-mmaudio"]
    pipeline = tmp_path / "kandinsky6-audio"
    pipeline.mkdir()
    components = {"audio_vae": ["diffusers", "MMAudioVAE"], "vocoder": ["diffusers", "MMAudioVocoder"]}
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "Kandinsky6TI2VAPipeline", **components}))
    shutil.copytree(saved / "vocoder", pipeline / "vocoder")
    shutil.copytree(saved, pipeline / "audio_vae", ignore=shutil.ignore_patterns("vocoder"))
    loaded = family.load(pipeline, CPU)
    backend = loaded.backend
    assert isinstance(backend, DiffusersBackend) and backend.describe()["vocoder"] == "MMAudioVocoder"
    z = torch.randn(1, 4, 10, generator=torch.Generator().manual_seed(1))
    expected = in_diffusers_decode(build_audio("tiny-mmaudio"), z) * 0.5 + 0.5
    torch.testing.assert_close(backend.decode(z), expected, rtol=0, atol=1e-5)
    assert backend.decode(z).shape == (1, 1, 10 * 32)
    # Another vocoder's weights make another model.
    other = build(*TINY_VOCODERS["tiny-mmaudio"])
    torch.nn.init.zeros_(other.conv_pre.bias)
    other.save_pretrained(pipeline / "vocoder")
    assert family.load(pipeline, CPU).sha256 != loaded.sha256


def test_a_mel_class_without_its_vocoder_loads_without_a_decoder_or_stops_start_up(tmp_path: Path) -> None:
    """MMAudio's VAE alone still encodes (a decode says why not: tests/app/api/test_tensors_audio.py);
    LTX-2's, whose waveform's rate and channels are its vocoder's, stops start-up with one line, as
    does a folder with another class as its vocoder."""
    saved = save_audio_classes(tmp_path / "saved")
    alone = tmp_path / "mmaudio-alone"
    shutil.copytree(saved["tiny-mmaudio"], alone, ignore=shutil.ignore_patterns("vocoder"))
    backend = family.load(alone, CPU).backend
    assert isinstance(backend, DiffusersBackend) and backend.vocoder is None
    assert backend.features == {"prior", "encoder", "posterior"} and set(backend.missing) == {"decoder"}
    ltx2 = tmp_path / "ltx2-audio-alone"
    shutil.copytree(saved["tiny-ltx2-audio"], ltx2, ignore=shutil.ignore_patterns("vocoder"))
    assert one_line(ltx2).endswith(
        "this AutoencoderKLLTX2Audio decodes to a mel spectrogram and the vocoder that makes its waveform (whose "
        "rate and channels are the model's) is missing: serve its pipeline folder (with its vocoder component), or "
        f"put the LTX2Vocoder or LTX2VocoderWithBWE's save_pretrained folder in {ltx2}/vocoder"
    )
    wrong = tmp_path / "wrong-vocoder"
    shutil.copytree(alone, wrong)
    build(*TINY_AUDIO["tiny-oobleck"]).save_pretrained(wrong / "vocoder")
    assert one_line(wrong).endswith(f"{wrong}/vocoder: a MMAudioVAE needs a MMAudioVocoder, not 'AutoencoderOobleck'")


def test_another_classs_vae_ignores_the_pipelines_vocoder(tmp_path: Path, kl: torch.nn.Module) -> None:
    """LTX-2's layout: a video vae beside a vocoder; the vocoder is not read (here: pickled weights only)."""
    pipeline = pipeline_folder(tmp_path / "with-vocoder", kl)
    (pipeline / "vocoder").mkdir()
    (pipeline / "vocoder" / "config.json").write_text('{"_class_name": "LTX2Vocoder"}')
    (pipeline / "vocoder" / "diffusion_pytorch_model.bin").write_bytes(b"never unpickled")
    loaded = family.load(pipeline, CPU)
    assert isinstance(loaded.backend, DiffusersBackend) and loaded.backend.vocoder is None
    assert loaded.sha256 == family.load(pipeline_folder(tmp_path / "without", kl), CPU).sha256
