"""Dense and Conv layers in ``ntk`` and ``standard`` parameterization (docs/design.md).

``ntk``:      W, b ~ N(0, 1);  y = (W_std / sqrt(fan_in)) · W x + b_std · b
``standard``: W ~ N(0, W_std² / fan_in), b ~ N(0, b_std²);  y = W x + b

``fan_in`` is the number of input features (Dense) or ``in_channels · prod(kernel_size)``
(Conv, counting zero padding as inputs, as neural-tangents does). ``b_std=None`` means no bias;
``b_std=0`` keeps a bias parameter that starts at zero (it contributes to the NTK in
``standard`` parameterization, exactly as in neural-tangents).

The torch modules declare ``entk_affine`` (``"dense"`` or ``"conv"``): the contract by which the
eNTK capture reads their per-sample gradients from layer inputs and output gradients (see
:mod:`ntklab.kernels.empirical.adapters`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ntklab.arch.core import Layer, Shape
from ntklab.arch.padding import conv_out_shape, explicit_pads, normalize_tuple, pad_input
from ntklab.errors import ArchError

if TYPE_CHECKING:
    from ntklab.kernels.infinite import KernelState

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
        from ntklab.kernels import infinite

        return infinite.dense(state, self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": "Dense",
            "width": self.width,
            "W_std": self.W_std,
            "b_std": self.b_std,
            "parameterization": self.parameterization,
        }


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
        from ntklab.kernels import infinite

        return infinite.conv(state, self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": "Conv",
            "width": self.width,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": self.padding,
            "W_std": self.W_std,
            "b_std": self.b_std,
            "parameterization": self.parameterization,
        }
