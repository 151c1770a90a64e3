"""`python -m model.train` for tests/model/test_ddp.py to start under torchrun, with each
checkpoint or training-state write logged, with the rank that made it, to $TRAIN_WRITES_LOG."""

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


def main() -> None:
    for name in ("save_checkpoint", "save_state"):
        setattr(model.train, name, logging_writes(getattr(model.train, name), name))
    model.train.main(sys.argv[1:])


if __name__ == "__main__":
    main()
