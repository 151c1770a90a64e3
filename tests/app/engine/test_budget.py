"""The default memory budget: the cgroup's limit (v2 and v1, the tightest of a cgroup and its
ancestors), the machine's memory, a headroom and what the process holds; cgroup files faked in
a temporary folder."""

from __future__ import annotations

from pathlib import Path

from app.engine.budget import HEADROOM, NO_LIMIT, cgroup_limit, default_budget, machine_memory

GiB = 1 << 30
V1_UNLIMITED = "9223372036854771712"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_cgroup_v2_limit_is_the_tightest_of_the_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "cpu memory pids")
    write(root / "system.slice" / "memory.max", str(4 * GiB))
    write(root / "system.slice" / "vae.scope" / "memory.max", "max")
    write(tmp_path / "proc", "0::/system.slice/vae.scope")
    assert cgroup_limit(tmp_path / "proc", root) == 4 * GiB
    write(root / "system.slice" / "vae.scope" / "memory.max", str(GiB))
    assert cgroup_limit(tmp_path / "proc", root) == GiB


def test_cgroup_v1_limit_and_a_container_whose_own_cgroup_is_the_mounted_root(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    # A container: /proc/self/cgroup names the host's path, the mount is the container's cgroup.
    write(root / "memory" / "memory.limit_in_bytes", str(2 * GiB))
    write(tmp_path / "proc", "12:pids:/docker/abc\n4:memory:/docker/abc\n0::/docker/abc")
    assert cgroup_limit(tmp_path / "proc", root) == 2 * GiB
    write(root / "memory" / "memory.limit_in_bytes", V1_UNLIMITED)
    assert cgroup_limit(tmp_path / "proc", root) is None


def test_no_cgroup_memory_controller_or_no_proc_file_is_no_limit(tmp_path: Path) -> None:
    write(tmp_path / "proc", "1:cpu,cpuacct:/\n0::/")
    assert cgroup_limit(tmp_path / "proc", tmp_path / "cgroup") is None
    assert cgroup_limit(tmp_path / "missing", tmp_path / "cgroup") is None


def test_machine_memory_is_memtotal(tmp_path: Path) -> None:
    write(tmp_path / "meminfo", "MemTotal:       24576000 kB\nMemFree:         1000 kB")
    assert machine_memory(tmp_path / "meminfo") == 24576000 * 1024


def test_the_default_budget_is_a_processs_share_less_headroom_and_what_it_holds() -> None:
    assert default_budget(10 * GiB, GiB) == int(10 * GiB * (1 - HEADROOM)) - GiB
    assert default_budget(10 * GiB, GiB, processes=3) == int(10 * GiB * (1 - HEADROOM)) // 3 - GiB
    assert default_budget(GiB, 2 * GiB) == 0  # holds more than it may: every request is refused
    assert default_budget(None, GiB) == NO_LIMIT
