#!/usr/bin/env bash
# Writes requirements.lock: the exact version of every package that vaeserve, with all its
# extras, installs in a clean virtual environment (`make lock`; docs/deploy.md).
#
# It is a constraints file (`pip install -c requirements.lock ...`): it fixes versions but
# installs nothing by itself, so one lock serves the image (no extras), `make install` (test
# extra) and anyone installing another extra. Extras are read from pyproject.toml, so a
# dependency added there is locked by the next `make lock`.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT

"$python" -m venv "$venv"
# Without the venv's own setuptools: torch requires it, so it is resolved (and locked) like the rest.
"$venv/bin/pip" uninstall -q -y setuptools
extras=$("$python" -c 'import tomllib; print(",".join(tomllib.load(open("pyproject.toml", "rb"))["project"].get("optional-dependencies", {})))')
torch=$("$python" -c 'import tomllib; print(next(d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"] if d.startswith("torch==")))')
# The CPU wheel first, as `make install` does, so torch's CUDA dependencies stay out.
"$venv/bin/pip" install -q "$torch"
"$venv/bin/pip" install -q ".${extras:+[$extras]}"
# What pip adds only on an older Python 3.11 such as the image's (Debian 12's 3.11.2): redis's
# async-timeout (python_full_version < "3.11.3"), locked too so that every package there is.
"$venv/bin/pip" install -q async-timeout
{
  echo "# Exact versions of everything vaeserve installs, extras included ($extras), for"
  echo "# $("$venv/bin/python" -c 'import platform, sys; print(f"Python {sys.version_info.major}.{sys.version_info.minor} on {platform.system()} {platform.machine()}")')."
  echo "# Made by \`make lock\` (scripts/lock.sh); use it as constraints: pip install -c requirements.lock ..."
  # torch without its local version (+cpu): the CUDA builds of the image satisfy it too.
  "$venv/bin/pip" freeze --all --exclude pip --exclude vaeserve | sed -E 's/^(torch==[^+]+)\+.*$/\1/'
} >requirements.lock.tmp
mv requirements.lock.tmp requirements.lock
echo "requirements.lock: $(grep -vc '^#' requirements.lock) packages"
