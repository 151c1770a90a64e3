"""Binary tensors: raw little-endian bytes with a shape and a dtype name, as diffusers'
`remote_decode`/`remote_encode` send and read them (the body is the bytes; `shape` and `dtype`
travel beside it). No HTTP here: a protocol layer passes bytes, shape and dtype in and sends
what `tensor_bytes` gives back.

bfloat16 has no NumPy dtype: its 16 bits are the top half of a float32, so it is read by
shifting them up (exact) and written by rounding to nearest even, as torch does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

# dtype name -> the little-endian NumPy dtype its bytes are read as.
WIRE_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
    "uint8": np.dtype("u1"),
}
# A shape with more dimensions than this is no image batch or latent batch.
MAX_DIMS = 5


class TensorError(ValueError):
    """A tensor that cannot be read or used; the message says what was wrong."""


def check_shape(shape: Sequence[int], max_elements: int) -> tuple[int, ...]:
    """The shape as a tuple, after checking it is 1 to MAX_DIMS positive sizes with at most
    `max_elements` elements in all (checked before any byte is read)."""
    if not 1 <= len(shape) <= MAX_DIMS:
        raise TensorError(f"shape: give 1 to {MAX_DIMS} sizes, got {len(shape)}")
    if any(size < 1 for size in shape):
        raise TensorError(f"shape: every size must be at least 1, got {list(shape)}")
    elements = math.prod(shape)
    if elements > max_elements:
        raise TensorError(f"shape: {list(shape)} has {elements} elements, over the limit of {max_elements}")
    return tuple(shape)


def read_tensor(data: bytes, shape: Sequence[int], dtype: str, max_elements: int) -> np.ndarray:
    """The tensor in `data`: float32 for the float dtypes (float16 and bfloat16 widen exactly),
    uint8 for uint8. Refuses an unknown dtype, a byte count that does not match shape x dtype,
    and NaN or infinite values."""
    wire = WIRE_DTYPES.get(dtype)
    if wire is None:
        raise TensorError(f"dtype: {dtype[:40]!r} is not one of {', '.join(WIRE_DTYPES)}")
    shape = check_shape(shape, max_elements)
    expected = math.prod(shape) * wire.itemsize
    if len(data) != expected:
        raise TensorError(
            f"body: {len(data)} bytes, but shape {list(shape)} of {dtype} takes {expected} bytes "
            "(raw little-endian values, C order)"
        )
    raw = np.frombuffer(data, dtype=wire).reshape(shape)
    if dtype == "uint8":
        return raw.copy()
    if dtype == "bfloat16":
        array = (raw.astype(np.uint32) << 16).view(np.float32)
    else:
        array = raw.astype(np.float32)
    if not np.isfinite(array).all():
        bad = np.flatnonzero(~np.isfinite(array))
        raise TensorError(f"body: {len(bad)} values are NaN or infinite (the first at flat index {bad[0]})")
    return array


def tensor_bytes(tensor: torch.Tensor | np.ndarray) -> tuple[bytes, list[int], str]:
    """(bytes, shape, dtype name) of a float32, float16, bfloat16 or uint8 tensor, little-endian."""
    t = torch.from_numpy(np.ascontiguousarray(tensor)) if isinstance(tensor, np.ndarray) else tensor
    t = t.detach().cpu().contiguous()
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in WIRE_DTYPES:
        raise TensorError(f"cannot send a {dtype} tensor; send one of {', '.join(WIRE_DTYPES)}")
    array = (t.view(torch.int16) if dtype == "bfloat16" else t).numpy()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(), list(t.shape), dtype
