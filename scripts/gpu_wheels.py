"""`make gpu-wheels`: the wheels of everything bench/gpu_check.py needs but torch, for a GPU host
that has its own PyTorch and no package index (Python 3.12, Linux x86-64 by default).

The packages are the service's dependencies (pyproject.toml, with the diffusers extra) less
torch, at the versions of requirements.lock, and what they need in turn, resolved by pip for the
target Python and platform; only binary wheels. bench/gpu_check.py --wheels installs them with
`pip install --no-index --no-deps --target`, beside the host's torch, whatever its version.

The wheels travel to the GPU host with the working tree, which may be 64 MiB in all, and the
shipped checkpoints alone take 27: so by default the largest wheels whose packages the lent
hosts' image already has (/work/.library/device/KINDS.md) are left out (`--omit`). With
`--omit ''` the folder is complete, for a host that has only torch.

`python scripts/gpu_wheels.py [--python-version 3.12] [--dest .gpu-wheels] [--omit numpy,pillow]`
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Linux x86-64 wheel tags from CentOS 7's glibc (2.17) to Ubuntu 22.04's (2.35): pip matches a
# tag exactly, so each is named. A host's pip installs any of them on a newer glibc.
PLATFORMS = ("manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64",
             *(f"manylinux_2_{n}_x86_64" for n in range(17, 36)))  # fmt: skip
LIMIT_MB = 60  # what a GPU host's working-tree transfer leaves room for
SKIPPED = {"torch"}  # the host's own
# In the lent GPU hosts' image already, and together 32 of the 48 MB.
HOST_HAS = ("numpy", "pillow", "uvloop", "hf-xet")


def distribution(wheel: Path) -> str:
    """A wheel's distribution name, normalised as PEP 503 does (hf_xet-1.8.0-... -> hf-xet)."""
    return re.sub(r"[-_.]+", "-", wheel.name.split("-", 1)[0]).lower()


def requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The service's dependencies and its diffusers extra, less torch, as pyproject.toml states them."""
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["diffusers"]]
    return [r for r in wanted if re.split(r"[^A-Za-z0-9._-]", r, maxsplit=1)[0].lower() not in SKIPPED]


def download(dest: Path, python_version: str, omit: frozenset[str] | set[str] = frozenset()) -> list[Path]:
    """The wheels into `dest` (emptied first of wheels), resolved for `python_version` on Linux
    x86-64, less those of the distributions in `omit`."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--implementation", "cp"]
    command += ["--python-version", python_version, *platforms, "-c", str(ROOT / "requirements.lock")]
    subprocess.run([*command, "-d", str(dest), *requirements()], check=True)
    for wheel in dest.glob("*.whl"):
        if distribution(wheel) in omit:
            wheel.unlink()
    return sorted(dest.glob("*.whl"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python-version", default="3.12", help="the GPU host's Python (major.minor)")
    p.add_argument("--dest", type=Path, default=ROOT / ".gpu-wheels", help="the folder (emptied of wheels first)")
    p.add_argument("--omit", default=",".join(HOST_HAS), help="comma-separated distributions the host has already")
    args = p.parse_args(argv)
    omit = {name.strip().lower() for name in args.omit.split(",") if name.strip()}
    wheels = download(args.dest, args.python_version, omit)
    total = sum(w.stat().st_size for w in wheels) / 1e6
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 1e6:6.1f} MB  {wheel.name}")
    left_out = ", ".join(sorted(omit)) or "none"
    print(f"{len(wheels)} wheels, {total:.1f} MB in {args.dest}; left out (the host has them): {left_out}")
    if total > LIMIT_MB:
        print(f"over {LIMIT_MB} MB: the GPU host's transfer has no room for them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
