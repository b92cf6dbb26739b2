"""Jacobian contraction: per-sample Jacobians built fast, contracted as one matrix product.

For a batch the per-sample Jacobian J (b, C', P) — C' output cotangents (``C`` for ``full``
and ``trace``, 1 for ``logit-sum`` and ``single``, see :func:`capture.cotangents`) — is
written in place by :func:`capture.capture_into` — ``w_s Σ_t δ_c[t] ⊗ a[t]``, one batched
matmul per recognised layer and cotangent — and, for the remaining parameters, per-sample
``torch.func`` VJPs. The eNTK block of two batches is then

* ``trace``:             Θ = J1 J2ᵀ / C          with J reshaped (b, C·P)  -> (b1, b2)
* ``logit-sum``/``single``: Θ = J1 J2ᵀ            with J (b, P)             -> (b1, b2)
* ``full``:              Θ[a, b, c, d] = Σ_p J1[a, c, p] J2[b, d, p]          -> (b1, b2, C, C)

(docs/design.md conventions), one GEMM in the model's dtype per block, returned in float64 and
accumulated across blocks in float64 by the caller.

Cost per block: 2·b1·b2·C'·P flops (``full``: 2·b1·b2·C²·P); building J costs
≈ 2·b·C'·Σ_l T_l·O_l·K_l flops plus C' backward passes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ntklab.kernels.capture import (
    build_plan,
    capture_into,
    cotangents,
    jacobian_layout,
    prepare_input,
)


def contract_into(acc: torch.Tensor, j1: torch.Tensor, j2: torch.Tensor, mode: str, n_outputs: int) -> None:
    """Add the eNTK block of two per-sample Jacobians (b1, C', P), (b2, C', P) to ``acc``.

    One matrix product in the Jacobians' dtype, added to the float64 ``acc`` (b1, b2), or
    (b1, b2, C, C) for ``full``.
    """
    b1, c, p = j1.shape
    b2 = j2.shape[0]
    if mode == "full":
        g = j1.reshape(b1 * c, p) @ j2.reshape(b2 * c, p).T
        acc.add_(g.view(b1, c, b2, c).permute(0, 2, 1, 3))
        return
    g = j1.reshape(b1, c * p) @ j2.reshape(b2, c * p).T
    acc.add_(g, alpha=1.0 / n_outputs if mode == "trace" else 1.0)


def per_sample_jacobian(
    model: nn.Module,
    x: torch.Tensor,
    mode: str = "full",
    output_index: int | None = None,
    *,
    params: Callable[[str, torch.Tensor], bool] | None = None,
) -> torch.Tensor:
    """Per-sample Jacobian of ``model`` on a batch ``x`` (b, ...) -> (b, C', P).

    ``C' = C`` for ``full``/``trace`` (row c is ∂f_c/∂θ), 1 for ``logit-sum`` (∂Σ_c f_c/∂θ) and
    ``single`` (∂f_i/∂θ). Columns follow :func:`capture.jacobian_layout` (recognised layers'
    weight and bias blocks, then the fallback parameters): use it for Gram products, not for
    naming entries.
    """
    plan = build_plan(model, x, params)
    x = prepare_input(x, plan.dtype, plan.device)
    V = cotangents(mode, output_index, plan.n_outputs, next(iter(plan.params.values())))
    layout = jacobian_layout(plan, plan.layers)
    J = torch.empty(len(x), V.shape[0], layout.size, dtype=plan.dtype, device=plan.device)
    capture_into(plan, x, V, [], J, layout)
    return J
