"""Long work on the page, in real headless Chromium against the real server: once a model's
sampling took longer than a moment, the next goes through the jobs API and shows a progress
bar with a cancel button; a cancelled job says so, a finished one shows its images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app.test_page import (  # noqa: F401  (browser, driver, open_page and its settings are fixtures)
    OpenPage,
    browser,
    driver,
    open_page,
    page_ready,
    page_timeout_ms,
    pytestmark,
)
from tests.deploy.support import Replica

SAMPLES = '() => document.querySelectorAll("#sample-grid img[src^=\\"data:image/png\\"]").length'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[str]:
    """The tiny models, each decode pass (one latent) slowed by tests/slow_backend.py."""
    settings = {"VAE_TORCH_THREADS": "1", "VAE_BACKENDS": "tests.slow_backend:family", "VAE_DEFAULT_MODEL": "tiny-vae"}
    replica = Replica(model_dir, tmp_path_factory.mktemp("logs") / "server.log", settings)
    try:
        replica.wait_ready()
        yield replica.url
    finally:
        replica.stop()


SAMPLE_JOB = '#jobs .job[data-path="v1/sample"]'


def test_long_sampling_shows_progress_and_can_be_cancelled(open_page: OpenPage) -> None:  # noqa: F811
    page, record = open_page()  # the first 16 samples, one decode pass each: longer than a moment
    assert page.evaluate(SAMPLES) == 16
    page.eval_on_selector("#n", "n => { n.value = 64; }")  # no input event: the click alone asks
    page.click("#sample-form button[type=submit]")
    page.wait_for_function("s => document.querySelector(s + ' progress')?.value >= 2", arg=SAMPLE_JOB)
    assert page.inner_text(SAMPLE_JOB + " .job-count").endswith("of 64 passes")
    page.click(SAMPLE_JOB + " button")
    page.wait_for_function("s => !document.querySelector(s)", arg=SAMPLE_JOB)
    page.wait_for_function("() => document.querySelector('#sample .error').textContent.includes('Cancelled')")
    assert page.evaluate(SAMPLES) == 16  # the cancelled job's images never came

    page.eval_on_selector("#n", "n => { n.value = 9; }")
    page.click("#sample-form button[type=submit]")
    page.wait_for_selector(SAMPLE_JOB + " progress")
    page.wait_for_function(f"() => ({SAMPLES})() === 9")
    assert page.query_selector(SAMPLE_JOB) is None
    assert page.is_hidden("#sample .error")
    assert record.problems() == []
