"""Small inputs several test modules share: the tiny data-scaling sweep (600 generated MNIST-1D
samples, n = 32 and 64, a width-8 cnn1d, 50 test points; seconds per run) and CIFAR-5m parts."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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


def make_cifar5m(folder: Path, sizes: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Parts ``part{k}.npz`` in the CIFAR-5m format (uint8 images X, labels Y) of the given
    sizes, even parts stored and odd parts deflated; returns all images and labels in order."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for k, n in enumerate(sizes):
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, n)
        (np.savez_compressed if k % 2 else np.savez)(folder / f"part{k}.npz", X=x, Y=y)
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)
