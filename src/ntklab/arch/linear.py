"""Dense and Conv layers in ``ntk`` and ``standard`` parameterization (docs/design.md).

``ntk``:      W, b ~ N(0, 1);  y = (W_std / sqrt(fan_in)) · W x + b_std · b
``standard``: W ~ N(0, W_std² / fan_in), b ~ N(0, b_std²);  y = W x + b

``fan_in`` is the number of input features (Dense) or ``in_channels · prod(kernel_size)``
(Conv, counting zero padding as inputs, as neural-tangents does). ``b_std=None`` means no bias;
``b_std=0`` keeps a bias parameter that starts at zero (it contributes to the NTK in
``standard`` parameterization, exactly as in neural-tangents).

Infinite-width kernel maps (neural-tangents 0.6.5 ``stax.Dense``/``stax.Conv``, Novak et al.
2020, arXiv:1912.02803), with ``A`` the (diagonal) window average (the identity for Dense):

* ``ntk``::

      NNGP_out = W_std² · A(NNGP_in) + b_std²
      NTK_out  = NNGP_out + W_std² · A(NTK_in)

* ``standard`` (Sohl-Dickstein et al. 2020, arXiv:2001.07301), with ``fan_in = C_in ·
  prod(kernel_size)`` the *finite* fan-in and ``[bias] = 1`` when the layer has a bias
  (``b_std is not None``, even ``b_std == 0``)::

      NNGP_out = W_std² · A(NNGP_in) + b_std²
      NTK_out  = fan_in · A(NNGP_in) + W_std² · A(NTK_in) + [bias]

The torch modules declare ``entk_affine`` (``"dense"`` or ``"conv"``): the contract by which the
eNTK capture reads their per-sample gradients from layer inputs and output gradients (see
:mod:`ntklab.kernels.empirical.adapters`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ntklab.arch.core import Layer, Shape
from ntklab.arch.kernel_ops import check_spatial, is_zero, pair_axes, window_sum
from ntklab.arch.padding import conv_out_shape, explicit_pads, normalize_tuple, pad_input, pads_1d
from ntklab.errors import ArchError
from ntklab.kernels.state import KernelState

Parameterization = Literal["ntk", "standard"]


class _Affine(nn.Module):
    """Shared parameter handling of Dense and Conv: raw parameters plus fixed output scales."""

    def __init__(
        self,
        weight_shape: tuple[int, ...],
        out_features: int,
        fan_in: int,
        W_std: float,
        b_std: float | None,
        parameterization: Parameterization,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        ntk = parameterization == "ntk"
        w_init = 1.0 if ntk else W_std / math.sqrt(fan_in)
        self.weight = nn.Parameter(torch.randn(weight_shape, generator=generator) * w_init)
        self.w_scale = W_std / math.sqrt(fan_in) if ntk else 1.0
        if b_std is None:
            self.bias = None
            self.b_scale = 0.0
        else:
            b_init = 1.0 if ntk else b_std
            self.bias = nn.Parameter(torch.randn(out_features, generator=generator) * b_init)
            self.b_scale = b_std if ntk else 1.0

    def extra_repr(self) -> str:
        return f"w_scale={self.w_scale:.4g}, b_scale={self.b_scale:.4g}"


class DenseModule(_Affine):
    """``y = w_scale · x Wᵀ + b_scale · b`` on inputs (N, D) -> (N, width)."""

    entk_affine: ClassVar[str] = "dense"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight) * self.w_scale
        if self.bias is not None:
            y = y + self.b_scale * self.bias
        return y


class ConvModule(_Affine):
    """``y = w_scale · conv(pad(x), W) + b_scale · b`` on (N, C, *spatial) with explicit pads."""

    entk_affine: ClassVar[str] = "conv"

    def __init__(self, *args: Any, stride: tuple[int, ...], pads: list[int], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.stride = stride
        self.pads = pads
        self.conv = F.conv1d if len(stride) == 1 else F.conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(pad_input(x, self.pads), self.weight, stride=self.stride) * self.w_scale
        if self.bias is not None:
            y = y + self.b_scale * self.bias.view(-1, *([1] * len(self.stride)))
        return y


def _affine_map(
    state: KernelState,
    tap_sum: Callable[[torch.Tensor, float], torch.Tensor],
    taps: int,
    W_std: float,
    b_std: float | None,
    parameterization: str,
) -> dict[str, torch.Tensor | None]:
    """Shared Dense/Conv update given ``tap_sum(t, α) = α Σ_d t`` (a new tensor; A = Σ_d / taps)."""
    w2 = float(W_std) ** 2
    b2 = 0.0 if b_std is None else float(b_std) ** 2
    scale = w2 / taps

    def cov_map(t: torch.Tensor) -> torch.Tensor:
        s = tap_sum(t, scale)
        return s.add_(b2) if b2 else s

    out: dict[str, torch.Tensor | None] = {"nngp": None, "ntk": state.ntk}
    ntk_in = state.ntk
    if state.nngp is not None and parameterization == "ntk":
        # NNGP' = W² A(K) + b²;  NTK' = NNGP' + W² A(Θ)
        nngp = cov_map(state.nngp)
        out["nngp"] = nngp
        if ntk_in is not None:
            out["ntk"] = nngp if is_zero(ntk_in) else tap_sum(ntk_in, scale).add_(nngp)
    elif state.nngp is not None:
        # NNGP' = W² A(K) + b²;  NTK' = fan_in A(K) + W² A(Θ) + [bias], fan_in·A = C_in·Σ_d
        sk = tap_sum(state.nngp, 1.0)
        nngp = sk * scale
        out["nngp"] = nngp.add_(b2) if b2 else nngp
        if ntk_in is not None:
            ntk = sk.mul_(state.width)
            if not is_zero(ntk_in):
                ntk.add_(tap_sum(ntk_in, scale))
            out["ntk"] = ntk.add_(1.0) if b_std is not None else ntk
    out["cov1"] = None if state.cov1 is None else cov_map(state.cov1)
    if state.cov2 is state.cov1:  # x2 is x1: one self covariance
        out["cov2"] = out["cov1"]
    else:
        out["cov2"] = None if state.cov2 is None else cov_map(state.cov2)
    return out


@dataclass(frozen=True)
class Dense(Layer):
    """Fully connected layer on (D,) inputs with ``width`` outputs.

    Example
    -------
    >>> Dense(512, W_std=1.5, b_std=0.05).out_shape((40,))
    (512,)
    """

    width: int
    W_std: float = 1.0
    b_std: float | None = 0.0
    parameterization: Parameterization = "ntk"
    name = "Dense"

    def out_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) != 1:
            raise ArchError(
                f"Dense takes (D,) inputs but got shape {in_shape}; put Flatten or GlobalAvgPool before it."
            )
        return (self.width,)

    def module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        self.out_shape(in_shape)
        d = in_shape[0]
        return DenseModule(
            (self.width, d), self.width, d, self.W_std, self.b_std, self.parameterization, generator
        )

    def kernel_map(self, state: KernelState) -> KernelState:
        """``ntk``: ``NNGP' = W_std² K + b_std²``, ``NTK' = NNGP' + W_std² Θ``;
        ``standard``: ``NTK' = D · K + W_std² Θ + [bias]`` with ``D = state.width`` the finite
        input width. Shapes are unchanged: (n1, n2), (n1,), (n2,).
        """
        check_spatial("Dense", state, 0)
        new = _affine_map(state, torch.mul, 1, self.W_std, self.b_std, self.parameterization)
        return state.replace(**new, var1=None, var2=None, width=self.width)


@dataclass(frozen=True)
class Conv(Layer):
    """Convolution over 1 or 2 spatial axes (given by ``len(kernel_size)``).

    ``padding`` is ``"SAME"`` (XLA semantics: out = ceil(in / stride), possibly asymmetric
    zero padding) or ``"VALID"`` (no padding). Inputs (C, L) or (C, H, W).
    """

    width: int
    kernel_size: tuple[int, ...] = (3,)
    stride: tuple[int, ...] | None = None
    padding: Literal["SAME", "VALID"] = "SAME"
    W_std: float = 1.0
    b_std: float | None = 0.0
    parameterization: Parameterization = "ntk"
    name = "Conv"

    def __post_init__(self) -> None:
        k = normalize_tuple(self.kernel_size, None, "kernel_size")
        object.__setattr__(self, "kernel_size", k)
        object.__setattr__(self, "stride", normalize_tuple(self.stride, len(k), "stride"))

    def out_shape(self, in_shape: Shape) -> Shape:
        return (self.width, *conv_out_shape(self.name, in_shape, self.kernel_size, self.stride, self.padding))

    def module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        self.out_shape(in_shape)
        c_in = in_shape[0]
        fan_in = c_in * math.prod(self.kernel_size)
        pads = explicit_pads(in_shape[1:], self.kernel_size, self.stride, self.padding)
        return ConvModule(
            (self.width, c_in, *self.kernel_size),
            self.width,
            fan_in,
            self.W_std,
            self.b_std,
            self.parameterization,
            generator,
            stride=self.stride,
            pads=pads,
        )

    def kernel_map(self, state: KernelState) -> KernelState:
        """Convolution (1D or 2D, any kernel size and stride, XLA ``SAME`` or ``VALID`` padding).

        With ``A(K)[q, q'] = (1/prod(k)) Σ_d K[s·q + d - lo, s·q' + d - lo]`` (the same filter
        offset ``d`` on both positions; zeros outside the input, ``lo`` the XLA low pad), the
        map of :meth:`Dense.kernel_map` holds with ``K, Θ`` replaced by ``A(K), A(Θ)`` and ``D``
        by ``fan_in = C_in · prod(k)`` (Novak et al. 2019 arXiv:1810.05148; Arora et al. 2019
        CNTK). ``A`` factorizes over spatial dims and is computed as ``k`` strided adds per dim.
        Shapes ``(..., *S, *S) -> (..., *S_out, *S_out)``.
        """
        nd = len(self.kernel_size)
        check_spatial("Conv", state, nd)
        geo = [
            pads_1d(n, k, s, self.padding) for n, k, s in zip(state.spatial, self.kernel_size, self.stride)
        ]

        def diagonal_sum(t: torch.Tensor, alpha: float) -> torch.Tensor:
            for dim, ((lo, _, out), k, s) in enumerate(zip(geo, self.kernel_size, self.stride)):
                t = window_sum(t, pair_axes(t, nd, dim), k, s, lo, out, alpha if dim == nd - 1 else 1.0)
            return t

        new = _affine_map(
            state, diagonal_sum, math.prod(self.kernel_size), self.W_std, self.b_std, self.parameterization
        )
        spatial = tuple(g[2] for g in geo)
        return state.replace(**new, var1=None, var2=None, spatial=spatial, width=self.width)
