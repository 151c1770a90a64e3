import torch


def pytest_configure() -> None:
    # Tiny models run fastest on one thread, and the suite must not fight other processes for cores.
    torch.set_num_threads(1)
