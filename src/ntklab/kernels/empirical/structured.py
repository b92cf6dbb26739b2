"""Structured (layer-wise) eNTK: Gram matrices of layer inputs and output gradients.

For an affine layer ``y[t] = w_s · W a[t] + b_s · b`` (Linear: positions ``t`` are the
leading axes; convolution: ``a[t]`` is the patch of output position ``t``), the per-sample
gradient is ``w_s Σ_t δ_c[t] ⊗ a[t]``, so its eNTK contribution between samples x and x' is

    Θ_l(x, x')_{cd} = Σ_{t, t'} (w_s² a[t]·a'[t'] + b_s²) · (δ_c[t]·δ'_d[t'])

with ``δ_c = ∂f_c/∂y`` (docs/design.md eNTK, summed over the layer's parameters). In ``trace``
mode Σ_c δ_c[t]·δ'_c[t'] / C is one Gram over the stacked (C·O) gradients; for an MLP layer
(T = 1) this is

    Θ_l = (w_s² A Aᵀ + b_s²) ⊙ (Σ_c Δ_c Δ_cᵀ) / C,   A (n, K), Δ_c (n, O).

Cost per pair of samples: 2·T²·(C'·O + K) flops for the two Grams (``full``: 2·T²·(C²·O + K))
plus a few passes over the T² products, against 2·C'·O·K for contracting per-sample
Jacobians (:meth:`Mode.contract <ntklab.kernels.empirical.mode.Mode.contract>`): the Gram
route wins when T² is small against O·K/(O + K/C') — always for Dense layers, for convolutions
only on small feature maps (estimates in :mod:`ntklab.kernels.empirical.route`).
"""

from __future__ import annotations

import math

import torch

from ntklab.kernels.empirical.capture import Factors
from ntklab.kernels.empirical.mode import Mode
from ntklab.kernels.empirical.tiles import chunks, workspace

#: Rows of one Gram-route GEMM output chunk (samples × positions).
GRAM_ROWS = 2048


def gram_accumulate(
    acc: torch.Tensor,
    f1: Factors,
    f2: Factors,
    mode: Mode,
    max_elems: int = 2**24,
    ws: dict[str, torch.Tensor] | None = None,
) -> None:
    """Add Θ_l between two batches, from their factors, to the float64 ``acc`` (b1, b2) or
    (b1, b2, C, C).

    Products run in the factors' dtype; ``max_elems`` bounds each T·b1 × T·b2 Gram temporary
    (the batches are split to fit). The parameterization is folded into ``f.a``
    (:class:`~ntklab.kernels.empirical.capture.Factors`), so ``A Aᵀ = w_s² a·a′ + b_s²``
    directly. ``ws`` holds reusable buffers for the temporaries.
    """
    ws = {} if ws is None else ws
    a1, d1, a2, d2 = f1.a, f1.d, f2.a, f2.d
    b1, t, c, o = d1.shape
    b2 = d2.shape[0]
    full = mode.full
    per = t * t * (c * c if full else 1)
    # chunks of at most ~2048 Gram rows: larger GEMM outputs outgrow the cache and run slower
    step = max(1, min(int(math.isqrt(max(1, max_elems // per))), GRAM_ROWS // (t * (c if full else 1))))
    for r0, r1 in chunks(0, b1, step):
        r = r1 - r0
        A1 = a1[r0:r1].reshape(r * t, -1)
        D1 = d1[r0:r1].reshape(r * t * c, o) if full else d1[r0:r1].reshape(r * t, c * o)
        for s0, s1 in chunks(0, b2, step):
            s = s1 - s0
            D2 = d2[s0:s1].reshape(s * t * c, o) if full else d2[s0:s1].reshape(s * t, c * o)
            kw = {"dtype": D1.dtype, "device": D1.device}
            g = workspace(ws, "g", D1.shape[0] * D2.shape[0], **kw).view(D1.shape[0], D2.shape[0])
            torch.mm(D1, D2.T, out=g)  # Σ over output features (and over cotangents unless full)
            gp = workspace(ws, "gp", r * t * s * t, **kw).view(r * t, s * t)
            torch.mm(A1, a2[s0:s1].reshape(s * t, -1).T, out=gp)  # w_s² a·a' + b_s²
            dst = acc[r0:r1, s0:s1]
            if full:
                g = g.view(r, t, c, s, t, c).mul_(gp.view(r, t, 1, s, t, 1))
                dst.add_(g.sum(4).sum(1).permute(0, 2, 1, 3))
            else:  # fp32 product, then one fp64 accumulation (mixed-dtype addcmul_ is slow)
                g.mul_(gp)
                dst.add_(g if t == 1 else g.view(r, t, s, t).sum(3).sum(1), alpha=mode.weight)
