"""Empirical NTK of any ``nn.Module``, tiled under a memory budget, accumulated in float64.

Θ(x, x') = Σ_p ∂f(x)/∂θ_p · ∂f(x')/∂θ_p over all differentiated parameters (docs/design.md), with
the output modes of :mod:`ntklab.kernels.modes`. Three exact implementations sit behind
:func:`empirical_ntk`, chosen by a cost estimate (:mod:`ntklab.kernels.tiling`):

* Jacobian contraction (:mod:`ntklab.kernels.jacobian`) — per-sample Jacobians from one
  batched forward and C' backward passes (weight gradients Σ_t δ[t] ⊗ a[t] per layer),
  one GEMM per tile; 2·n1·n2·C'·P flops.
* Structured (:mod:`ntklab.kernels.structured`) — per Linear/Conv layer Σ_{t,t'} (w_s² a·a′ +
  b_s²)(δ·δ′) from two Gram matrices; 2·n1·n2·T²·(C'·O + K) flops, far cheaper for Dense
  layers.
* NTK-vector products (:mod:`ntklab.kernels.ntvp`) — VJP then JVP, O(P) memory.

Layers that are not recognised (anything but Linear, Conv1d/2d, ntklab's Dense/Conv and
affine normalizations) fall back to per-sample ``torch.func`` VJPs. Models that mix samples
within a batch are refused (:class:`ntklab.kernels.capture.ModelError`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ntklab.kernels.capture import ModelError
from ntklab.kernels.storage import iter_row_blocks, kernel_matmul, load_kernel, read_block
from ntklab.kernels.tiling import IMPLEMENTATIONS, compute_ntk

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 2**30

__all__ = [
    "DEFAULT_BUDGET",
    "IMPLEMENTATIONS",
    "ModelError",
    "empirical_ntk",
    "empirical_ntk_to_disk",
    "iter_row_blocks",
    "kernel_matmul",
    "load_kernel",
    "read_block",
]


def empirical_ntk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    mode: str = "trace",
    output_index: int | None = None,
    *,
    params: Callable[[str, torch.Tensor], bool] | None = None,
    memory_budget_bytes: int = DEFAULT_BUDGET,
    tile: int | None = None,
    progress: bool | None = None,
    implementation: str = "auto",
    out: str | Path | None = None,
    stats: dict[str, Any] | None = None,
) -> torch.Tensor | np.memmap:
    """Empirical NTK of ``model`` between ``x1`` (n1, ...) and ``x2`` (n2, ...).

    Parameters
    ----------
    model : nn.Module
        Any module mapping a batch (N, ...) to outputs (N, C) (or (N,), or (N, *out) flattened
        to C); it must treat samples independently (``model.eval()`` for BatchNorm, no
        dropout in training mode), else :class:`ModelError`.
    x1, x2 : Tensor
        Inputs in the model's layout (floating inputs are cast to the model's dtype);
        ``x2=None`` means ``x1`` and computes only the blocks on and above the diagonal.
    mode : {"trace", "full", "logit-sum", "single"}
        Output mode (see :mod:`ntklab.kernels.modes`).
    output_index : int, optional
        The output for ``mode="single"``.
    params : callable, optional
        ``(name, tensor) -> bool`` choosing differentiated parameters (default: those with
        ``requires_grad``); the others are held fixed, like buffers.
    memory_budget_bytes : int
        Working memory for features and temporaries; decides the tile sizes. The result
        itself is held in memory unless ``out`` is given (a warning is logged when it alone
        exceeds the budget).
    tile : int, optional
        Samples per tile (overrides the budget; mainly for tests).
    progress : bool, optional
        Show a progress bar (None: only on a terminal).
    implementation : {"auto", "jacobian", "structured", "ntvp"}
        ``auto`` picks by estimated cost, per layer between the Gram and Jacobian routes
        (logged at DEBUG on ``ntklab.kernels.empirical``).
    out : str or Path, optional
        Write the kernel tile by tile to this float64 ``.npy`` memmap instead of memory and
        return the memmap (read it back with :func:`load_kernel`, :func:`iter_row_blocks`).
    stats : dict, optional
        Filled with timings (``features_s``, ``contract_s``), ``contract_flops``, the chosen
        ``implementation``, tile sizes and the cost estimates.

    Returns
    -------
    Tensor (float64, on the model's device) or numpy.memmap (float64) when ``out`` is given
        (n1, n2), or (n1, n2, C, C) for ``full``.

    Example
    -------
    >>> from ntklab.arch import mlp
    >>> net = mlp(1, 64, out=3).module((5,))
    >>> empirical_ntk(net, torch.randn(4, 5)).shape
    torch.Size([4, 4])
    """
    return compute_ntk(
        model,
        x1,
        x2,
        mode,
        output_index,
        params=params,
        memory_budget_bytes=memory_budget_bytes,
        tile=tile,
        progress=progress,
        implementation=implementation,
        out=out,
        stats=stats,
    )


def empirical_ntk_to_disk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    out: str | Path,
    mode: str = "trace",
    output_index: int | None = None,
    **kwargs: Any,
) -> np.memmap:
    """:func:`empirical_ntk` written tile by tile to the float64 ``.npy`` file ``out``.

    Memory stays within ``memory_budget_bytes`` whatever the kernel size; returns the memmap.
    """
    res = empirical_ntk(model, x1, x2, mode, output_index, out=out, **kwargs)
    assert isinstance(res, np.memmap)
    return res
