"""Per-sample Jacobians of the parameters no adapter reads, by ``torch.func`` or plain autograd.

The generic route of :mod:`~ntklab.kernels.empirical.capture`: ``vmap`` over samples of
``vmap`` over the cotangent rows of one ``torch.func.vjp``, checked once against autograd's
batch gradient, with a per-sample ``torch.autograd.grad`` loop where ``torch.func`` cannot
batch the model.
"""

from __future__ import annotations

import logging

import torch
from torch.func import functional_call, vjp, vmap

from ntklab.kernels.empirical.plan import ModelPlan, call_model

log = logging.getLogger(__name__)


def fallback_jacobian(plan: ModelPlan, x: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Per-sample Jacobian of the fallback parameters, (b, C', P_fb).

    ``vmap`` over samples of ``vmap`` over the cotangents ``V`` of one ``torch.func.vjp``;
    where ``torch.func`` cannot batch the model (a missing or faulty batching rule), a loop
    of per-sample, per-cotangent ``torch.autograd.grad`` calls (slow but always correct), and
    the plan remembers that choice.
    """
    fb = {n: plan.params[n] for n in plan.fallback}
    rest = {n: p for n, p in plan.params.items() if n not in fb}
    rest.update(plan.fixed)
    b = x.shape[0]
    if plan.fallback_vmap:

        def one(xi: torch.Tensor) -> dict[str, torch.Tensor]:
            def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
                return functional_call(plan.model, {**rest, **p}, (xi.unsqueeze(0),)).reshape(-1)

            _, pull = vjp(f, fb)
            return vmap(pull)(V)[0]

        try:
            jac = vmap(one)(x.detach())
            out = torch.cat([jac[n].reshape(b, V.shape[0], -1) for n in fb], dim=2)
            if not plan.fallback_checked:
                _check_fallback(plan, x, V, fb, rest, out)
                plan.fallback_checked = True
            return out
        except RuntimeError as err:
            log.debug("eNTK fallback: torch.func failed on this model (%s); using per-sample autograd", err)
            plan.fallback_vmap = False
    out = torch.empty(b, V.shape[0], plan.fallback_params, dtype=plan.dtype, device=plan.device)
    leaves = {n: p.detach().requires_grad_(True) for n, p in fb.items()}
    with torch.enable_grad():
        for i in range(b):
            y = functional_call(plan.model, {**rest, **leaves}, (x[i : i + 1].detach(),)).reshape(-1)
            for c in range(V.shape[0]):
                g = torch.autograd.grad(
                    y, list(leaves.values()), V[c].to(y.dtype), retain_graph=c + 1 < V.shape[0]
                )
                out[i, c] = torch.cat([gi.reshape(-1) for gi in g])
    return out


def _check_fallback(
    plan: ModelPlan,
    x: torch.Tensor,
    V: torch.Tensor,
    fb: dict[str, torch.Tensor],
    rest: dict[str, torch.Tensor],
    jac: torch.Tensor,
) -> None:
    """Raise RuntimeError unless Σ_samples of the ``torch.func`` per-sample Jacobian equals
    autograd's batch gradient for the first cotangent (faulty batching rules, e.g. PReLU's
    in some torch versions, give wrong shapes or values silently)."""
    if jac.shape != (x.shape[0], V.shape[0], plan.fallback_params):
        raise RuntimeError(f"per-sample Jacobian of shape {tuple(jac.shape)}")
    leaves = {n: p.detach().requires_grad_(True) for n, p in fb.items()}
    with torch.enable_grad():
        y = call_model(plan.model, {**rest, **leaves}, x.detach())
        g = torch.autograd.grad(y, list(leaves.values()), V[0].to(y.dtype).expand_as(y))
    ref = torch.cat([gi.reshape(-1) for gi in g])
    err = float((jac[:, 0].sum(0) - ref).norm())
    tol = (1e-9 if ref.dtype == torch.float64 else 1e-3) * (float(ref.norm()) + 1e-30)
    if not err <= tol:
        raise RuntimeError(f"per-sample Jacobian does not sum to the batch gradient (error {err:.3g})")
