"""What a request costs, in seconds of its lane's time: measured at load, corrected as batches run.

Each (model, operation) has a `Cost`, a line `fixed + per_unit x units`, where a job's units are
the elements it feeds the model (app/engine/operations.py's `units`: latent elements for sample
and decode, image elements for encode and reconstruct, and those times the 1 + k likelihood rows
for score): a convolutional VAE spends about the same time per element whatever the batch, past
a per-call overhead. `measure` fits the line at load from the operation run on probe jobs of one
and of several rows. Time per element does depend on the image size (a VAE's attention over
h x w latent cells grows with their square; tiles), which small probes cannot show, so each
batch served of one row shape sets that shape's own `per_unit` (its first batch), then moves it
(an exponential average): the estimate of a shape is what it took here.

The estimates route a request to the short or the long lane and drive admission
(app/engine/batcher.py); none of them changes what a request computes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.engine.errors import EngineError

# How far one batch's time moves its shape's estimate: about the last ten batches count.
LEARNING_RATE = 0.2
# Row shapes remembered per (model, operation); past it, new shapes use the line measured at load.
MAX_SHAPES = 256


@dataclass
class Cost:
    """seconds ~= fixed + per_unit x units, for one (model, operation); per row shape once seen."""

    fixed: float  # seconds of a call whatever its size
    per_unit: float  # seconds per element, measured at load
    shapes: dict[Hashable, float] = field(default_factory=dict)  # seconds per element, by row shape served

    def rate(self, shape: Hashable) -> float:
        return self.shapes.get(shape, self.per_unit)

    def seconds(self, units: float, shape: Hashable = None) -> float:
        """A request alone: what it takes when its batch holds nothing else."""
        return self.fixed + self.rate(shape) * units

    def share(self, units: float, shape: Hashable, rows: int, max_rows: int) -> float:
        """What a request adds to a batch of full passes (`max_rows` rows each): its elements
        and its share of the calls' overhead; the backlog of a lane is the sum of these."""
        return self.rate(shape) * units + self.fixed * min(1.0, rows / max_rows)

    def observe(self, units: float, seconds: float, shape: Hashable = None) -> None:
        """A batch of `units` elements in rows of `shape` took `seconds`."""
        if units <= 0:
            return
        measured = max(0.0, seconds - self.fixed) / units
        if shape in self.shapes:
            self.shapes[shape] += LEARNING_RATE * (measured - self.shapes[shape])
        elif len(self.shapes) < MAX_SHAPES:
            self.shapes[shape] = measured


def fit(points: Sequence[tuple[float, float]]) -> Cost:
    """The line through (units, seconds) of the smallest and the largest job measured, neither
    part negative (timings on a shared machine are noisy); none measured: zero, until batches
    are served."""
    if not points:
        return Cost(0.0, 0.0)
    (u0, s0), (u1, s1) = min(points), max(points)
    per_unit = max(0.0, (s1 - s0) / (u1 - u0)) if u1 > u0 else s1 / max(u1, 1)
    return Cost(max(0.0, s0 - per_unit * u0), per_unit)


def timed(run: Callable[[list[Any]], list[Any]], jobs: list[Any]) -> float:
    start = time.perf_counter()
    run(jobs)
    return time.perf_counter() - start


def measure(run: Callable[[list[Any]], list[Any]], jobs: Sequence[list[Any]], units: Callable[[Any], int]) -> Cost:
    """The line of `run` fitted to each batch of `jobs` run once (after the passes' first calls,
    which calibration paid); a batch that `run` refuses (`EngineError`: out of memory, where
    `run` frees it) is left out."""
    points = []
    for batch in jobs:
        try:
            points.append((sum(units(job) for job in batch), timed(run, list(batch))))
        except EngineError:
            continue
    return fit(points)
