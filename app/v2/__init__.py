"""The Open Inference Protocol (v2) over the same service as /v1."""
