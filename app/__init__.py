"""vaeserve's HTTP API: `python -m app.serve` (app/serve.py)."""
