"""Settings-derived facts: the torch thread count from the usable cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import app.config
from app.config import Settings, torch_threads, usable_cores

def test_torch_threads_leave_each_worker_a_core_for_its_event_loop(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    monkeypatch.setattr(app.config, "usable_cores", lambda: usable_cores(tmp_path / "absent"))
    defaults = settings.model_copy(update={"torch_threads": None})
    assert torch_threads(defaults) == 7
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    assert torch_threads(defaults) == 1
    assert torch_threads(settings) == 1  # VAE_TORCH_THREADS wins
    quota = tmp_path / "cpu.max"
    for text, cores in (("max 100000", 8), ("300000 100000", 3), ("150000 100000", 2), ("50000 100000", 1)):
        quota.write_text(text + "\n")
        assert usable_cores(quota) == cores
