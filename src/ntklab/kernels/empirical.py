"""Empirical NTK of any ``nn.Module``, tiled under a memory budget, accumulated in float64.

Θ(x, x') = Σ_p ∂f(x)/∂θ_p · ∂f(x')/∂θ_p over all trainable parameters (DESIGN.md), with the
output modes of :mod:`ntklab.kernels.modes`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.func import jacrev, vmap

from ntklab.kernels.functional import FunctionalModel, functionalize
from ntklab.kernels.modes import check_mode, contract, output_shape, reduce_outputs
from ntklab.kernels.precision import no_tf32
from ntklab.progress import progress_bar

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 2**30


def jacobian_blocks(
    fm: FunctionalModel, x: torch.Tensor, mode: str, output_index: int | None
) -> list[torch.Tensor]:
    """Per-sample Jacobians of ``x`` (b, ...) as one block per parameter tensor.

    Each block is (b, C, p) (``full``/``trace``) or (b, p) (``logit-sum``/``single``), in the
    model's dtype, computed with ``vmap(jacrev)``.
    """
    jac = vmap(jacrev(fm.single), in_dims=(None, 0))(fm.params, x)
    return [reduce_outputs(j.flatten(2), mode, output_index) for j in jac.values()]


def _contract_blocks(b1: list[torch.Tensor], b2: list[torch.Tensor], mode: str) -> torch.Tensor:
    """Σ over parameter blocks of the mode contraction, each product in the blocks' dtype and
    accumulated in float64."""
    acc = None
    for j1, j2 in zip(b1, b2):
        part = contract(j1, j2, mode).double()
        acc = part if acc is None else acc.add_(part)
    return acc


def tile_size(n_outputs: int, n_params: int, itemsize: int, mode: str, budget: int) -> int:
    """Samples per tile so that two tiles of Jacobians (and vmap's workspace) fit ``budget``."""
    per_sample = (n_outputs if mode in ("full", "trace") else 1) * n_params * itemsize
    # jacrev materializes the C×P Jacobian per sample before reduction; count it twice.
    per_sample = max(per_sample, n_outputs * n_params * itemsize) * 2
    return max(1, int(budget // (2 * per_sample)))


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
) -> torch.Tensor:
    """Empirical NTK of ``model`` between ``x1`` (n1, ...) and ``x2`` (n2, ...).

    Parameters
    ----------
    model : nn.Module
        Any module mapping a batch (N, ...) to outputs (N, C) (or (N,)); it must not mix
        samples within a batch (use ``model.eval()`` for BatchNorm).
    x1, x2 : Tensor
        Inputs in the model's layout; ``x2=None`` means ``x1`` (only tiles i <= j are computed).
    mode : {"trace", "full", "logit-sum", "single"}
        Output mode (see :mod:`ntklab.kernels.modes`).
    output_index : int, optional
        The output for ``mode="single"``.
    params : callable, optional
        ``(name, tensor) -> bool`` choosing differentiated parameters (default: requires_grad).
    memory_budget_bytes : int
        Bounds the Jacobian tiles held at once.
    tile : int, optional
        Samples per tile (overrides the budget).

    Returns
    -------
    Tensor, float64, on the model's device
        (n1, n2), or (n1, n2, C, C) for ``full``.
    """
    fm = functionalize(model, x1, params)
    check_mode(mode, output_index, fm.n_outputs)
    sym = x2 is None
    x1 = x1.to(fm.device, fm.dtype)
    x2 = x1 if sym else x2.to(fm.device, fm.dtype)
    n1, n2 = len(x1), len(x2)
    itemsize = torch.finfo(fm.dtype).bits // 8
    t = tile or tile_size(fm.n_outputs, fm.n_params, itemsize, mode, memory_budget_bytes)
    out = torch.zeros(output_shape(n1, n2, mode, fm.n_outputs), dtype=torch.float64, device=fm.device)
    rows = [(i, min(i + t, n1)) for i in range(0, n1, t)]
    cols = [(j, min(j + t, n2)) for j in range(0, n2, t)]
    pairs = [(r, c) for r in rows for c in cols if not sym or c[0] >= r[0]]
    log.debug(
        "eNTK: jacobian contraction, C=%d P=%d tile=%d, %d tile pairs",
        fm.n_outputs,
        fm.n_params,
        t,
        len(pairs),
    )
    with no_tf32(), progress_bar(total=len(pairs), desc="eNTK", enabled=progress and len(pairs) > 1) as bar:
        for r0, r1 in rows:
            jr = jacobian_blocks(fm, x1[r0:r1], mode, output_index)
            for c0, c1 in cols:
                if sym and c0 < r0:
                    continue
                jc = jr if (sym and c0 == r0) else jacobian_blocks(fm, x2[c0:c1], mode, output_index)
                block = _contract_blocks(jr, jc, mode)
                out[r0:r1, c0:c1] = block
                if sym and c0 != r0:
                    out[c0:c1, r0:r1] = (
                        block.transpose(0, 1) if block.ndim == 2 else block.permute(1, 0, 3, 2)
                    )
                bar.update(1)
    return out


def n_tiles(n: int, tile: int) -> int:
    """Number of tiles of size ``tile`` covering ``n`` samples."""
    return math.ceil(n / tile)
