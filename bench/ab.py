"""Before/after load comparison of two checkouts on this machine, for a change that must not cost
throughput: `python bench/ab.py --before /path/to/other/checkout`.

Starts `python -m app.serve` from this checkout (after) and from `--before`, both with the same
settings and both pinned to one CPU, and drives them in turn with wrk pinned to another, run by
run (after, before, before, after, ...; each run starts with both servers idle), so a slow spell
of a shared machine hits both alike. For each scenario of bench/load.py and each concurrency it
prints the median requests/s, p50 and server CPU time per request (user + system, from /proc) of
each side over `--rounds` runs, and after/before as the median of the rounds' ratios with their
quartiles.

`--together` loads both servers at the same time instead, each with its own wrk, so they share
the server CPU through every slow and fast spell of the machine: their CPU time per request,
measured side by side, compares their throughput at saturation far more precisely than runs
taken in turn (on a virtual machine whose speed drifts by 10-30% from run to run). Latency is
not comparable that way: use the default for the c=1 columns. Loopback only.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from load import (  # bench/ is on sys.path
    ROOT,
    Result,
    Scenario,
    scenarios,
    service,
    wrk,
    wrk_arguments,
    wrk_setup,
)

log = logging.getLogger("bench")


def paired(after: list[float], before: list[float]) -> str:
    """The median of the rounds' after/before ratios, and their quartiles: each round's two runs
    are next to each other in time, so their ratio cancels the machine's slow and fast spells
    that the ratio of two medians keeps."""
    ratios = sorted(a / b for a, b in zip(after, before, strict=True) if b)  # b == 0: a stalled run
    if not ratios:
        return "n/a"
    low, _, high = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return f"{statistics.median(ratios):.3f} ({low:.2f}-{high:.2f})"


def one_round(
    targets: dict[str, tuple[str, int]], scenario: Scenario, c: int, args: argparse.Namespace
) -> dict[str, Result]:
    """A run on each (url, pid) target: in turn, in the order given, or all at once (--together)."""

    def run(target: tuple[str, int]) -> Result:
        return wrk(target[0], scenario, c, args.duration, args.client_cpu, target[1])

    if not args.together:
        return {side: run(target) for side, target in targets.items()}
    with ThreadPoolExecutor(len(targets)) as pool:
        return dict(zip(targets, pool.map(run, targets.values()), strict=True))


def main(argv: list[str] | None = None) -> None:
    p = wrk_arguments(__doc__, duration=3)
    p.add_argument("--before", type=Path, required=True, help="the checkout to compare with (its own app/)")
    p.add_argument("--rounds", type=int, default=3, help="runs per side, scenario and concurrency")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    p.add_argument(
        "--together",
        action="store_true",
        help="load both servers at once, sharing the server CPU: compare CPU per request, not latency",
    )
    p.add_argument("--only", nargs="+", metavar="OPERATION", help="only these scenarios, e.g. 'decode 1 latent'")
    args = p.parse_args(argv)
    wrk_setup()
    sides = {"before": args.before.resolve(), "after": ROOT}
    load = [s for s in scenarios(64) if not args.only or s.name in args.only]  # 64: fashion-vae's latent size
    results: dict[tuple[str, str, int], list[Result]] = {}
    with ExitStack() as servers:
        # PYTHONPATH: the checkout's own app/, whatever package the interpreter has installed.
        targets = {
            side: servers.enter_context(service(args.server_cpu, checkout, PYTHONPATH=str(checkout)))
            for side, checkout in sides.items()
        }
        for scenario in load:
            for c in args.concurrency:
                for base, pid in targets.values():
                    wrk(base, scenario, c, args.warmup, args.client_cpu, pid)  # warm-up
                for round_ in range(args.rounds):
                    order = {side: targets[side] for side in sorted(sides, reverse=round_ % 2 == 1)}
                    for side, result in one_round(order, scenario, c, args).items():
                        results.setdefault((scenario.name, side, c), []).append(result)
                        log.info(
                            "%s %s c=%d: %.0f req/s, p50 %.2f ms, %.0f us CPU/request",
                            side, scenario.name, c, result.rps, result.p50_ms, result.cpu_per_request * 1e6,
                        )  # fmt: skip
    print(f"Command: python bench/ab.py {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    print(
        "| operation | conc. | before: req/s | p50 ms | CPU us/req | after: req/s | p50 ms | CPU us/req "
        "| after/before: req/s | p50 | CPU/req |"
    )  # the ratios: medians of the rounds' ratios, with their quartiles
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for scenario in load:
        for c in args.concurrency:
            runs = {side: results[scenario.name, side, c] for side in sides}
            rps = {side: [r.rps for r in runs[side]] for side in sides}
            p50 = {side: [r.p50_ms for r in runs[side]] for side in sides}
            cpu = {side: [r.cpu_per_request * 1e6 for r in runs[side]] for side in sides}
            cells = [
                f"{statistics.median(rps[side]):.0f} | {statistics.median(p50[side]):.2f} "
                f"| {statistics.median(cpu[side]):.0f}"
                for side in sides
            ]
            ratios = [paired(value["after"], value["before"]) for value in (rps, p50, cpu)]
            print(f"| {scenario.name} | {c} | {cells[0]} | {cells[1]} | {' | '.join(ratios)} |")


if __name__ == "__main__":
    main()
