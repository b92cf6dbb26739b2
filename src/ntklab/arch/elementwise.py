"""Pointwise nonlinearities: Relu, Erf, Identity, with their infinite-width kernel maps.

A pointwise nonlinearity φ maps ``NNGP -> E[φ(u) φ(v)]`` and ``NTK -> NTK · E[φ'(u) φ'(v)]``
with ``(u, v)`` Gaussian of covariance ``[[k11, k12], [k12, k22]]`` (neural-tangents 0.6.5
``stax``): the arc-cosine kernel for ReLU, the arcsine kernel for erf. The cross kernels read
the self variances ``k11 = K(x, x)[p, p]``, ``k22 = K(x', x')[p', p']`` at every position pair.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ntklab.arch.core import Layer, Shape
from ntklab.arch.kernel_ops import is_zero
from ntklab.errors import ArchError
from ntklab.kernels.state import KernelState

#: ``(K, Θ, k11, k22, exact) -> (K', Θ')`` of one nonlinearity on broadcastable arrays.
PairMap = Callable[
    [torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, bool],
    tuple[torch.Tensor, torch.Tensor | None],
]


class ErfModule(nn.Module):
    """``y = erf(x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x)


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """A 0-dim tensor ``value`` of ``like``'s dtype and device (broadcasts in fused ops)."""
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def _sides(v1: torch.Tensor, v2: torch.Tensor, nd: int, pair: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcastable views of the variances at ``p`` (left) and ``p'`` (right).

    ``pair``: arrays ``(n1, n2, *S, *S)``; else self arrays ``(n, *S, *S)`` with ``v1 = v2``.
    """
    ones = (1,) * nd
    if pair:
        left = v1.reshape(v1.shape[0], 1, *v1.shape[1:], *ones)
        right = v2.reshape(1, v2.shape[0], *ones, *v2.shape[1:])
    else:
        left = v1.reshape(*v1.shape, *ones)
        right = v2.reshape(v2.shape[0], *ones, *v2.shape[1:])
    return left, right


def _pointwise(state: KernelState, pair_fn: PairMap, name: str) -> KernelState:
    """Apply ``pair_fn(K, Θ, left, right, exact) -> (K', Θ')`` to the cross and self kernels.

    ``exact`` when the variances are read off ``cov1``/``cov2`` (they travel with the state):
    then identical inputs give ``cos t == 1`` bit for bit. With cached ``var1``/``var2``
    (the off-diagonal tiles of :func:`ntklab.kernels.infinite.kernel_fn`) a cheaper form that
    differs in the last bits is used.
    """
    v1, v2 = state.self_variance()
    nd = len(state.spatial)
    new: dict[str, torch.Tensor | None] = {"nngp": None, "ntk": state.ntk, "cov1": None, "cov2": None}
    if state.nngp is not None:
        if v1 is None or v2 is None:
            raise ArchError(
                f"{name} kernel map needs the self variances (cov1/cov2 or var1/var2) of both inputs."
            )
        left, right = _sides(v1, v2, nd, pair=True)
        exact = state.var1 is None or state.var2 is None
        new["nngp"], new["ntk"] = pair_fn(state.nngp, state.ntk, left, right, exact)
    for side, v in (("cov1", v1), ("cov2", v2)):
        cov = getattr(state, side)
        if side == "cov2" and cov is state.cov1:  # x2 is x1: one self covariance
            new["cov2"] = new["cov1"]
        elif cov is not None:
            left, right = _sides(v, v, nd, pair=False)
            new[side], _ = pair_fn(cov, None, left, right, True)
    return state.replace(**new, var1=None, var2=None)


def _relu_pair(
    k12: torch.Tensor, ntk: torch.Tensor | None, k11: torch.Tensor, k22: torch.Tensor, exact: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Arc-cosine kernel of order 1 (Cho & Saul 2009; neural-tangents ``ABRelu(0, 1)``).

    ``cos t = k12 / sqrt(k11 k22)``;
    ``K' = (sqrt(k11 k22) sin t + (π - t) k12) / (2π)``; ``Θ' = Θ · (π - t) / (2π)``.
    """
    # Each step below is one pass over the (n1, n2, *S, *S) arrays (the map is memory bound).
    # exact: sqrt(k11 · k22) as neural-tangents computes it; for identical inputs at the same
    # position sqrt(fl(v²)) == v, so cos t == 1 and the NTK diagonal is exact (t = arccos
    # turns a 1-ulp error of cos into 1e-8). Else the outer product of the small sqrt(k11),
    # sqrt(k22) saves a full-size sqrt.
    norm = (k11 * k22).sqrt_() if exact else k11.sqrt() * k22.sqrt()
    if not (bool((k11 > 0).all()) and bool((k22 > 0).all())):
        norm.clamp_(min=torch.finfo(norm.dtype).tiny)  # k12 = 0 wherever a variance is 0
    c = torch.div(k12, norm).clamp_(-1.0, 1.0)
    t = torch.arccos(c)
    u = torch.add(_scalar(0.5, t), t, alpha=-1.0 / (2 * math.pi), out=t)  # (π - t) / (2π)
    ntk_out = ntk if ntk is None or is_zero(ntk) else ntk * u
    sin = torch.addcmul(_scalar(1.0, c), c, c, value=-1.0, out=c).sqrt_()  # sin t = √(1 - c²)
    nngp = (u * k12).addcmul_(sin, norm, value=1.0 / (2 * math.pi))
    return nngp, ntk_out


def _erf_pair(
    k12: torch.Tensor, ntk: torch.Tensor | None, k11: torch.Tensor, k22: torch.Tensor, exact: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Arcsine kernel of ``erf`` (Williams 1997; neural-tangents ``Erf(a=1, b=1, c=0)``).

    ``K' = (2/π) arcsin(2 k12 / sqrt((1 + 2 k11)(1 + 2 k22)))``;
    ``Θ' = Θ · (4/π) / sqrt((1 + 2 k11)(1 + 2 k22) - 4 k12²)``. (``exact`` is unused: the
    map is well conditioned, ``|2 k12| < sqrt((1 + 2 k11)(1 + 2 k22))``.)
    """
    r1 = (1.0 + 2.0 * k11).rsqrt()
    r2 = (1.0 + 2.0 * k22).rsqrt()
    c = (k12 * (2.0 * r1)).mul_(r2)
    ntk_out = ntk
    if ntk is not None and not is_zero(ntk):
        # (4/π) / sqrt(a1 a2 - 4 k12²) = (4/π) r1 r2 / sqrt(1 - c²)
        d = (c * c).neg_().add_(1.0).rsqrt_().mul_(r1 * (4.0 / math.pi)).mul_(r2)
        ntk_out = d.mul_(ntk)
    nngp = c.arcsin_().mul_(2.0 / math.pi)
    return nngp, ntk_out


@dataclass(frozen=True)
class _Pointwise(Layer):
    """A shape-preserving, parameter-free layer."""

    def out_shape(self, in_shape: Shape) -> Shape:
        return in_shape

    def kernel_map(self, state: KernelState) -> KernelState:
        """Kernels unchanged (the identity; Relu and Erf override it)."""
        return state.replace(var1=None, var2=None)


@dataclass(frozen=True)
class Relu(_Pointwise):
    """``max(x, 0)``."""

    name = "Relu"

    def module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return nn.ReLU()

    def kernel_map(self, state: KernelState) -> KernelState:
        """Arc-cosine kernel of order 1 on NNGP, cov1, cov2; ``Θ' = Θ (π - t)/(2π)``.

        Needs ``K(x, x)[p, p]``, ``K(x', x')[p', p']`` (from ``var1``/``var2`` or the diagonals
        of ``cov1``/``cov2``) and ``K(x, x')[p, p']``; shapes unchanged. See :func:`_relu_pair`.
        """
        return _pointwise(state, _relu_pair, "Relu")


@dataclass(frozen=True)
class Erf(_Pointwise):
    """``erf(x)``."""

    name = "Erf"

    def module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return ErfModule()

    def kernel_map(self, state: KernelState) -> KernelState:
        """Arcsine kernel on NNGP, cov1, cov2 and its derivative kernel on the NTK; shapes
        unchanged. See :func:`_erf_pair`."""
        return _pointwise(state, _erf_pair, "Erf")


@dataclass(frozen=True)
class Identity(_Pointwise):
    """``x``."""

    name = "Identity"

    def module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return nn.Identity()
