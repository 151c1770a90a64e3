"""vaeserve's HTTP API: `uvicorn app.main:create_app --factory`."""
