"""The after-kernel: the eNTK of a network after training on the first n₀ samples.

Vyas, Bansal & Nakkiran (arXiv 2206.10012, §4): train the network on n₀ samples, freeze its
eNTK there,

    Θ_T(x, x') = Σ_p ∂f(x; θ_T)/∂θ_p · ∂f(x'; θ_T)/∂θ_p     (θ_T: parameters after T steps),

then run kernel ridge regression f̂(x) = Θ_T(x, X)(Θ_T(X, X) + λ·(tr Θ_T / n)·I)⁻¹ Y on n
samples (n smaller or larger than n₀; the n₀ pre-training samples are the first n₀ of the same
nested pool, or with ``disjoint`` the last n₀ of the repetition's pool order, which no
regression set of the grid reaches). The network is initialized, and its mini-batches drawn, exactly as
:func:`ntklab.experiments.units.train_network` does (``init_seed(seed_index)``,
``batch_seed(seed_index, n₀)``), so with T = 0 the after-kernel is the eNTK at initialization
and with n₀ = n and the network's own training length it is the eNTK of the very network that
method ``nn`` trains at n.

With ``train.center_output`` the trained model is f − f₀ with a frozen copy f₀
(``requires_grad`` False), whose parameters the eNTK leaves out: Θ_T is the eNTK of f.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ntklab.experiments.common import unit_reads
from ntklab.experiments.units import entk_kernel_fn, kernel_blocks, network_metrics, train_on
from ntklab.run.units import Unit

FN = "ntklab.experiments.after_kernel:after_kernel"


def after_kernel(
    ctx: Any, n0: int, n: int, seed_index: int, steps: int, disjoint: bool = False
) -> dict[str, Any]:
    """Unit: the after-kernel Θ_T on train[:n] + validation + test, and the trained net's metrics.

    Parameters
    ----------
    n0 : training-set size of the pre-training (the first n0 of the nested pool)
    n : the kernel's training block is Θ_T(train[:n], train[:n]) (n may exceed n0)
    seed_index : repetition (initialization and batch order, as ``train_network``)
    steps : T, optimizer steps of the pre-training (0 = the eNTK at initialization)
    disjoint : pre-train on the last n0 points of the repetition's pool order instead

    Returns
    -------
    dict with ``train`` (n, n) and ``cross`` (V + T, n) float64 kernel blocks (validation rows
    then test rows, as :func:`kernel_blocks`), and the pre-trained network's ``test_mse``,
    ``test_error``, ``train_mse``, ``train_error`` (on its n0 points), ``steps`` (taken: early
    stopping may end pre-training before T), ``seconds``.
    """
    t0 = time.perf_counter()
    res = train_on(ctx, ctx.cfg.arch, n0, seed_index, steps, from_end=disjoint)
    blocks = kernel_blocks(ctx, entk_kernel_fn(ctx, res.model), n, seed_index)
    metrics = network_metrics(ctx, res.model, n0, seed_index, from_end=disjoint)
    return {
        "train": np.asarray(blocks["train"], dtype=np.float64),
        "cross": np.asarray(blocks["cross"], dtype=np.float64),
        **metrics,
        "steps": int(res.steps),
        "seconds": time.perf_counter() - t0,
    }


def after_kernel_unit(cfg: Any, n0: int, n: int, seed_index: int, steps: int, disjoint: bool = False) -> Unit:
    """The unit of :func:`after_kernel` (it reads what training and the eNTK read)."""
    args = {"n0": n0, "n": n, "seed_index": seed_index, "steps": steps}
    if disjoint:
        args["disjoint"] = True
    reads = unit_reads(cfg, train=True, kernel=True)
    label = f"after-kernel n0={n0} T={steps} n={n} seed={seed_index}"
    return Unit("after-kernel", FN, args, reads, version=2, label=label)
