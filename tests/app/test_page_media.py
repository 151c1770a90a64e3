"""The page with a video and an audio autoencoder selected, in real headless Chromium against
the real server: a prior draw decodes to a <video> (an mp4) or an <audio> (a WAV), an uploaded
clip or sound to its reconstruction beside it, and Chromium loads each (its readyState, duration
and frame size), with no console errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.app.test_page import (  # noqa: F401  (browser, driver and open_page are fixtures)
    OpenPage,
    browser,
    driver,
    open_page,
    pytestmark,
)
from tests.deploy.support import Replica
from tests.diffusers_audio_models import SAMPLE_RATE, TINY_AUDIO
from tests.diffusers_models import START_TIMEOUT, save
from tests.diffusers_video_models import TINY_VIDEO
from tests.media_files import clip

pytest.importorskip("diffusers")
av = pytest.importorskip("av")  # the media extra
soundfile = pytest.importorskip("soundfile")

FPS = 16  # tiny-wan's (Wan's default)
# What a loaded element says of itself: HAVE_CURRENT_DATA (2) or more, its duration, its size.
LOADED = """node => node && node.readyState >= 2 && !node.error"""
FACTS = "node => [node.readyState, node.duration, node.videoWidth ?? null, node.videoHeight ?? null]"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """tiny-wan (8x in space, 4x in time, 16 fps) and tiny-oobleck (stereo at 16 kHz)."""
    folder = tmp_path_factory.mktemp("media-models")
    save(folder, {"tiny-wan": TINY_VIDEO["tiny-wan"], "tiny-oobleck": TINY_AUDIO["tiny-oobleck"]})
    settings = {"VAE_TORCH_THREADS": "1", "HF_HUB_OFFLINE": "1", "VAE_DEFAULT_MODEL": "tiny-wan"}
    replica = Replica(folder, tmp_path_factory.mktemp("logs") / "server.log", settings)
    try:
        replica.wait_ready(timeout=START_TIMEOUT)
        yield replica.url
    finally:
        replica.stop()


@pytest.fixture
def page_timeout_ms() -> int:
    return 60_000


@pytest.fixture
def page_ready() -> Callable[[object, object], None]:
    """The model list loaded (a video or audio model shows no sample grid to wait for)."""
    enabled = "() => !document.getElementById('model').disabled"
    return lambda page, record: page.wait_for_function(enabled)  # type: ignore[attr-defined]


def loaded(page: object, selector: str) -> list[float]:
    """Waits until the element at `selector` has loaded its file; its readyState, duration and size."""
    page.wait_for_function(f"() => ({LOADED})(document.querySelector({selector!r}))")  # type: ignore[attr-defined]
    return page.eval_on_selector(selector, FACTS)  # type: ignore[attr-defined]


def clip_file(path: Path, frames: int = 9) -> Path:
    """An mp4 (H.264) or, named .gif, a GIF of 24x16 frames."""
    path.write_bytes(clip(frames, kind=path.suffix.removeprefix("."), seed=0))
    return path


def sound_file(path: Path, samples: int = 1600) -> Path:
    """A stereo WAV at the model's rate: a 440 Hz tone and its octave."""
    t = np.arange(samples)[:, None] / SAMPLE_RATE
    soundfile.write(str(path), 0.5 * np.sin(2 * np.pi * 440 * t * np.array([1, 2])), SAMPLE_RATE, subtype="PCM_16")
    return path


def test_chromium_plays_what_the_service_makes(open_page: OpenPage) -> None:
    """Debian's Chromium plays H.264 in mp4 and WAV, the service's answers: no second format is needed."""
    page, _ = open_page()
    can_play = "type => document.createElement(type.split('/')[0]).canPlayType(type)"
    assert page.evaluate(can_play, 'video/mp4; codecs="avc1.42E01E"') == "probably"
    assert page.evaluate(can_play, "audio/wav") != ""


def test_a_video_model_draws_and_reconstructs_videos(open_page: OpenPage, tmp_path: Path) -> None:
    page, record = open_page()
    assert page.eval_on_selector("#model", "s => s.value") == "tiny-wan"
    assert "videos of 1 + 4k frames at 16 fps" in page.inner_text("#model-summary")
    # The prior draw: 2 latent frames of 4x4 decode to 5 frames of 32x32 at the model's 16 fps.
    state, duration, width, height = loaded(page, "#sample-media video")
    assert state >= 2 and duration == pytest.approx(5 / FPS, abs=1e-3) and (width, height) == (32, 32)
    assert not page.is_visible("#sample-grid") and not page.is_visible("#examples-field")
    drawn = page.eval_on_selector("#sample-media video", "v => v.src")
    page.fill("#seed", "8")
    page.wait_for_function(f"() => document.querySelector('#sample-media video')?.src !== {drawn!r}")
    assert loaded(page, "#sample-media video")[2:] == [32, 32]

    page.set_input_files("#file", str(clip_file(tmp_path / "clip.mp4")))
    page.wait_for_function("() => document.getElementById('encode-status').textContent === 'Encoded “clip.mp4”.'")
    original = loaded(page, "#encode-original-media video")
    reconstruction = loaded(page, "#encode-reconstruction-media video")
    assert original[1] == pytest.approx(9 / 8, abs=1e-3) and original[2:] == [24, 16]  # as given, 8 fps
    assert reconstruction[1] == pytest.approx(9 / FPS, abs=1e-3) and reconstruction[2:] == [24, 16]
    assert 0 < float(page.inner_text("#score-mse")) < 1 and float(page.inner_text("#score-kl")) > 0
    # A GIF clip shows as the image browsers animate; its reconstruction is an mp4 all the same.
    before = page.eval_on_selector("#encode-reconstruction-media video", "v => v.src")
    page.set_input_files("#file", str(clip_file(tmp_path / "clip.gif")))
    page.wait_for_function(f"() => document.querySelector('#encode-reconstruction-media video')?.src !== {before!r}")
    page.wait_for_function("() => document.querySelector('#encode-original-media img')?.complete")
    assert page.eval_on_selector("#encode-original-media img", "i => [i.naturalWidth, i.naturalHeight]") == [24, 16]
    assert loaded(page, "#encode-reconstruction-media video")[2:] == [24, 16]
    assert record.problems() == []


def test_an_audio_model_draws_and_reconstructs_sounds(open_page: OpenPage, tmp_path: Path) -> None:
    page, record = open_page()
    page.select_option("#model", "tiny-oobleck")
    assert "2-channel audio at 16000 Hz" in page.inner_text("#model-summary")
    state, duration, *_ = loaded(page, "#sample-media audio")  # one second
    assert state >= 2 and duration == pytest.approx(1.0, abs=1e-3)
    assert page.eval_on_selector("#file", "f => f.accept") == "audio/wav,audio/flac"

    page.set_input_files("#file", str(sound_file(tmp_path / "tone.wav")))
    page.wait_for_function("() => document.getElementById('encode-status').textContent === 'Encoded “tone.wav”.'")
    assert loaded(page, "#encode-original-media audio")[1] == pytest.approx(0.1, abs=1e-3)
    assert loaded(page, "#encode-reconstruction-media audio")[1] == pytest.approx(0.1, abs=1e-3)
    assert 0 < float(page.inner_text("#score-mse")) < 1
    # Back to the video model: its draw, no sound left over.
    page.select_option("#model", "tiny-wan")
    loaded(page, "#sample-media video")
    assert page.query_selector("#encode-reconstruction-media audio") is None
    assert record.problems() == []
