"""Schemathesis' own command line, as an outside client would run it, against a real server
(`python -m app.serve` on the tiny models): every check it has (`--checks all`), a bounded
number of examples per operation, derandomized. It must find no server error, no undocumented
status code, content type or header, and no body unlike its schema. The command is the one
docs/robustness.md gives; tests/robustness/schemathesis.toml holds its settings."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.deploy.support import Replica

CONFIG = Path(__file__).with_name("schemathesis.toml")
ST = Path(sys.executable).with_name("st")
MAX_EXAMPLES = 8


def test_schemathesis_finds_nothing_with_every_check(replicas: Callable[..., Replica], tmp_path: Path) -> None:
    server = replicas("schemathesis", max_n="16", max_k="100", max_steps="16", max_scale="4")
    command = [str(ST), "--config-file", str(CONFIG), "run", f"{server.url}/openapi.json", "--checks", "all"]
    command += ["--max-examples", str(MAX_EXAMPLES), "--seed", "1", "--generation-database", "none"]
    command += ["--workers", "1", "--no-color"]
    # In a scratch folder: Schemathesis keeps its own state in the working directory.
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    summary = run.stdout[run.stdout.index("SUMMARY") :]
    assert "Failures" not in summary and "Errors" not in summary, summary
    assert server.process.poll() is None  # still serving
