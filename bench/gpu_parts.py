"""The parts of bench/gpu_check.py. Each runs in its own process (`gpu_check.py --part NAME`), so
that a part that hangs is killed alone and each measures GPU memory from a clean start; each
returns its rows of the table.

A row: `part`, `case`, `result` (what was measured, in words), `expected` (the tolerance or the
documented answer) and `verdict`: pass, fail, measured (a number with nothing to meet), skipped.
Its `values` hold the same numbers for the JSON.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from diffusers_vae import NAME, SD_VAE, paired, peak_rss_mib  # bench/ is the script's folder
from load import service
from video_vae import WAN_21
from PIL import Image

from app.engine.backends.diffusers import GPU_ROWS, DiffusersBackend
from app.engine.backends.diffusers import load_model as builtin_load_model
from app.engine.passes import PROBE_SIDE, Passes

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "app" / "static" / "examples").glob("*.png"))
MiB = 1 << 20
Row = dict[str, Any]

DTYPES = ("float16", "bfloat16", "float32")
# Decoded images at reduced precision against float32's, as the largest difference over the
# largest float32 value (random weights give no meaningful pixel range): float16 keeps 11
# significant bits and bfloat16 8, each rounding compounding through SD's ~40 decoder layers.
PRECISION_TOLERANCE = {"float16": 0.01, "bfloat16": 0.05}
# The fashion models on the GPU against the CPU: cuDNN's convolutions may use TF32 (10-bit
# mantissa) and other summation orders, so grey levels may move by rounding at a level's edge
# and latents by a few TF32 roundings.
LEVELS_TOLERANCE = 2
LATENT_TOLERANCE = 2e-3  # |gpu - cpu| <= LATENT_TOLERANCE * (1 + |cpu|)

# A tiny AutoencoderKL of SD's kind for the dry run (diffusers' own tests use such configs).
TINY_VAE = {
    **SD_VAE,
    "block_out_channels": [16, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 32,
}


VIDEO_NAME = "wan"  # Wan 2.1's VAE with random weights; the dry run's at an eighth of its width
# Served frames against in-process ones, float32 in [0, 1] on the same device: the same code,
# so only a convolution algorithm picked for another batch size may round differently.
VIDEO_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Plan:
    device: str
    sizes: tuple[int, ...]  # image sides (pixels); the first is the served size of the checks
    rounds: int  # pairs at c=1
    waves: int  # pairs at c=8
    config: dict[str, Any]  # the AutoencoderKL's
    video: tuple[int, int, int]  # the video part's latents: frames, height, width
    video_config: dict[str, Any]  # its AutoencoderKLWan's

    @property
    def factor(self) -> int:
        """Image side over latent side: 2 per downsampling block, as diffusers computes it."""
        return 2 ** (len(self.config["block_out_channels"]) - 1)


# Sized for a run well inside 8 minutes on an H100, by estimate until one runs (docs/benchmarks.md, "GPU").
# The video: 6 latent frames of 60x104, 21 frames of 480x832 (Wan's 480p).
REAL = Plan("cuda", (512, 1024), rounds=5, waves=2, config=SD_VAE, video=(6, 60, 104), video_config=WAN_21)
# The dry run's first size is the calibration's probe size (PROBE_SIDE latents a side), so that its
# invariance check rests on the calibration, whatever CPU runs the test suite.
DRY = Plan("cpu", (PROBE_SIDE * 2, PROBE_SIDE * 4), rounds=1, waves=1, config=TINY_VAE,
           video=(2, 4, 6), video_config={**WAN_21, "base_dim": 12})  # fmt: skip


def row(part: str, case: str, result: str, expected: str = "", verdict: str = "measured", **values: Any) -> Row:
    return {"part": part, "case": case, "result": result, "expected": expected, "verdict": verdict, "values": values}


def check(ok: bool) -> str:
    return "pass" if ok else "fail"


def server_cores() -> str:
    """The first half of this process's CPUs, as taskset's list, for the servers; this process
    (the client and the in-process model) is pinned to the rest."""
    mine = sorted(os.sched_getaffinity(0))
    half = max(1, len(mine) // 2)
    server, client = mine[:half], mine[half:] or mine
    os.sched_setaffinity(0, client)
    torch.set_num_threads(len(client))
    return ",".join(map(str, server))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_vae(work: Path, plan: Plan, dtype: str) -> DiffusersBackend:
    """The served model, loaded in this process as the server loads it (bench/gpu_family.py)."""
    from diffusers import AutoencoderKL

    model = AutoencoderKL.from_pretrained(
        work / "models" / NAME, local_files_only=True, torch_dtype=getattr(torch, dtype), low_cpu_mem_usage=False
    )
    return DiffusersBackend(model.to(plan.device))


def latents(plan: Plan, rows: int, side: int, seed: int) -> torch.Tensor:
    """`rows` latents of `side` x `side` images, the same for the same seed."""
    shape = (rows, plan.config["latent_channels"], side // plan.factor, side // plan.factor)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@contextmanager
def served(plan: Plan, work: Path, dtype: str, folder: str = "models", **variables: str) -> Iterator[tuple[str, int]]:
    """`python -m app.serve` on one of the check's model folders through bench/gpu_family.py."""
    with service(
        server_cores(),
        VAE_MODEL_DIR=str(work / folder),
        VAE_BACKENDS="bench.gpu_family:family",
        VAE_DEVICE=plan.device,
        VAE_MAX_BATCH="8",
        VAE_QUEUE_TIMEOUT="600",
        GPU_CHECK_DTYPE=dtype,
        HF_HUB_OFFLINE="1",
        **variables,
    ) as (url, pid):
        yield url, pid


