"""The page with diffusers' autoencoders selected, in real headless Chromium against the real
server: an upload is encoded and reconstructed, the latent channels show as images, the scores
are the ones the model defines, and what it cannot do says so instead of failing."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app.test_page import (  # noqa: F401  (browser, driver, open_page and page_ready are fixtures)
    CHECKPOINTS,
    OpenPage,
    browser,
    driver,
    open_page,
    page_ready,
    png_file,
    pytestmark,
    src,
    wait_loaded,
    wait_src_change,
)
from tests.deploy.support import Replica

# Start-up loads and calibrates every model; generous, for a busy CI machine.
START_TIMEOUT = 300.0
from tests.diffusers_models import save_autoencoders

pytest.importorskip("diffusers")

CHANNELS = "n => document.querySelectorAll('#posterior-chart .channels img[src^=\"data:image/png\"]').length === n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The shipped fashion-vae (the default) beside tiny-kl and tiny-taesd."""
    folder = tmp_path_factory.mktemp("page-models")
    shutil.copy(CHECKPOINTS / "fashion-vae.safetensors", folder)
    save_autoencoders(folder)
    replica = Replica(folder, tmp_path_factory.mktemp("logs") / "server.log", {"VAE_TORCH_THREADS": "1"})
    try:
        replica.wait_ready(timeout=START_TIMEOUT)
        yield replica.url
    finally:
        replica.stop()


@pytest.fixture
def page_timeout_ms() -> int:
    return 60_000  # 256x256 encodes on a busy CPU


def visible(page: object, selector: str) -> bool:
    return page.is_visible(selector)  # type: ignore[attr-defined]


def test_a_diffusers_model_encodes_and_reconstructs_an_upload(open_page: OpenPage, tmp_path: Path) -> None:
    page, record = open_page()
    before = src(page, "#encode-reconstruction")
    page.select_option("#model", "tiny-kl")
    page.wait_for_function(CHANNELS, arg=4)  # the first test image, encoded by tiny-kl
    wait_src_change(page, "#encode-reconstruction", before)
    assert "4-channel latents at 1/2" in page.inner_text("#model-summary")
    # Explore and Interpolate say why they are not there; Sample draws from the KL prior.
    assert "too many numbers for sliders" in page.inner_text("#explore .unavailable")
    assert not visible(page, "#sliders") and not visible(page, "#interp-a")
    page.wait_for_function("() => document.querySelectorAll('#sample-grid img[src^=\"data:image/png\"]').length > 0")

    before = src(page, "#encode-reconstruction")
    page.set_input_files("#file", str(png_file(tmp_path / "photo.png")))
    wait_src_change(page, "#encode-reconstruction", before)
    page.wait_for_function(
        "() => document.getElementById('encode-status').textContent.startsWith('Encoded “photo.png”')"
    )
    # 60x90 scaled to 256 pixels high, each side cut to a multiple of 2; reconstructed at that size.
    size = "i => [i.naturalWidth, i.naturalHeight]"
    assert page.eval_on_selector("#encode-view", size) == [170, 256]
    assert page.eval_on_selector("#encode-reconstruction", size) == [170, 256]
    assert page.eval_on_selector("#posterior-chart .channels img", size) == [85, 128]  # a latent channel
    # What AutoencoderKL defines: KL and the reconstruction error, no nats, ELBO or NLL.
    assert float(page.inner_text("#score-kl")) > 0 and 0 < float(page.inner_text("#score-mse")) < 1
    assert float(page.inner_text("#score-psnr")) > 0
    assert not visible(page, "#score-elbo-row") and visible(page, "#score-mse-row")
    assert record.problems() == []


def test_a_model_without_a_prior_says_so(open_page: OpenPage) -> None:
    page, record = open_page()
    page.select_option("#model", "tiny-taesd")
    page.wait_for_function(CHANNELS, arg=4)
    assert "has no prior p(z) to sample from" in page.inner_text("#sample .unavailable")
    assert not visible(page, "#sample-form")
    page.wait_for_function("() => document.getElementById('score-mse').textContent !== '–'")
    assert page.inner_text("#score-kl") == "–"  # a deterministic encoder: no KL
    # Back to the project's VAE: every section as before.
    page.select_option("#model", "fashion-vae")
    page.wait_for_function("() => document.querySelectorAll('#posterior-chart rect.mean').length === 64")
    assert visible(page, "#sliders") and visible(page, "#sample-form") and visible(page, "#score-elbo-row")
    assert record.problems() == []
