"""A test-only model family whose decoder refuses one particular row: the toy painter
(toy_backend.py), except that a latent whose first value is POISON raises `InvalidInput`, as a
backend does for an input no check before batching foresaw, and that one whose first value is
HOLD waits until `gate` opens, so that tests can queue requests into one batch behind it.

`<name>.poison.json` files hold `{"gain": ...}` as the toy family's do."""

from __future__ import annotations

import threading

import torch

from app.engine.errors import InvalidInput
from tests.app.engine.toy_backend import ToyBackend, ToyFamily

SUFFIX = ".poison.json"
POISON, HOLD = 13.0, 99.0


class PoisonBackend(ToyBackend):
    family = "poison"
    architecture = "poison"

    def __init__(self, gain: float) -> None:
        super().__init__(gain)
        self.gate = threading.Event()
        self.gate.set()
        self.holding = threading.Event()  # set while a HOLD row waits for the gate
        self.calls: list[list[float]] = []  # the first value of each row of each decode call

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        firsts = z[:, 0].tolist()
        self.calls.append(firsts)
        if HOLD in firsts:
            self.holding.set()
            assert self.gate.wait(10), "the test never opened the gate"
            self.holding.clear()
        if POISON in firsts:
            raise InvalidInput(f"latents[{firsts.index(POISON)}]: a first value of {POISON:g} is poison to this model")
        return super().decode(z, labels)


class PoisonFamily(ToyFamily):
    name = "poison"
    suffix = SUFFIX
    backend = PoisonBackend


family = PoisonFamily()
