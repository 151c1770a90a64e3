"""The default memory budget of the requests (VAE_MEMORY_BUDGET unset): what the device or the
cgroup allows this process, less a headroom and what it holds once its models are loaded."""

from __future__ import annotations

import re
from pathlib import Path

import torch

# Of the limit, kept for what the estimates do not count: request bodies being read, answers
# being encoded (PNG, mp4) and written, the HTTP side.
HEADROOM = 0.1
# cgroup v1 writes "no limit" as the largest page-aligned 64-bit number; anything this large is none.
NO_LIMIT = 1 << 62
PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
MEMINFO = Path("/proc/meminfo")


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdecimal() and int(text) < NO_LIMIT else None  # v2 "max": none


def cgroup_limit(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> int | None:
    """The tightest memory limit on this process's cgroup and its ancestors, bytes: cgroup v2's
    memory.max, v1's memory.limit_in_bytes (podman/docker --memory, a systemd MemoryMax=,
    Kubernetes limits); None without one. In a container the cgroup's own folder is often
    mounted as the root while /proc/self/cgroup names the host's path: walking up finds it."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and not controllers:  # v2: the unified hierarchy
            base = root if (root / "cgroup.controllers").exists() else root / "unified"
            name = "memory.max"
        elif "memory" in controllers.split(","):
            base, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        folder = base / path.lstrip("/")
        while True:
            limit = _read_limit(folder / name)
            if limit is not None:
                limits.append(limit)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return min(limits, default=None)


def machine_memory(meminfo: Path = MEMINFO) -> int | None:
    found = re.search(r"^MemTotal:\s+(\d+) kB", meminfo.read_text(), re.MULTILINE) if meminfo.exists() else None
    return int(found.group(1)) * 1024 if found else None


def memory_limit(device: torch.device) -> int | None:
    """The memory this process may use: the GPU's on CUDA, else the tightest of its cgroup's
    limit and the machine's memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    found = [limit for limit in (cgroup_limit(), machine_memory()) if limit is not None]
    return min(found, default=None)


def default_budget(limit: int | None, held: int, processes: int = 1) -> int:
    """This process's share of `limit` (`processes` serve under it: uvicorn workers) less the
    headroom and the `held` bytes of its loaded models; no limit known: no bound."""
    if limit is None:
        return NO_LIMIT
    return max(0, int(limit * (1 - HEADROOM)) // processes - held)
