"""The HTTP API (FastAPI): routes, request and response schemas, request bodies and uploads,
and the one mapping of the engine's errors to status codes."""
