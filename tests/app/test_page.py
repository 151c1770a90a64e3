"""The web page (app/static), driven in real headless Chromium against the real server.

The server is `uvicorn app.main:create_app --factory` on a free loopback port, serving the
shipped checkpoints; the browser is Debian's /usr/bin/chromium through Python playwright (no
browser download). The tests skip, saying why, where either is missing; `make test` installs
both. Running this file as a script retakes the README's screenshot:

    .venv/bin/python -m tests.app.test_page --screenshot docs/screenshot.png
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.deploy.support import free_port

try:
    from playwright.sync_api import Browser, Page, Playwright, sync_playwright
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # the skip below says what to install; the names only annotate
    sync_playwright = None
    Browser = Page = Playwright = object
    PlaywrightTimeout = TimeoutError

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = ROOT / "model" / "checkpoints"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
PREFIX = "/vae"
TIMEOUT_MS = 20_000  # generous: CI machines may be busy; a passing test takes a few seconds

pytestmark = [
    pytest.mark.skipif(
        sync_playwright is None, reason="the Python package playwright is not installed (pip install -e '.[test]')"
    ),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent: apt-get install chromium (`make test` installs it)"
    ),
]

# The page is ready when every section shows what it fetched at start-up, and the test
# images have ranked the latent sliders.
LOADED = """() => {
  const src = (id) => document.getElementById(id).getAttribute("src") || "";
  return document.querySelectorAll('#sample-grid img[src^="data:image/png"]').length > 0
    && src("encode-reconstruction").startsWith("data:image/png")
    && src("explore-image").startsWith("data:image/png")
    && document.querySelectorAll('#path img[src^="data:image/png"]').length > 0
    && document.getElementById("score-elbo").textContent !== "–"
    && document.getElementById("sliders").dataset.order === "activity";
}"""


# ---------------------------------------------------------------- the server


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the server was not ready within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def start_server(log: Path) -> tuple[subprocess.Popen, str]:
    """uvicorn serving the shipped checkpoints on a free loopback port, on one CPU thread."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("VAE_")}
    env.update(VAE_MODEL_DIR=str(CHECKPOINTS), VAE_DEVICE="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for attempt in range(3):  # another process may take the port between choosing and binding it
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1",
                 "--port", str(port), "--log-level", "warning"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_ready(url, process, log)
            return process, url
        except RuntimeError:
            stop(process)
            if attempt == 2 or "address already in use" not in log.read_text():
                raise
    raise AssertionError("unreachable")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_server(tmp_path_factory.mktemp("server") / "uvicorn.log")
    yield url
    stop(process)


# ---------------------------------------------------------------- a gateway in miniature

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class PrefixProxy:
    """Serves the app under PREFIX/ by stripping the prefix, as nginx's
    `location /vae/ { proxy_pass http://app/; }` does. Anything outside the prefix is a 404,
    and every path the browser asks for is recorded."""

    def __init__(self, upstream: str, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        self.upstream = upstream.removeprefix("http://")
        self.paths: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy.forward(self)

            do_POST = do_HEAD = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        self.paths.append(handler.path)
        if handler.path == self.prefix:
            handler.send_response(301)
            handler.send_header("Location", self.prefix + "/")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if not handler.path.startswith(self.prefix + "/"):
            handler.send_error(404, "outside the gateway's prefix")
            return
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
        connection = http.client.HTTPConnection(self.upstream, timeout=60)
        try:
            connection.request(handler.command, handler.path[len(self.prefix) :], body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        handler.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP | {"content-length"}:
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def proxy(server: str) -> Iterator[PrefixProxy]:
    gateway = PrefixProxy(server)
    yield gateway
    gateway.close()


# ---------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def driver() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(driver: Playwright) -> Iterator[Browser]:
    browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@dataclass
class Recorder:
    """What the page did: console errors, uncaught exceptions, failed or error requests."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    pending: int = 0  # requests sent and not yet finished

    def problems(self) -> list[str]:
        return self.console_errors + self.page_errors + self.failed

    def finished(self, _request: object) -> None:
        self.pending -= 1


def attach(page: Page) -> Recorder:
    record = Recorder()
    page.on("console", lambda m: record.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: record.page_errors.append(str(e)))
    page.on("requestfailed", lambda r: record.failed.append(f"{r.method} {r.url}: {r.failure}"))
    page.on(
        "response",
        lambda r: record.failed.append(f"{r.status} {r.request.method} {r.url}") if r.status >= 400 else None,
    )
    page.on("request", lambda r: (record.requests.append(r.url), setattr(record, "pending", record.pending + 1)))
    page.on("requestfinished", record.finished)
    page.on("requestfailed", record.finished)
    return record


# What the page shows, for the message when it does not finish loading.
PAGE_STATE = """() => ({
  samples: document.querySelectorAll('#sample-grid img[src]').length,
  reconstruction: Boolean(document.getElementById("encode-reconstruction").getAttribute("src")),
  explore: Boolean(document.getElementById("explore-image").getAttribute("src")),
  path: document.querySelectorAll('#path img').length,
  elbo: document.getElementById("score-elbo").textContent,
  sliders: document.getElementById("sliders").dataset.order,
  summary: document.getElementById("model-summary").textContent,
  errors: [...document.querySelectorAll(".error:not([hidden])")].map(e => e.textContent),
})"""


def wait_loaded(page: Page, record: Recorder) -> None:
    try:
        page.wait_for_function(LOADED)
    except PlaywrightTimeout:
        raise AssertionError(
            f"the page did not finish loading: {page.evaluate(PAGE_STATE)}; problems: {record.problems()}; "
            f"requests in flight: {record.pending}"
        ) from None
    wait_idle(page, record)


def wait_idle(page: Page, record: Recorder, quiet_ms: int = 300) -> None:
    """Until no request has been in flight for `quiet_ms` (debounced requests start late)."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    quiet_since = None
    while time.monotonic() < deadline:
        page.wait_for_timeout(50)
        if record.pending:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_ms / 1000:
            return
    raise AssertionError(f"the page kept {record.pending} requests in flight")


OpenPage = Callable[..., tuple[Page, Recorder]]


@pytest.fixture
def page_timeout_ms() -> int:
    """Playwright's default timeout for the pages open_page opens (a module may override it)."""
    return TIMEOUT_MS


@pytest.fixture
def page_ready() -> Callable[[Page, Recorder], None]:
    """What open_page waits for once the page is open (a module may override it)."""
    return wait_loaded


@pytest.fixture
def open_page(
    browser: Browser, server: str, page_timeout_ms: int, page_ready: Callable[[Page, Recorder], None]
) -> Iterator[OpenPage]:
    """open_page(url=server + "/", **context options) -> the loaded page and its Recorder."""
    contexts = []

    def opener(url: str | None = None, **options: object) -> tuple[Page, Recorder]:
        context = browser.new_context(**({"viewport": {"width": 1280, "height": 900}} | options))
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(page_timeout_ms)
        record = attach(page)
        page.goto(url or server + "/")
        page_ready(page, record)
        return page, record

    yield opener
    for context in contexts:
        context.close()


FIRST_TILE_IS = "src => document.querySelector('#sample-grid img').getAttribute('src') === src"
FIRST_TILE_IS_NOT = "src => document.querySelector('#sample-grid img').getAttribute('src') !== src"


def grid_sources(page: Page) -> list[str]:
    return page.eval_on_selector_all("#sample-grid img", "imgs => imgs.map(img => img.getAttribute('src'))")


def src(page: Page, selector: str) -> str:
    return page.get_attribute(selector, "src") or ""


def wait_src_change(page: Page, selector: str, old: str) -> str:
    page.wait_for_function(
        "([selector, old]) => {"
        " const now = document.querySelector(selector)?.getAttribute('src'); return now && now !== old; }",
        arg=[selector, old],
    )
    return src(page, selector)


def number(page: Page, selector: str) -> float:
    return float(page.inner_text(selector).replace("−", "-"))


def png_file(path: Path, size: tuple[int, int] = (60, 90)) -> Path:
    """A light garment-like shape on a transparent background, not square: the service fits,
    centres and greys it."""
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.polygon([(w * 0.3, 2), (w * 0.7, 2), (w * 0.95, h - 2), (w * 0.05, h - 2)], fill=(230, 200, 180, 255))
    image.save(path)
    return path


# ---------------------------------------------------------------- tests


def test_page_loads_without_console_errors(open_page: OpenPage, server: str) -> None:
    page, record = open_page()
    assert record.problems() == []
    assert page.title() == "vaeserve · latent-space explorer"
    # Everything came from the service itself: no CDN, nothing outside.
    assert record.requests and all(url.startswith(server + "/") for url in record.requests), record.requests
    assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == ["fashion-cvae", "fashion-vae"]
    assert page.input_value("#model") == "fashion-vae"
    assert "64 latent dimensions" in page.inner_text("#model-summary")
    # 16 real 28x28 images, decoded by the browser.
    sizes = page.eval_on_selector_all("#sample-grid img", "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes == [[28, 28]] * 16
    assert page.is_hidden("#sample-label-field")  # no classes for the unconditional model
    assert page.locator("#sliders .slider").count() == 64
    assert page.locator("#sliders .slider:visible").count() == 12


def test_sample_grid_renders_and_changes_with_the_seed(open_page: OpenPage) -> None:
    page, record = open_page()
    assert page.input_value("#seed") == "7"
    seven = grid_sources(page)
    assert len(seven) == 16 and len(set(seven)) == 16

    page.fill("#seed", "8")
    page.wait_for_function(FIRST_TILE_IS_NOT, arg=seven[0])
    eight = grid_sources(page)
    assert len(eight) == 16 and not set(eight) & set(seven)

    page.fill("#seed", "7")  # same seed, same images
    page.wait_for_function(FIRST_TILE_IS, arg=seven[0])
    assert grid_sources(page) == seven

    page.click("#new-seed")  # the service draws a seed and the page shows it
    page.wait_for_function("() => !['', '7'].includes(document.getElementById('seed').value)")
    page.wait_for_function(FIRST_TILE_IS_NOT, arg=seven[0])
    drawn, drawn_grid = page.input_value("#seed"), grid_sources(page)
    assert 0 <= int(drawn) < 2**63
    # The seed shown is exact (seeds go beyond JavaScript's 2^53), so it reproduces the grid.
    page.fill("#seed", "7")
    page.wait_for_function(FIRST_TILE_IS, arg=seven[0])
    page.fill("#seed", drawn)
    page.wait_for_function(FIRST_TILE_IS, arg=drawn_grid[0])
    assert grid_sources(page) == drawn_grid

    page.fill("#n", "4")
    page.wait_for_function("() => document.querySelectorAll('#sample-grid img').length === 4")
    assert record.problems() == []


def test_conditional_model_samples_the_chosen_class(open_page: OpenPage) -> None:
    page, record = open_page()
    page.select_option("#model", "fashion-cvae")
    page.wait_for_function("() => document.querySelectorAll('#sample-grid .caption:not([hidden])').length === 16")
    assert page.is_visible("#sample-label-field") and page.is_visible("#encode-label-field")
    page.select_option("#sample-label", "Sneaker")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#sample-grid .caption')].every(c => c.textContent === 'Sneaker')"
    )
    assert page.get_attribute("#sample-grid img", "alt") == "Sample 1 (Sneaker)"
    wait_idle(page, record)
    assert record.problems() == []


def test_an_upload_shows_its_reconstruction_and_scores(open_page: OpenPage, tmp_path: Path) -> None:
    page, record = open_page()
    before = src(page, "#encode-reconstruction")
    elbo_before = page.inner_text("#score-elbo")

    page.set_input_files("#file", str(png_file(tmp_path / "dress.png")))
    after = wait_src_change(page, "#encode-reconstruction", before)
    page.wait_for_function(
        "() => document.getElementById('encode-status').textContent.startsWith('Encoded “dress.png”')"
    )
    page.wait_for_function("old => document.getElementById('score-elbo').textContent !== old", arg=elbo_before)

    assert after.startswith("data:image/png;base64,")
    assert page.eval_on_selector("#encode-reconstruction", "i => [i.naturalWidth, i.naturalHeight]") == [28, 28]
    # The input as the model sees it: 28x28, the 60x90 upload fitted and centred.
    assert page.eval_on_selector("#encode-view", "i => [i.naturalWidth, i.naturalHeight]") == [28, 28]
    assert "60×90" in page.inner_text("#encode-status")
    # The five scores, consistent with one another.
    reconstruction, kl = number(page, "#score-reconstruction"), number(page, "#score-kl")
    elbo, nll, bpd = number(page, "#score-elbo"), number(page, "#score-nll"), number(page, "#score-bpd")
    assert reconstruction > 0 and kl > 0 and nll > 0
    assert elbo == pytest.approx(-(reconstruction + kl), abs=0.11)
    assert bpd == pytest.approx(nll / (784 * 0.6931471805599453), abs=2e-4)
    assert page.inner_text("#score-k") == "(k = 100)"
    # The posterior's bar chart: a mean and a variance bar per latent dimension.
    assert page.locator("#posterior-chart rect.mean").count() == 64
    assert page.locator("#posterior-chart rect.variance").count() == 64
    assert page.locator("#posterior-table tbody tr").count() == 64
    # It can be explored from here.
    page.click("#encode-explore")
    page.wait_for_function("() => document.getElementById('explore-status').textContent.startsWith('Encoded')")
    assert page.input_value("#explore-from") == "encoded"
    assert record.problems() == []


def test_drop_and_test_image_picker(open_page: OpenPage, tmp_path: Path) -> None:
    page, record = open_page()
    before = src(page, "#encode-reconstruction")
    data = list(png_file(tmp_path / "x.png", (40, 30)).read_bytes())
    page.evaluate(
        """bytes => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"}));
            const drop = new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true});
            document.getElementById("drop").dispatchEvent(drop);
        }""",
        data,
    )
    dropped = wait_src_change(page, "#encode-reconstruction", before)
    page.wait_for_function("() => document.getElementById('encode-status').textContent.includes('dropped.png')")

    # Keyboard: a test image is a button.
    page.focus('#examples button[title="Trouser"]')
    page.keyboard.press("Enter")
    wait_src_change(page, "#encode-reconstruction", dropped)
    assert page.get_attribute('#examples button[title="Trouser"]', "aria-pressed") == "true"
    assert "Trouser" in page.inner_text("#encode-status")
    assert record.problems() == []


def test_moving_a_slider_changes_the_decoded_image(open_page: OpenPage) -> None:
    page, record = open_page()
    decodes: list[dict] = []
    in_flight = {"now": 0, "max": 0}

    def started(request) -> None:
        if request.url.endswith("/v1/decode"):
            decodes.append(json.loads(request.post_data))
            in_flight["now"] += 1
            in_flight["max"] = max(in_flight["max"], in_flight["now"])

    def ended(request) -> None:
        if request.url.endswith("/v1/decode"):
            in_flight["now"] -= 1

    page.on("request", started)
    page.on("requestfinished", ended)
    page.on("requestfailed", ended)

    before = src(page, "#explore-image")
    slider = page.locator("#sliders input").first  # the most used dimension
    dim = int(slider.get_attribute("data-dim"))
    slider.focus()
    page.keyboard.press("End")  # keyboard: to +4
    after = wait_src_change(page, "#explore-image", before)
    assert page.inner_text("#explore-status").endswith("1 dimension moved")

    # Many quick moves: one request at a time, intermediate positions dropped, the last one wins.
    wait_idle(page, record)
    decodes.clear()
    in_flight["max"] = 0
    for _ in range(30):
        page.keyboard.press("ArrowLeft")
    page.wait_for_function("old => document.getElementById('explore-image').getAttribute('src') !== old", arg=after)
    wait_idle(page, record)
    value = float(slider.input_value())
    assert value == pytest.approx(4 - 30 * 0.05)
    assert in_flight["max"] == 1
    assert 1 <= len(decodes) < 30
    assert decodes[-1]["latents"][0][dim] == pytest.approx(value)
    assert page.inner_text(f"#sliders output[for='z-{dim}']") == f"{value:.2f}"

    page.click("#explore-reset")
    page.wait_for_function("() => !document.getElementById('explore-status').textContent.includes('moved')")
    assert record.problems() == []


def test_interpolation_path_between_two_samples(open_page: OpenPage) -> None:
    page, record = open_page()
    tiles = grid_sources(page)
    path = page.eval_on_selector_all("#path img", "imgs => imgs.map(i => i.getAttribute('src'))")
    assert len(path) == 10
    # The path's ends decode the two samples' own latents: the very same images.
    assert (path[0], path[-1]) == (tiles[0], tiles[1])

    page.fill("#steps", "5")
    page.wait_for_function("() => document.querySelectorAll('#path img').length === 5")
    page.select_option("#interp-b", "example-bag.png")
    page.wait_for_function(
        "old => document.querySelector('#path img:last-child')?.getAttribute('src') !== old", arg=tiles[1]
    )
    assert page.locator("#path figcaption").all_inner_texts() == ["t=0.00", "t=0.25", "t=0.50", "t=0.75", "t=1.00"]

    # From the sample grid, by keyboard: the third sample becomes the start.
    page.focus("#sample-grid .tile[tabindex='0']")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("() => document.activeElement.dataset.index") == "2"
    page.click("#sample-a")
    page.wait_for_function("tile => document.querySelector('#path img').getAttribute('src') === tile", arg=tiles[2])
    assert record.problems() == []


def test_api_errors_are_shown_in_the_page(open_page: OpenPage, tmp_path: Path) -> None:
    page, record = open_page()
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("these are notes, not a picture")
    page.set_input_files("#file", str(not_an_image))
    error = page.locator("#encode .error")
    error.wait_for(state="visible")
    assert re.search(r"The API answered 422: images\[0\]: not a PNG, JPEG, WebP, GIF or BMP image", error.inner_text())
    assert page.get_attribute("#encode .error", "role") == "alert"
    # Only the API's refusals were logged, and nothing threw.
    assert record.page_errors == []
    assert record.failed and all(problem.startswith("422 POST") for problem in record.failed)

    # Invalid input is caught in the page, before any request.
    page.fill("#n", "0")
    page.locator("#sample .error").wait_for(state="visible")
    assert page.inner_text("#sample .error").startswith("Images")

    # The error clears once a request succeeds.
    page.click('#examples button[title="Bag"]')
    error.wait_for(state="hidden")


def test_readable_on_a_phone(open_page: OpenPage) -> None:
    page, record = open_page(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    # Tiles and the explorer's image are big enough to see and to tap.
    width = page.eval_on_selector("#sample-grid .tile", "t => t.getBoundingClientRect().width")
    assert width >= 60
    assert page.eval_on_selector("#explore-image", "i => i.getBoundingClientRect().width") >= 150
    assert record.problems() == []


def test_works_under_a_path_prefix(open_page: OpenPage, proxy: PrefixProxy) -> None:
    page, record = open_page(proxy.url + PREFIX + "/")
    before = src(page, "#explore-image")
    page.locator("#sliders input").first.focus()
    page.keyboard.press("Home")
    wait_src_change(page, "#explore-image", before)
    wait_idle(page, record)

    assert record.problems() == []
    assert all(url.startswith(proxy.url + PREFIX + "/") for url in record.requests), record.requests
    assert all(path.startswith(PREFIX + "/") for path in proxy.paths), proxy.paths
    for path in (
        "/v1/models",
        "/v1/sample",
        "/v1/encode",
        "/v1/reconstruct",
        "/v1/score",
        "/v1/decode",
        "/v1/interpolate",
    ):
        assert any(p.startswith(PREFIX + path) for p in proxy.paths), path
    assert any(p.startswith(PREFIX + "/examples/") for p in proxy.paths)


# ---------------------------------------------------------------- the README's screenshot


def screenshot(path: Path) -> None:
    """Start the server, load the page as a desktop browser would and save a full-page PNG."""
    log = Path("/tmp") / f"vaeserve-screenshot-{os.getpid()}.log"
    process, url = start_server(log)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900}, color_scheme="light")
            page.set_default_timeout(TIMEOUT_MS)
            record = attach(page)
            page.goto(url + "/")
            wait_loaded(page, record)
            # A livelier page than the defaults: an encoded test image, explored and interpolated.
            page.click('#examples button[title="Ankle boot"]')
            page.wait_for_function("() => document.getElementById('encode-status').textContent.includes('Ankle boot')")
            wait_idle(page, record)
            page.click("#encode-explore")
            page.locator("#sliders input").first.fill("-1.5")
            page.select_option("#interp-a", "example-sandal.png")
            page.select_option("#interp-b", "encoded")
            wait_idle(page, record)
            page.evaluate("() => window.scrollTo(0, 0)")
            if record.problems():
                raise SystemExit(f"the page had problems: {record.problems()}")
            png = page.screenshot(full_page=True)
            browser.close()
    finally:
        stop(process)
    image = Image.open(io.BytesIO(png))
    image.convert("RGB").save(path, optimize=True)
    print(f"wrote {path} ({image.width}x{image.height})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screenshot", type=Path, required=True, help="where to write the PNG")
    screenshot(parser.parse_args().screenshot)
