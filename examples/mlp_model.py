"""A small MLP, written the way a user would: plain PyTorch, any input shape.

Hand it to ntklab as ``examples/mlp_model.py:make_model``; ntklab calls the factory once per
seed (under a seeded RNG) and passes ``input_shape`` and ``num_outputs`` because the factory
has parameters of those names.

Example
-------
Does the NTK explain this MLP on MNIST-1D, in three minutes::

    ntklab explain --model examples/mlp_model.py:make_model --data mnist1d \\
        --budget-minutes 3 --out runs/explain-mlp

or from Python::

    import ntklab
    from mlp_model import make_model
    ntklab.explain(make_model, "mnist1d", budget_minutes=3)
"""

from __future__ import annotations

import math

from torch import nn


def make_model(input_shape: tuple[int, ...], num_outputs: int, width: int = 128, depth: int = 2) -> nn.Module:
    """A fresh MLP: flatten, ``depth`` hidden layers of ``width`` ReLU units, a linear head."""
    layers: list[nn.Module] = [nn.Flatten()]
    d = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, num_outputs))
    return nn.Sequential(*layers)
