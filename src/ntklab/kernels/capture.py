"""Per-layer capture for the empirical NTK of any ``nn.Module``.

One batched forward with hooks records, for every recognised parameter-holding layer ``l``,
its input ``a_l`` and its output ``y_l``; ``C'`` backward passes (one per output cotangent
``v_c``) give the backpropagated output gradients ``δ_l,c = v_cᵀ ∂f/∂y_l``. For a sample ``x``
the per-sample weight gradient of an affine layer ``y = w_s · W ⋆ a + b_s · b`` (Linear or
convolution, ``⋆`` over positions ``t``) is

    ∂(v_cᵀ f)/∂W = w_s Σ_t δ_c[t] ⊗ a[t],     ∂(v_cᵀ f)/∂b = b_s Σ_t δ_c[t],

with ``a[t]`` the layer input at position ``t`` (the flattened receptive field, "patch", for a
convolution). Normalization layers with an elementwise affine ``y = γ ⊙ x̂ + β`` (BatchNorm in
eval mode, LayerNorm, GroupNorm) give ``∂/∂γ = Σ_t δ_c[t] ⊙ x̂[t]`` and ``∂/∂β = Σ_t δ_c[t]``.

Factors use one layout for every layer (b = batch, T = positions, K = input features per
position, O = output features, C' = cotangents):

* ``a``: (b, T, K) layer inputs / patches, or (b, T, O) normalized inputs ``x̂``;
* ``d``: (b, T, C', O) output gradients.

Parameters of any other layer (or of a layer used twice, or whose weight is shared or used
outside its module) fall back to per-sample ``torch.func`` vector-Jacobian products.

The eNTK is only defined when samples do not interact inside a batch;
:func:`check_per_sample` refuses models that mix them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vjp, vmap

from ntklab.arch.linear import ConvModule, DenseModule
from ntklab.arch.padding import pad_input
from ntklab.errors import NtkLabError

log = logging.getLogger("ntklab.kernels.empirical")


class ModelError(NtkLabError):
    """A model cannot have an empirical NTK as given (it mixes samples, is random, ...)."""


# ---------------------------------------------------------------------------------------------
# Layer adapters: how to read inputs/patches and output gradients of one module kind.
# ---------------------------------------------------------------------------------------------


class _Adapter:
    """Reads the factors of one module; subclasses know one family of layers."""

    kind: Literal["affine", "norm"] = "affine"

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    @property
    def w_scale(self) -> float:
        return float(getattr(self.module, "w_scale", 1.0))

    @property
    def b_scale(self) -> float:
        return float(getattr(self.module, "b_scale", 1.0))

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Layer input of the batch -> ``a`` (b, T, K) (norm layers: ``x̂`` (b, T, O)); may be
        a strided view."""
        raise NotImplementedError

    def delta(self, g: torch.Tensor) -> torch.Tensor:
        """Gradient w.r.t. the output for one cotangent (b, *out) -> (b, T, O), maybe a view."""
        raise NotImplementedError


def _channels_last(g: torch.Tensor) -> torch.Tensor:
    """(b, O, *spatial) -> (b, T, O) view with T = prod(spatial)."""
    return g.reshape(g.shape[0], g.shape[1], -1).transpose(1, 2)


class _LinearAdapter(_Adapter):
    """``nn.Linear`` and ntklab's ``DenseModule`` on (b, *lead, K): positions are ``lead``."""

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1, x.shape[-1])

    def delta(self, g: torch.Tensor) -> torch.Tensor:
        return g.reshape(g.shape[0], -1, g.shape[-1])


