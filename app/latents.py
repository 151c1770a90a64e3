"""Paths between two latent vectors."""

from __future__ import annotations

import torch

# Below this sin(angle), the two vectors are (anti)parallel and slerp's division blows up.
PARALLEL_SIN = 1e-6


def interpolate(start: torch.Tensor, end: torch.Tensor, steps: int, method: str = "slerp") -> torch.Tensor:
    """`steps` points from `start` to `end`, both included: [steps, latent_dim].

    slerp (Shoemake 1985) follows the great circle, sin((1-t)θ)/sin θ · a + sin(tθ)/sin θ · b,
    so points keep the norm typical of a Gaussian latent rather than cutting through the
    low-density centre as a straight line does (White 2016, "Sampling Generative Networks").
    """
    t = torch.linspace(0.0, 1.0, steps, dtype=start.dtype).unsqueeze(1)
    cos = torch.dot(start, end) / (start.norm() * end.norm()).clamp_min(torch.finfo(start.dtype).tiny)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    if method == "lerp" or torch.sin(theta) < PARALLEL_SIN:
        return torch.lerp(start, end, t)
    path = (torch.sin((1 - t) * theta) * start + torch.sin(t * theta) * end) / torch.sin(theta)
    path[0], path[-1] = start, end  # exact ends, free of rounding
    return path
