"""Binary tensors: what diffusers' client writes is read back exactly; bad ones say what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.tensors import TensorError, read_tensor, tensor_bytes


def client_bytes(t: torch.Tensor) -> bytes:
    """What diffusers' remote_decode sends for `t` (diffusers.utils.remote_utils.prepare_decode)."""
    from safetensors.torch import _to_ndarray

    return _to_ndarray(t)[0].tobytes()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_float_tensors_round_trip_exactly(dtype: torch.dtype) -> None:
    t = (torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(0)) * 100).to(dtype)
    name = str(dtype).removeprefix("torch.")
    array = read_tensor(client_bytes(t), [2, 4, 3, 5], name, max_elements=1000)
    assert array.dtype == np.float32 and torch.equal(torch.from_numpy(array), t.float())
    data, shape, wire = tensor_bytes(t)
    assert (data, shape, wire) == (client_bytes(t), [2, 4, 3, 5], name)
    assert torch.equal(torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape), t)


def test_uint8_stays_uint8() -> None:
    t = torch.arange(24, dtype=torch.uint8).reshape(1, 2, 3, 4)
    array = read_tensor(client_bytes(t), [1, 2, 3, 4], "uint8", max_elements=24)
    assert array.dtype == np.uint8 and np.array_equal(array, t.numpy())
    assert tensor_bytes(array) == (t.numpy().tobytes(), [1, 2, 3, 4], "uint8")


@pytest.mark.parametrize(
    ("data", "shape", "dtype", "message"),
    [
        (b"\0" * 15, [1, 4], "float32", "body: 15 bytes, but shape [1, 4] of float32 takes 16 bytes"),
        (b"\0" * 16, [1, 4], "float64", "dtype: 'float64' is not one of float32, float16, bfloat16, uint8"),
        (b"\0" * 16, [1, 0, 4], "float32", "shape: every size must be at least 1, got [1, 0, 4]"),
        (b"", [], "float32", "shape: give 1 to 5 sizes, got 0"),
        (b"\0" * 4, [100, 100, 100], "float32", "shape: [100, 100, 100] has 1000000 elements, over the limit of 1000"),
        (np.array([1, np.nan, np.inf], "<f4").tobytes(), [3], "float32", "body: 2 values are NaN or infinite"),
        (np.array([np.inf], "<f2").tobytes(), [1], "float16", "the first at flat index 0"),
    ],
)
def test_bad_tensors_say_what_is_wrong(data: bytes, shape: list[int], dtype: str, message: str) -> None:
    with pytest.raises(TensorError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_tensor(data, shape, dtype, max_elements=1000)


def test_only_wire_dtypes_are_sent() -> None:
    with pytest.raises(TensorError, match="cannot send a float64 tensor"):
        tensor_bytes(torch.zeros(2, dtype=torch.float64))
