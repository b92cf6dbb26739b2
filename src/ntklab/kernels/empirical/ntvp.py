"""NTK-vector products (PyTorch's NTK tutorial, "ntk_vps"): never hold a per-sample Jacobian.

For batches x1 (b1) and x2 (b2) and a cotangent basis vector ``v = e_{a,c}`` on the outputs of
x1, one VJP gives the parameter vector ``J1ᵀ v = ∂f_c(x1_a)/∂θ`` and one JVP of ``f(x2)`` along
it gives the column ``J2 J1ᵀ v`` (b2, C), i.e. Θ(x2_·, x1_a)_{·c}. ``vmap`` over the b1·C'
basis vectors — the mode's cotangent rows v_k placed on one sample, ``e_a ⊗ v_k`` (in chunks
that fit the memory budget) — yields the columns k[a, b, j, d] = (J2 J1ᵀ (e_a ⊗ v_j))[b, d]
(b1, b2, C', C) that :meth:`Mode.reduce <ntklab.kernels.empirical.mode.Mode.reduce>` turns
into the block.

Cost per block: b1·C' JVPs over b2 samples, ≈ 3·b1·b2·C'·F flops with F the forward flops of
one sample (≥ 2P), against 2·b1·b2·C'·P for Jacobian contraction — it never wins on flops
but needs only O(P) memory per basis vector: the choice when a single sample's C'×P
Jacobian does not fit the budget (huge models, many outputs).
"""

from __future__ import annotations

import logging
import math
import time

import torch
from torch.func import functional_call, jvp, vjp, vmap

from ntklab.kernels.empirical.budget import FEATURES_SHARE, NTVP_TILE_SHARE
from ntklab.kernels.empirical.job import Job, sync
from ntklab.kernels.empirical.mode import Mode
from ntklab.kernels.empirical.plan import ModelPlan
from ntklab.kernels.empirical.tiles import chunks, symmetrize
from ntklab.progress import progress_bar

log = logging.getLogger(__name__)


def ntvp_block(
    plan: ModelPlan, x1: torch.Tensor, x2: torch.Tensor, mode: Mode, chunk: int | None = None
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
    V = mode.cotangents(out1)
    eye = torch.eye(b1, dtype=out1.dtype, device=out1.device)
    basis = (eye[:, None, :, None] * V[None, :, None, :]).reshape(b1 * mode.n_cot, b1, C)  # e_a ⊗ v_k

    def column(v: torch.Tensor) -> torch.Tensor:
        (tangent,) = pull(v)
        return jvp(f2, (params,), (tangent,))[1]  # (b2, C)

    cols = vmap(column, chunk_size=chunk)(basis)  # (b1·C', b2, C)
    return mode.reduce(cols.reshape(b1, mode.n_cot, b2, C).permute(0, 2, 1, 3))


def ntvp_chunk(plan: ModelPlan, b2: int, budget: int) -> int:
    """Basis vectors per ``vmap`` chunk: each holds a parameter vector (P) and the JVP's
    activations for b2 samples (≈ 3 × forward outputs)."""
    itemsize = torch.finfo(plan.dtype).bits // 8
    per = itemsize * (3 * plan.n_params + 4 * b2 * max(plan.act_numel, plan.n_outputs))
    return max(1, int(budget // max(1, per)))


def run_ntvp(job: Job) -> None:
    """Run ``job`` as :func:`ntvp_block` over S×S tiles (upper ones only when symmetric); S
    from ``job.tile`` or the budget (at most 256)."""
    plan, x1, x2, budget, result, st = job.plan, job.x1, job.x2, job.budget, job.sink, job.stats
    sym = job.sym
    itemsize = torch.finfo(plan.dtype).bits // 8
    C = plan.n_outputs
    per = itemsize * max(plan.act_numel, C) * 4
    S = (
        int(job.tile)
        if job.tile
        else max(
            1, min(max(len(x1), len(x2)), 256, int(math.isqrt(max(1, int(NTVP_TILE_SHARE * budget) // per))))
        )
    )
    chunk = ntvp_chunk(plan, S, int(FEATURES_SHARE * budget))
    st.panel = st.chunk = S
    rows = chunks(0, len(x1), S)
    cols = chunks(0, len(x2), S)
    pairs = [(r, c) for r in rows for c in cols if not sym or c[0] >= r[0]]
    log.debug("eNTK ntvp: tile %d, %d basis vectors per vmap chunk, %d tiles", S, chunk, len(pairs))
    with progress_bar(total=len(pairs), desc="eNTK", enabled=job.progress and len(pairs) > 1) as bar:
        for (i0, i1), (j0, j1) in pairs:
            t0 = time.perf_counter()
            blk = ntvp_block(plan, x1[i0:i1], x2[j0:j1], job.mode, chunk)
            if sym and i0 == j0:
                blk = symmetrize(blk)
            sync(plan.device)
            st.contract_s += time.perf_counter() - t0
            st.tiles += 1
            result.write(i0, i1, j0, j1, blk, mirror=sym and j0 != i0)
            bar.update(1)
            if j1 == len(x2):
                result.panel_done()
