"""docker-compose.yml's services as `podman run` options: what Docker Compose runs, read from
the file itself. podman-compose is not used: the version Debian ships ignores health-check
conditions and stop_grace_period, the very settings under test. A key this translation does
not know fails the test, so every setting in the file is either applied here or refused."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.container.engine import LABEL
from tests.deploy.support import ROOT, compose

PROJECT = "vaeserve-test"  # a project name of its own: never touches a real deployment here
NETWORK = f"{PROJECT}_default"
# Keys that do not become `podman run` options: how the image is built, the start order, which
# the tests drive themselves.
NOT_RUN = {"build", "depends_on"}


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's `${NAME:-default}`, `${NAME}` and `$$`, from `variables` (the shell or .env of
    a real deployment); nothing is read from this process's environment."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        return variables.get(name) or (default or "")

    return re.sub(r"\$\$|\$\{(\w+)(?::-([^}]*))?\}", one, value)


def seconds(duration: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(s|m)", duration).groups()
    return int(number) * (60 if unit == "m" else 1)


def service(name: str) -> dict:
    return compose()["services"][name]


def run_command(name: str, container: str, variables: Mapping[str, str], extra: Sequence[str] = ()) -> list[str]:
    """The `podman run` arguments for one container of service `name`: detached, labelled, on
    the project network with the service name as its DNS alias, as Compose runs it; `extra`
    options go last (a published port, say)."""
    spec = service(name)
    unknown = set(spec) - NOT_RUN - set(OPTIONS) - {"image", "command"}
    assert not unknown, f"{name}: docker-compose.yml keys the container tests do not apply: {unknown}"
    args = ["run", "--detach", "--name", container, "--label", f"{LABEL}=1"]
    args += ["--network", NETWORK, "--network-alias", name]
    for key, value in spec.items():
        if key in OPTIONS:
            args += OPTIONS[key](value, variables)
    args += extra
    args.append(interpolate(spec["image"], variables))
    args += spec.get("command", [])
    return args


def environment(value: dict, variables: Mapping[str, str]) -> list[str]:
    return [f"--env={key}={interpolate(str(item), variables)}" for key, item in value.items()]


def ports(value: list[str], variables: Mapping[str, str]) -> list[str]:
    # On loopback only: the tests' clients are local, and nothing else may reach the containers.
    return [f"--publish=127.0.0.1:{interpolate(port, variables)}" for port in value]


def volumes(value: list[str], variables: Mapping[str, str]) -> list[str]:
    # A relative source is relative to the compose file's folder.
    return [f"--volume={ROOT / interpolate(v, variables) if v.startswith('.') else v}" for v in value]


def logging(value: dict, variables: Mapping[str, str]) -> list[str]:
    options = [f"--log-opt={key}={item}" for key, item in value.get("options", {}).items()]
    return [f"--log-driver={value['driver']}", *options]


OPTIONS = {
    "environment": environment,
    "ports": ports,
    "volumes": volumes,
    "logging": logging,
    "restart": lambda value, _: [f"--restart={value}"],
    "expose": lambda value, _: [f"--expose={port}" for port in value],
    # Compose's stop_grace_period is the engine's stop timeout: SIGTERM, then SIGKILL after it.
    "stop_grace_period": lambda value, _: [f"--stop-timeout={seconds(value)}"],
    # Docker's read_only is the root file system alone; podman adds writable tmpfs on /tmp,
    # /var/tmp and /run unless told not to, which would hide a missing `tmpfs` entry.
    "read_only": lambda value, _: ["--read-only", "--read-only-tmpfs=false"] if value else [],
    "tmpfs": lambda value, _: [f"--tmpfs={path}" for path in value],
    "cap_drop": lambda value, _: [f"--cap-drop={cap}" for cap in value],
    "security_opt": lambda value, _: [f"--security-opt={option}" for option in value],
    "entrypoint": lambda value, _: [f"--entrypoint={json.dumps(value)}"],
}


def build_settings(name: str) -> tuple[str, Path, dict[str, str]]:
    """The service's image tag, build context and build arguments."""
    spec = service(name)
    return spec["image"], ROOT / spec["build"]["context"], {k: str(v) for k, v in spec["build"].get("args", {}).items()}
