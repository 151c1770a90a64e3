"""bench/gpu_check.py's dry run (the same code as on a GPU, on the CPU, tiny), and its offline
install: `make gpu-wheels`'s download for this Python, a fresh virtual environment that has torch
and nothing else, the wheels installed there with no index, and the check run from it.

The GPU hosts run Python 3.12; here torch exists only for this machine's Python (a CPU build on
local disk), so the offline install is shown for this Python, by the code that makes the 3.12
folder with `--python-version`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "bench" / "gpu_check.py"
HERE = f"{sys.version_info.major}.{sys.version_info.minor}"


def run_check(python: str | Path, out: Path, *args: str) -> dict:
    done = subprocess.run(
        [str(python), str(CHECK), "--dry-run", "--out", str(out), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    report = json.loads(out.read_text())
    assert done.stdout.startswith(f"GPU check {report['date']}")  # the table, printed
    assert out.with_suffix(".md").read_text() == done.stdout  # and written beside the JSON
    return report


def rows(report: dict, part: str) -> dict[str, dict]:
    return {r["case"]: r for r in report["rows"] if r["part"] == part}


def test_the_dry_run_runs_every_part_and_every_check_passes(tmp_path: Path) -> None:
    report = run_check(sys.executable, tmp_path / "gpu.json")
    assert report["dry_run"] and report["environment"]["torch"]
    verdicts = {r["verdict"] for r in report["rows"]}
    assert verdicts <= {"pass", "measured", "skipped"}, report["rows"]
    assert {r["part"] for r in report["rows"]} >= {"setup", "precision", "oom", "fashion", "invariance", "throughput"}
    assert all(r["verdict"] == "pass" for r in rows(report, "precision").values())
    burst, quanta = rows(report, "invariance").values()
    assert burst["result"].startswith("16/16")
    assert set(quanta["values"]["quanta"]) <= {1, 2, 4, 8}  # which ones hold depends on the CPU
    oom = list(rows(report, "oom").values())
    assert oom[0]["values"]["status"] == 413 and oom[2]["values"]["status"] == 200
    # The dry run's stand-in cap fails the batched passes: each request of it 503 (or 200 alone).
    assert set(oom[3]["values"]["statuses"]) <= {"200", "503"}
    throughput = rows(report, "throughput")
    assert {case.split(" c=")[1] for case in throughput} == {"1", "8"}
    for r in throughput.values():
        values = r["values"]
        assert values["served_images_per_s"] > 0 and values["own_images_per_s"] > 0 and values["ratio"] > 0
        assert values["served_peak_mib"] > 0 and values["own_peak_mib"] > 0
    timed, compared = rows(report, "video").values()
    assert timed["values"]["served_s"] > 0 and timed["values"]["own_s"] > 0 and timed["values"]["served_peak_mib"] > 0
    assert compared["case"].startswith("Wan VAE (base_dim 12), 5 frames of 48x32") and compared["verdict"] == "pass"


def torch_closure() -> list[importlib.metadata.Distribution]:
    """torch and what it needs, as installed here (markers read for this machine, no extras)."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = ["torch"]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found[name] = dist = importlib.metadata.distribution(name)
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name.lower())
    return list(found.values())


def torch_only_venv(folder: Path) -> Path:
    """A fresh virtual environment (with pip) whose only packages are torch and its dependencies,
    linked from this environment (a copy would take minutes): its python."""
    subprocess.run([sys.executable, "-m", "venv", str(folder / "venv")], check=True, timeout=300)
    linked = folder / "torch-only"
    linked.mkdir()
    for dist in torch_closure():
        for top in {f.parts[0] for f in dist.files or []} - {"..", "__pycache__"}:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (linked / top).exists():
                (linked / top).symlink_to(source)
    (site,) = (folder / "venv").glob("lib/python*/site-packages")
    (site / "torch-only.pth").write_text(f"{linked}\n")
    return folder / "venv" / "bin" / "python"


def test_the_wheels_are_the_services_dependencies_less_torch() -> None:
    spec = importlib.util.spec_from_file_location("gpu_wheels", ROOT / "scripts" / "gpu_wheels.py")
    assert spec is not None and spec.loader is not None
    gpu_wheels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_wheels)
    wanted = " ".join(gpu_wheels.requirements())
    assert all(name in wanted for name in ("fastapi>=", "uvicorn>=", "pydantic-settings>=", "diffusers>="))
    assert "torch" not in wanted
    assert gpu_wheels.distribution(Path("hf_xet-1.8.0-cp38-abi3-manylinux2014_x86_64.whl")) == "hf-xet"
    assert gpu_wheels.distribution(Path("Pillow-13.0.0-cp312-cp312-manylinux_2_28_x86_64.whl")) == "pillow"


def test_the_wheels_install_offline_beside_torch_alone_and_the_check_runs(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    command = [sys.executable, str(ROOT / "scripts" / "gpu_wheels.py"), "--python-version", HERE, "--omit", ""]
    done = subprocess.run([*command, "--dest", str(wheels)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "connection" in done.stderr.lower():
        pytest.skip(f"no package index reachable: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    names = {wheel.name.split("-")[0].lower() for wheel in wheels.glob("*.whl")}
    assert {"fastapi", "uvicorn", "diffusers", "numpy", "pillow", "httpx"} <= names and "torch" not in names
    python = torch_only_venv(tmp_path)
    bare = subprocess.run([str(python), "-c", "import torch, fastapi"], capture_output=True, text=True)
    assert "No module named 'fastapi'" in bare.stderr  # torch alone, before the install
    site = tmp_path / "site"
    # setup loads diffusers; oom serves through `python -m app.serve` and answers over HTTP.
    report = run_check(python, tmp_path / "gpu.json", "--wheels", str(wheels), "--site", str(site), "--only", "oom")
    assert {r["part"] for r in report["rows"]} == {"setup", "precision", "oom"}
    assert {r["verdict"] for r in report["rows"]} <= {"pass", "measured", "skipped"}
    assert (site / "fastapi").is_dir() and not (site / "torch").exists()
