"""Empirical NTK of any ``nn.Module``, tiled under a memory budget, accumulated in float64.

Θ(x, x') = Σ_p ∂f(x)/∂θ_p · ∂f(x')/∂θ_p over all differentiated parameters (docs/design.md),
in the output modes of :class:`~ntklab.kernels.empirical.mode.Mode`. :func:`empirical_ntk`
builds a plan of the model (:mod:`~ntklab.kernels.empirical.probe`: recognised layers read by
:mod:`~ntklab.kernels.empirical.adapters`, the rest by per-sample ``torch.func`` VJPs,
:mod:`~ntklab.kernels.empirical.fallback`), chooses a route by its cost estimate
(:mod:`~ntklab.kernels.empirical.route`) and runs it into a
:class:`~ntklab.kernels.empirical.sink.KernelSink`:

* Jacobian contraction and the structured Gram route
  (:mod:`~ntklab.kernels.empirical.features`, :mod:`~ntklab.kernels.empirical.structured`);
* NTK-vector products (:mod:`~ntklab.kernels.empirical.ntvp`), O(P) memory.

Models that mix samples within a batch are refused
(:class:`~ntklab.kernels.empirical.checks.ModelError`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ntklab.errors import ConfigError
from ntklab.kernels.empirical.budget import DEFAULT_BUDGET, FLUSH_SHARE
from ntklab.kernels.empirical.features import run_features
from ntklab.kernels.empirical.job import Job
from ntklab.kernels.empirical.mode import Mode
from ntklab.kernels.empirical.ntvp import run_ntvp
from ntklab.kernels.empirical.plan import layer_summary, prepare_input
from ntklab.kernels.empirical.probe import build_plan
from ntklab.kernels.empirical.route import IMPLEMENTATIONS, choose_route
from ntklab.kernels.empirical.sink import KernelSink
from ntklab.kernels.precision import no_tf32

log = logging.getLogger(__name__)

__all__ = ["empirical_ntk"]


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
        dropout in training mode), else :class:`~ntklab.kernels.empirical.checks.ModelError`.
    x1, x2 : Tensor
        Inputs in the model's layout (floating inputs are cast to the model's dtype);
        ``x2=None`` means ``x1`` and computes only the blocks on and above the diagonal.
    mode : {"trace", "full", "logit-sum", "single"}
        Output mode (see :class:`~ntklab.kernels.empirical.mode.Mode`).
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
        return the memmap (a standard ``.npy`` file: ``numpy.load(out, mmap_mode="r")`` opens
        it anywhere without loading it).
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
    _check_arguments(x1, x2, implementation, memory_budget_bytes, tile)
    budget = int(memory_budget_bytes)
    with no_tf32():
        probe = x1[:3] if x2 is None or len(x1) >= 3 else torch.cat([x1, x2[: 3 - len(x1)].to(x1)])
        plan = build_plan(model, probe, params)
        output_mode = Mode.of(mode, output_index, plan.n_outputs)
        sym = x2 is None
        x1 = prepare_input(x1, plan.dtype, plan.device)
        x2 = x1 if sym else prepare_input(x2, plan.dtype, plan.device)
        n1, n2 = len(x1), len(x2)
        shape = output_mode.output_shape(n1, n2)
        if out is None and 8 * math.prod(shape) > budget:
            log.warning(
                "the eNTK %s takes %.2f GiB in float64, more than memory_budget_bytes=%d; pass "
                "out='kernel.npy' to write it to disk tile by tile instead of holding it in memory.",
                shape,
                8 * math.prod(shape) / 2**30,
                budget,
            )
        route = choose_route(plan, output_mode, n1, n2, sym, budget, implementation)
        for lp in plan.layers:
            lp.route = "gram" if any(lp is g for g in route.gram) else "jacobian"
        log.debug(
            "eNTK: %s (%s); C=%d P=%d (fallback %d), n1=%d n2=%d%s, mode=%s; estimates %s",
            route.implementation,
            route.reason,
            plan.n_outputs,
            plan.n_params,
            plan.fallback_params,
            n1,
            n2,
            " (symmetric)" if sym else "",
            mode,
            {k: f"{v / 1e9:.3g} GFLOP" for k, v in route.flops.items()},
        )
        for line in layer_summary(plan):
            log.debug("eNTK layer %s", line)
        sink = KernelSink(shape, out, plan.device, int(FLUSH_SHARE * budget))
        job = Job(plan, x1, x2, sym, output_mode, budget, tile, progress, sink)
        (run_ntvp if route.implementation == "ntvp" else run_features)(job)
        res = sink.result()
    st = job.stats
    if stats is not None:
        stats.update(
            implementation=route.implementation,
            features_s=st.features_s,
            contract_s=st.contract_s,
            contract_flops=st.contract_flops,
            tiles=st.tiles,
            panel=st.panel,
            chunk=st.chunk,
            flops_estimate=route.flops,
            reason=route.reason,
            gram_layers=[lp.name for lp in route.gram],
        )
    return res


def _check_arguments(
    x1: torch.Tensor, x2: torch.Tensor | None, implementation: str, memory_budget_bytes: int, tile: int | None
) -> None:
    """ConfigError (one sentence) for an unknown implementation, a budget or tile below 1, or
    an empty input."""
    if implementation not in IMPLEMENTATIONS:
        raise ConfigError(
            f"eNTK implementation must be one of {', '.join(IMPLEMENTATIONS)}; got {implementation!r}."
        )
    if int(memory_budget_bytes) <= 0:
        raise ConfigError(f"memory_budget_bytes must be a positive integer; got {memory_budget_bytes!r}.")
    if tile is not None and int(tile) < 1:
        raise ConfigError(f"tile must be a positive integer; got {tile!r}.")
    if len(x1) == 0 or (x2 is not None and len(x2) == 0):
        raise ConfigError(
            f"eNTK inputs need at least one sample each; got x1 {tuple(x1.shape)}"
            + ("" if x2 is None else f" and x2 {tuple(x2.shape)}")
            + "."
        )