def post_decode(
    client: httpx.Client, url: str, z: np.ndarray, name: str = NAME, partial: bool = True
) -> httpx.Response:
    """diffusers' remote_decode request for latents `z`: uint8 pixels back (partial), else float32."""
    shape = "&".join(f"shape={d}" for d in z.shape)
    query = f"{shape}&dtype=float32&output_type=pt&partial_postprocess={str(partial).lower()}"
    return client.post(f"{url}/v1/models/{name}/decode?{query}", content=np.ascontiguousarray(z, np.float32).tobytes())


def metric(client: httpx.Client, url: str, name: str) -> float | None:
    """The sum of a metric's samples in the server's /metrics (None when it has none)."""
    values = [float(line.rsplit(" ", 1)[1]) for line in client.get(f"{url}/metrics").text.splitlines()
              if line.startswith((f"{name}{{", f"{name} "))]  # fmt: skip
    return sum(values) if values else None


def server_peak_mib(client: httpx.Client, url: str, pid: int) -> float:
    """The server's peak GPU memory in tensors (its vae_gpu_memory_peak_bytes); on the CPU its peak RSS."""
    peak = metric(client, url, "vae_gpu_memory_peak_bytes")
    return peak / MiB if peak is not None else peak_rss_mib(pid)


def own_peak_mib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / MiB if device.type == "cuda" else peak_rss_mib()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def memory_kind(plan: Plan) -> str:
    return "GPU memory in tensors" if plan.device == "cuda" else "RSS (CPU dry run)"


def setup(plan: Plan, work: Path) -> list[Row]:
    """The random-weight model every later part serves, saved once, and its precision."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng():  # module initialisers draw from the global generator
        torch.manual_seed(0)
        model = AutoencoderKL(**plan.config)
    model.save_pretrained(work / "models" / NAME)
    parameters = sum(p.numel() for p in model.parameters())
    channels = plan.config["block_out_channels"]
    made = row("setup", "model", f"AutoencoderKL, block_out_channels {channels}, {parameters / 1e6:.1f} M parameters")
    return [made, *precision(plan, work)]


def environment(plan: Plan) -> dict[str, str]:
    cuda = plan.device == "cuda"
    facts = {
        "device": torch.cuda.get_device_name() if cuda else f"CPU ({platform.machine()}), dry run",
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda) if cuda else "-",
        "cudnn": str(torch.backends.cudnn.version()) if cuda else "-",
        "python": platform.python_version(),
    }
    if cuda:
        facts["memory"] = f"{torch.cuda.get_device_properties(0).total_memory / (1 << 30):.0f} GiB"
    return facts


@torch.inference_mode()
def precision(plan: Plan, work: Path) -> list[Row]:
    """float16 and bfloat16 decodes against float32's, at the served size."""
    side = plan.sizes[0]
    z = latents(plan, 2, side, seed=1).to(plan.device)
    reference = load_vae(work, plan, "float32").decode(z).cpu()
    scale = reference.abs().max().item()
    rows = []
    for dtype, tolerance in PRECISION_TOLERANCE.items():
        images = load_vae(work, plan, dtype).decode(z).cpu()
        error = (images - reference).abs().max().item() / scale
        ok = math.isfinite(error) and error <= tolerance
        result = f"max |{dtype} - float32| / max |float32| = {error:.2e}"
        case = f"{side}x{side} decode, {dtype}"
        rows.append(row("precision", case, result, f"<= {tolerance}", check(ok), error=error))
    return rows


