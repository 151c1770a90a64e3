"""What batch-invariant passes cost: lone-request latency and throughput, padded or not.

`python bench/padding.py` starts the service three times on 127.0.0.1, pinned to one CPU:
padded passes (the default), unpadded passes (VAE_BATCH_INVARIANT=false) and padded passes with
MKL's strict conditional numerical reproducibility (MKL_CBWR=AUTO,STRICT), and drives them in
turn, run by run, with wrk pinned to another CPU: p50 at concurrency 1 and requests/s at 64 for
sample n=1, decode of one latent and encode of one PNG. It prints a Markdown table for
docs/benchmarks.md, with the padding quantum each configuration calibrated to on this machine.
"""

from __future__ import annotations

import logging
import statistics
import subprocess
import sys
from contextlib import ExitStack

from load import (  # bench/ is on sys.path
    ROOT,
    Result,
    machine,
    measure,
    scenarios,
    serve_env,
    service,
    wrk_arguments,
    wrk_setup,
)

from model import load_checkpoint

log = logging.getLogger("bench")
CONFIGS = {
    "padded": {},
    "no padding": {"VAE_BATCH_INVARIANT": "false"},
    "padded, MKL_CBWR=AUTO,STRICT": {"MKL_CBWR": "AUTO,STRICT"},
}
OPERATIONS = ("sample n=1", "decode 1 latent", "encode 1 PNG")
CALIBRATE = """
import logging, torch
from app.engine.backends.vae import VAEBackend
from app.engine.passes import Passes
from model import load_checkpoint
torch.set_num_threads(1)
passes = Passes(VAEBackend(load_checkpoint("model/checkpoints/fashion-vae.safetensors")), {rows})
passes.calibrate()
print(passes.quantum)
"""


def quantum(env: dict[str, str], rows: int, cpu: int) -> str:
    """The padding quantum fashion-vae calibrates to under `env`, as the server would."""
    if env.get("VAE_BATCH_INVARIANT") == "false":
        return "1 (off)"
    code = CALIBRATE.format(rows=rows)
    done = subprocess.run(
        ["taskset", "-c", str(cpu), sys.executable, "-c", code], cwd=ROOT, env=serve_env(**env),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> None:
    p = wrk_arguments(__doc__)
    p.add_argument("--rounds", type=int, default=2, help="times each configuration is measured, in turn")
    args = p.parse_args(argv)
    wrk_setup()
    checkpoint = ROOT / "model" / "checkpoints" / "fashion-vae.safetensors"
    load = [s for s in scenarios(load_checkpoint(checkpoint).config.latent_dim) if s.name in OPERATIONS]
    quanta = {name: quantum(env, 64, args.server_cpu) for name, env in CONFIGS.items()}
    results: dict[tuple[str, str, int], list[Result]] = {}
    with ExitStack() as servers:
        targets = {name: servers.enter_context(service(args.server_cpu, **env)) for name, env in CONFIGS.items()}
        # Configurations in turn, run by run, so a slow spell of the machine hits them alike.
        for _ in range(args.rounds):
            for scenario in load:
                for c in (1, 64):
                    for name, (base, pid) in targets.items():
                        results.setdefault((name, scenario.name, c), []).append(measure(base, pid, scenario, c, args))
    print(f"Machine: {machine()}\n")
    print(f"Command: python bench/padding.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip() + "\n")
    print("| configuration | quantum | " + " | ".join(f"{op}: c=1 p50 ms | c=64 req/s" for op in OPERATIONS) + " |")
    print("|---|--:|" + "--:|--:|" * len(OPERATIONS))
    for name in CONFIGS:
        cells = []
        for op in OPERATIONS:
            p50 = statistics.median(r.p50_ms for r in results[name, op, 1])
            rps = statistics.median(r.rps for r in results[name, op, 64])
            cells.append(f"{p50:.2f} | {rps:.0f}")
        print(f"| {name} | {quanta[name]} | " + " | ".join(cells) + " |")
    errors = sum(r.errors for runs in results.values() for r in runs)
    print(f"\nerrors in all runs: {errors}")


if __name__ == "__main__":
    main()
