"""What a request needs of memory, measured at load, and the budget that running batches share.

A request is refused before it runs if it can never fit (`MemoryBudgetExceeded`), waits while
the batches running now hold what it needs, and is taken into a batch only with the rows that
fit beside them (app/engine/batcher.py): the kernel's out-of-memory killer never gets to choose.

The estimate of a job, per (model, operation), from the probe jobs that app/engine/cost.py
times at load (`Recorder` measures each one's peak):

    need    = work + buffers
    work    = margin x max(small, rate x pass elements)       its largest pass's working memory
    buffers = IO_COPIES x 4 bytes x (1 + outputs) x elements  its input and output

A pass holds at most `max_rows` rows (padded to the passes' quantum), and a tiled model (a
backend with `tiled_above`) works on one tile a side at a time, so the working memory grows
with the elements of one pass, each row at most a tile, not with the request: a big tiled
decode needs a tile's working memory plus its input and output, not an extrapolation of the
untiled regime. Requests batched together share passes, so their work adds up to at most a
full pass (`Need.__add__`). `small` is the peak of the smallest probe; `rate` the peak per
element of the largest, its fixed part included, which bounds the per-element growth from
above where it levels off with size (small probes are dominated by fixed allocations: the slope
between two of them would understate it); `margin` (MARGIN) covers what the measure misses.
`buffers` counts IO_COPIES float32 copies of every input and output element (`outputs`: output
elements per input element, from the probes' results): a tiled decode keeps its tiles (with
their overlap), the blended rows and the output, and the conversion to pixels makes more. The
frames of a video past the probes' count at the `growth` that one more probe, with twice the
frames, measured (`grown`): a decoder that works a few frames at a time (Wan's, frame by frame)
needs little more working memory for more frames, one that takes them all at once as much more
as it has frames. Where fixed allocations are a part of the probes' peaks, the growth is
understated by as much as the rate is overstated, so that for a long video the two cancel.

On a GPU the measure is torch's allocator (max_memory_allocated after reset_peak_memory_stats);
on the CPU the process's peak resident memory (VmHWM, reset by /proc/self/clear_refs after
malloc_trim hands freed heap back), which is what a cgroup limit counts.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import itertools
import math
import re
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Float32 copies of a job's input and output elements that a run holds at once (see above).
IO_COPIES = 4
# What the measured working memory is multiplied by, per device type. On a CPU the resident
# peak of one job depends on what the allocator reuses and how its heap fragments: the same
# decode peaked up to 1.5x higher served than probed at load (docs/benchmarks.md, "Memory"); the
# budget's headroom covers what small requests' noise adds past that. On a GPU the allocator's
# counts are exact, but its cache fragments.
MARGIN = {"cpu": 1.5, "cuda": 1.25}
FLOAT_BYTES = 4
PROC_STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
Point = tuple[int, int, int]  # a probe's input elements, peak bytes and output elements


@dataclass(frozen=True)
class Need:
    """Bytes a batch needs: `work` for its largest pass, `buffers` for its inputs and outputs;
    `most`, the work of a full pass, which no batch of these requests exceeds."""

    work: int = 0
    buffers: int = 0
    most: int | None = None  # None: no bound known

    @property
    def total(self) -> int:
        return self.work + self.buffers

    def __add__(self, other: Need) -> Need:
        """Two requests in one batch: their rows may share a pass (up to a full one); their
        buffers add up."""
        bounds = [need.most for need in (self, other) if need.most is not None]
        most = max(bounds) if bounds else None
        work = self.work + other.work
        return Need(work if most is None else min(most, work), self.buffers + other.buffers, most)


@dataclass(frozen=True)
class Footprint:
    """The memory of one (model, operation), measured at load (module docstring)."""

    small: int = 0  # bytes: the peak of the smallest probe
    rate: float = 0.0  # bytes per element of a pass
    outputs: float = 0.0  # output elements per input element
    margin: float = 1.0  # the measured working memory is multiplied by it (MARGIN)
    frames: int = 0  # a video model's: the frames (latent frames, for decode) of the probes' rows
    growth: float = 1.0  # the share of the working memory that grows with the frames past `frames`

    def need(self, elements: int, pass_elements: int, full_pass: int, frames: int = 0) -> Need:
        """A job of `elements` input elements, `pass_elements` of them in its largest pass (its
        padding included), `full_pass` in a pass of the most rows of its shape; a video's rows
        of `frames` frames count the frames past the probes' at `growth`."""
        buffers = math.ceil(IO_COPIES * FLOAT_BYTES * (1 + self.outputs) * elements)
        share = 1.0
        if self.frames and frames > self.frames:
            share = (self.frames + self.growth * (frames - self.frames)) / frames
        return Need(self.work(pass_elements * share), buffers, self.work(full_pass * share))

    def work(self, pass_elements: float) -> int:
        return math.ceil(self.margin * max(self.small, self.rate * pass_elements))