def throughput(plan: Plan, work: Path, dtype: str) -> list[Row]:
    """Served against in-process decodes, paired: one latent (c=1) and 8 at once (c=8: 8
    client threads; in-process, one batch of 8), at every size; with float16, the GPU's
    default, batch invariance first, on the same server."""
    backend = load_vae(work, plan, dtype)
    device = backend.device
    rows = []
    with served(plan, work, dtype) as (url, pid), httpx.Client(timeout=600) as client, ThreadPoolExecutor(8) as pool:
        if dtype == "float16":
            rows += [invariance(plan, client, url, pool), served_size_quanta(plan, backend)]
        for size, side in enumerate(plan.sizes):
            z = latents(plan, 8, side, seed=10 + size)
            on_device, z_np = z.to(device), z.numpy()
            reset_peak(device)
            latency: dict[int, list[float]] = {1: [], 8: []}

            def own(c: int) -> None:
                with torch.inference_mode():
                    backend.decode(on_device[:c])
                    sync(device)

            def remote(c: int) -> None:
                def one(i: int) -> None:
                    start = time.perf_counter()
                    post_decode(client, url, z_np[i : i + 1]).raise_for_status()
                    latency[c].append(time.perf_counter() - start)

                list(pool.map(one, range(c)))

            pairs = {
                1: paired(lambda: own(1), lambda: remote(1), plan.rounds),
                8: paired(lambda: own(8), lambda: remote(8), plan.waves),
            }
            memory = {"served_peak_mib": server_peak_mib(client, url, pid), "own_peak_mib": own_peak_mib(device)}
            for c, times in pairs.items():
                rows.append(throughput_row(plan, dtype, side, c, times, latency[c][c:], memory))
    return rows


def throughput_row(
    plan: Plan, dtype: str, side: int, c: int, pairs: list[tuple[float, float]], latency: list[float],
    memory: dict[str, float],
) -> Row:  # fmt: skip
    own, remote = (statistics.median(side) for side in zip(*pairs, strict=True))
    ratios = sorted(o / r for o, r in pairs)  # served images/s over in-process images/s, per pair
    values = {
        "served_images_per_s": c / remote,
        "own_images_per_s": c / own,
        "ratio": statistics.median(ratios),
        "served_p50_ms": statistics.median(latency) * 1000,
        "own_p50_ms": own * 1000,
        "pairs": len(pairs),
        **memory,
    }
    result = (
        f"served {values['served_images_per_s']:.2f} img/s, in-process {values['own_images_per_s']:.2f} img/s, "
        f"ratio {values['ratio']:.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f}, {len(pairs)} pairs); "
        f"p50 served {values['served_p50_ms']:.0f} ms, in-process {values['own_p50_ms']:.0f} ms; "
        f"peak {memory_kind(plan)}: served {memory['served_peak_mib']:.0f} MiB, "
        f"in-process {memory['own_peak_mib']:.0f} MiB"
    )
    return row("throughput", f"{side}x{side} {dtype} c={c}", result, **values)


