"""A real container engine for the container tests: rootful podman, configured for this kind of
machine; the base images, pulled or else stand-ins made from Debian; and the image, built from
the project's own Dockerfile with the build settings of docker-compose.yml."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.deploy.support import ROOT

STATE = ROOT / "build" / "container"  # config, the local torch index, stand-in work: ignored by git
CONFIG = STATE / "containers.conf"
LABEL = "vaeserve-test"  # on every container and network the tests make, to clean up after a crash
PACKAGES = "podman runc netavark aardvark-dns iptables debootstrap"
STAND_IN = ROOT / "scripts" / "container" / "stand-in.sh"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def write_config() -> None:
    """podman's settings for a VM like this one, by CONTAINERS_CONF so /etc stays untouched:
    runc (crun refuses hybrid cgroups), cgroupfs (no systemd), netavark with aardvark-dns (the
    network's DNS answers service names), and ulimits no higher than this process may grant
    (without CAP_SYS_RESOURCE, a container cannot get more; nproc also within pid_max)."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    nproc = pid_max if nproc == resource.RLIM_INFINITY else min(nproc, pid_max)
    nofile = 1 << 20 if nofile == resource.RLIM_INFINITY else nofile
    STATE.mkdir(parents=True, exist_ok=True)
    CONFIG.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        "[network]\n"
        'network_backend = "netavark"\n'
    )


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args],
        env={**os.environ, "CONTAINERS_CONF": str(CONFIG)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)}: exit {result.returncode}\n{result.stderr[-3000:]}")
    return result


def unavailable() -> str | None:
    """Why podman cannot run containers here, or None."""
    if shutil.which("podman") is None:
        return f"podman is not installed: apt-get install {PACKAGES} (`make test` installs them)"
    if os.geteuid() != 0:
        return "the container tests run rootful podman: run them as root"
    write_config()
    info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
    if info.returncode != 0:
        return f"podman cannot run here: {info.stderr.strip()[-500:]}"
    return None


def remove_leftovers() -> None:
    """Containers and networks of an earlier run that ended without cleaning up."""
    names = podman("ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}").stdout.split()
    if names:
        podman("rm", "--force", "--time", "0", *names, timeout=120)
    for network in podman("network", "ls", "--filter", f"label={LABEL}", "--format", "{{.Name}}").stdout.split():
        podman("network", "rm", "--force", network)


def qualified(image: str) -> str:
    """A short image name as Docker reads it: python:3.11 is docker.io/library/python:3.11."""
    first = image.split("/", 1)[0]
    if "/" not in image:
        return f"docker.io/library/{image}"
    return image if "." in first or ":" in first or first == "localhost" else f"docker.io/{image}"


def ensure_base(image: str, kind: str) -> str:
    """The registry image if it is here or can be pulled, else a stand-in made with debootstrap
    from the Debian mirror under the same name (scripts/container/stand-in.sh). Says which."""
    name = qualified(image)
    if podman("image", "exists", name, check=False).returncode == 0:
        labels = podman("image", "inspect", name, "--format", "{{json .Labels}}").stdout
        return "stand-in (made earlier)" if "vaeserve.stand-in" in labels else "registry (pulled earlier)"
    pulled = podman("pull", "--quiet", name, check=False, timeout=600)
    if pulled.returncode == 0:
        return "registry"
    if shutil.which("debootstrap") is None:
        raise RuntimeError(f"cannot pull {name} and no debootstrap for a stand-in:\n{pulled.stderr[-1000:]}")
    made = subprocess.run(
        ["bash", str(STAND_IN), kind, name, str(STATE)],
        env={**os.environ, "CONTAINERS_CONF": str(CONFIG)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if made.returncode != 0:
        raise RuntimeError(f"stand-in for {name} failed:\n{made.stderr[-3000:]}")
    return "stand-in"


def dockerfile_bases(dockerfile: Path) -> set[str]:
    """The FROM images of a Dockerfile, its ARG defaults filled in."""
    text = dockerfile.read_text()
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    return {re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], base) for base in bases}


def torch_index(default_index: str, version: str) -> Path | None:
    """None where the Dockerfile's PyTorch index answers; else a local index (a folder served
    as file://) holding the CPU wheel, which pip on this machine can fetch from its registry."""
    try:
        httpx.head(default_index.rstrip("/") + "/torch/", timeout=10, follow_redirects=True).raise_for_status()
        return None
    except httpx.HTTPError:
        pass
    index = STATE / "torch-index"
    project = index / "torch"
    wheels = sorted(project.glob(f"torch-{version}+cpu-*.whl"))
    if not wheels:
        project.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
            + ["--dest", str(project), f"torch=={version}+cpu"],
            check=True,
            capture_output=True,
            timeout=900,
        )
        wheels = sorted(project.glob(f"torch-{version}+cpu-*.whl"))
    (project / "index.html").write_text("".join(f'<a href="{w.name}">{w.name}</a>\n' for w in wheels))
    return index


def build(tag: str, context: Path, args: dict[str, str]) -> float:
    """`podman build` of context/Dockerfile, in docker format (podman's default OCI format
    drops HEALTHCHECK). The torch wheel comes from a local index where PyTorch's is out of
    reach, and pip in the build trusts the CA bundle this machine trusts (some networks
    re-sign TLS). Both are mounts for the RUN steps only: nothing of them is in the image.
    Returns the seconds it took."""
    dockerfile = context / "Dockerfile"
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile.read_text(), re.MULTILINE))
    variant = args.get("TORCH_VARIANT", defaults["TORCH_VARIANT"])
    default_index = defaults["TORCH_INDEX"].replace("${TORCH_VARIANT}", variant)
    options = ["--format", "docker", "--tag", tag, "--file", str(dockerfile)]
    options += [f"--build-arg={name}={value}" for name, value in args.items()]
    index = torch_index(default_index, defaults["TORCH_VERSION"]) if variant == "cpu" else None
    if index is not None:
        options += ["--volume", f"{index}:/torch-index:ro", "--build-arg=TORCH_INDEX=file:///torch-index"]
    if HOST_CA.exists():
        pip_conf = STATE / "pip.conf"
        pip_conf.write_text("[global]\ncert = /run/host-ca.crt\n")
        options += ["--volume", f"{HOST_CA}:/run/host-ca.crt:ro", "--volume", f"{pip_conf}:/etc/pip.conf:ro"]
    started = time.monotonic()
    result = podman("build", *options, str(context), check=False, timeout=1200)
    (STATE / "build.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"podman build failed (log: {STATE / 'build.log'}):\n{result.stderr[-3000:]}")
    return time.monotonic() - started


class Container:
    """A container the tests started, by name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def inspect(self, template: str) -> str:
        return podman("inspect", self.name, "--format", template).stdout.strip()

    def ip(self, network: str) -> str:
        return self.inspect(f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}')

    def logs(self) -> str:
        result = podman("logs", self.name)
        return result.stdout + result.stderr