def fit(points: Iterable[Point], margin: float = 1.0) -> Footprint:
    """The footprint from probes' (input elements, peak bytes, output elements); none: zero."""
    found = sorted(points)
    if not found:
        return Footprint()
    largest = found[-1]
    outputs = max(out / max(1, n) for n, _, out in found)
    return Footprint(found[0][1], largest[1] / max(1, largest[0]), outputs, margin)


def grown(footprint: Footprint, shorter: Point, longer: Point, frames: int) -> Footprint:
    """`footprint` with the growth of its working memory with the frames, from two probes of the
    same rows and size, `shorter` of `frames` frames and `longer` of more: 0 where the peak did
    not grow with them, 1 where it grew as much as the elements did."""
    (units, peak, _), (more_units, more_peak, _) = shorter, longer
    if units <= 0 or peak <= 0 or more_units <= units:
        return footprint
    growth = min(1.0, max(0.0, (more_peak / peak - 1) / (more_units / units - 1)))
    return replace(footprint, frames=frames, growth=growth)


def elements(result: Any) -> int:
    """The array elements in a run's results (arrays, dataclasses and tuples of them)."""
    if isinstance(result, np.ndarray):
        return result.size
    if isinstance(result, list | tuple):
        return sum(map(elements, result))
    if hasattr(result, "__dataclass_fields__"):
        return sum(elements(getattr(result, name)) for name in result.__dataclass_fields__)
    return 0


@functools.cache
def _libc_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0): freed heap memory back to the system, so a peak counts what a run
    takes, not what it reuses of earlier runs' freed memory; a no-op elsewhere."""
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    return (lambda: trim(0)) if trim is not None else (lambda: None)


def _status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, bytes."""
    found = re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", PROC_STATUS.read_text(), re.MULTILINE)
    return {key: int(value) * 1024 for key, value in found}


def held(device: torch.device) -> int:
    """Bytes this process holds now: in tensors on a GPU, resident on the CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    _libc_trim()()
    return _status().get("VmRSS", 0)


def peak_of(run: Callable[[], Any], device: torch.device) -> tuple[Any, int]:
    """`run()`'s result and the most bytes it held at once above what was held before it. Where
    the CPU's peak cannot be reset (clear_refs refused), the process's peak so far counts:
    larger, never smaller."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = run()
        torch.cuda.synchronize(device)
        return result, max(0, torch.cuda.max_memory_allocated(device) - before)
    before = held(device)
    try:
        CLEAR_REFS.write_text("5")  # VmHWM := VmRSS
    except OSError:
        pass
    result = run()
    return result, max(0, _status().get("VmHWM", 0) - before)


class Recorder:
    """`run` (a batch runner) with each call's input elements, peak bytes and output elements
    recorded, for `fit`."""

    def __init__(self, run: Callable[[list[Any]], list[Any]], units: Callable[[Any], int], device: torch.device):
        self._run, self._units, self.device = run, units, device
        self.points: list[Point] = []

    def __call__(self, jobs: list[Any]) -> list[Any]:
        results, peak = peak_of(lambda: self._run(jobs), self.device)
        self.points.append((sum(map(self._units, jobs)), peak, elements(results)))
        return results


class MemoryPool:
    """The bytes running batches may hold at once (`budget`) and what they hold (`reserved`),
    with each reservation's estimated end, to tell a request how long it would wait."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.reserved = 0
        self._held: dict[int, tuple[int, float]] = {}  # token: (bytes, time.monotonic() of its estimated end)
        self._tokens = itertools.count()
        self._released = asyncio.Event()

    def fits(self, need: Need, alone: bool = False) -> bool:
        """Whether `need` fits beside what is reserved. A request `alone` fits whenever nothing
        is reserved: one over the whole budget is refused before it queues, and an estimate is
        no reason to leave the memory idle."""
        return self.reserved + need.total <= self.budget or (alone and not self._held)

    def wait(self, need: Need) -> float:
        """Estimated seconds until `need`, a request alone, fits, as the running batches end;
        inf: never."""
        if self.fits(need, alone=True):
            return 0.0
        free, now = self.budget - self.reserved, time.monotonic()
        for size, end in sorted(self._held.values(), key=lambda held: held[1]):
            free += size
            if need.total <= free:
                return max(0.0, end - now)
        return math.inf

    def reserve(self, need: Need, seconds: float) -> int:
        token = next(self._tokens)
        self._held[token] = (need.total, time.monotonic() + seconds)
        self.reserved += need.total
        return token

    def release(self, token: int) -> None:
        self.reserved -= self._held.pop(token)[0]
        self._released.set()
        self._released = asyncio.Event()

    def released(self) -> Coroutine[Any, Any, bool]:
        """Until the next release: the release that comes after this call, even if the
        coroutine is first awaited later."""
        return self._released.wait()