def invariance(plan: Plan, client: httpx.Client, url: str, pool: ThreadPoolExecutor) -> Row:
    """Each of 8 requests alone, then the 8 at once (twice): the same bytes every time, at the
    served size, while the server batches them (its vae_batch_size shows how)."""
    side = plan.sizes[0]
    z = latents(plan, 8, side, seed=2).numpy()

    def answer(i: int) -> bytes:
        response = post_decode(client, url, z[i : i + 1])
        response.raise_for_status()
        return response.content

    alone = [answer(i) for i in range(8)]
    batches_before = metric(client, url, "vae_batch_size_count") or 0
    bursts = [list(pool.map(answer, range(8))) for _ in range(2)]
    batches = (metric(client, url, "vae_batch_size_count") or 0) - batches_before
    same = sum(a == b for burst in bursts for a, b in zip(alone, burst, strict=True))
    result = f"{same}/16 answers in a burst equal the same request alone, byte for byte; "
    result += f"16 requests in {batches:.0f} batches"
    expected = "16/16 (and fewer batches than requests)"
    return row("invariance", f"{side}x{side} float16, 8 at once", result, expected, check(same == 16 and batches < 16))


@torch.inference_mode()
def served_size_quanta(plan: Plan, backend: DiffusersBackend) -> Row:
    """What the server's calibration would find at the served size rather than at its probes'
    (app/engine/passes.py): the padding quanta under which a decode row's bits do not depend on
    its pass, in this process. Where the burst above differs, this says which fix holds."""
    backend.max_rows = GPU_ROWS  # as the served one (bench/gpu_family.py)
    passes = Passes(backend, GPU_ROWS)
    z = latents(plan, GPU_ROWS, plan.sizes[0], seed=7).to(backend.device, backend.dtype)
    holds = []
    for quantum in (1, 2, 4, 8):
        passes.quantum = quantum
        if passes._row_independent(passes.decode_fn, [z, None]):
            holds.append(quantum)
    side = plan.sizes[0]
    result = f"row-independent with padding quanta {holds or 'none'} "
    result += f"(the server calibrates at {PROBE_SIDE}x{PROBE_SIDE} latents)"
    dtype = str(backend.dtype).removeprefix("torch.")
    return row("invariance", f"{side}x{side} {dtype} decode passes, in-process", result, quanta=holds)


def oom_cap(plan: Plan, work: Path) -> int:
    """A memory cap that one latent's decode fits under about 3 times over and 8 latents' do not:
    the weights plus the geometric mean of the two decodes' own peaks, measured here. On the CPU,
    1 (the stand-in cap of bench/gpu_family.py)."""
    if plan.device != "cuda":
        return 1
    backend = load_vae(work, plan, "float16")
    device = backend.device
    weights = torch.cuda.memory_allocated(device)
    peaks = []
    for rows in (1, 8):
        reset_peak(device)
        with torch.inference_mode():
            backend.decode(latents(plan, rows, plan.sizes[0], seed=3).to(device))
        sync(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - weights)
    del backend
    torch.cuda.empty_cache()
    return int(weights + math.sqrt(peaks[0] * peaks[1]))


def oom(plan: Plan, work: Path) -> list[Row]:
    """A request too large for the capped memory: 413 (docs/api.md: out of memory alone), the
    memory freed, the next request answered; a burst of small ones batched past the cap: 503
    for the batch, or 200 where failed batches re-run their requests alone."""
    side, cap = plan.sizes[0], oom_cap(plan, work)
    one, eight = latents(plan, 1, side, seed=4).numpy(), latents(plan, 8, side, seed=5).numpy()
    cap_text = f"cap {cap / MiB:.0f} MiB" if plan.device == "cuda" else "a CPU stand-in (a pass of 2+ rows fails)"
    rows = []
    # Unpadded passes: a one-latent request is a one-row pass, however the calibration pads.
    capped = served(plan, work, "float16", GPU_CHECK_CAP_BYTES=str(cap), VAE_BATCH_INVARIANT="false")
    with capped as (url, _), httpx.Client(timeout=600) as client, ThreadPoolExecutor(8) as pool:
        first = post_decode(client, url, one).status_code
        before = metric(client, url, "vae_gpu_memory_allocated_bytes")
        big = post_decode(client, url, eight)
        after = metric(client, url, "vae_gpu_memory_allocated_bytes")
        following = post_decode(client, url, one).status_code
        burst = list(pool.map(lambda i: post_decode(client, url, eight[i : i + 1]).status_code, range(8)))
        last = post_decode(client, url, one).status_code
    detail = big.json().get("detail", "") if big.headers.get("content-type", "").startswith("application/json") else ""
    ok = big.status_code == 413 and first == 200
    rows.append(row("oom", f"8 latents {side}x{side} in one request, {cap_text}",
                    f"{big.status_code}: {detail[:120]} (a lone latent before it: {first})", "413 (lone 200)",
                    check(ok), status=big.status_code))  # fmt: skip
    if before is None or after is None:
        rows.append(row("oom", "memory released", "not measured: no GPU in a dry run", verdict="skipped"))
    else:
        freed = after <= before + MiB
        result = f"in tensors: {before / MiB:.0f} MiB before, {after / MiB:.0f} MiB after"
        expected = "after <= before + 1 MiB"
        rows.append(row("oom", "memory released", result, expected, check(freed), before=before, after=after))
    rows.append(row("oom", "the next request", str(following), "200", check(following == 200), status=following))
    counts = {status: burst.count(status) for status in sorted(set(burst))}
    text = ", ".join(f"{n} x {status}" for status, n in counts.items()) + f"; then one more: {last}"
    ok = set(burst) <= {200, 503} and last == 200
    expected = "each 503 or 200; then 200"
    rows.append(row("oom", "8 one-latent requests at once", text, expected, check(ok), statuses=counts))
    return rows


