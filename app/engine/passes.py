"""Forward passes whose rows do not depend on the batch: a row gives the same bits whatever
rows it is computed with, so a batched request gets the same bytes as one run alone.

That does not come for free. BLAS and oneDNN choose kernels and blockings by matrix shape, so
on CPU a Linear layer's row can round differently below some row count than above it (MKL's
SGEMM on Intel AVX-512 switches at 16 rows; on AMD EPYC at 1..3), the thread count changes
the split again, and PyTorch's vectorised elementwise loops (GELU, sigmoid, exp) finish a
tensor's last few elements with scalar code whose results can differ in the last bit. So every
pass here runs at most `max_rows` rows, zero-padded to a multiple of a `quantum` (never past
`max_rows`), and `calibrate` picks the smallest quantum under which it finds every pass shape
that setting can produce row-independent, on the device and thread count that serves: it
computes probe rows alone and at every position of a pass of every such shape and compares the
bits. Where no quantum passes, every row runs alone (slow, but exact by construction), and the
log says so. The promise is per deployment (machine, torch build, threads, `max_rows`); across
those, rows agree to rounding only (docs/api.md, "Reproducibility").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from app.engine import progress
from app.engine.backend import Backend

log = logging.getLogger(__name__)

PassFn = Callable[..., tuple[torch.Tensor, ...]]

# Variable-size models calibrate on images this many latent cells a side: row-independence is a
# property of the kernels, and a large model at its native size would take minutes per probe.
PROBE_SIDE = 4

# What calibrate found, by everything that picks kernels (model class and shapes, device, dtype,
# threads) but not the weights, so every app in a process with the same kind of model calibrates once.
_calibrated: dict[tuple[object, ...], tuple[int, int]] = {}


def padded(t: torch.Tensor, rows: int) -> torch.Tensor:
    """`t` with zero rows appended up to `rows` rows, C-contiguous: convolutions pick other
    kernels (other bits) for other memory layouts, so a row must not bring its own (an image
    converted from HWC arrives channels-last)."""
    if t.shape[0] < rows:
        t = torch.cat([t, t.new_zeros((rows - t.shape[0], *t.shape[1:]))])
    return t.contiguous()


class Passes:
    """The batched model calls of one model: decode, encode and the decoder log-likelihood."""

    def __init__(self, backend: Backend, max_rows: int, batch_invariant: bool = True) -> None:
        self.backend = backend
        self.max_rows = min(max_rows, getattr(backend, "max_rows", max_rows))  # rows per forward pass
        self.quantum = max_rows  # set by calibrate(); a full-size shape until then
        self.batch_invariant = batch_invariant  # False: unpadded passes, bits may follow the batch

    def shape(self, rows: int) -> int:
        """The rows a pass of `rows` (<= max_rows) real rows runs with: the next multiple of
        the quantum, at most max_rows."""
        return min(self.max_rows, -(-rows // self.quantum) * self.quantum)

    def shapes(self) -> list[int]:
        """Every pass shape this setting can run."""
        return sorted({self.shape(rows) for rows in range(1, self.max_rows + 1)})

    def run(self, fn: PassFn, columns: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, ...]:
        """`fn` over every row of `columns` (row-aligned tensors, None passed through), in passes
        of at most max_rows rows, each padded to a multiple of quantum; outputs concatenated."""
        rows = next(c for c in columns if c is not None).shape[0]
        outputs: list[tuple[torch.Tensor, ...]] = []
        starts = range(0, rows, self.max_rows)
        for index, start in enumerate(starts, 1):
            stop = min(rows, start + self.max_rows)
            chunk = [None if c is None else padded(c[start:stop], self.shape(stop - start)) for c in columns]
            outputs.append(tuple(out[: stop - start] for out in fn(*chunk)))
            progress.passed(index, len(starts))
        return tuple(torch.cat(parts) for parts in zip(*outputs, strict=True))

    def decode_fn(
        self, z: torch.Tensor, labels: torch.Tensor | None, options: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """`options`: [B, k] per-row values of a backend's `decode_options` (a seeded decoder's seed)."""
        if options is None:
            return (self.backend.decode(z, labels),)
        return (self.backend.decode(z, labels, options),)  # type: ignore[call-arg]

    def encode_fn(self, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        q = self.backend.encode(x, labels)
        return (q,) if isinstance(q, torch.Tensor) else (q.mean, q.variance, q.log_variance)

    def log_likelihood_fn(
        self, x: torch.Tensor, labels: torch.Tensor | None
    ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
        """log p(x_i | z) for rows (z, i): image i of `x` (with its label) under latent z."""

        def fn(z: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return (self.backend.log_likelihood(z, x[index], None if labels is None else labels[index]),)

        return fn

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None, options: torch.Tensor | None = None) -> torch.Tensor:
        return self.run(self.decode_fn, [z, labels, options])[0]

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """(mean, variance, log_variance) of q(z|x), each [B, *latent shape]; (latents,) for a
        deterministic encoder."""
        return self.run(self.encode_fn, [x, labels])

    def log_likelihood(
        self, z: torch.Tensor, index: torch.Tensor, x: torch.Tensor, labels: torch.Tensor | None
    ) -> torch.Tensor:
        """[rows] log p(x[index[r]] | z[r]), nats."""
        return self.run(self.log_likelihood_fn(x, labels), [z, index])[0]

    @torch.inference_mode()
    def calibrate(self) -> None:
        """Pick the smallest padding quantum (a power of two below max_rows, then max_rows) under
        which a row's results do not depend on the batch; else run every row alone. Run it in
        the thread that will serve (torch's thread count is part of what picks the kernels)."""
        if not self.batch_invariant:
            self.quantum = 1
            log.warning("batch-invariant passes off: a request's bits may depend on what it is batched with")
            return
        backend = self.backend
        shapes = (type(backend), backend.architecture, self.max_rows)
        key = (*shapes, str(backend.device), backend.dtype, torch.get_num_threads())
        if key not in _calibrated:
            _calibrated[key] = self._search()
        self.quantum, self.max_rows = _calibrated[key]

    def _search(self) -> tuple[int, int]:
        """(quantum, max_rows) for calibrate."""
        candidates = [q for q in (1, 2, 4, 8, 16, 32) if q < self.max_rows] + [self.max_rows]
        probes = self._probes()
        for quantum in candidates:
            self.quantum = quantum
            if all(self._row_independent(fn, columns) for fn, columns in probes):
                log.info(
                    "batch-invariant passes on %s, %d threads: at most %d rows, padded to a multiple of %d",
                    self.backend.device, torch.get_num_threads(), self.max_rows, quantum,
                )  # fmt: skip
                return quantum, self.max_rows
        log.warning(
            "no padding quantum makes passes of up to %d rows batch-invariant on %s with %d threads: "
            "every row runs alone (exact, but no batching speed-up)",
            self.max_rows, self.backend.device, torch.get_num_threads(),
        )  # fmt: skip
        return 1, 1

    def _probes(self) -> list[tuple[PassFn, list[torch.Tensor | None]]]:
        """Each pass with max_rows distinct random input rows, made the same way every time."""
        backend, rows = self.backend, self.max_rows
        image, device, classes = backend.image, backend.device, len(backend.label_names)
        generator = torch.Generator().manual_seed(0)
        height, width = (image.height, image.width) if image.fixed_size else (PROBE_SIDE * image.multiple,) * 2
        if image.grid:  # sizes off its grid would not be its passes
            height, width = image.grid.at_least(height, width)
        x = torch.rand(rows, *image.item(height, width), generator=generator).to(device)
        latent = backend.latent_shape(height, width)  # a concrete shape, given the size
        z = torch.randn(rows, *latent, generator=generator).to(device, backend.dtype)  # type: ignore[misc]
        labels = None
        if classes:
            labels = torch.randint(classes, (rows,), generator=generator).to(device)
        index = torch.arange(rows, device=device)
        probes: list[tuple[PassFn, list[torch.Tensor | None]]] = []
        if "decoder" in backend.features:
            probes.append((self.decode_fn, [z, labels]))
        if "encoder" in backend.features:
            probes.append((self.encode_fn, [x, labels]))
        if "likelihood" in backend.features:
            probes.append((self.log_likelihood_fn(x, labels), [z, index]))
        return probes

    def _row_independent(self, fn: PassFn, columns: list[torch.Tensor | None]) -> bool:
        """Every row computed alone equals, bit for bit, the same row at every position of a
        pass of every shape this quantum makes."""

        def rows(selection: slice) -> list[torch.Tensor | None]:
            return [None if c is None else c[selection] for c in columns]

        alone = [self.run(fn, rows(slice(i, i + 1))) for i in range(self.max_rows)]
        for size in self.shapes():
            together = self.run(fn, rows(slice(0, size)))
            for i in range(size):
                if not all(torch.equal(t[i : i + 1], a) for t, a in zip(together, alone[i], strict=True)):
                    return False
        return True
