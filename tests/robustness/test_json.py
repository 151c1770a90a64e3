"""Malformed and hostile JSON bodies: every one is a 4xx whose message names what was wrong.

tests/app covers the first examples of most kinds (a short latent, NaN in decode, n=0, k=0,
an unknown model or label, broken JSON); these extend them to every endpoint and to the
extremes. Every case goes through `assert_error`: status, message, and no leaked trace or path.
"""

from __future__ import annotations

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.robustness.checks import assert_error

LATENT = [0.0, 0.5, -0.5, 1.0]  # tiny-vae's latent_dim is 4
PAIR = [LATENT, LATENT[::-1]]
HUGE = 10**30
JSON = {"Content-Type": "application/json"}


def b64(content: bytes) -> str:
    return base64.b64encode(content).decode()


def tiny_png() -> str:
    buffer = io.BytesIO()
    Image.new("L", (2, 2)).save(buffer, format="PNG")
    return b64(buffer.getvalue())


TINY_PNG = tiny_png()


CASES = [
    # Wrong types.
    ("/v1/sample", {"n": "many"}, 422,
     "n: Input should be a valid integer, unable to parse string as an integer (got 'many')"),
    ("/v1/sample", {"n": 1.5}, 422,
     "n: Input should be a valid integer, got a number with a fractional part (got 1.5)"),
    ("/v1/sample", {"temperature": [1]}, 422, "temperature: Input should be a valid number"),
    ("/v1/decode", {"latents": "abc"}, 422, "latents: Input should be a valid list (got 'abc')"),
    ("/v1/decode", {"latents": LATENT}, 422, "latents[0]: Input should be a valid list (got 0.0)"),
    ("/v1/decode", {"latents": [LATENT], "model": 5}, 422, "model: Input should be a valid string (got 5)"),
    ("/v1/interpolate", {"latents": PAIR, "method": 3}, 422, "method: Input should be 'slerp' or 'lerp' (got 3)"),
    ("/v1/score", {"images": "abc"}, 422, "images: Input should be a valid array (got 'abc')"),
    ("/v1/score", {"images": ["x"], "k": "lots"}, 422, "k: Input should be a valid integer"),
    ("/v1/encode", {"images": ["x"], "labels": {"a": 1}}, 422, "labels: Input should be a valid array"),
    # Missing fields.
    ("/v1/decode", {}, 422, "latents: required"),
    ("/v1/decode", {"labels": [1]}, 422, "latents: required"),
    # Extra fields.
    ("/v1/sample", {"n": 1, "colour": "red"}, 422, "colour: unknown field"),
    ("/v1/score", {"images": ["x"], "k": 5, "samples": 5}, 422, "samples: unknown field"),
    ("/v1/interpolate", {"latents": PAIR, "image": "x"}, 422, "image: unknown field"),
    # NaN, Infinity and huge numbers in latents, where the JSON parser lets them through.
    ("/v1/interpolate", '{"latents": [[0, 0, 0, NaN], [0, 0, 0, 0]]}', 422,
     "latents[0][3]: Input should be a finite number"),
    ("/v1/interpolate", '{"latents": [[0, 0, 0, 0], [0, 0, -Infinity, 0]]}', 422,
     "latents[1][2]: Input should be a finite number"),
    ("/v1/decode", '{"latents": [[0, 0, 0, 1e400]]}', 422, "latents[0][3]: Input should be a finite number (got inf)"),
    ("/v1/decode", {"latents": [[0, 0, 0, -1e9]]}, 422,
     "latents[0][3]: Input should be greater than or equal to -1000"),
    ("/v1/decode", {"latents": [[0, 0, 0, HUGE]]}, 422, "latents[0][3]: Input should be less than or equal to 1000"),
    ("/v1/sample", '{"temperature": NaN}', 422, "temperature: Input should be a finite number"),
    # The wrong latent length.
    ("/v1/interpolate", {"latents": [LATENT, [0, 0, 0]]}, 422,
     "latents[1]: has 3 values; model 'tiny-vae' has latent_dim 4"),
    ("/v1/decode", {"latents": [LATENT, LATENT + [0]]}, 422,
     "latents[1]: has 5 values; model 'tiny-vae' has latent_dim 4"),
    # Empty lists.
    ("/v1/decode", {"latents": [[]]}, 422, "latents[0]: has 0 values; model 'tiny-vae' has latent_dim 4"),
    ("/v1/interpolate", {"latents": []}, 422, "latents: give exactly 2 (start and end), got 0"),
    ("/v1/decode", {"model": "tiny-cvae", "latents": [LATENT], "labels": []}, 422, "labels: 0 labels for 1 latents"),
    ("/v1/encode", {"images": []}, 422, "images: no images; send them as multipart field `files` or JSON `images`"),
    # n, k, steps (and scale, nrow) of 0, negative or enormous.
    ("/v1/sample", {"n": -1}, 422, "n: Input should be greater than or equal to 1 (got -1)"),
    ("/v1/sample", {"n": HUGE}, 422, f"n: at most 20 allowed, got {HUGE}"),
    ("/v1/sample", {"nrow": 0}, 422, "nrow: Input should be greater than or equal to 1 (got 0)"),
    ("/v1/sample", {"scale": HUGE}, 422, f"scale: at most 16 allowed, got {HUGE}"),
    ("/v1/score", {"images": ["x"], "k": -5}, 422, "k: Input should be greater than or equal to 1 (got -5)"),
    ("/v1/score", {"images": [TINY_PNG], "k": HUGE}, 422, f"k: at most 50 allowed, got {HUGE}"),
    ("/v1/interpolate", {"latents": PAIR, "steps": 0}, 422,
     "steps: Input should be greater than or equal to 2 (got 0)"),
    ("/v1/interpolate", {"latents": PAIR, "steps": -3}, 422,
     "steps: Input should be greater than or equal to 2 (got -3)"),
    ("/v1/interpolate", {"latents": PAIR, "steps": HUGE}, 422, f"steps: at most 64 allowed, got {HUGE}"),
    # Unknown model or label, also absurdly long ones (echoed back shortened).
    ("/v1/interpolate", {"latents": PAIR, "model": "tiny"}, 404,
     "unknown model 'tiny'; available: tiny-cvae, tiny-vae"),
    ("/v1/decode", {"latents": [LATENT], "model": "m" * 100_000}, 404, "unknown model 'mmmmmmmmmmmm...mmmmmmmmmmmmm'"),
    ("/v1/sample", {"model": "tiny-cvae", "label": "Hat" * 10_000}, 422,
     "label: unknown label 'HatHatHatHat...tHatHatHatHat'"),
    ("/v1/sample", {"model": "tiny-cvae", "label": "9" * 5000}, 422,
     "label: unknown label '999999999999...9999999999999'"),
    ("/v1/sample", {"model": "tiny-cvae", "label": "²"}, 422, "label: unknown label '²' for model 'tiny-cvae'"),
    ("/v1/sample", {"model": "tiny-cvae", "label": -1}, 422, "label: unknown label -1 for model 'tiny-cvae'"),
    ("/v1/sample", {"model": "tiny-cvae", "label": 1.0}, 422,
     "label: a label is a class name (string) or index (integer) (got 1.0)"),
    # Seeds outside 0 .. 2^63 - 1 (a torch.Generator seed).
    ("/v1/sample", {"seed": 2**63}, 422, "seed: Input should be less than or equal to 9223372036854775807"),
    ("/v1/sample", {"seed": 2**64 + 1}, 422, "seed: Input should be less than or equal to 9223372036854775807"),
    ("/v1/sample", {"seed": -(2**63) - 1}, 422, "seed: Input should be greater than or equal to 0"),
    ("/v1/score", {"images": ["x"], "seed": 10**100}, 422,
     "seed: Input should be less than or equal to 9223372036854775807"),
    # Deeply nested: both JSON parsers (FastAPI's for decode, pydantic's for score) give up cleanly.
    ("/v1/decode", '{"latents": ' + "[" * 50_000 + "]" * 50_000 + "}", 422, "body: not valid JSON (nested too deeply)"),
    ("/v1/score", '{"images": ' + "[" * 50_000 + "]" * 50_000 + "}", 422,
     "body: not valid JSON (recursion limit exceeded"),
    ("/v1/decode", {"latents": [[[[[0]]]]]}, 422, "latents[0][0]: Input should be a valid number"),
    # Very long bodies under the 200 kB limit: a number of 5000 digits, 10000 latents.
    ("/v1/decode", '{"latents": [[' + "9" * 5000 + "]]}", 422, "body: not valid JSON (Exceeds the limit (4300 digits)"),
    ("/v1/score", '{"k": ' + "9" * 5000 + "}", 422, "body: not valid JSON (number out of range"),
    ("/v1/decode", {"latents": [[0]] * 10_000}, 422, "latents: at most 20 allowed, got 10000"),
    # Invalid base64.
    ("/v1/encode", {"images": ["a"]}, 422, "images[0]: not valid base64"),
    ("/v1/encode", {"images": ["data:image/png;base64,!!!!"]}, 422, "images[0]: not valid base64"),
    ("/v1/encode", {"images": ["ümlaut"]}, 422, "images[0]: not valid base64"),
    ("/v1/score", {"images": [b64(b"x"), "%%%"]}, 422, "images[1]: not valid base64"),  # all decoded first
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "detail"), CASES)
def test_bad_json_is_a_clear_4xx(client: TestClient, path: str, body: object, status: int, detail: str) -> None:
    raw = body if isinstance(body, str) else None
    response = client.post(path, content=raw, headers=JSON) if raw is not None else client.post(path, json=body)
    message = assert_error(response, status, detail)
    assert len(message) < 2000  # whatever came in, the message stays short


def test_thousands_of_bad_values_get_a_short_message(client: TestClient) -> None:
    response = client.post("/v1/decode", json={"latents": [["x"] * 64] * 64})
    message = assert_error(response, 422, "latents[0][0]: Input should be a valid number")
    assert message.endswith("; and 4086 more problems") and message.count(";") == 10


def test_bad_multipart_fields_are_named(client: TestClient, shirt: bytes) -> None:
    files = [("files", ("a.png", shirt, "image/png"))]
    assert_error(
        client.post("/v1/score", files=files, data={"k": "0"}), 422, "k: Input should be greater than or equal to 1"
    )
    assert_error(client.post("/v1/score", files=files, data={"foo": "1"}), 422, "foo: unknown field")
    assert_error(
        client.post("/v1/score", files=files, data={"seed": str(2**64)}), 422, "seed: Input should be less than"
    )