def png_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def pixels(png: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png))), dtype=np.int16)


def fashion_answers(client: httpx.Client, url: str, name: str) -> dict[str, np.ndarray]:
    """/v1 and /v2 decode and encode answers of the fashion model `name` for 4 seeded latents and
    4 of the shipped example images (as images: grey levels; as latents: floats)."""
    info = client.get(f"{url}/v1/models/{name}").json()
    z = torch.randn(4, info["latent_dim"], generator=torch.Generator().manual_seed(6)).numpy()
    labels = list(range(len(z))) if info["conditional"] else None
    images = EXAMPLES[: len(z)]
    height, width, channels = info["image_shape"][1], info["image_shape"][2], info["image_shape"][0]
    grey = np.stack([np.asarray(Image.open(p).convert("L" if channels == 1 else "RGB")) for p in images]).reshape(
        len(images), height, width, channels
    )
    with_labels = {"labels": labels} if labels else {}

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = client.post(f"{url}{path}", json=body)
        response.raise_for_status()
        return response.json()

    def v2(operation: str, tensor: dict[str, Any]) -> dict[str, np.ndarray]:
        label_tensor = {"name": "labels", "shape": [len(z)], "datatype": "INT64", "data": labels}
        inputs = [tensor, label_tensor] if labels else [tensor]
        outputs = post(f"/v2/models/{name}.{operation}/infer", {"inputs": inputs})["outputs"]
        return {out["name"]: np.asarray(out["data"], dtype=np.float64) for out in outputs}

    decoded = post("/v1/decode", {"model": name, "latents": z.tolist(), "format": "json", **with_labels})
    encoded = post("/v1/encode", {"model": name, "images": [png_b64(p) for p in images], **with_labels})["latents"]
    latent_tensor = {"name": "latents", "shape": list(z.shape), "datatype": "FP32", "data": z.ravel().tolist()}
    image_tensor = {"name": "images", "shape": list(grey.shape), "datatype": "UINT8", "data": grey.ravel().tolist()}
    v2_encoded = v2("encode", image_tensor)
    return {
        "v1 decode: images": np.stack([pixels(png) for png in decoded["images"]]),
        "v1 encode: mean, log_variance": np.array([[e["mean"], e["log_variance"]] for e in encoded]),
        "v2 decode: images": v2("decode", latent_tensor)["images"],
        "v2 encode: mean, log_variance": np.stack([v2_encoded["mean"], v2_encoded["log_variance"]]),
    }


