"""Building the plan: split the parameters, find the recognised layers, probe and verify them.

:func:`build_plan` checks that the model treats samples independently, reads each recognised
layer's sizes (T, K, O) from one hooked forward on a probe batch and verifies, for one random
cotangent, that the per-sample gradients rebuilt from the layer's factors sum to autograd's
batch gradient. A layer that is not recognised, is called other than once, shares its weight
or fails that check leaves its parameters to the generic fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ntklab.kernels.empirical.adapters import adapter_for
from ntklab.kernels.empirical.checks import ModelError, check_per_sample
from ntklab.kernels.empirical.plan import LayerPlan, ModelPlan, call_model, prepare_input

#: Per layer, the (input, output) of each call recorded by :func:`run_hooked`.
Calls = dict[str, list[tuple[torch.Tensor, torch.Tensor]]]


def _split_params(
    model: nn.Module, select: Callable[[str, torch.Tensor], bool] | None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    select = select or (lambda name, p: p.requires_grad)
    chosen = {n: p.detach() for n, p in model.named_parameters() if select(n, p)}
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in chosen}
    fixed.update({n: b for n, b in model.named_buffers()})
    if not chosen:
        raise ModelError("the model has no differentiated parameters; unfreeze some or change `params`.")
    return chosen, fixed


def _param_owners(model: nn.Module) -> dict[int, list[tuple[str, str]]]:
    """id(parameter) -> every (module path, attribute) that holds it (shared weights show twice)."""
    owners: dict[int, list[tuple[str, str]]] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for attr, p in mod._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append((mname, attr))
    return owners


def build_plan(
    model: nn.Module,
    x: torch.Tensor,
    params: Callable[[str, torch.Tensor], bool] | None = None,
) -> ModelPlan:
    """Split parameters, check per-sample independence and find the recognised layers.

    A probe on the first samples of ``x`` reads each layer's (T, K, O) and verifies, for one
    random cotangent, that the per-sample gradients rebuilt from the factors sum to autograd's
    batch gradient; a layer that fails (weight used outside its module, ...) falls back.
    ``params`` chooses the differentiated parameters (default: those with ``requires_grad``).
    """
    chosen, fixed = _split_params(model, params)
    device = next(iter(chosen.values())).device
    dtype = next(iter(chosen.values())).dtype
    x = prepare_input(x, dtype, device)
    check_per_sample(model, {**chosen, **fixed}, x)
    probe = x[:2]
    with torch.no_grad():
        n_outputs = int(call_model(model, {**chosen, **fixed}, probe[:1]).shape[1])
    plan = ModelPlan(model, chosen, fixed, n_outputs)

    owners = _param_owners(model)
    name_of = {id(p): n for n, p in model.named_parameters()}
    layers: list[LayerPlan] = []
    taken: set[str] = set()
    for mname, mod in model.named_modules():
        own = {a: p for a, p in mod._parameters.items() if p is not None}
        names = {a: name_of[id(p)] for a, p in own.items()}
        if not any(n in chosen for n in names.values()):
            continue
        adapter = adapter_for(mod)
        if adapter is None or set(own) - {"weight", "bias"}:
            continue
        if any(len(owners[id(p)]) > 1 for p in own.values()):
            continue
        w = names.get("weight") if names.get("weight") in chosen else None
        b = names.get("bias") if names.get("bias") in chosen else None
        layers.append(LayerPlan(mname, adapter, w, b))
        taken.update(n for n in (w, b) if n)
    plan.layers = layers
    plan.fallback = [n for n in chosen if n not in taken]
    if layers:
        with torch.enable_grad():
            _probe_layers(plan, probe)
    else:
        with torch.no_grad():
            plan.act_numel = run_hooked(plan, probe, {**chosen, **fixed})[2]
    return plan


def run_hooked(
    plan: ModelPlan, x: torch.Tensor, tensors: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, Calls, int]:
    """Forward with hooks on the plan's layers: outputs (b, C), per layer [(input, output)],
    and the total numel of leaf-module outputs per sample."""
    calls: Calls = {lp.name: [] for lp in plan.layers}
    modules = dict(plan.model.named_modules())
    handles = []
    act = [0]

    def make(name: str):
        def hook(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
            inp = args[0] if args else next(iter(kwargs.values()))
            calls[name].append((inp, out))
            # A clone keeps ``out`` untouched by later in-place ops (ReLU(inplace=True)).
            return out.clone()

        return hook

    def count(mod: nn.Module, args: tuple, out: Any) -> None:
        if isinstance(out, torch.Tensor) and len(mod._modules) == 0:
            act[0] += out.numel()

    try:
        for lp in plan.layers:
            handles.append(modules[lp.name].register_forward_hook(make(lp.name), with_kwargs=True))
        for mod in plan.model.modules():
            handles.append(mod.register_forward_hook(count))
        out = call_model(plan.model, tensors, x)
    finally:
        for h in handles:
            h.remove()
    return out, calls, act[0] // max(1, x.shape[0])


def _probe_layers(plan: ModelPlan, x: torch.Tensor) -> None:
    """Fill T, K, O; move layers that are called ≠ 1 time or fail the gradient check to the
    fallback."""
    tensors = {**plan.fixed, **{n: p.detach().requires_grad_(True) for n, p in plan.params.items()}}
    out, calls, act = run_hooked(plan, x, tensors)
    plan.act_numel = act
    gen = torch.Generator(device=out.device).manual_seed(2)
    u = torch.randn(out.shape, generator=gen, device=out.device, dtype=out.dtype)
    good: list[LayerPlan] = []
    once = [lp for lp in plan.layers if len(calls[lp.name]) == 1 and calls[lp.name][0][1].requires_grad]
    if once:
        ys = [calls[lp.name][0][1] for lp in once]
        wanted = [n for lp in once for n in (lp.weight, lp.bias) if n]
        grads = torch.autograd.grad(out, ys + [tensors[n] for n in wanted], u, allow_unused=True)
        dys, true = grads[: len(ys)], dict(zip(wanted, grads[len(ys) :]))
        for lp, dy in zip(once, dys):
            if dy is None:
                continue
            with torch.no_grad():
                a = lp.adapter.inputs(calls[lp.name][0][0].detach())
                d = lp.adapter.delta(dy)
            lp.T, lp.O, lp.K = d.shape[1], d.shape[2], a.shape[2]
            if a.shape[:2] != d.shape[:2] or lp.n_params != sum(
                plan.params[n].numel() for n in (lp.weight, lp.bias) if n
            ):
                continue
            if _rebuilt_grads_match(lp, a, d, true):
                good.append(lp)
    moved = [lp for lp in plan.layers if lp not in good]
    plan.layers = good
    back = set(plan.fallback) | {n for lp in moved for n in (lp.weight, lp.bias) if n}
    plan.fallback = [n for n in plan.params if n in back]


def _rebuilt_grads_match(
    lp: LayerPlan, a: torch.Tensor, d: torch.Tensor, true: dict[str, torch.Tensor | None]
) -> bool:
    """Whether Σ_samples of the per-sample gradients rebuilt from (a, d) equals autograd's
    batch gradient for each differentiated parameter of the layer."""
    for name, g in _per_sample_grads(lp, a, d.unsqueeze(2)).items():
        ref = true[name]
        if ref is None or ref.numel() != g.shape[2]:
            return False
        s = g.sum(0)[0]
        err = float((s - ref.reshape(-1)).norm())
        tol = (1e-9 if s.dtype == torch.float64 else 1e-3) * (float(ref.norm()) + 1e-30)
        if not err <= tol:
            return False
    return True


def _per_sample_grads(lp: LayerPlan, a: torch.Tensor, d: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample gradients of the layer's chosen parameters, ``name -> (b, C', p)``.

    ``a`` (b, T, K), ``d`` (b, T, C', O). Affine: ``w_s Σ_t δ[t] ⊗ a[t]`` (b, C', O·K) and
    ``b_s Σ_t δ[t]`` (b, C', O); norm: ``Σ_t δ[t] ⊙ x̂[t]`` (b, C', O) and ``Σ_t δ[t]``.
    """
    b, t, c, o = d.shape
    out: dict[str, torch.Tensor] = {}
    if lp.weight:
        if lp.kind == "affine":
            gw = torch.bmm(d.reshape(b, t, c * o).transpose(1, 2), a) * lp.adapter.w_scale
            out[lp.weight] = gw.reshape(b, c, o * a.shape[2])
        else:
            out[lp.weight] = torch.einsum("btco,bto->bco", d, a)
    if lp.bias:
        out[lp.bias] = d.sum(1) * lp.adapter.b_scale
    return out
