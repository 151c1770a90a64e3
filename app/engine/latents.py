"""Paths between two latents (vectors, or tensors such as [C, h, w], taken as flat vectors)."""

from __future__ import annotations

import numpy as np

# Below this sin(angle), the two vectors are (anti)parallel and slerp's division blows up.
PARALLEL_SIN = 1e-6


def interpolate(start: np.ndarray, end: np.ndarray, steps: int, method: str = "slerp") -> np.ndarray:
    """`steps` points from `start` to `end`, both included: [steps, *start.shape].

    slerp (Shoemake 1985) follows the great circle, sin((1-t)θ)/sin θ · a + sin(tθ)/sin θ · b,
    so points keep the norm typical of a Gaussian latent rather than cutting through the
    low-density centre as a straight line does (White 2016, "Sampling Generative Networks").
    """
    t = np.linspace(0.0, 1.0, steps, dtype=start.dtype).reshape(-1, *[1] * start.ndim)
    a, b = start.reshape(-1), end.reshape(-1)
    cos = np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), np.finfo(start.dtype).tiny)
    theta = np.arccos(np.clip(cos, -1.0, 1.0))
    if method == "lerp" or np.sin(theta) < PARALLEL_SIN:
        return start + t * (end - start)
    path = (np.sin((1 - t) * theta) * start + np.sin(t * theta) * end) / np.sin(theta)
    path[0], path[-1] = start, end  # exact ends, free of rounding
    return path
