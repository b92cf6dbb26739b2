"""Layer adapters: how the eNTK capture reads one recognised layer's factors.

For a sample, an affine layer ``y = w_s · W ⋆ a + b_s · b`` (Linear or convolution, ``⋆`` over
positions ``t``) has the per-sample gradients

    ∂(v_cᵀ f)/∂W = w_s Σ_t δ_c[t] ⊗ a[t],     ∂(v_cᵀ f)/∂b = b_s Σ_t δ_c[t],

with ``a[t]`` the layer input at position ``t`` (the flattened receptive field, "patch", for a
convolution) and ``δ_c = v_cᵀ ∂f/∂y``. Normalization layers with an elementwise affine
``y = γ ⊙ x̂ + β`` (BatchNorm in eval mode, LayerNorm, GroupNorm) give ``∂/∂γ = Σ_t δ_c[t] ⊙ x̂[t]``
and ``∂/∂β = Σ_t δ_c[t]``. An adapter returns ``a`` (b, T, K) (``x̂`` (b, T, O) for norm
layers) from the layer's input and ``δ`` (b, T, O) from the gradient of its output.

Recognised: ``torch.nn`` Linear, Conv1d/Conv2d (``groups=1``), affine BatchNorm (eval, running
statistics), GroupNorm and LayerNorm; and any module whose class declares the attribute
``entk_affine`` (no import of its package needed):

* ``"dense"``: ``y = w_scale · x Wᵀ + b_scale · b`` on (..., K);
* ``"conv"``:  ``y = w_scale · conv(F.pad(x, pads), W, stride) + b_scale · b`` with zero
  ``pads`` in ``F.pad`` order and no dilation,

with ``weight``, ``bias`` (or None), ``w_scale``, ``b_scale`` (and ``stride``, ``pads``)
attributes (ntklab's Dense and Conv modules).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


def _declared(module: nn.Module) -> str | None:
    """The ``entk_affine`` contract a module's class declares, if any."""
    return getattr(type(module), "entk_affine", None)


class Adapter:
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


class _LinearAdapter(Adapter):
    """``nn.Linear`` and declared ``"dense"`` modules on (b, *lead, K): positions are ``lead``."""

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1, x.shape[-1])

    def delta(self, g: torch.Tensor) -> torch.Tensor:
        return g.reshape(g.shape[0], -1, g.shape[-1])


class _ConvAdapter(Adapter):
    """1-D/2-D convolutions with ``groups=1``: ``nn.Conv1d``, ``nn.Conv2d`` and declared
    ``"conv"`` modules.

    Patches come from ``F.unfold`` of the explicitly padded input, in the order of
    ``weight.flatten(1)`` (input channel major, then kernel offsets).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        w = module.weight
        self.nd = w.dim() - 2
        self.kernel = tuple(w.shape[2:])
        self.stride = tuple(module.stride)
        self.own = _declared(module) == "conv"
        self.dilation = (1,) * self.nd if self.own else tuple(module.dilation)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if self.own:
            return F.pad(x, m.pads) if any(m.pads) else x
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


class _NormAdapter(Adapter):
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


def adapter_for(module: nn.Module) -> Adapter | None:
    """The adapter of a recognised layer, or None (its parameters use the generic fallback)."""
    declared = _declared(module)
    if isinstance(module, nn.Linear) or declared == "dense":
        return _LinearAdapter(module)
    if declared == "conv" and module.weight.dim() in (3, 4):
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
