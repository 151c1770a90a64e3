"""The Open Inference Protocol (v2) over the same service as /v1: `routes` (HTTP), `catalog`
(each model's operations as v2 models), `tensors` (the protocol's tensors, HTTP-free)."""
