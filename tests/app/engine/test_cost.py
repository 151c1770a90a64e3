"""The cost line: fitted from measurements, learnt per row shape from what batches take, a
request's share of a batch."""

from __future__ import annotations

import pytest

from app.engine import cost as cost_module
from app.engine.cost import Cost, fit, measure
from app.engine.errors import OutOfMemory


def test_the_line_goes_through_the_smallest_and_largest_job() -> None:
    cost = fit([(400.0, 0.5), (100.0, 0.2)])
    assert cost.fixed == pytest.approx(0.1) and cost.per_unit == pytest.approx(0.001)
    assert cost.seconds(1000) == pytest.approx(1.1)


def test_noisy_timings_never_give_a_negative_part() -> None:
    assert fit([(100.0, 0.3), (400.0, 0.2)]) == Cost(0.3, 0.0)  # the larger job measured faster
    assert fit([(100.0, 0.0), (400.0, 0.9)]) == Cost(0.0, 0.003)  # the line would cross below zero
    assert fit([(100.0, 0.2), (100.0, 0.2)]) == Cost(0.0, 0.002)  # one size: through the origin


def test_a_share_counts_the_overhead_once_per_full_pass() -> None:
    cost = Cost(0.064, 0.001)
    assert cost.share(10, None, rows=1, max_rows=64) == pytest.approx(0.011)
    assert cost.share(10, None, rows=128, max_rows=64) == pytest.approx(0.074)


def test_each_shape_learns_its_own_rate_from_the_batches_served() -> None:
    cost = Cost(0.1, 0.001)
    big, small = (4, 64, 64), (4, 8, 8)
    cost.observe(16384, 65.636, big)  # its first batch sets the shape's rate: 0.004 s per element
    assert cost.seconds(16384, big) == pytest.approx(65.636)
    assert cost.seconds(256, small) == pytest.approx(0.356)  # other shapes keep the line measured at load
    cost.observe(16384, 0.1 + 16384 * 0.009, big)  # later batches move it a fifth of the way
    assert cost.rate(big) == pytest.approx(0.005)
    cost.observe(0, 1.0, small)  # an empty batch says nothing
    assert cost.rate(small) == 0.001


def test_measure_runs_each_batch_and_leaves_out_what_runs_out_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]  # a clock that the fake work advances: 0.002 s per call and 0.0001 s per unit
    monkeypatch.setattr(cost_module.time, "perf_counter", lambda: now[0])
    runs: list[list[int]] = []

    def run(jobs: list[int]) -> list[int]:
        runs.append(jobs)
        if len(jobs) > 2:
            raise OutOfMemory("probe", "cuda", len(jobs))
        now[0] += 0.002 + 0.0001 * 100 * sum(jobs)
        return jobs

    cost = measure(run, [[1], [2, 3], [4, 5, 6]], units=lambda job: 100 * job)
    assert runs == [[1], [2, 3], [4, 5, 6]]
    assert cost.fixed == pytest.approx(0.002) and cost.per_unit == pytest.approx(0.0001)
    assert measure(run, [[4, 5, 6]], units=lambda job: job) == Cost(0.0, 0.0)  # nothing measured
