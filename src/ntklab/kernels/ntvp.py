"""NTK-vector products (PyTorch's NTK tutorial, "ntk_vps"): never hold a per-sample Jacobian.

For batches x1 (b1) and x2 (b2) and a cotangent basis vector ``v = e_{a,c}`` on the outputs of
x1, one VJP gives the parameter vector ``J1ᵀ v = ∂f_c(x1_a)/∂θ`` and one JVP of ``f(x2)`` along
it gives the column ``J2 J1ᵀ v`` (b2, C), i.e. Θ(x2_·, x1_a)_{·c}. ``vmap`` over the b1·C'
basis vectors (in chunks that fit the memory budget) yields the block:

* ``full``:      Θ[a, b, c, d] = (J2 J1ᵀ e_{a,c})[b, d]                 -> (b1, b2, C, C)
* ``trace``:     Θ[a, b] = Σ_c (J2 J1ᵀ e_{a,c})[b, c] / C               -> (b1, b2)
* ``logit-sum``: Θ[a, b] = Σ_d (J2 J1ᵀ Σ_c e_{a,c})[b, d]               -> (b1, b2)
* ``single``:    Θ[a, b] = (J2 J1ᵀ e_{a,i})[b, i]                        -> (b1, b2)

Cost per block: b1·C' JVPs over b2 samples, ≈ 3·b1·b2·C'·F flops with F the forward flops of
one sample (≥ 2P), against 2·b1·b2·C'·P for Jacobian contraction — it never wins on flops
but needs only O(P) memory per basis vector: the choice when a single sample's C'×P
Jacobian does not fit the budget (huge models, many outputs).
"""

from __future__ import annotations

import torch
from torch.func import functional_call, jvp, vjp, vmap

from ntklab.kernels.capture import ModelPlan


def ntvp_block(
    plan: ModelPlan,
    x1: torch.Tensor,
    x2: torch.Tensor,
    mode: str,
    output_index: int | None,
    chunk: int | None = None,
) -> torch.Tensor:
    """eNTK block between batches ``x1`` (b1, ...) and ``x2`` (b2, ...) -> float64.

    ``chunk`` basis vectors are pushed through ``vmap`` at once (None: all b1·C').
    """
    C = plan.n_outputs
    params = plan.params
    fixed = plan.fixed
    b1, b2 = x1.shape[0], x2.shape[0]

    def f1(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(plan.model, {**fixed, **p}, (x1,)).reshape(b1, C)

    def f2(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(plan.model, {**fixed, **p}, (x2,)).reshape(b2, C)

    out1, pull = vjp(f1, params)
    kw = {"dtype": out1.dtype, "device": out1.device}
    if mode in ("full", "trace"):
        basis = torch.eye(b1 * C, **kw).reshape(b1 * C, b1, C)
    elif mode == "logit-sum":
        basis = torch.eye(b1, **kw)[:, :, None].expand(b1, b1, C).contiguous()
    else:
        basis = torch.zeros(b1, b1, C, **kw)
        basis[torch.arange(b1), torch.arange(b1), output_index] = 1.0

    def column(v: torch.Tensor) -> torch.Tensor:
        (tangent,) = pull(v)
        return jvp(f2, (params,), (tangent,))[1]  # (b2, C)

    cols = vmap(column, chunk_size=chunk)(basis)  # (b1·C', b2, C)
    if mode == "full":
        return cols.reshape(b1, C, b2, C).permute(0, 2, 1, 3).double()
    if mode == "trace":
        cols = cols.reshape(b1, C, b2, C)
        return torch.diagonal(cols, dim1=1, dim2=3).sum(-1).double().div_(C)
    if mode == "logit-sum":
        return cols.sum(-1).double()
    return cols[:, :, output_index].double()


def ntvp_chunk(plan: ModelPlan, b2: int, budget: int) -> int:
    """Basis vectors per ``vmap`` chunk: each holds a parameter vector (P) and the JVP's
    activations for b2 samples (≈ 3 × forward outputs)."""
    itemsize = torch.finfo(plan.dtype).bits // 8
    per = itemsize * (3 * plan.n_params + 4 * b2 * max(plan.act_numel, plan.n_outputs))
    return max(1, int(budget // max(1, per)))
