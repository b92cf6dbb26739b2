"""Model zoo: MLP, 1D CNN (MNIST-1D) and Myrtle CNNs (2D images), as layer specs.

``width`` is one number that scales every hidden layer; ``out`` is the number of outputs.
"""

from __future__ import annotations

from ntklab.arch.core import Spec, serial
from ntklab.arch.elementwise import Relu
from ntklab.arch.linear import Conv, Dense, Parameterization
from ntklab.arch.pooling import AvgPool, Flatten, GlobalAvgPool
from ntklab.errors import ArchError

MYRTLE_BLOCKS = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}


def mlp(
    depth: int,
    width: int,
    out: int = 10,
    W_std: float = 2**0.5,
    b_std: float | None = 0.1,
    parameterization: Parameterization = "ntk",
) -> Spec:
    """Flatten, then ``depth`` × [Dense(width), Relu], then Dense(out)."""
    hidden = [layer for _ in range(depth) for layer in (Dense(width, W_std, b_std, parameterization), Relu())]
    return serial(Flatten(), *hidden, Dense(out, W_std, b_std, parameterization))


def cnn1d(
    depth: int,
    width: int,
    out: int = 10,
    W_std: float = 2**0.5,
    b_std: float | None = 0.1,
    parameterization: Parameterization = "ntk",
    kernel_size: int = 3,
) -> Spec:
    """``depth`` × [Conv1d(width, k, SAME), Relu, AvgPool(2)], GlobalAvgPool, Dense(out).

    Inputs (C, L); every block halves L, so L must be at least 2**depth.
    """
    blocks = [
        layer
        for _ in range(depth)
        for layer in (
            Conv(width, (kernel_size,), (1,), "SAME", W_std, b_std, parameterization),
            Relu(),
            AvgPool((2,), (2,), "VALID"),
        )
    ]
    return serial(*blocks, GlobalAvgPool(), Dense(out, W_std, b_std, parameterization))


def myrtle(
    depth: int,
    width: int,
    out: int = 10,
    W_std: float = 2**0.5,
    b_std: float | None = 0.0,
    parameterization: Parameterization = "ntk",
) -> Spec:
    """Myrtle CNN (Shankar et al. 2020) of depth 5, 7 or 10 on (C, H, W) images.

    Three stages of [Conv3x3(width, SAME), Relu] × (2,1,1) / (2,2,2) / (3,3,3), an AvgPool(2)
    after the first two stages, a final AvgPool(2), GlobalAvgPool, Dense(out). On 32×32 inputs
    the final global average equals neural-tangents' three AvgPool(2) + Flatten.
    """
    if depth not in MYRTLE_BLOCKS:
        raise ArchError(f"myrtle depth must be one of 5, 7, 10; got {depth}.")

    def stage(n: int) -> list:
        conv = Conv(width, (3, 3), (1, 1), "SAME", W_std, b_std, parameterization)
        return [layer for _ in range(n) for layer in (conv, Relu())]

    a, b, c = MYRTLE_BLOCKS[depth]
    pool = AvgPool((2, 2), (2, 2), "VALID")
    return serial(
        *stage(a),
        pool,
        *stage(b),
        pool,
        *stage(c),
        pool,
        GlobalAvgPool(),
        Dense(out, 1.0, b_std, parameterization),
    )


ZOO = {"mlp": mlp, "cnn1d": cnn1d, "myrtle": myrtle}