class _ConvAdapter(_Adapter):
    """1-D/2-D convolutions with ``groups=1``: ``nn.Conv1d``, ``nn.Conv2d`` and ``ConvModule``.

    Patches come from ``F.unfold`` of the explicitly padded input, in the order of
    ``weight.flatten(1)`` (input channel major, then kernel offsets).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        w = module.weight
        self.nd = w.dim() - 2
        self.kernel = tuple(w.shape[2:])
        self.stride = tuple(module.stride)
        self.dilation = (1,) * self.nd if isinstance(module, ConvModule) else tuple(module.dilation)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if isinstance(m, ConvModule):
            return pad_input(x, m.pads)
        if m.padding_mode != "zeros":
            return F.pad(x, m._reversed_padding_repeated_twice, mode=m.padding_mode)
        if isinstance(m.padding, str):
            if m.padding == "valid":
                return x
            pads: list[int] = []  # 'same': total d(k-1), left = total // 2 (as torch does)
            for k, d in zip(reversed(self.kernel), reversed(self.dilation)):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return F.pad(x, pads)
        pads = [p for p in reversed(m.padding) for _ in range(2)]
        return F.pad(x, pads) if any(pads) else x

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = self._pad(x)
        if self.nd == 1:
            cols = F.unfold(
                x.unsqueeze(-2),
                (1, self.kernel[0]),
                dilation=(1, self.dilation[0]),
                stride=(1, self.stride[0]),
            )
        else:
            cols = F.unfold(x, self.kernel, dilation=self.dilation, stride=self.stride)
        return cols.transpose(1, 2)  # (b, T, K) view of (b, K, T)

    def delta(self, g: torch.Tensor) -> torch.Tensor:
        return _channels_last(g)


class _NormAdapter(_Adapter):
    """Elementwise affine of a normalization: BatchNorm (eval, running stats), LayerNorm,
    GroupNorm. ``inputs`` returns ``x̂`` (b, T, O) so that ``y = γ ⊙ x̂ + β``."""

    kind = "norm"

    @property
    def w_scale(self) -> float:
        return 1.0

    @property
    def b_scale(self) -> float:
        return 1.0

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return _channels_last(
                F.batch_norm(x, m.running_mean, m.running_var, None, None, False, 0.0, m.eps)
            )
        if isinstance(m, nn.GroupNorm):
            return _channels_last(F.group_norm(x, m.num_groups, None, None, m.eps))
        xh = F.layer_norm(x, m.normalized_shape, None, None, m.eps)
        return xh.reshape(x.shape[0], -1, math.prod(m.normalized_shape))

    def delta(self, g: torch.Tensor) -> torch.Tensor:
        m = self.module
        if isinstance(m, nn.LayerNorm):
            return g.reshape(g.shape[0], -1, math.prod(m.normalized_shape))
        return _channels_last(g)


def _adapter_for(module: nn.Module) -> _Adapter | None:
    """The adapter of a recognised layer, or None (its parameters use the generic fallback)."""
    if isinstance(module, (nn.Linear, DenseModule)):
        return _LinearAdapter(module)
    if isinstance(module, ConvModule) and module.weight.dim() in (3, 4):
        return _ConvAdapter(module)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1:
        return _ConvAdapter(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
        if module.training or not module.track_running_stats or module.running_mean is None:
            return None  # batch statistics: refused by check_per_sample
        if module.weight is None or module.weight.dim() != 1:
            return None
        return _NormAdapter(module)
    if isinstance(module, nn.GroupNorm) and module.affine:
        return _NormAdapter(module)
    if isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        return _NormAdapter(module)
    return None


# ---------------------------------------------------------------------------------------------
# The plan: which parameters are read from which layer, which fall back.
# ---------------------------------------------------------------------------------------------


@dataclass
class LayerPlan:
    """One recognised layer whose chosen parameters are read from its factors.

    Attributes
    ----------
    name : str
        Module path in the model.
    adapter : _Adapter
        Reads the factors.
    weight, bias : str or None
        Full names of the differentiated weight/bias (None: frozen or absent).
    T, K, O : int
        Positions, input features per position (``O`` for norm layers), output features;
        filled by :func:`build_plan`'s probe.
    route : {"jacobian", "gram"}
        How the eNTK contribution is computed (see :mod:`ntklab.kernels.structured`).
    """

    name: str
    adapter: _Adapter
    weight: str | None
    bias: str | None
    T: int = 0
    K: int = 0
    O: int = 0
    route: str = "jacobian"

    @property
    def kind(self) -> str:
        return self.adapter.kind

    @property
    def n_params(self) -> int:
        """Differentiated scalars of this layer."""
        w = (self.O * self.K if self.kind == "affine" else self.O) if self.weight else 0
        return w + (self.O if self.bias else 0)

    @property
    def gram_ok(self) -> bool:
        """Whether the Gram (structured) route applies: affine layers only."""
        return self.kind == "affine"


@dataclass
class ModelPlan:
    """How the per-sample derivatives of a model are obtained.

    Attributes
    ----------
    model : nn.Module
    params : dict[str, Tensor]
        Differentiated parameters (detached), in ``named_parameters`` order.
    fixed : dict[str, Tensor]
        Frozen parameters and buffers.
    n_outputs : int
        C, outputs per sample.
    layers : list[LayerPlan]
        Layers read from factors.
    fallback : list[str]
        Names of differentiated parameters handled by per-sample ``torch.func`` VJPs.
    act_numel : int
        Scalars of all module outputs for one sample (a proxy for forward memory).
    fallback_vmap : bool
        Whether the fallback uses ``torch.func`` (False after it failed on this model).
    """

    model: nn.Module
    params: dict[str, torch.Tensor]
    fixed: dict[str, torch.Tensor]
    n_outputs: int
    layers: list[LayerPlan] = field(default_factory=list)
    fallback: list[str] = field(default_factory=list)
    act_numel: int = 0
    fallback_vmap: bool = True
    fallback_checked: bool = False

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.params.values())).dtype

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params.values())

    @property
    def fallback_params(self) -> int:
        return sum(self.params[n].numel() for n in self.fallback)


def cotangents(mode: str, output_index: int | None, n_outputs: int, like: torch.Tensor) -> torch.Tensor:
    """Output cotangents V (C', C): identity for ``full``/``trace``, ones for ``logit-sum``,
    the unit vector ``e_i`` for ``single``."""
    kw = {"dtype": like.dtype, "device": like.device}
    if mode == "logit-sum":
        return torch.ones(1, n_outputs, **kw)
    if mode == "single":
        v = torch.zeros(1, n_outputs, **kw)
        v[0, output_index] = 1.0
        return v
    return torch.eye(n_outputs, **kw)


def prepare_input(x: torch.Tensor, plan_dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Move ``x`` to the model's device; floating inputs take the model's dtype."""
    if x.is_floating_point():
        return x.to(device=device, dtype=plan_dtype)
    return x.to(device=device)


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


def _batchnorms_in_training(model: nn.Module) -> list[str]:
    return [
        n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]


def _call(model: nn.Module, tensors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Model outputs (b, C) for a batch, with parameters/buffers taken from ``tensors``."""
    out = functional_call(model, tensors, (x,))
    return out.reshape(x.shape[0], -1)


def check_per_sample(model: nn.Module, tensors: dict[str, torch.Tensor], x: torch.Tensor) -> None:
    """Refuse models whose output for one sample depends on other samples of the batch.

    BatchNorm in training mode is refused by type; any other mixing (BatchNorm without running
    statistics, attention or pooling across the batch, ...) by perturbing sample 0 of a
    3-sample batch and checking that the outputs of samples 1 and 2 do not move. Randomness in
    the forward (dropout in training mode) is refused too. Buffers are cloned, so the model's
    running statistics are never updated.
    """
    bn = _batchnorms_in_training(model)
    if bn:
        raise ModelError(
            f"the model has BatchNorm {bn[0]!r} in training mode, which mixes the samples of a "
            "batch so the eNTK is undefined; call model.eval() first."
        )
    param_names = {n for n, _ in model.named_parameters()}
    cloned = {k: (v if k in param_names else v.clone()) for k, v in tensors.items()}
    xb = x[:3]
    if len(xb) < 3 and xb.is_floating_point():
        gen = torch.Generator(device=xb.device).manual_seed(0)
        extra = xb[:1] + torch.randn(
            3 - len(xb), *xb.shape[1:], generator=gen, device=xb.device, dtype=xb.dtype
        )
        xb = torch.cat([xb, extra])
    if len(xb) < 2:
        return
    with torch.no_grad():
        out = _call(model, cloned, xb)
        again = _call(model, cloned, xb)
        scale = float(out.abs().max()) + 1e-30
        tol = (1e-9 if out.dtype == torch.float64 else 1e-4) * scale
        if float((out - again).abs().max()) > tol:
            raise ModelError(
                "the model gives different outputs for the same batch (dropout or other randomness "
                "in training mode?), so its eNTK is undefined; call model.eval() first."
            )
        xp = xb.clone()
        if xp.is_floating_point():
            gen = torch.Generator(device=xp.device).manual_seed(1)
            noise = torch.randn(xp.shape[1:], generator=gen, device=xp.device, dtype=xp.dtype)
            xp[0] = xp[0] + noise * (xp.std() + 1.0)
        else:
            xp[0] = xb[1]
        moved = _call(model, cloned, xp)
        if float((moved[1:] - out[1:]).abs().max()) > tol:
            raise ModelError(
                "the model mixes the samples of a batch (changing one input changed the outputs "
                "of the others), so per-sample derivatives and the eNTK are undefined; use eval "
                "mode or a model that treats samples independently."
            )


def build_plan(
    model: nn.Module,
    x: torch.Tensor,
    params: Callable[[str, torch.Tensor], bool] | None = None,
    *,
    structured: bool = True,
    check: bool = True,
) -> ModelPlan:
    """Split parameters, check per-sample independence and find the recognised layers.

    A probe on the first samples of ``x`` reads each layer's (T, K, O) and verifies, for one
    random cotangent, that the per-sample gradients rebuilt from the factors sum to autograd's
    batch gradient; a layer that fails (weight used outside its module, ...) falls back.
    ``structured=False`` sends every parameter to the generic fallback.
    """
    chosen, fixed = _split_params(model, params)
    device = next(iter(chosen.values())).device
    dtype = next(iter(chosen.values())).dtype
    x = prepare_input(x, dtype, device)
    if check:
        check_per_sample(model, {**chosen, **fixed}, x)
    probe = x[:2]
    with torch.no_grad():
        n_outputs = int(_call(model, {**chosen, **fixed}, probe[:1]).shape[1])
    plan = ModelPlan(model, chosen, fixed, n_outputs)

    owners = _param_owners(model)
    name_of = {id(p): n for n, p in model.named_parameters()}
    layers: list[LayerPlan] = []
    taken: set[str] = set()
    if structured:
        for mname, mod in model.named_modules():
            own = {a: p for a, p in mod._parameters.items() if p is not None}
            names = {a: name_of[id(p)] for a, p in own.items()}
            if not any(n in chosen for n in names.values()):
                continue
            adapter = _adapter_for(mod)
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
            plan.act_numel = _run_hooked(plan, probe, {**chosen, **fixed})[2]
    return plan


def _run_hooked(
    plan: ModelPlan, x: torch.Tensor, tensors: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, list[tuple[torch.Tensor, torch.Tensor]]], int]:
    """Forward with hooks on the plan's layers: outputs (b, C), per layer [(input, output)],
    and the total numel of leaf-module outputs per sample."""
    calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {lp.name: [] for lp in plan.layers}
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
        out = _call(plan.model, tensors, x)
    finally:
        for h in handles:
            h.remove()
    return out, calls, act[0] // max(1, x.shape[0])


def _probe_layers(plan: ModelPlan, x: torch.Tensor) -> None:
    """Fill T, K, O; move layers that are called ≠ 1 time or fail the gradient check to the
    fallback."""
    tensors = {**plan.fixed, **{n: p.detach().requires_grad_(True) for n, p in plan.params.items()}}
    out, calls, act = _run_hooked(plan, x, tensors)
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
    for name, g in per_sample_grads(lp, a, d.unsqueeze(2)).items():
        ref = true[name]
        if ref is None or ref.numel() != g.shape[2]:
            return False
        s = g.sum(0)[0]
        err = float((s - ref.reshape(-1)).norm())
        tol = (1e-9 if s.dtype == torch.float64 else 1e-3) * (float(ref.norm()) + 1e-30)
        if not err <= tol:
            return False
    return True


def per_sample_grads(lp: LayerPlan, a: torch.Tensor, d: torch.Tensor) -> dict[str, torch.Tensor]:
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


def gram_inputs(lp: LayerPlan, a: torch.Tensor) -> torch.Tensor:
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
            out, calls, _ = _run_hooked(plan, x, tensors)
            ys = [calls[lp.name][0][1] for lp in plan.layers]
            with torch.no_grad():
                acts = []
                for lp in plan.layers:
                    a = lp.adapter.inputs(calls[lp.name][0][0].detach())
                    if lp.name in gram_names:
                        a = gram_inputs(lp, a)
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
        y = _call(plan.model, {**rest, **leaves}, x.detach())
        g = torch.autograd.grad(y, list(leaves.values()), V[0].to(y.dtype).expand_as(y))
    ref = torch.cat([gi.reshape(-1) for gi in g])
    err = float((jac[:, 0].sum(0) - ref).norm())
    tol = (1e-9 if ref.dtype == torch.float64 else 1e-3) * (float(ref.norm()) + 1e-30)
    if not err <= tol:
        raise RuntimeError(f"per-sample Jacobian does not sum to the batch gradient (error {err:.3g})")


def layer_summary(plan: ModelPlan) -> Sequence[str]:
    """One line per layer for debug logs."""
    return [
        f"{lp.name or '<root>'}: {type(lp.adapter.module).__name__} T={lp.T} K={lp.K} O={lp.O} route={lp.route}"
        for lp in plan.layers
    ]
