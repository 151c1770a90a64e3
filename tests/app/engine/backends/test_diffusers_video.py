"""Every served diffusers video autoencoder class, in-process: the backend computes what the
class computes in diffusers for videos [B, C, T, H, W], with the frame counts it takes."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from app.engine.backends.diffusers import DiffusersBackend, LatentGaussian, as_images, as_video, load_diffusers
from app.engine.backends.diffusers_classes import VIDEO_CLASSES
from app.engine.passes import Passes
from tests.diffusers_video_models import ANY_SIZE, TINY_VIDEO, in_process_decode, save_video_classes

diffusers = pytest.importorskip("diffusers")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[DiffusersBackend, torch.nn.Module]]:
    """Each model served, and the same folder loaded by diffusers itself."""
    models = {}
    for name, folder in save_video_classes(tmp_path_factory.mktemp("video")).items():
        backend = load_diffusers(folder, CPU)
        cls = getattr(diffusers, backend.kind)
        models[name] = (backend, cls.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False).eval())
    return models


VIDTOK = ["tiny-vidtok", "tiny-vidtok-fsq"]


def video(frames: int, seed: int = 0, height: int = 16, width: int = 24) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (1, 3, frames, height, width), generator=generator) / 255.0).float()


def test_every_video_class_has_a_tiny_model() -> None:
    assert {kind for kind, _ in TINY_VIDEO.values()} == set(VIDEO_CLASSES)


@pytest.mark.parametrize("name", [name for name in ANY_SIZE if name not in VIDTOK])
@torch.inference_mode()
def test_encode_and_decode_equal_diffusers(
    loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]], name: str
) -> None:
    backend, model = loaded[name]
    rule = backend.image.frames
    assert rule is not None
    frames = rule.first + 2 * rule.ratio  # three latent frames
    assert rule.accepts(frames) and rule.latent(frames) == 3 and rule.decoded(3) == frames
    x = video(frames)
    q = backend.encode(x)
    if backend.encoder == "mode":  # deterministic latents (Cosmos, KVAE 3D)
        assert isinstance(q, torch.Tensor) and backend.features == {"encoder", "decoder"}
        assert torch.equal(q, model.encode(x * 2.0 - 1.0).latent_dist.mode())
        torch.testing.assert_close(backend.decode(q), model.decode(q).sample * 0.5 + 0.5, rtol=0, atol=1e-5)
        return
    assert isinstance(q, LatentGaussian)
    assert tuple(q.mean.shape) == (1, *backend.latent_shape(16, 24, frames))
    if backend.spec.frames_as_images:  # SVD's: frames as a batch of images, the decoder told how many
        encoded = model.encode(as_images(x) * 2.0 - 1.0).latent_dist
        assert torch.equal(q.mean, as_video(encoded.mean, 1)) and torch.equal(q.variance, as_video(encoded.var, 1))
        expected = as_video(model.decode(as_images(q.mean), num_frames=frames).sample, 1)
    else:
        encoded = model.encode(x * 2.0 - 1.0).latent_dist
        assert torch.equal(q.mean, encoded.mean) and torch.equal(q.variance, encoded.var)
        expected = in_process_decode(model, q.mean)
    decoded = backend.decode(q.mean)
    assert decoded.shape == x.shape
    torch.testing.assert_close(decoded, expected * 0.5 + 0.5, rtol=0, atol=1e-5)


def test_frame_counts_and_latent_layouts(loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]]) -> None:
    facts = {name: backend.describe() for name, (backend, _) in loaded.items() if name in ANY_SIZE}
    assert facts["tiny-wan"]["latent_layout"] == "[B, 16, t, h, w]" and facts["tiny-wan"]["frames"] == "1 + 4k"
    assert facts["tiny-cogvideox"]["frames"] == "1 + 8k"  # CogVideoX encodes 8 frames at a time
    cog = loaded["tiny-cogvideox"][0].image.frames
    assert cog is not None and not cog.accepts(5) and cog.latent(17) == 5 and cog.decoded(5) == 17
    assert {name: fact["downsampling"] for name, fact in facts.items()} == {
        "tiny-wan": 8, "tiny-hunyuanvideo": 8, "tiny-hunyuanvideo15": 8, "tiny-cogvideox": 8, "tiny-ltx": 4,
        "tiny-ltx091": 8, "tiny-ltx2": 8, "tiny-mochi": 8, "tiny-magvit": 8, "tiny-svd": 2, "tiny-cosmos": 4,
        "tiny-kvae-video": 8,
        "tiny-vidtok": 8, "tiny-vidtok-fsq": 8, "tiny-hunyuanimage-refiner": 8, "tiny-kandinsky6-sr": 8,
    }  # fmt: skip
    # The refiner's "temporal" downsamples pack space only: a latent frame per frame, whatever it reports.
    assert facts["tiny-hunyuanimage-refiner"]["frames"] == "1 + 1k"
    assert facts["tiny-kandinsky6-sr"]["frames"] == "1 + 4k"
    assert facts["tiny-mochi"]["frames"] == "1 + 6k" and facts["tiny-magvit"]["frames"] == "1 + 4k"
    assert facts["tiny-svd"]["frames"] == "1 + 1k"  # any count
    # LTX-2's blocks: 8x in space (spatial, spatiotemporal x2) and in time (temporal, spatiotemporal x2).
    assert facts["tiny-ltx2"]["frames"] == "1 + 8k" and facts["tiny-ltx091"]["frames"] == "1 + 8k"
    assert facts["tiny-ltx091"]["decode_options"].keys() == {"decode_timestep", "decode_noise_scale", "seed"}
    assert facts["tiny-ltx"]["decode_options"] == {} and facts["tiny-ltx2"]["decode_options"] == {}
    for backend, _ in loaded.values():
        assert backend.image.media == "video" and backend.latent_shape() == (backend.latent_channels, None, None, None)


@pytest.mark.parametrize("name", ["tiny-wan", "tiny-ltx"])
@torch.inference_mode()
def test_passes_calibrate_and_sample_on_videos(
    loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]], name: str
) -> None:
    backend, _ = loaded[name]
    passes = Passes(backend, max_rows=2)
    passes.calibrate()
    z = backend.prior(2, torch.Generator().manual_seed(0))
    native = backend.image.frames.native  # type: ignore[union-attr]
    assert z.shape == (2, *backend.latent_shape(backend.sample_size, backend.sample_size, native))
    # The prior's native size (no sample_size in these configs: 512) is large; decode a crop of it.
    crop = z[..., :2, :3]
    decoded = passes.decode(crop, None)
    assert decoded.shape == (2, 3, native, 2 * backend.factor, 3 * backend.factor)
    assert torch.equal(decoded[1:], passes.decode(crop[1:], None))  # a row alone: the same bits


@torch.inference_mode()
def test_ltx_091_decodes_at_the_requested_timestep_and_seed(
    loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]],
) -> None:
    backend, model = loaded["tiny-ltx091"]
    z = backend.encode(video(17)).mean  # type: ignore[union-attr]
    options = backend.decode_options

    def columns(seed: int, timestep: float, noise: float) -> torch.Tensor:
        values = {"decode_timestep": timestep, "decode_noise_scale": noise, "seed": seed}
        return torch.tensor([[option.column(values[name]) for name, option in options.items()]])

    decoded = backend.decode(z, None, columns(7, 0.05, 0.025))
    expected = in_process_decode(model, z, seed=7, timestep=0.05, noise_scale=0.025) * 0.5 + 0.5
    torch.testing.assert_close(decoded, expected, rtol=0, atol=1e-5)
    assert torch.equal(decoded, backend.decode(z, None, columns(7, 0.05, 0.025)))  # same seed, same bits
    assert not torch.allclose(decoded, backend.decode(z, None, columns(8, 0.05, 0.025)), atol=1e-3)
    assert not torch.allclose(decoded, backend.decode(z, None, columns(7, 0.5, 0.025)), atol=1e-3)
    # Two rows decode as each alone, each with its own options.
    both = backend.decode(torch.cat([z, z]), None, torch.cat([columns(8, 0.0, 0.0), columns(7, 0.05, 0.025)]))
    assert torch.equal(both[1:], decoded)


def test_a_float_option_travels_exactly_in_an_int64_column() -> None:
    option = VIDEO_CLASSES["AutoencoderKLLTXVideo"].decode_options["decode_timestep"]
    for value in (0.0, 0.03, 1 / 3, 5e-324):
        assert option.value(option.column(value)) == value
    seed = VIDEO_CLASSES["AutoencoderKLLTXVideo"].decode_options["seed"]
    assert seed.value(seed.column(2**63 - 1)) == 2**63 - 1


def test_ltx2_whose_attributes_disagree_with_its_blocks_is_refused_at_load(tmp_path: Path) -> None:
    """diffusers' own small LTX-2 config states no ratios: the class then reports 16x (patch size
    times 2 per scaling block), but its blocks compress 8x; its tiling would use 16."""
    from app.engine.backends.diffusers_folders import DiffusersError
    from tests.diffusers_models import save

    kind, config = TINY_VIDEO["tiny-ltx2"]
    unstated = {key: value for key, value in config.items() if not key.endswith("_compression_ratio")}
    folder = save(tmp_path, {"ltx2": (kind, unstated)})["ltx2"]
    with pytest.raises(DiffusersError, match="spatial_compression_ratio is 16 but its blocks compress 8x"):
        load_diffusers(folder, CPU)


@torch.inference_mode()
def test_allegro_on_its_tile_grid_equals_diffusers(loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]]) -> None:
    """Allegro's tiles: 24 frames of 128 x 128 (its tiny sample_size), stepping 16 frames, 8 rows
    and 48 columns; its decode gives frames first."""
    backend, model = loaded["tiny-allegro"]
    rule, grid = backend.image.frames, backend.image.grid
    assert rule is not None and grid is not None and backend.max_rows == 1
    assert rule.rule() == "24 + 16k" and (rule.latent(24), rule.latent(40), rule.decoded(6)) == (6, 10, 24)
    assert not rule.accepts(rule.decoded(7))  # 28 frames: the temporal grid would miss 4
    assert (grid.height, grid.width) == ((128, 8), (128, 48))
    assert grid.unfit(136, 176) is None and grid.unfit(128, 128) is None
    assert grid.unfit(16, 24) == "height 16 is not 128 + 8k pixels (its tile grid)"
    assert grid.unfit(128, 160) == "width 160 is not 128 + 48k pixels (its tile grid)"
    assert grid.at_least(32, 64) == (128, 128) and grid.at_least(130, 177) == (136, 224)  # probes: on its grid
    assert rule.native == 24  # `sample` decodes one tile of frames
    x = video(24, height=128, width=176)  # two tiles side by side
    q = backend.encode(x)
    assert isinstance(q, LatentGaussian) and q.mean.shape == (1, 4, 6, 16, 22)
    model.use_tiling = True  # as AllegroPipeline's example enables it: without, diffusers raises
    encoded = model.encode(x * 2.0 - 1.0).latent_dist
    assert torch.equal(q.mean, encoded.mean) and torch.equal(q.variance, encoded.var)
    decoded = backend.decode(q.mean)
    expected = model.decode(q.mean).sample.transpose(1, 2)  # [B, T, C, H, W] -> [B, C, T, H, W]
    assert decoded.shape == x.shape and (expected != 0).all()  # every pixel under a tile
    torch.testing.assert_close(decoded, expected * 0.5 + 0.5, rtol=0, atol=1e-5)


def test_allegro_latents_off_its_grid_are_refused_before_a_pass(
    loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]],
) -> None:
    """In diffusers they decode to zeros where no tile reaches; here they never reach the model."""
    from app.engine.errors import BadLatentShape, InvalidInput
    from app.engine.registry import LoadedModel

    backend, _ = loaded["tiny-allegro"]
    model = LoadedModel("allegro", backend, "0" * 64)
    with pytest.raises(BadLatentShape, match=r"decode to height 16 is not 128 \+ 8k pixels"):
        model.checked("decode", np.zeros((1, 4, 6, 2, 3), np.float32), None)
    with pytest.raises(BadLatentShape, match="7 latent frames decode to 28 frames; model 'allegro' takes 24 \\+ 16k"):
        model.checked("decode", np.zeros((1, 4, 7, 16, 16), np.float32), None)
    with pytest.raises(InvalidInput, match=r"images: 160x128: width 160 is not 128 \+ 48k pixels"):
        model.checked("encode", np.zeros((1, 3, 24, 128, 160), np.float32), None)
    model.checked("decode", np.zeros((1, 4, 6, 17, 22), np.float32), None)  # 136 x 176: on the grid


@pytest.mark.parametrize(
    ("name", "frames", "rule"), [("tiny-vidtok", 9, "1 + 4k"), ("tiny-vidtok-fsq", 16, "16 + 16k")]
)
@torch.inference_mode()
def test_vidtok_encodes_as_its_forward_and_decodes_as_diffusers(
    loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]], name: str, frames: int, rule: str
) -> None:
    """Its forward(encoder_mode=True) is the class's own encode of a video: causal, the first frame
    repeated 3 times before it; FSQ, the quantised latents (the first of what encode returns)."""
    backend, model = loaded[name]
    assert backend.image.frames is not None and backend.image.frames.rule() == rule
    x = video(frames)
    q = backend.encode(x)
    expected = model(x * 2.0 - 1.0, encoder_mode=True, sample_posterior=False)
    if backend.encoder == "first":
        assert isinstance(q, torch.Tensor) and torch.equal(q, expected[0])
        assert backend.features == {"encoder", "decoder"}
        z = q
    else:
        assert isinstance(q, LatentGaussian) and torch.equal(q.mean, expected) and "posterior" in backend.features
        z = q.mean
    assert z.shape[2] == backend.image.frames.latent(frames) and backend.image.frames.decoded(z.shape[2]) == frames
    decoded = backend.decode(z)
    assert decoded.shape == x.shape
    torch.testing.assert_close(decoded, model.decode(z) * 0.5 + 0.5, rtol=0, atol=1e-5)


@torch.inference_mode()
def test_cosmos_pipeline_latents_from_a_pipeline_folder(tmp_path: Path) -> None:
    """Per channel and latent frame, with its scheduler's sigma_data: CosmosTextToWorldPipeline's
    decode step and CosmosVideoToWorldPipeline's encode step; a VAE folder alone has no sigma_data."""
    from tests.diffusers_video_models import COSMOS_MEAN, COSMOS_SIGMA_DATA, COSMOS_STD, save_cosmos_pipeline

    backend = load_diffusers(save_cosmos_pipeline(tmp_path / "cosmos"), CPU)
    space = backend.pipeline
    assert space is not None and space.kind == "frames" and space.frames == 3
    z = torch.randn(1, 4, 2, 2, 3, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(COSMOS_MEAN).view(1, 4, -1, 1, 1)[:, :, :2]
    std = torch.tensor(COSMOS_STD).view(1, 4, -1, 1, 1)[:, :, :2]
    to_vae = z * std / COSMOS_SIGMA_DATA + mean  # the pipeline's, before vae.decode
    np.testing.assert_allclose(space.to_vae(z.numpy()), to_vae.numpy(), rtol=0, atol=1e-6)
    from_vae = (z - mean) * COSMOS_SIGMA_DATA / std  # the video2world pipeline's, after vae.encode
    np.testing.assert_allclose(space.from_vae(z.numpy()), from_vae.numpy(), rtol=0, atol=1e-6)
    alone = load_diffusers(shutil.copytree(tmp_path / "cosmos" / "vae", tmp_path / "alone"), CPU)
    assert alone.pipeline is None and alone.describe()["pipeline_latents"] is None


@pytest.mark.parametrize(
    "config",
    [
        # LTX-Video 0.9.0 and 0.9.1 (no ratios stated, "conv" blocks), 0.9.5+ and LTX-2 (stated), as
        # diffusers' conversion scripts write them: 32x in space, 8x in time, all served.
        {"spatio_temporal_scaling": [True, True, True, False], "patch_size": 4, "patch_size_t": 1,
         "layers_per_block": [4, 3, 3, 3, 4]},
        {"spatio_temporal_scaling": [True, True, True, True], "patch_size": 4, "patch_size_t": 1,
         "layers_per_block": [4, 6, 6, 2, 2], "spatial_compression_ratio": 32, "temporal_compression_ratio": 8,
         "downsample_type": ["spatial", "temporal", "spatiotemporal", "spatiotemporal"]},
    ],
)  # fmt: skip
def test_released_ltx_configs_compress_as_they_state(config: dict[str, object]) -> None:
    from app.engine.backends.diffusers_classes import ltx_attributes, ltx_blocks

    assert (ltx_blocks("spatial")(config), ltx_blocks("temporal")(config), ltx_attributes(config)) == (32, 8, None)


@torch.inference_mode()
def test_ltx_tiles_long_videos_in_time_as_diffusers_does(
    loaded: dict[str, tuple[DiffusersBackend, torch.nn.Module]],
) -> None:
    """Above `tile_frames` frames LTX-Video decodes and encodes in overlapping chunks of frames
    (diffusers' use_framewise_decoding, which its pipelines leave off), at or below as a whole."""
    served, model = loaded["tiny-ltx"]
    chunked = DiffusersBackend(served.model, tile_frames=8)  # chunks of 8 frames, 2 latent frames, stride 4
    z = torch.randn(1, 8, 5, 4, 6, generator=torch.Generator().manual_seed(5))  # 17 frames: tiled in time
    short = z[:, :, :2]  # 5 frames: whole
    x = video(17, seed=6)

    def diffusers_run(framewise: bool, run: Callable[[], torch.Tensor]) -> torch.Tensor:
        model.use_framewise_decoding = framewise
        model.tile_sample_min_num_frames, model.tile_sample_stride_num_frames = (8, 4) if framewise else (16, 8)
        try:
            return run()
        finally:
            model.use_framewise_decoding = False
            model.tile_sample_min_num_frames, model.tile_sample_stride_num_frames = 16, 8

    tiled = diffusers_run(True, lambda: model.decode(z).sample)
    whole = diffusers_run(False, lambda: model.decode(z).sample)
    assert tiled.shape == whole.shape == (1, 3, 17, 16, 24) and (tiled - whole).abs().max() > 1e-3  # blended in time
    torch.testing.assert_close(chunked.decode(z), tiled * 0.5 + 0.5, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked.decode(short), model.decode(short).sample * 0.5 + 0.5, rtol=0, atol=1e-5)
    encoded = diffusers_run(True, lambda: model.encode(2 * x - 1).latent_dist.mean)
    torch.testing.assert_close(chunked.encode(x).mean, encoded, rtol=0, atol=1e-5)
    served.decode(z)  # the same model at the default tile_frames (64): 17 frames whole
    assert served.tile_frames == 64 and not served.model.use_framewise_decoding
