"""The Dockerfile and docker-compose.yml parse and say what they must. No Docker engine runs
here, so the parts they name are checked directly: the health check command runs against a
real replica, and `docker compose config` validates the file where the compose CLI exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable

import pytest

from app.config import Settings
from tests.deploy.support import ROOT, Replica, compose, compose_value

SETTINGS = {f"VAE_{name.upper()}" for name in Settings.model_fields}
TEMPLATE_NAMES = set(re.findall(r"\$\{(VAE_[A-Z_]+)\}", (ROOT / "deploy" / "nginx.conf.template").read_text()))


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), comments dropped and continuations joined."""
    lines = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(word.upper(), rest.strip()) for word, rest in (line.split(None, 1) for line in text.splitlines() if line)]


def runtime_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    pairs = " ".join(rest for word, rest in stage if word == "ENV")
    return dict(re.findall(r"(\w+)=(\S+)", pairs))


def torch_pin() -> str:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d.split("==")[1] for d in dependencies if d.startswith("torch=="))


def test_dockerfile_builds_in_two_slim_stages_with_cpu_torch_by_default() -> None:
    steps = instructions()
    stages = [rest for word, rest in steps if word == "FROM"]
    assert stages == [
        "python:${PYTHON_VERSION}-slim-bookworm AS build",
        "python:${PYTHON_VERSION}-slim-bookworm AS runtime",
    ]
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    assert args["TORCH_VARIANT"] == "cpu"
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/${TORCH_VARIANT}"
    assert args["TORCH_VERSION"] == torch_pin()  # the same PyTorch as pyproject.toml pins
    runs = [rest for word, rest in steps if word == "RUN"]
    assert 'pip install --no-deps --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"' in runs
    assert ("COPY", "--from=build /opt/venv /opt/venv") in runtime_stage()


def test_the_image_runs_as_a_non_root_user() -> None:
    stage = runtime_stage()
    users = [rest for word, rest in stage if word == "USER"]
    assert users == ["10001:10001"]
    assert any("useradd --system --uid 10001" in rest for word, rest in stage if word == "RUN")


