"""The serving core: models, batching and the operations, with no notion of HTTP.

- `backend.py`: what a model family provides (the `Backend` and `Family` protocols).
- `backends/`: the built-in families (the project's VAE) and loading others by import path.
- `registry.py`: the loaded models, and the checks of a request's labels and latents.
- `operations.py`: `Engine`, the async operations (sample, encode, decode, reconstruct, score,
  interpolate) on NumPy values, each through its batcher.
- `batcher.py`, `passes.py`: dynamic batching, and batch-invariant forward passes.
- `errors.py`: the domain errors; each protocol on top maps them to its own status codes.
"""
