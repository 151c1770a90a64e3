"""The engine's errors: what went wrong in domain terms, with a message for the client.

None carries a transport status: each protocol on top maps these classes to its own codes, in
one place (for HTTP, `app/api/errors.py`).
"""

from __future__ import annotations

import math


class EngineError(Exception):
    """A request the engine cannot serve; the message is for the client."""

    retry_after: int | None = None  # seconds after which retrying may succeed, where that is known


class StartupError(RuntimeError):
    """Serving cannot start; the message is one line that names the file or setting at fault."""


class UnknownModel(EngineError, LookupError):
    """A request named a model that is not loaded."""


class InvalidInput(EngineError, ValueError):
    """A request's values do not fit the model; the message starts with the field at fault."""


class BadLabel(InvalidInput):
    """A class label the model does not have, or labels where the model takes none (or none where it needs them)."""


class BadLatentShape(InvalidInput):
    """Latents whose shape is not the model's."""


class OverLimit(InvalidInput):
    """A request over a configured limit."""

    def __init__(self, field: str, limit: int, got: int) -> None:
        super().__init__(f"{field}: at most {limit} allowed, got {got}")


class NotSupported(EngineError):
    """An operation the model's family cannot do."""

    def __init__(self, model: str, operation: str, missing: str) -> None:
        super().__init__(f"model '{model}' cannot {operation}: {missing}")


class Overloaded(EngineError):
    """Too many requests already wait for this model and operation."""

    def __init__(self, name: str, limit: int, retry_after: int) -> None:
        super().__init__(f"server busy: {limit} requests are already waiting for {name}; retry in {retry_after} s")
        self.retry_after = retry_after


def retry_after(seconds: float) -> int:
    """Whole seconds for a retry delay: at least 1."""
    return max(1, math.ceil(seconds))


class Backlogged(EngineError):
    """The work already waiting for this request's lane is estimated to take longer than the
    request may wait: answered at once, with the backlog as the retry delay."""

    def __init__(self, name: str, backlog: float, timeout: float) -> None:
        self.retry_after = retry_after(backlog)
        super().__init__(
            f"server busy: about {backlog:.0f} s of work is ahead of this request for {name}, more than the "
            f"{timeout:g} s it may wait; retry in {self.retry_after} s"
        )


class TimedOut(EngineError):
    """A request waited its whole queue timeout without being run."""

    def __init__(self, name: str, seconds: float) -> None:
        super().__init__(f"server busy: the request waited {seconds:g} s for {name} without being run; retry later")


class BatchFailed(EngineError):
    """The model call failed running this request alone, by no error that names a cause in its
    input: ours, so the client cannot fix it; the batcher goes on."""

    def __init__(self, name: str, error: Exception) -> None:
        super().__init__(f"{name} failed on this request ({type(error).__name__}); the server log has the details")


class OutOfMemory(EngineError):
    """The device ran out of memory in a batch of several requests; the memory was freed. No
    client gets it: the batcher runs the batch's requests again in smaller batches, where each
    may well fit (a request that does not fit alone gets `NeedsTooMuchMemory`)."""

    def __init__(self, name: str, device: str, requests: int) -> None:
        super().__init__(f"{name}: {device} memory ran out in a batch of {requests} requests")


class NeedsTooMuchMemory(EngineError):
    """The device ran out of memory running this request alone: it will not fit as it is."""

    def __init__(self, name: str, device: str) -> None:
        super().__init__(
            f"{name}: this request alone needs more {device} memory than is free; "
            "send smaller or fewer images or latents"
        )


def gib(size: float) -> str:
    return f"{size / (1 << 30):.2f} GiB"


class MemoryBudgetExceeded(EngineError):
    """A request whose estimated memory is more than the whole budget: it can never run here."""

    def __init__(self, name: str, need: int, budget: int, smaller: str) -> None:
        share = f"about {100 * budget // max(1, need)}%" if budget < need else "all"
        super().__init__(
            f"{name}: this request needs about {gib(need)} of memory (estimated from what the model used at "
            f"load), more than the {gib(budget)} this server has for requests (VAE_MEMORY_BUDGET); "
            f"send {smaller} ({share} of this request would fit)"
        )


class MemoryBusy(EngineError):
    """The memory a request needs is held by running work that should not free it before the
    request's queue timeout: answered at once, with that wait as the retry delay."""

    def __init__(self, name: str, need: int, wait: float, timeout: float) -> None:
        self.retry_after = retry_after(wait) if math.isfinite(wait) else retry_after(timeout)
        super().__init__(
            f"server busy: the {gib(need)} of memory this request needs for {name} is held by running work "
            f"for longer than the {timeout:g} s it may wait; retry in {self.retry_after} s"
        )


class Abandoned(EngineError):
    """Dropped before its batch ran: its client had gone, so nobody would read the result."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name}: the client disconnected before the request ran")


class ShuttingDown(EngineError):
    """The engine is closing; queued and running requests are answered with this."""

    retry_after = 1

    def __init__(self) -> None:
        super().__init__("server shutting down; retry on another replica")
