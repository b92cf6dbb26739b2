"""The tiny data-scaling sweep several tests run: 600 generated MNIST-1D samples, n = 32 and 64,
a width-8 cnn1d, 50 test points (seconds per run)."""

from __future__ import annotations


def tiny_sweep(seeds: int, steps: int) -> list[str]:
    """``--set`` values of the tiny sweep with ``seeds`` repetitions of ``steps`` training steps."""
    return [
        "data.num_samples=600",
        "data.n_min=32",
        "data.n_max=64",
        "data.n_val=16",
        "data.n_test=50",
        f"seeds={seeds}",
        f"train.steps={steps}",
        "arch.width=8",
        "fit.bootstrap=20",
        "device='cpu'",
    ]
