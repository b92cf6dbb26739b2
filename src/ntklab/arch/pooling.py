"""Parameter-free spatial layers: AvgPool, GlobalAvgPool, Flatten, with their kernel maps.

Each infinite-width kernel map is linear in the position-pair arrays (neural-tangents 0.6.5
``stax.AvgPool``, ``stax.GlobalAvgPool``, ``stax.Flatten``) and applies alike to the NNGP, the
NTK and both self covariances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ntklab.arch.core import Layer, Shape
from ntklab.arch.kernel_ops import check_spatial, map_fields, pair_axes, window_sum
from ntklab.arch.padding import conv_out_shape, explicit_pads, normalize_tuple, pad_input, pads_1d
from ntklab.errors import ArchError
from ntklab.kernels.state import KernelState


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
        """Average pooling (``normalize_edges=False``: zero padding counts in the mean).

        ``K'[q, q'] = (1/prod(w)²) Σ_d Σ_d' K[s·q + d - lo, s·q' + d' - lo]``: the pooling
        matrix applied on both position indices (separately per axis);
        ``(..., *S, *S) -> (..., *S_out, *S_out)``.
        """
        nd = len(self.window)
        check_spatial("AvgPool", state, nd)
        geo = [pads_1d(n, k, s, self.padding) for n, k, s in zip(state.spatial, self.window, self.stride)]
        norm = 1.0 / math.prod(self.window) ** 2

        def pool(t: torch.Tensor) -> torch.Tensor:
            for dim, ((lo, _, out), k, s) in enumerate(zip(geo, self.window, self.stride)):
                a, b = pair_axes(t, nd, dim)
                t = window_sum(t, (a,), k, s, lo, out)
                t = window_sum(t, (b,), k, s, lo, out, norm if dim == nd - 1 else 1.0)
            return t

        new = map_fields(state, pool)
        spatial = tuple(g[2] for g in geo)
        return state.replace(**new, var1=None, var2=None, spatial=spatial)


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
        """Mean over all spatial positions: ``K'[a, b] = mean_{p, p'} K[a, b, p, p']``.

        ``(..., *S, *S) -> (...)``; ``width`` (channels) is unchanged.
        """
        nd = len(state.spatial)
        if nd == 0:
            raise ArchError(
                f"GlobalAvgPool kernel map takes (C, L) or (C, H, W) activations but got shape ({state.width},)."
            )
        new = map_fields(state, lambda t: t.mean(dim=tuple(range(-2 * nd, 0))))
        return state.replace(**new, var1=None, var2=None, spatial=())


@dataclass(frozen=True)
class Flatten(Layer):
    """(C, *spatial) -> (C · prod(spatial),); a no-op on (D,) inputs."""

    name = "Flatten"

    def out_shape(self, in_shape: Shape) -> Shape:
        return (math.prod(in_shape),)

    def module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return FlattenModule()

    def kernel_map(self, state: KernelState) -> KernelState:
        """``K'[a, b] = mean_p K[a, b, p, p]``: the mean of the position diagonal (independent
        of the flatten order); ``width`` becomes ``C · prod(S)``, the fan-in of the next Dense.
        No-op on (D,).
        """
        nd = len(state.spatial)
        if nd == 0:
            return state.replace(var1=None, var2=None)
        size = math.prod(state.spatial)

        def diag_mean(t: torch.Tensor) -> torch.Tensor:
            lead = t.shape[: t.ndim - 2 * nd]
            return t.reshape(*lead, size, size).diagonal(dim1=-2, dim2=-1).mean(-1)

        new = map_fields(state, diag_mean)
        return state.replace(**new, var1=None, var2=None, spatial=(), width=state.width * size)