def fashion(plan: Plan, work: Path) -> list[Row]:
    """The shipped fashion-vae and fashion-cvae served on the plan's device and on the CPU:
    their /v1 and /v2 answers to the same requests."""
    cores = server_cores()
    answers = {}
    with ExitStack() as stack, httpx.Client(timeout=120) as client:
        for device in dict.fromkeys((plan.device, "cpu")):  # the dry run: one CPU server
            url, _ = stack.enter_context(service(cores, VAE_DEVICE=device))
            answers[device] = {name: fashion_answers(client, url, name) for name in ("fashion-vae", "fashion-cvae")}
    rows = []
    for name, there in answers[plan.device].items():
        for case, values in there.items():
            cpu = answers["cpu"][name][case]
            if "images" in case:
                error, tolerance = float(np.abs(values - cpu).max()), LEVELS_TOLERANCE
                result, expected = f"max |Δ| {error:.0f} grey levels", f"<= {tolerance} levels"
            else:
                error, tolerance = float((np.abs(values - cpu) / (1 + np.abs(cpu))).max()), LATENT_TOLERANCE
                result, expected = f"max |Δ| / (1 + |cpu|) {error:.1e}", f"<= {tolerance}"
            verdict = check(error <= tolerance)
            rows.append(row("fashion", f"{name} {case}, {plan.device} vs cpu", result, expected, verdict, error=error))
    return rows


@torch.inference_mode()
def video(plan: Plan, work: Path) -> list[Row]:
    """One video decode of Wan's VAE, served against in-process at equal settings (the same
    backend, so the same tiling, in float32 as Wan's pipelines run it): the seconds, paired; the
    served frames against in-process; both processes' peak memory."""
    from diffusers import AutoencoderKLWan

    from app.engine.backends.diffusers_folders import locate

    folder = work / "video-models"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        AutoencoderKLWan(**plan.video_config).save_pretrained(folder / VIDEO_NAME)
    model = builtin_load_model(locate(folder / VIDEO_NAME), torch.float32)
    backend = DiffusersBackend(model.to(plan.device))
    device = backend.device
    frames, side_h, side_w = plan.video
    z = torch.randn(1, plan.video_config["z_dim"], frames, side_h, side_w, generator=torch.Generator().manual_seed(8))
    on_device, z_np = z.to(device), z.numpy()
    reset_peak(device)

    def own() -> torch.Tensor:
        video = backend.decode(on_device)  # [1, C, F, H, W] in [0, 1]
        pixels = (video.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        sync(device)
        return pixels

    with served(plan, work, "float32", folder="video-models") as (url, pid), httpx.Client(timeout=600) as client:

        def remote(partial: bool = True) -> httpx.Response:
            response = post_decode(client, url, z_np, VIDEO_NAME, partial)
            response.raise_for_status()
            return response

        pairs = paired(own, remote, plan.rounds)
        answer = remote(partial=False)
        served_video = np.frombuffer(answer.content, np.float32).reshape(json.loads(answer.headers["shape"]))
        memory = {"served_peak_mib": server_peak_mib(client, url, pid), "own_peak_mib": own_peak_mib(device)}
    low, high = backend.image.value_range  # the served floats are in the model's range, clipped to it
    own_video = backend.decode(on_device).clamp(0, 1).cpu().numpy()
    error = float(np.abs((served_video - low) / (high - low) - own_video).max())
    count, height, width = served_video.shape[2:]
    own_s, remote_s = (statistics.median(times) for times in zip(*pairs, strict=True))
    ratio = statistics.median(o / r for o, r in pairs)
    case = f"Wan VAE (base_dim {plan.video_config['base_dim']}), {count} frames of {width}x{height}, float32"
    result = (
        f"served {remote_s:.2f} s, in-process {own_s:.2f} s, ratio {ratio:.2f} ({len(pairs)} pairs); "
        f"peak {memory_kind(plan)}: served {memory['served_peak_mib']:.0f} MiB, "
        f"in-process {memory['own_peak_mib']:.0f} MiB"
    )
    return [
        row("video", case, result, served_s=remote_s, own_s=own_s, ratio=ratio, **memory),
        row("video", f"{case}, served vs in-process", f"max |Δ| {error:.1e}", f"<= {VIDEO_TOLERANCE}",
            check(error <= VIDEO_TOLERANCE), error=error),  # fmt: skip
    ]


def measured(dtype: str) -> Callable[[Plan, Path], list[Row]]:
    return lambda plan, work: throughput(plan, work, dtype)


# By name, in the order bench/gpu_check.py runs them (its TIMEOUTS).
PARTS: dict[str, Callable[[Plan, Path], list[Row]]] = {
    "setup": setup,
    "oom": oom,
    "fashion": fashion,
    **{dtype: measured(dtype) for dtype in DTYPES},
    "video": video,
}
