"""`python -m model.train` for tests/model/test_ddp.py to start under torchrun, instrumented:
each checkpoint or training-state write is logged with the rank that made it to
$TRAIN_WRITES_LOG, and with $TRAIN_STOP_AT_VALIDATION=N rank 0 stops with an error at its
N-th validation (counted from 0), as an interrupted run would."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import model.train


def logging_writes(write: Callable[..., Any], name: str) -> Callable[..., Any]:
    def logged(path: object, *args: object) -> Any:
        with open(os.environ["TRAIN_WRITES_LOG"], "a") as f:
            f.write(f"{os.environ['RANK']} {name} {path}\n")
        return write(path, *args)

    return logged


def stopping(evaluate: Callable[..., float], at: int) -> Callable[..., float]:
    calls = iter(range(1 << 30))

    def evaluate_or_stop(*args: object) -> float:
        if next(calls) == at:
            raise SystemExit("stopped by the test")
        return evaluate(*args)

    return evaluate_or_stop


def main() -> None:
    for name in ("save_checkpoint", "save_state"):
        setattr(model.train, name, logging_writes(getattr(model.train, name), name))
    if "TRAIN_STOP_AT_VALIDATION" in os.environ:
        at = int(os.environ["TRAIN_STOP_AT_VALIDATION"])
        model.train.mean_negative_elbo = stopping(model.train.mean_negative_elbo, at)
    model.train.main(sys.argv[1:])


if __name__ == "__main__":
    main()
