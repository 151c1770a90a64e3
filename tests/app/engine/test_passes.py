"""Batch-invariant passes on simulated CPUs: models whose output bits change with the pass's row
count (and thread count) the way BLAS kernels do on real machines, so every rule of the
calibration is checked whichever CPU runs the suite."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import app.engine.passes
import model.vae
from app.engine.backends.vae import VAEBackend
from app.engine.passes import Passes
from model import VAE, load_checkpoint
from model.vae import DiagonalGaussian, bernoulli_log_likelihood

# Well above float32's last bit at the tiny models' output scale, like a kernel switch's rounding.
NUDGE = 1e-6


def rowwise(fn: Callable[..., torch.Tensor], *columns: torch.Tensor | None) -> torch.Tensor:
    """`fn` on each row alone, concatenated: the real kernels only ever see one row, so this
    machine's own shape effects never show and only the simulated ones do."""
    rows = next(c for c in columns if c is not None).shape[0]
    return torch.cat([fn(*(None if c is None else c[i : i + 1] for c in columns)) for i in range(rows)])


class Simulated(VAE):
    """The tiny VAE, row by row, each row's encoder and decoder outputs nudged by `offset(rows in
    the pass)[position]` (an exactly rounded addition: no other source of different bits)."""

    offset: Callable[[int], torch.Tensor]

    def nudge(self, t: torch.Tensor) -> torch.Tensor:
        return t + self.offset(t.shape[0]).view(-1, *[1] * (t.dim() - 1))

    def decode_logits(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.nudge(rowwise(super().decode_logits, z, labels))

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return rowwise(torch.sigmoid, self.decode_logits(z, labels))

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> DiagonalGaussian:
        rows = [super(Simulated, self).encode(x[i : i + 1]) for i in range(x.shape[0])]
        q = DiagonalGaussian(self.nudge(torch.cat([r.mean for r in rows])), torch.zeros(0))
        q.log_variance, q.variance, q.std = (torch.cat([getattr(r, a) for r in rows]) for a in ("log_variance", "variance", "std"))
        return q


def simulated(model_dir: Path, offset: Callable[[int], torch.Tensor]) -> Simulated:
    vae = load_checkpoint(model_dir / "tiny-vae.safetensors")
    model = Simulated(vae.config)
    model.load_state_dict(vae.state_dict())
    model.offset = offset
    return model.requires_grad_(False)


def below(threshold: Callable[[], int]) -> Callable[[int], torch.Tensor]:
    """Another kernel, rounding otherwise, for passes of fewer than `threshold()` rows."""
    return lambda rows: torch.full((rows,), NUDGE if rows < threshold() else 0.0)


# MKL's SGEMM on Intel AVX-512 switches kernel at 16 rows, on AMD EPYC at 4; the simulation
# halves the Intel one to keep the row-by-row passes quick.
intel, amd = below(lambda: 8), below(lambda: 4)


@pytest.fixture(autouse=True)
def simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each simulated CPU calibrates anew (the cache keys on shapes, not on the simulation), and
    the score pass's likelihood is computed row by row too."""
    monkeypatch.setattr(app.engine.passes, "_calibrated", {})
    monkeypatch.setattr(
        model.vae, "bernoulli_log_likelihood", lambda logits, x: rowwise(bernoulli_log_likelihood, logits, x)
    )


@pytest.fixture
def latents() -> torch.Tensor:
    return torch.randn(64, 4, generator=torch.Generator().manual_seed(3))


def calibrated(vae: VAE, max_rows: int, batch_invariant: bool = True) -> Passes:
    passes = Passes(VAEBackend(vae), max_rows, batch_invariant)
    passes.calibrate()
    return passes


@torch.inference_mode()
def alone_equals_batched(passes: Passes, z: torch.Tensor) -> bool:
    together = passes.decode(z, None)
    return all(torch.equal(passes.decode(z[i : i + 1], None), together[i : i + 1]) for i in range(len(z)))


@pytest.mark.parametrize(
    ("cpu", "max_rows", "quantum"),
    [(intel, 32, 8), (intel, 4, 1), (amd, 32, 4), (amd, 8, 4)],
    ids=["intel-32", "intel-4", "amd-32", "amd-8"],
)
def test_calibration_picks_the_smallest_exact_quantum(
    model_dir: Path, latents: torch.Tensor, cpu: Callable[[int], float], max_rows: int, quantum: int
) -> None:
    passes = calibrated(simulated(model_dir, cpu), max_rows)
    assert (passes.quantum, passes.max_rows) == (quantum, max_rows)
    assert alone_equals_batched(passes, latents[:max_rows])
    assert alone_equals_batched(passes, latents[:37])  # several passes


def test_without_padding_a_row_depends_on_its_batch(model_dir: Path, latents: torch.Tensor) -> None:
    # What the padding is for: unpadded, the simulated Intel kernel switch changes a lone row.
    passes = calibrated(simulated(model_dir, intel), 32, batch_invariant=False)
    assert passes.quantum == 1
    assert not alone_equals_batched(passes, latents[:20])


def test_settings_agree_within_rounding_not_bits(model_dir: Path, latents: torch.Tensor) -> None:
    # The promise across settings is a tolerance: max_rows 4 runs every row in the small kernel.
    model = simulated(model_dir, intel)
    with torch.inference_mode():
        small, large = (calibrated(model, rows).decode(latents[:32], None) for rows in (4, 32))
    assert not torch.equal(small, large)
    torch.testing.assert_close(small, large, rtol=1e-4, atol=1e-5)


def test_calibration_runs_at_the_thread_count_that_serves(model_dir: Path, latents: torch.Tensor) -> None:
    # A kernel split by threads: with 2 threads rows round alike only from 16 rows up.
    model = simulated(model_dir, below(lambda: 8 * torch.get_num_threads()))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        passes = calibrated(model, 32)
        assert passes.quantum == 16
        assert alone_equals_batched(passes, latents[:32])
    finally:
        torch.set_num_threads(threads)
    assert calibrated(model, 32).quantum == 8  # one thread: its own calibration, not the cached one


def test_no_exact_quantum_runs_every_row_alone_and_says_so(
    model_dir: Path, latents: torch.Tensor, caplog: pytest.LogCaptureFixture
) -> None:
    # Bits that change with a row's position in the pass: no pass shape is exact.
    with caplog.at_level(logging.WARNING, logger="app.engine.passes"):
        passes = calibrated(simulated(model_dir, lambda rows: NUDGE * torch.arange(rows)), 16)
    assert (passes.quantum, passes.max_rows) == (1, 1)
    assert "every row runs alone" in caplog.text
    assert alone_equals_batched(passes, latents[:16])


def test_a_pass_never_runs_more_than_max_rows(model_dir: Path) -> None:
    # 48 rows with a quantum of 32: the second shape is 48, not 64.
    passes = calibrated(simulated(model_dir, below(lambda: 32)), 48)
    assert passes.quantum == 32
    assert passes.shapes() == [32, 48]
    seen: list[int] = []

    def fn(z: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        seen.append(z.shape[0])
        return (z,)

    passes.run(fn, [torch.zeros(33 + 48, 4), None])
    assert seen == [48, 48]


@pytest.mark.parametrize("quantum", [1, 4])
def test_a_pass_takes_its_rows_c_contiguous_whatever_layout_they_arrive_in(model_dir: Path, quantum: int) -> None:
    # A convolution picks another kernel (other bits) for a channels-last input, as an image
    # converted from HWC pixels is; padded or not, a pass must see one layout.
    passes = Passes(VAEBackend(load_checkpoint(model_dir / "tiny-vae.safetensors")), 4)
    passes.quantum = quantum
    seen: list[bool] = []

    def fn(x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        seen.append(x.is_contiguous())
        return (x,)

    x = torch.rand(4, 3, 5, 6).to(memory_format=torch.channels_last)
    for rows in (1, 3, 4):
        assert torch.equal(passes.run(fn, [x[:rows], None])[0], x[:rows])
    assert seen == [True, True, True]
