"""What a request costs, in seconds of its lane's time: measured at load, corrected as batches run.

Each (model, operation) has a `Cost`, a line `fixed + per_unit x units`, where a job's units are
the elements it feeds the model (`units`: latent elements for sample and decode, image elements
for encode and reconstruct, and those times the 1 + k likelihood rows for score): convolutional
VAEs spend about the same time per element whatever the batch or image size, past a per-call
overhead. `measure` fits the line at load from the operation run on synthetic jobs of 1 and of
several rows; every batch served then moves `per_unit` towards what the batch took
(`Cost.observe`), so the estimate follows the shapes actually served (attention, tiling, a
loaded machine), which the small probe shapes at load may not show.

The estimates route a request to the short or the long lane and drive admission
(app/engine/batcher.py); none of them changes what a request computes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# How far one batch's time moves the estimate: about the last ten batches count.
LEARNING_RATE = 0.2


@dataclass
class Cost:
    """seconds ~= fixed + per_unit x units, for one (model, operation)."""

    fixed: float  # seconds of a call whatever its size
    per_unit: float  # seconds per element

    def seconds(self, units: float) -> float:
        """A request alone: what it takes when its batch holds nothing else."""
        return self.fixed + self.per_unit * units

    def share(self, units: float, rows: int, max_rows: int) -> float:
        """What a request adds to a batch of full passes (`max_rows` rows each): its elements
        and its share of the calls' overhead; the backlog of a lane is the sum of these."""
        return self.per_unit * units + self.fixed * min(1.0, rows / max_rows)

    def observe(self, units: float, seconds: float) -> None:
        """A batch of `units` took `seconds`: move per_unit towards it (an exponential average)."""
        if units > 0:
            measured = max(0.0, seconds - self.fixed) / units
            self.per_unit += LEARNING_RATE * (measured - self.per_unit)


def fit(points: Sequence[tuple[float, float]]) -> Cost:
    """The line through (units, seconds) of the smallest and the largest job measured, neither
    part negative (timings on a shared machine are noisy)."""
    (u0, s0), (u1, s1) = min(points), max(points)
    per_unit = max(0.0, (s1 - s0) / (u1 - u0)) if u1 > u0 else s1 / max(u1, 1)
    return Cost(max(0.0, s0 - per_unit * u0), per_unit)


def timed(run: Callable[[list[Any]], list[Any]], jobs: list[Any]) -> float:
    start = time.perf_counter()
    run(jobs)
    return time.perf_counter() - start


def measure(run: Callable[[list[Any]], list[Any]], jobs: Sequence[list[Any]], units: Callable[[Any], int]) -> Cost:
    """The line of `run` fitted to each batch of `jobs` run once (after the passes' first calls,
    which calibration paid)."""
    return fit([(sum(units(job) for job in batch), timed(run, list(batch))) for batch in jobs])
