"""Before/after load comparison of two checkouts on this machine, for a change that must not cost
throughput: `python bench/ab.py --before /path/to/other/checkout`.

Starts `python -m app.serve` from this checkout (after) and from `--before`, both with the same
settings and both pinned to one CPU, and drives them in turn with wrk pinned to another, run by
run (before, after, before, after, ...), so a slow spell of a shared machine hits both alike. For
each scenario of bench/load.py and each concurrency it prints the median requests/s and p50 of
each side over `--rounds` runs, and after/before; and the server's CPU time per request (user +
system, from /proc), which a crowded machine changes far less than requests/s: at saturation
throughput is its inverse. Loopback only.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path

from load import (  # bench/ is on sys.path
    ROOT,
    Result,
    free_port,
    scenarios,
    serve_env,
    server,
    wrk,
    wrk_arguments,
    wrk_setup,
)

log = logging.getLogger("bench")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def ratio(after: float, before: float) -> str:
    return f"{after / before:.3f}" if before else "n/a"  # no request finished in a run: a stalled machine


def main(argv: list[str] | None = None) -> None:
    p = wrk_arguments(__doc__, duration=3)
    p.add_argument("--before", type=Path, required=True, help="the checkout to compare with (its own app/)")
    p.add_argument("--rounds", type=int, default=3, help="runs per side, scenario and concurrency")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    p.add_argument("--only", nargs="+", metavar="OPERATION", help="only these scenarios, e.g. 'decode 1 latent'")
    args = p.parse_args(argv)
    wrk_setup()
    sides = {"before": args.before.resolve(), "after": ROOT}
    load = [s for s in scenarios(64) if not args.only or s.name in args.only]  # 64: fashion-vae's latent size
    results: dict[tuple[str, str, int], list[Result]] = {}
    cpu_per_request: dict[tuple[str, str, int], list[float]] = {}
    with ExitStack() as servers:
        bases, pids = {}, {}
        for side, checkout in sides.items():
            port = free_port()
            bases[side] = f"http://127.0.0.1:{port}"
            # PYTHONPATH: the checkout's own app/, whatever package the interpreter has installed.
            env = serve_env(VAE_PORT=str(port), PYTHONPATH=str(checkout))
            command = [sys.executable, "-m", "app.serve"]
            started = server(command, env, bases[side] + "/readyz", args.server_cpu, cwd=checkout)
            pids[side] = servers.enter_context(started).pid
        for scenario in load:
            for c in args.concurrency:
                for side, base in bases.items():
                    wrk(base, scenario, c, args.warmup, args.client_cpu)  # warm-up
                for _ in range(args.rounds):
                    for side, base in bases.items():
                        cpu = cpu_seconds(pids[side])
                        result = wrk(base, scenario, c, args.duration, args.client_cpu)
                        per_request = (cpu_seconds(pids[side]) - cpu) / max(result.requests, 1)
                        results.setdefault((scenario.name, side, c), []).append(result)
                        cpu_per_request.setdefault((scenario.name, side, c), []).append(per_request)
                        log.info(
                            "%s %s c=%d: %.0f req/s, p50 %.2f ms, %.0f us CPU/request",
                            side, scenario.name, c, result.rps, result.p50_ms, per_request * 1e6,
                        )  # fmt: skip
    print(f"Command: python bench/ab.py {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    print(
        "| operation | conc. | before: req/s | p50 ms | CPU us/req | after: req/s | p50 ms | CPU us/req "
        "| after/before: req/s | p50 | CPU/req |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for scenario in load:
        for c in args.concurrency:
            rps = {side: statistics.median(r.rps for r in results[scenario.name, side, c]) for side in sides}
            p50 = {side: statistics.median(r.p50_ms for r in results[scenario.name, side, c]) for side in sides}
            cpu = {side: statistics.median(cpu_per_request[scenario.name, side, c]) * 1e6 for side in sides}
            cells = [f"{rps[side]:.0f} | {p50[side]:.2f} | {cpu[side]:.0f}" for side in sides]
            ratios = [ratio(value["after"], value["before"]) for value in (rps, p50, cpu)]
            print(f"| {scenario.name} | {c} | {cells[0]} | {cells[1]} | {' | '.join(ratios)} |")


if __name__ == "__main__":
    main()
