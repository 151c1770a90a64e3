"""vaeserve: `app/engine` serves the models (no HTTP), `app/api` is the HTTP API, `app/server` the
edge; `python -m app.serve` (app/serve.py) runs it all. docs/architecture.md follows a request."""
