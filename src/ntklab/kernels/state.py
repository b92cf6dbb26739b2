"""The state of the infinite-width kernel recursion at one layer (:class:`KernelState`).

Position-pair arrays use the *blocked* layout: a kernel between inputs with spatial shape
``S = (L,)`` or ``(H, W)`` is stored as ``(..., *S, *S)``, i.e. ``K[a, b, h, w, h', w']`` is the
covariance of position ``(h, w)`` of input ``a`` with position ``(h', w')`` of input ``b``
(neural-tangents stores the same numbers interleaved, ``(..., H, H', W, W')``).

Every layer's kernel map (beside its module in :mod:`ntklab.arch`) takes a state and returns a
new one (``KernelState.replace``); no tensor of the input state is ever modified in place, so
states may share tensors. This module imports nothing else of ntklab.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KernelState:
    """Infinite-width kernels of the activations at one layer, for input batches x1 and x2.

    ``S`` below is ``spatial`` (``()`` for vectors, ``(L,)`` or ``(H, W)``); ``*S, *S`` is the
    position-pair block layout described in the module docstring. Any tensor field may be
    ``None`` when it is not tracked.

    Attributes
    ----------
    nngp : Tensor or None, (n1, n2, *S, *S)
        Cross covariance ``K(x1[a], x2[b])[p, p']`` of the pre-/post-activations.
    ntk : Tensor or None, (n1, n2, *S, *S), or a 0-dim zero
        Neural tangent kernel at the same positions. A 0-dim zero stands for NTK = 0 (the input
        layer, NTK_0 = 0) and broadcasts; ``None`` means the NTK is not computed.
    cov1 : Tensor or None, (n1, *S, *S)
        Self covariance ``K(x1[a], x1[a])[p, p']`` (the batch-diagonal of the x1×x1 kernel).
        Conv and AvgPool need the full position-position block to propagate it exactly.
    cov2 : Tensor or None, (n2, *S, *S)
        Same for x2.
    var1 : Tensor or None, (n1, *S)
        Optional precomputed ``diag(cov1)``: ``K(x1[a], x1[a])[p, p]``, what the
        nonlinearities read. Valid for the current layer's input only; every map resets it to
        ``None`` (a driver holding a per-layer cache sets it again before the next layer).
        When ``None`` it is read off ``cov1``.
    var2 : Tensor or None, (n2, *S)
        Same for x2.
    spatial : tuple of int
        Spatial shape ``S`` of the activations (torch order, without channels).
    width : int
        Finite number of channels (features for ``S = ()``) of the activations: the ``C_in``
        of the next Dense/Conv, whose ``standard``-parameterization NTK uses the finite fan-in.

    All tensors share one dtype and device (float64 for ``kernel_fn``'s default).

    Examples
    --------
    >>> import torch
    >>> from ntklab.arch import Relu
    >>> from ntklab.kernels.infinite import input_state
    >>> s = Relu().kernel_map(input_state(torch.randn(4, 3, 8), torch.randn(2, 3, 8)))
    >>> tuple(s.nngp.shape), tuple(s.cov1.shape), s.spatial, s.width
    ((4, 2, 8, 8), (4, 8, 8), (8,), 3)
    """

    nngp: torch.Tensor | None
    ntk: torch.Tensor | None
    cov1: torch.Tensor | None
    cov2: torch.Tensor | None
    spatial: tuple[int, ...]
    width: int
    var1: torch.Tensor | None = None
    var2: torch.Tensor | None = None

    def replace(self, **changes: object) -> KernelState:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def self_variance(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(var1, var2)``: the per-position variances, ``(n1, *S)`` and ``(n2, *S)``.

        Taken from ``var1``/``var2`` when set, else from the position diagonals
        ``cov[a, p, p]`` of ``cov1``/``cov2``.
        """
        v1, v2 = self.var1, self.var2
        if v1 is None and self.cov1 is not None:
            v1 = _diag(self.cov1, self.spatial)
        if v2 is None and self.cov2 is not None:
            v2 = _diag(self.cov2, self.spatial)
        return v1, v2


def _diag(cov: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """``(n, *S, *S) -> (n, *S)``: the position diagonal ``cov[a, p, p]``."""
    if not spatial:
        return cov
    n, size = cov.shape[0], math.prod(spatial)
    return cov.reshape(n, size, size).diagonal(dim1=1, dim2=2).reshape(n, *spatial)