def test_the_image_is_configured_only_by_vae_settings() -> None:
    env = env_of(runtime_stage())
    assert {name for name in env if name.startswith("VAE_")} <= SETTINGS
    assert set(env) - SETTINGS == {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
    assert (env["VAE_HOST"], env["VAE_PORT"]) == ("0.0.0.0", "8000")
    assert ("EXPOSE", env["VAE_PORT"]) in runtime_stage()


def test_the_command_drains_on_sigterm() -> None:
    stage = runtime_stage()
    assert ("STOPSIGNAL", "SIGTERM") in stage
    commands = [json.loads(rest) for word, rest in stage if word == "CMD"]
    # Exec form: the server itself is PID 1 and gets the signal (tests/deploy/test_shutdown.py).
    assert commands == [["python", "-m", "app.serve"]]


def test_the_health_check_probes_readyz_without_curl(replica_factory: Callable[..., Replica]) -> None:
    healthcheck = next(rest for word, rest in runtime_stage() if word == "HEALTHCHECK")
    options, command = healthcheck.split(" CMD ", 1)
    assert "--start-period=" in options
    argv = json.loads(command)
    assert argv[0] == "python" and "/readyz" in argv[-1] and "curl" not in command
    replica = replica_factory()
    probe = [sys.executable, *argv[1:]]
    ready = subprocess.run(probe, env={"VAE_PORT": str(replica.port)}, capture_output=True, timeout=30)
    assert ready.returncode == 0, ready.stderr
    replica.stop()
    gone = subprocess.run(probe, env={"VAE_PORT": str(replica.port)}, capture_output=True, timeout=30)
    assert gone.returncode != 0


def test_dockerignore_keeps_training_state_out() -> None:
    rules = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!app/", "!model/"} <= set(rules)
    assert {"**/*.state.safetensors", "**/*.tmp", "**/__pycache__"} <= set(rules)


def test_compose_puts_scalable_replicas_behind_the_gateway() -> None:
    services = compose()["services"]
    assert set(services) == {"vae", "vae-gpu", "gateway", "redis"}
    replica, gateway = services["vae"], services["gateway"]
    assert replica["build"]["context"] == "."
    assert replica["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert "ports" not in replica and "container_name" not in replica  # else --scale vae=N clashes
    assert replica["expose"] == ["8000"]
    assert gateway["ports"] == ["${VAE_GATEWAY_PORT:-8080}:8080"]
    assert gateway["depends_on"] == {"vae": {"condition": "service_healthy"}}
    assert "./deploy/nginx.conf.template:/etc/nginx/templates/default.conf.template:ro" in gateway["volumes"]
    version = tuple(int(n) for n in re.search(r"nginx:([\d.]+)", gateway["image"]).group(1).split("."))
    assert version >= (1, 27, 3), "the upstream `resolve` parameter needs nginx 1.27.3+"


def test_compose_environment_names_real_settings() -> None:
    services = compose()["services"]
    for name in ("vae", "vae-gpu"):
        env = services[name]["environment"]
        assert set(env) <= SETTINGS, f"{name}: not settings: {set(env) - SETTINGS}"
        assert float(services[name]["stop_grace_period"].removesuffix("s")) > float(
            compose_value(env["VAE_SHUTDOWN_TIMEOUT"])
        ), "Docker would SIGKILL before in-flight requests finish"
    gateway_env = services["gateway"]["environment"]
    assert gateway_env["NGINX_ENVSUBST_FILTER"] == "^VAE_"
    assert TEMPLATE_NAMES == {name for name in gateway_env if name.startswith("VAE_")}, "every name is filled in"
    assert gateway_env["VAE_ROOT_PATH"] == services["vae"]["environment"]["VAE_ROOT_PATH"]
    assert services["gateway"]["ports"][0].endswith(":" + gateway_env["VAE_GATEWAY_LISTEN"])


def test_compose_keeps_jobs_in_its_redis_on_the_project_network() -> None:
    services = compose()["services"]
    redis = services["redis"]
    assert "ports" not in redis and redis["expose"] == ["6379"]  # the replicas' alone
    for name in ("vae", "vae-gpu"):
        assert compose_value(services[name]["environment"]["VAE_JOB_STORE"]) == "redis://redis:6379/0"


def test_the_gpu_profile_adds_nvidia_replicas_to_the_same_pool() -> None:
    services = compose()["services"]
    gpu = services["vae-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["TORCH_VARIANT"].startswith("${VAE_TORCH_VARIANT:-cu")
    assert gpu["environment"]["VAE_DEVICE"] == "cuda"
    assert "vae" in gpu["networks"]["default"]["aliases"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    # A service outside every profile must not depend on one inside a profile: an invalid project.
    for name, service in services.items():
        if "profiles" not in service:
            assert all("profiles" not in services[dep] for dep in service.get("depends_on", {})), name


def compose_cli() -> list[str] | None:
    """`docker compose` (the plugin) or a v2 `docker-compose`, whichever is installed."""
    candidates = [["docker", "compose"]] if shutil.which("docker") else []
    candidates += [["docker-compose"]] if shutil.which("docker-compose") else []
    for cli in candidates:
        version = subprocess.run([*cli, "version"], capture_output=True, text=True, timeout=30)
        if version.returncode == 0 and re.search(r"v?2\.\d+", version.stdout):
            return cli
    return None


@pytest.mark.skipif(compose_cli() is None, reason="no Docker Compose v2 CLI here (docker compose / docker-compose)")
@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]], ids=["default", "gpu"])
def test_docker_compose_config_accepts_the_file(profile: list[str]) -> None:
    result = subprocess.run(
        [*compose_cli(), "-f", str(ROOT / "docker-compose.yml"), *profile, "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_the_readme_lists_every_setting() -> None:
    section = (ROOT / "README.md").read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    assert set(re.findall(r"^\| `(VAE_[A-Z_]+)` \|", section, re.MULTILINE)) == SETTINGS
