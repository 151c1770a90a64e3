"""The GPU path checked and measured in one command, on an offline GPU host with its own PyTorch.

`python3 bench/gpu_check.py --wheels .gpu-wheels --out gpu.json` installs the wheels that
`make gpu-wheels` downloaded (`pip install --no-index --target`, so the host's own torch stays;
docs/benchmarks.md, "GPU", says which packages the host must have besides), then runs each part
of bench/gpu_parts.py in its own process with its own timeout, under one overall budget, and
prints one Markdown table (written after every part to --out as JSON, and beside it as .md):
SD's VAE (diffusers AutoencoderKL, SD's config, random weights) served by `python -m app.serve`
against the same model in-process at 512 and 1024, float16, bfloat16 and float32; float16 and
bfloat16 against float32; batch invariance at 512; a real CUDA out-of-memory; the fashion models
on CUDA against the CPU; a video decode of Wan's VAE (21 frames of 480p), served against
in-process. It exits 1 if a check failed or a part did not finish.

`--dry-run` runs the same code on the CPU with a tiny model and small sizes (the test suite
runs it); `--only PART,...` runs some parts. This file imports only the standard library: the
parts import the rest once installed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Seconds each part may take on the GPU host (a part that hangs loses only its own rows), in the
# order they run: the checks first, then the longer measurements.
TIMEOUTS = {
    "setup": 120,  # the model, saved; float16 and bfloat16 against float32
    "oom": 75,
    "fashion": 60,
    "float16": 120,  # batch invariance, then served vs in-process
    "video": 90,  # Wan's VAE, 21 frames of 480p
    "float32": 120,
    "bfloat16": 90,
}
# The dry run measures float16 only: the other two run the same code with another dtype, and
# setup's precision rows run all three on the CPU too.
NOT_IN_DRY_RUN = ("float32", "bfloat16")
BUDGET = 450  # seconds for the whole run: the GPU host's command limit is 10 minutes
FAILED = {"fail", "timeout", "error"}
# What the parts and their servers import, tried before any part runs (run in bench/).
IMPORTS = "import gpu_parts, app.main, app.serve; from diffusers import AutoencoderKL"


def install(wheels: Path, site: Path) -> None:
    """Every wheel in `wheels` into `site` with no index and no dependency resolution (the folder
    holds them all; torch is the host's), unless `site` already has exactly these; `site` first
    on this process's and its children's path."""
    files = sorted(wheels.glob("*.whl"))
    if not files:
        raise SystemExit(f"{wheels}: no wheels in it (make gpu-wheels)")
    marker = site / ".wheels"
    names = "\n".join(f.name for f in files)
    if not (marker.is_file() and marker.read_text() == names):
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        subprocess.run([*command, "--upgrade", "--target", str(site), *map(str, files)], check=True)
        marker.write_text(names)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))


def preflight() -> None:
    """Stop at once, before any GPU time is spent, if this Python lacks what the parts need."""
    done = subprocess.run([sys.executable, "-c", IMPORTS], cwd=Path(__file__).parent, capture_output=True, text=True)
    if done.returncode != 0:
        missing = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(
            f"{sys.executable} cannot import what the check needs: {missing}\n"
            "Wheels for a host that has only torch: python3 scripts/gpu_wheels.py --omit '' (docs/benchmarks.md, GPU)"
        )


def run_part(name: str, work: Path, dry_run: bool, timeout: float) -> list[dict[str, Any]]:
    """The part's rows, from its own process (and the servers it starts, one process group),
    which is killed past `timeout` seconds."""
    out = work / f"{name}.json"
    command = [sys.executable, __file__, "--part", name, "--work", str(work), *(["--dry-run"] if dry_run else [])]
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True)
    try:
        code = process.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        return [row(name, "part", f"killed after {timeout:.0f} s", verdict="timeout")]
    seconds = time.monotonic() - start
    if code != 0 or not out.is_file():
        return [row(name, "part", f"exited with {code} after {seconds:.0f} s (its output is above)", verdict="error")]
    return json.loads(out.read_text())


def row(part: str, case: str, result: str, verdict: str) -> dict[str, Any]:
    return {"part": part, "case": case, "result": result, "expected": "", "verdict": verdict, "values": {}}


def table(report: dict[str, Any]) -> str:
    env = report["environment"]
    facts = ", ".join(f"{key} {value}" for key, value in env.items() if key != "device")
    lines = [
        f"GPU check {report['date']}: {env.get('device', '?')}; {facts}; {report['seconds']:.0f} s "
        f"({', '.join(f'{name} {seconds:.0f}' for name, seconds in report['part_seconds'].items())})",
        "",
        "| part | case | result | expected | verdict |",
        "|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        cells = [r["part"], r["case"], r["result"], r["expected"], r["verdict"]]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def part_main(name: str, work: Path, dry_run: bool) -> None:
    """One part, in this process: its rows to WORK/NAME.json (and the setup part, the machine's facts)."""
    import logging

    import gpu_parts

    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
    plan = gpu_parts.DRY if dry_run else gpu_parts.REAL
    if name == "setup":
        (work / "environment.json").write_text(json.dumps(gpu_parts.environment(plan)))
    try:
        rows = gpu_parts.PARTS[name](plan, work)
    except Exception as e:  # a part that fails is a row; the others still run
        logging.getLogger("bench.gpu").exception("part %s failed", name)
        rows = [row(name, "part", f"{type(e).__name__}: {e}"[:300], verdict="error")]
    (work / f"{name}.json").write_text(json.dumps(rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="write the report here as JSON, and the table beside it as .md")
    p.add_argument("--dry-run", action="store_true", help="the same code on the CPU, tiny model, small sizes")
    p.add_argument("--wheels", type=Path, help="install the wheels of this folder first (make gpu-wheels)")
    p.add_argument("--site", type=Path, default=Path(tempfile.gettempdir()) / "vaeserve-gpu-site",
                   help="where --wheels are installed")  # fmt: skip
    p.add_argument("--budget", type=float, default=BUDGET, help="seconds for the whole run")
    p.add_argument("--only", help=f"comma-separated parts to run, of {', '.join(TIMEOUTS)} (setup always runs)")
    p.add_argument("--part", choices=list(TIMEOUTS), help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    parts = {"setup", *(args.only or ",".join(TIMEOUTS)).split(",")}
    if unknown := parts - set(TIMEOUTS):
        p.error(f"--only: no part {', '.join(sorted(unknown))}; the parts: {', '.join(TIMEOUTS)}")
    if args.part:
        part_main(args.part, args.work, args.dry_run)
        return 0
    if args.wheels:
        install(args.wheels, args.site)
    # The checkout's packages (app, model) for the parts, which run as scripts from bench/.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)]))
    preflight()
    start = time.monotonic()
    report: dict[str, Any] = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "dry_run": args.dry_run}
    report.update(environment={}, rows=[], seconds=0.0, part_seconds={})
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        for name, timeout in ((n, t) for n, t in TIMEOUTS.items() if n in parts):
            left = args.budget - (time.monotonic() - start)
            if args.dry_run and name in NOT_IN_DRY_RUN:
                report["rows"].append(row(name, "part", "not in the dry run (float16 only)", verdict="skipped"))
            elif left <= 1:
                report["rows"].append(row(name, "part", "not run: the budget was spent", verdict="timeout"))
            else:
                began = time.monotonic()
                report["rows"] += run_part(name, work, args.dry_run, min(timeout, left))
                report["part_seconds"][name] = time.monotonic() - began
            if name == "setup" and (work / "environment.json").is_file():
                report["environment"] = json.loads((work / "environment.json").read_text())
            report["seconds"] = time.monotonic() - start
            if args.out:  # after every part, so a run cut short still leaves its rows
                args.out.write_text(json.dumps(report, indent=1))
                args.out.with_suffix(".md").write_text(table(report))
    sys.stdout.write(table(report))
    return 1 if any(r["verdict"] in FAILED for r in report["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
