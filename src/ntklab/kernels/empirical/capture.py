"""Capture of a batch: per-sample Jacobian rows and Gram-route factors of every recognised layer.

One batched forward with hooks records, for every recognised layer ``l``, its input ``a_l`` and
its output ``y_l``; ``C'`` backward passes (one per cotangent row ``v_c`` of the mode, see
:class:`~ntklab.kernels.empirical.mode.Mode`) give the output gradients
``δ_l,c = v_cᵀ ∂f/∂y_l``. A Jacobian-route layer writes its per-sample gradients
``w_s Σ_t δ_c[t] ⊗ a[t]`` (:mod:`~ntklab.kernels.empirical.adapters`) straight into the
Jacobian; a Gram-route layer keeps its factors:

* ``a``: (b, T, K') layer inputs / patches with the parameterization folded in;
* ``d``: (b, T, C', O) output gradients.

Parameters of any other layer get per-sample ``torch.func`` VJPs
(:mod:`~ntklab.kernels.empirical.fallback`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ntklab.kernels.empirical.fallback import fallback_jacobian
from ntklab.kernels.empirical.plan import LayerPlan, ModelPlan
from ntklab.kernels.empirical.probe import run_hooked


@dataclass
class Factors:
    """Gram-route factors of one layer for a batch.

    ``a`` (b, T, K'): the layer input with the parameterization folded in, ``[w_s·a, b_s]``
    (weight and bias differentiated), ``[w_s·a]`` or ``[b_s]``, so that
    ``a[t]·a'[t'] = w_s² a[t]·a'[t'] + b_s²``; ``d`` (b, T, C', O): output gradients.
    """

    a: torch.Tensor
    d: torch.Tensor


@dataclass(frozen=True)
class JacobianLayout:
    """Where each differentiated parameter sits in the per-sample Jacobian (b, C', P_jac).

    ``blocks`` maps a layer name to its (weight, bias) column ranges (None where not
    differentiated); ``fallback`` is the column range of the fallback parameters.
    """

    blocks: dict[str, tuple[tuple[int, int] | None, tuple[int, int] | None]]
    fallback: tuple[int, int] | None
    size: int


def jacobian_layout(plan: ModelPlan, layers: Sequence[LayerPlan]) -> JacobianLayout:
    """Column ranges for ``layers`` (weight then bias each) followed by the fallback block."""
    pos = 0
    blocks: dict[str, tuple[tuple[int, int] | None, tuple[int, int] | None]] = {}
    for lp in layers:
        w = b = None
        if lp.weight:
            n = lp.O * lp.K if lp.kind == "affine" else lp.O
            w, pos = (pos, pos + n), pos + n
        if lp.bias:
            b, pos = (pos, pos + lp.O), pos + lp.O
        blocks[lp.name] = (w, b)
    fb = None
    if plan.fallback:
        n = plan.fallback_params
        fb, pos = (pos, pos + n), pos + n
    return JacobianLayout(blocks, fb, pos)


def _gram_inputs(lp: LayerPlan, a: torch.Tensor) -> torch.Tensor:
    """``[w_s·a, b_s]`` (b, T, K') for the Gram route (see :class:`Factors`)."""
    parts = []
    if lp.weight:
        parts.append(a * lp.adapter.w_scale)
    if lp.bias:
        parts.append(torch.full((*a.shape[:2], 1), lp.adapter.b_scale, dtype=a.dtype, device=a.device))
    return parts[0].contiguous() if len(parts) == 1 else torch.cat(parts, dim=2)


def capture_into(
    plan: ModelPlan,
    x: torch.Tensor,
    V: torch.Tensor,
    gram: Sequence[LayerPlan],
    J: torch.Tensor | None,
    layout: JacobianLayout,
) -> dict[str, Factors]:
    """Capture a batch ``x`` (b, ...): per-sample Jacobian written into ``J`` (b, C', P_jac),
    Gram-route factors returned for the layers in ``gram``.

    One forward with hooks, then one backward per cotangent row of ``V`` (C', C) asking only
    for gradients with respect to layer outputs; for Jacobian-route layers each gradient
    ``δ_c`` is turned at once into ``w_s Σ_t δ_c[t] ⊗ a[t]`` by a batched matmul written in
    place into ``J[:, c]``. Parameters without a recognised layer get per-sample VJPs.
    """
    gram_names = {lp.name for lp in gram}
    factors: dict[str, Factors] = {}
    x = x.detach()
    if plan.layers:
        in_layers = {n for lp in plan.layers for n in (lp.weight, lp.bias) if n}
        tensors = {**plan.fixed, **plan.params}
        # Only the captured layers' parameters need grad: it puts their outputs in the graph.
        tensors.update({n: plan.params[n].detach().requires_grad_(True) for n in in_layers})
        with torch.enable_grad():
            out, calls, _ = run_hooked(plan, x, tensors)
            ys = [calls[lp.name][0][1] for lp in plan.layers]
            with torch.no_grad():
                acts = []
                for lp in plan.layers:
                    a = lp.adapter.inputs(calls[lp.name][0][0].detach())
                    if lp.name in gram_names:
                        a = _gram_inputs(lp, a)
                    acts.append(a)
            del calls
            ds: dict[str, list[torch.Tensor]] = {n: [] for n in gram_names}
            v_all = V.to(out.dtype)
            for c in range(V.shape[0]):
                grads = torch.autograd.grad(out, ys, v_all[c].expand_as(out), retain_graph=c + 1 < V.shape[0])
                with torch.no_grad():
                    for lp, a, g in zip(plan.layers, acts, grads):
                        d = lp.adapter.delta(g)  # (b, T, O)
                        if lp.name in gram_names:
                            ds[lp.name].append(d)
                        else:
                            _write_jacobian(lp, a, d, J[:, c], layout.blocks[lp.name])
                del grads
        del out, ys
        for lp, a in zip(plan.layers, acts):
            if lp.name in gram_names:
                factors[lp.name] = Factors(a, torch.stack(ds.pop(lp.name), dim=2))
    if layout.fallback is not None:
        f0, f1 = layout.fallback
        J[:, :, f0:f1] = fallback_jacobian(plan, x, V)
    return factors


def _write_jacobian(
    lp: LayerPlan,
    a: torch.Tensor,
    d: torch.Tensor,
    Jc: torch.Tensor,
    block: tuple[tuple[int, int] | None, tuple[int, int] | None],
) -> None:
    """Per-sample gradients of one layer for one cotangent into ``Jc`` (b, P_jac)."""
    (w, bias) = block
    b = d.shape[0]
    if w is not None:
        if lp.kind == "affine":  # w_s Σ_t δ[t] ⊗ a[t], the scale applied inside the GEMM
            dst = Jc[:, w[0] : w[1]].view(b, lp.O, lp.K)
            torch.baddbmm(dst, d.transpose(1, 2), a, beta=0.0, alpha=lp.adapter.w_scale, out=dst)
        else:
            Jc[:, w[0] : w[1]] = (d * a).sum(1)
    if bias is not None:
        s = d.sum(1)
        if lp.kind == "affine" and lp.adapter.b_scale != 1.0:
            s.mul_(lp.adapter.b_scale)
        Jc[:, bias[0] : bias[1]] = s
