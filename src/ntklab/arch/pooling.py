"""Parameter-free spatial layers: AvgPool, GlobalAvgPool, Flatten."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ntklab.arch.core import Layer, Shape
from ntklab.arch.padding import conv_out_shape, explicit_pads, normalize_tuple, pad_input
from ntklab.errors import ArchError

if TYPE_CHECKING:
    from ntklab.kernels.infinite import KernelState


class AvgPoolModule(nn.Module):
    """Mean over each window of the zero-padded input (padding counted, as neural-tangents'
    ``normalize_edges=False``)."""

    def __init__(self, window: tuple[int, ...], stride: tuple[int, ...], pads: list[int]) -> None:
        super().__init__()
        self.window, self.stride, self.pads = window, stride, pads
        self.pool = F.avg_pool1d if len(window) == 1 else F.avg_pool2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(pad_input(x, self.pads), self.window, self.stride)


class GlobalAvgPoolModule(nn.Module):
    """(N, C, *spatial) -> (N, C): mean over all spatial positions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).mean(-1)


class FlattenModule(nn.Module):
    """(N, C, *spatial) -> (N, C · prod(spatial)), torch (channels-first) order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


@dataclass(frozen=True)
class AvgPool(Layer):
    """Average pooling over a ``window`` (1 or 2 spatial axes), ``VALID`` or ``SAME`` padding."""

    window: tuple[int, ...] = (2,)
    stride: tuple[int, ...] | None = None
    padding: Literal["SAME", "VALID"] = "VALID"
    name = "AvgPool"

    def __post_init__(self) -> None:
        w = normalize_tuple(self.window, None, "window")
        object.__setattr__(self, "window", w)
        stride = self.window if self.stride is None else self.stride
        object.__setattr__(self, "stride", normalize_tuple(stride, len(w), "stride"))

    def out_shape(self, in_shape: Shape) -> Shape:
        return (in_shape[0], *conv_out_shape(self.name, in_shape, self.window, self.stride, self.padding))

    def module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        self.out_shape(in_shape)
        return AvgPoolModule(
            self.window, self.stride, explicit_pads(in_shape[1:], self.window, self.stride, self.padding)
        )

    def kernel_map(self, state: KernelState) -> KernelState:
        from ntklab.kernels import infinite

        return infinite.avg_pool(state, self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": "AvgPool",
            "window": list(self.window),
            "stride": list(self.stride),
            "padding": self.padding,
        }


def _needs_spatial(name: str, in_shape: Shape) -> None:
    if len(in_shape) < 2:
        raise ArchError(f"{name} takes (C, L) or (C, H, W) inputs but got shape {in_shape}.")


@dataclass(frozen=True)
class GlobalAvgPool(Layer):
    """Mean over all spatial positions: (C, *spatial) -> (C,)."""

    name = "GlobalAvgPool"

    def out_shape(self, in_shape: Shape) -> Shape:
        _needs_spatial(self.name, in_shape)
        return (in_shape[0],)

    def module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        self.out_shape(in_shape)
        return GlobalAvgPoolModule()

    def kernel_map(self, state: KernelState) -> KernelState:
        from ntklab.kernels import infinite

        return infinite.global_avg_pool(state)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": "GlobalAvgPool"}


@dataclass(frozen=True)
class Flatten(Layer):
    """(C, *spatial) -> (C · prod(spatial),); a no-op on (D,) inputs."""

    name = "Flatten"

    def out_shape(self, in_shape: Shape) -> Shape:
        return (math.prod(in_shape),)

    def module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return FlattenModule()

    def kernel_map(self, state: KernelState) -> KernelState:
        from ntklab.kernels import infinite

        return infinite.flatten(state)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": "Flatten"}
