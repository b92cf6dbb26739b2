"""Pointwise nonlinearities: Relu, Erf, Identity.

Each is a stateless layer; its infinite-width kernel map is the closed-form Gaussian
expectation given in ``ntklab.kernels.infinite`` (arc-cosine kernel for ReLU, arcsine for erf).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ntklab.arch.core import Layer, Shape

if TYPE_CHECKING:
    from ntklab.kernels.infinite import KernelState


class ErfModule(nn.Module):
    """``y = erf(x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x)


@dataclass(frozen=True)
class _Pointwise(Layer):
    """A shape-preserving, parameter-free layer."""

    def out_shape(self, in_shape: Shape) -> Shape:
        return in_shape

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.name}

    def kernel_map(self, state: KernelState) -> KernelState:
        from ntklab.kernels import infinite

        return getattr(infinite, self.name.lower())(state)


@dataclass(frozen=True)
class Relu(_Pointwise):
    """``max(x, 0)``."""

    name = "Relu"

    def module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return nn.ReLU()


@dataclass(frozen=True)
class Erf(_Pointwise):
    """``erf(x)``."""

    name = "Erf"

    def module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return ErfModule()


@dataclass(frozen=True)
class Identity(_Pointwise):
    """``x``."""

    name = "Identity"

    def module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return nn.Identity()
