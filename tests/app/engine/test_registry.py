"""What a model needs from a request (`LoadedModel.checked`): every way a request can miss it is
the client's error, named, before the request can join a batch."""

from __future__ import annotations

import numpy as np
import pytest

from app.engine.backend import ImageSpec
from app.engine.backends.vae import VAEBackend
from app.engine.errors import InvalidInput, NotSupported
from app.engine.registry import LoadedModel
from model import VAE
from tests.app.engine.toy_backend import ToyBackend


@pytest.fixture(scope="module")
def cvae_model(cvae: VAE) -> LoadedModel:
    return LoadedModel("tiny-cvae", VAEBackend(cvae), "")


@pytest.fixture(scope="module")
def vae_model(vae: VAE) -> LoadedModel:
    return LoadedModel("tiny-vae", VAEBackend(vae), "")


def images(rows: int, height: int = 28, width: int = 28, channels: int = 1) -> np.ndarray:
    return np.full((rows, channels, height, width), 0.5, np.float64)


def test_what_passes_comes_back_as_float32_and_int64(cvae_model: LoadedModel, vae_model: LoadedModel) -> None:
    x, labels = cvae_model.checked("encode", images(2), np.array([0, 2], np.int32))
    assert (x.dtype, x.flags.c_contiguous, labels.dtype, labels.tolist()) == (np.float32, True, np.int64, [0, 2])
    z, none = vae_model.checked("decode", np.zeros((3, 4), np.float16), None)
    assert (z.dtype, z.shape, none) == (np.float32, (3, 4), None)


@pytest.mark.parametrize(
    ("operation", "rows", "labels", "message"),
    [
        (
            "encode",
            images(1),
            None,
            (
                "labels: model 'tiny-cvae' is conditional: give one label per image, a class name or index "
                "(Circle, Square, Cross)"
            ),
        ),
        ("decode", np.zeros((2, 4)), np.array([0]), "labels: (1,) int64; give one class index per latent (2)"),
        ("decode", np.zeros((1, 4)), np.array([3]), "labels: class indices must be 0-2 for model 'tiny-cvae'"),
        ("decode", np.zeros((1, 4)), np.array([0.5]), "labels: (1,) float64; give one class index per latent (1)"),
        ("decode", np.zeros((1, 5)), np.array([0]), "latents: shape [1, 5]; model 'tiny-cvae' takes [B, 4], B >= 1"),
        ("decode", np.zeros((0, 4)), np.array([]), "latents: shape [0, 4]; model 'tiny-cvae' takes [B, 4], B >= 1"),
        ("decode", np.full((1, 4), np.nan), np.array([0]), "latents: 4 values are not finite"),
        ("score", images(1, 28, 27), np.array([0]), "images: 27x28; model 'tiny-cvae' takes 28x28"),
        (
            "score",
            images(1, channels=3),
            np.array([0]),
            "images: shape [1, 3, 28, 28]; model 'tiny-cvae' takes [B, 1, H, W], B >= 1",
        ),
        ("reconstruct", images(1) * 3, np.array([0]), "images: values must be in [0, 1] for model 'tiny-cvae'"),
    ],
)
def test_what_does_not_fit_is_the_clients_error_naming_the_field(
    cvae_model: LoadedModel, operation: str, rows: np.ndarray, labels: np.ndarray | None, message: str
) -> None:
    with pytest.raises(InvalidInput) as error:
        cvae_model.checked(operation, rows, labels)  # type: ignore[arg-type]
    assert str(error.value) == message


def test_an_unconditional_model_takes_no_labels(vae_model: LoadedModel) -> None:
    with pytest.raises(InvalidInput, match="^labels: model 'tiny-vae' is unconditional; leave labels out$"):
        vae_model.checked("decode", np.zeros((1, 4)), np.array([0]))
    with pytest.raises(InvalidInput, match="^label: model 'tiny-vae' is unconditional; leave label out$"):
        vae_model.checked_label(1)
    assert vae_model.checked_label(None) is None


def test_sample_labels_and_features(cvae_model: LoadedModel) -> None:
    assert cvae_model.checked_label(2) == 2 and cvae_model.checked_label(None) is None
    with pytest.raises(InvalidInput, match="^label: unknown label 3 for model 'tiny-cvae'"):
        cvae_model.checked_label(3)
    painter = LoadedModel("painter", ToyBackend(2.0), "")
    with pytest.raises(NotSupported, match="^model 'painter' cannot encode: it has no Gaussian posterior"):
        painter.checked("encode", images(1, 8, 8, 3), None, "posterior")


def test_a_model_of_variable_size_takes_sides_that_are_multiples_of_its_own() -> None:
    backend = ToyBackend(2.0)
    backend.image = ImageSpec(channels=3, height=8, width=8, fixed_size=False, multiple=4)
    model = LoadedModel("painter", backend, "")
    assert model.checked("encode", images(1, 12, 8, 3), None)[0].shape == (1, 3, 12, 8)
    with pytest.raises(InvalidInput, match="^images: 10x12; model 'painter' needs sides that are multiples of 4$"):
        model.checked("encode", images(1, 12, 10, 3), None)
