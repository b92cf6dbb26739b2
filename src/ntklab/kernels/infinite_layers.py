"""Per-layer infinite-width kernel maps (NNGP / NTK), following neural-tangents' ``stax``.

Every map takes a :class:`KernelState` and returns a new one (``dataclasses.replace``); no
tensor of the input state is ever modified in place, so states may share tensors.

Position-pair arrays use the *blocked* layout: a kernel between inputs with spatial shape
``S = (L,)`` or ``(H, W)`` is stored as ``(..., *S, *S)``, i.e. ``K[a, b, h, w, h', w']`` is the
covariance of position ``(h, w)`` of input ``a`` with position ``(h', w')`` of input ``b``
(neural-tangents stores the same numbers interleaved, ``(..., H, H', W, W')``).

Conventions (neural-tangents 0.6.5, Novak et al. 2020, arXiv:1912.02803; docs/design.md):

* ``ntk`` parameterization, Dense/Conv with ``A`` the (diagonal) window average::

      NNGP_out = W_std² · A(NNGP_in) + b_std²
      NTK_out  = NNGP_out + W_std² · A(NTK_in)

* ``standard`` parameterization (Sohl-Dickstein et al. 2020, arXiv:2001.07301), with
  ``fan_in = C_in · prod(kernel_size)`` the *finite* fan-in and ``[bias] = 1`` when the layer
  has a bias (``b_std is not None``, even ``b_std == 0``)::

      NNGP_out = W_std² · A(NNGP_in) + b_std²
      NTK_out  = fan_in · A(NNGP_in) + W_std² · A(NTK_in) + [bias]

* pointwise nonlinearities map ``NNGP -> E[φ(u) φ(v)]`` and ``NTK -> NTK · E[φ'(u) φ'(v)]``
  with ``(u, v)`` Gaussian of covariance ``[[k11, k12], [k12, k22]]``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ntklab.arch.padding import pads_1d
from ntklab.errors import ArchError

if TYPE_CHECKING:
    from ntklab.arch.linear import Conv, Dense
    from ntklab.arch.pooling import AvgPool

__all__ = [
    "KernelState",
    "avg_pool",
    "conv",
    "dense",
    "erf",
    "flatten",
    "global_avg_pool",
    "identity",
    "relu",
    "self_variance",
]


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
    >>> from ntklab.kernels.infinite import input_state, relu
    >>> s = relu(input_state(torch.randn(4, 3, 8), torch.randn(2, 3, 8)))
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


# ----------------------------------------------------------------------------- helpers


def _diag(cov: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """``(n, *S, *S) -> (n, *S)``: the position diagonal ``cov[a, p, p]``."""
    if not spatial:
        return cov
    n, size = cov.shape[0], math.prod(spatial)
    return cov.reshape(n, size, size).diagonal(dim1=1, dim2=2).reshape(n, *spatial)


def self_variance(state: KernelState) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(var1, var2)``: the per-position variances, ``(n1, *S)`` and ``(n2, *S)``.

    Taken from ``state.var1``/``var2`` when set, else from the diagonals of ``cov1``/``cov2``.
    """
    v1, v2 = state.var1, state.var2
    if v1 is None and state.cov1 is not None:
        v1 = _diag(state.cov1, state.spatial)
    if v2 is None and state.cov2 is not None:
        v2 = _diag(state.cov2, state.spatial)
    return v1, v2


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """A 0-dim tensor ``value`` of ``like``'s dtype and device (broadcasts in fused ops)."""
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def _is_zero(t: torch.Tensor | None) -> bool:
    """True for the 0-dim zero that stands for an identically zero NTK."""
    return t is not None and t.ndim == 0


def _check_spatial(name: str, state: KernelState, nd: int) -> None:
    if len(state.spatial) != nd:
        want = "(D,)" if nd == 0 else ("(C, L)" if nd == 1 else "(C, H, W)")
        got = (state.width, *state.spatial)
        raise ArchError(f"{name} kernel map takes {want} activations but got shape {got}.")


def _index(ndim: int, where: dict[int, slice]) -> tuple[slice, ...]:
    """A full-rank index tuple: ``where[axis]`` on the given axes, ``:`` elsewhere."""
    return tuple(where.get(i, slice(None)) for i in range(ndim))


def _valid_range(size: int, s: int, lo: int, out: int, d: int) -> tuple[int, int]:
    """Output positions ``q`` whose tap ``s·q + d - lo`` falls inside ``[0, size)``."""
    q_lo = max(0, -((d - lo) // s))
    q_hi = min(out, (size - 1 - d + lo) // s + 1)
    return q_lo, q_hi


def _window_sum(
    k_arr: torch.Tensor, axes: tuple[int, ...], k: int, s: int, lo: int, out: int, alpha: float = 1.0
) -> torch.Tensor:
    """Zero-padded strided window sum along ``axes`` with the *same* offset, times ``alpha``.

    With one axis this is sum pooling along it, ``y[q] = α Σ_d x[s·q + d - lo]``; with a pair
    of axes ``(a, b)`` it is the diagonal convolution of a position-position kernel,
    ``y[q, q'] = α Σ_d x[s·q + d - lo, s·q' + d - lo]`` (taps outside the input are zeros).
    Cost: ``k`` strided (fused multiply-)adds over the output; returns a new tensor.
    """
    size = k_arr.shape[axes[0]]
    shape = list(k_arr.shape)
    for a in axes:
        shape[a] = out
    taps = []
    for d in range(k):
        q_lo, q_hi = _valid_range(size, s, lo, out, d)
        if q_hi > q_lo:
            i_lo = s * q_lo + d - lo
            src = _index(k_arr.ndim, {a: slice(i_lo, i_lo + s * (q_hi - q_lo - 1) + 1, s) for a in axes})
            taps.append((q_lo, q_hi, src))
    # Start from a tap that covers the whole output (the centre one for SAME) to skip zeroing.
    full = [t for t in taps if t[0] == 0 and t[1] == out]
    if full:
        res = torch.mul(k_arr[full[0][2]], alpha)
        taps.remove(full[0])
    else:
        res = k_arr.new_zeros(shape)
    for q_lo, q_hi, src in taps:
        res[_index(k_arr.ndim, {a: slice(q_lo, q_hi) for a in axes})].add_(k_arr[src], alpha=alpha)
    return res


def _pair_axes(t: torch.Tensor, nd: int, dim: int) -> tuple[int, int]:
    """Axes of spatial dim ``dim`` in the first and second position block of ``(..., *S, *S)``."""
    a = t.ndim - 2 * nd + dim
    return a, a + nd


def _map_fields(state: KernelState, fn) -> dict[str, torch.Tensor | None]:
    """Apply a linear position map ``fn`` to every tracked field (a 0-dim zero NTK stays)."""
    out: dict[str, torch.Tensor | None] = {}
    for name in ("nngp", "ntk", "cov1", "cov2"):
        t = getattr(state, name)
        out[name] = t if t is None or _is_zero(t) else fn(t)
    if state.cov2 is state.cov1:  # x2 is x1: one self covariance
        out["cov2"] = out["cov1"]
    return out


# ----------------------------------------------------------------------------- linear layers


def _affine(
    state: KernelState,
    window_sum,
    taps: int,
    W_std: float,
    b_std: float | None,
    parameterization: str,
) -> dict[str, torch.Tensor | None]:
    """Shared Dense/Conv update given ``window_sum(t, α) = α Σ_d t`` (a new tensor; A = Σ_d / taps)."""
    w2 = float(W_std) ** 2
    b2 = 0.0 if b_std is None else float(b_std) ** 2
    scale = w2 / taps

    def cov_map(t: torch.Tensor) -> torch.Tensor:
        s = window_sum(t, scale)
        return s.add_(b2) if b2 else s

    out: dict[str, torch.Tensor | None] = {"nngp": None, "ntk": state.ntk}
    ntk_in = state.ntk
    if state.nngp is not None and parameterization == "ntk":
        # NNGP' = W² A(K) + b²;  NTK' = NNGP' + W² A(Θ)
        nngp = cov_map(state.nngp)
        out["nngp"] = nngp
        if ntk_in is not None:
            out["ntk"] = nngp if _is_zero(ntk_in) else window_sum(ntk_in, scale).add_(nngp)
    elif state.nngp is not None:
        # NNGP' = W² A(K) + b²;  NTK' = fan_in A(K) + W² A(Θ) + [bias], fan_in·A = C_in·Σ_d
        sk = window_sum(state.nngp, 1.0)
        nngp = sk * scale
        out["nngp"] = nngp.add_(b2) if b2 else nngp
        if ntk_in is not None:
            ntk = sk.mul_(state.width)
            if not _is_zero(ntk_in):
                ntk.add_(window_sum(ntk_in, scale))
            out["ntk"] = ntk.add_(1.0) if b_std is not None else ntk
    out["cov1"] = None if state.cov1 is None else cov_map(state.cov1)
    if state.cov2 is state.cov1:  # x2 is x1: one self covariance
        out["cov2"] = out["cov1"]
    else:
        out["cov2"] = None if state.cov2 is None else cov_map(state.cov2)
    return out


def dense(state: KernelState, layer: Dense) -> KernelState:
    """Fully connected layer on (D,) activations.

    ``ntk``: ``NNGP' = W_std² K + b_std²``, ``NTK' = NNGP' + W_std² Θ``;
    ``standard``: ``NTK' = D · K + W_std² Θ + [bias]`` with ``D = state.width`` the finite input
    width (neural-tangents ``stax.Dense``). Shapes are unchanged: (n1, n2), (n1,), (n2,).
    """
    _check_spatial("Dense", state, 0)
    new = _affine(state, torch.mul, 1, layer.W_std, layer.b_std, layer.parameterization)
    return state.replace(**new, var1=None, var2=None, width=layer.width)


def conv(state: KernelState, layer: Conv) -> KernelState:
    """Convolution (1D or 2D, any kernel size and stride, XLA ``SAME`` or ``VALID`` padding).

    With ``A(K)[q, q'] = (1/prod(k)) Σ_d K[s·q + d - lo, s·q' + d - lo]`` (the same filter
    offset ``d`` on both positions; zeros outside the input, ``lo`` the XLA low pad), the map
    of :func:`dense` holds with ``K, Θ`` replaced by ``A(K), A(Θ)`` and ``D`` by
    ``fan_in = C_in · prod(k)`` (neural-tangents ``stax.Conv``, Novak et al. 2019
    arXiv:1810.05148; Arora et al. 2019 CNTK). ``A`` factorizes over spatial dims and is
    computed as ``k`` strided adds per dim. Shapes ``(..., *S, *S) -> (..., *S_out, *S_out)``.
    """
    nd = len(layer.kernel_size)
    _check_spatial("Conv", state, nd)
    geo = [pads_1d(n, k, s, layer.padding) for n, k, s in zip(state.spatial, layer.kernel_size, layer.stride)]

    def window_sum(t: torch.Tensor, alpha: float) -> torch.Tensor:
        for dim, ((lo, _, out), k, s) in enumerate(zip(geo, layer.kernel_size, layer.stride)):
            t = _window_sum(t, _pair_axes(t, nd, dim), k, s, lo, out, alpha if dim == nd - 1 else 1.0)
        return t

    new = _affine(
        state, window_sum, math.prod(layer.kernel_size), layer.W_std, layer.b_std, layer.parameterization
    )
    spatial = tuple(g[2] for g in geo)
    return state.replace(**new, var1=None, var2=None, spatial=spatial, width=layer.width)


def avg_pool(state: KernelState, layer: AvgPool) -> KernelState:
    """Average pooling (``normalize_edges=False``: zero padding counts in the mean).

    ``K'[q, q'] = (1/prod(w)²) Σ_d Σ_d' K[s·q + d - lo, s·q' + d' - lo]``: the pooling matrix
    applied on both position indices (separately per axis). Applied to NNGP, NTK and both
    self covariances; ``(..., *S, *S) -> (..., *S_out, *S_out)``.
    """
    nd = len(layer.window)
    _check_spatial("AvgPool", state, nd)
    geo = [pads_1d(n, k, s, layer.padding) for n, k, s in zip(state.spatial, layer.window, layer.stride)]
    norm = 1.0 / math.prod(layer.window) ** 2

    def pool(t: torch.Tensor) -> torch.Tensor:
        for dim, ((lo, _, out), k, s) in enumerate(zip(geo, layer.window, layer.stride)):
            a, b = _pair_axes(t, nd, dim)
            t = _window_sum(t, (a,), k, s, lo, out)
            t = _window_sum(t, (b,), k, s, lo, out, norm if dim == nd - 1 else 1.0)
        return t

    new = _map_fields(state, pool)
    spatial = tuple(g[2] for g in geo)
    return state.replace(**new, var1=None, var2=None, spatial=spatial)


def global_avg_pool(state: KernelState) -> KernelState:
    """Mean over all spatial positions: ``K'[a, b] = mean_{p, p'} K[a, b, p, p']``.

    ``(..., *S, *S) -> (...)``; ``width`` (channels) is unchanged (``stax.GlobalAvgPool``).
    """
    nd = len(state.spatial)
    if nd == 0:
        raise ArchError(
            f"GlobalAvgPool kernel map takes (C, L) or (C, H, W) activations but got shape ({state.width},)."
        )
    new = _map_fields(state, lambda t: t.mean(dim=tuple(range(-2 * nd, 0))))
    return state.replace(**new, var1=None, var2=None, spatial=())


def flatten(state: KernelState) -> KernelState:
    """Flatten ``(C, *S) -> (C · prod(S),)``: ``K'[a, b] = mean_p K[a, b, p, p]``.

    The mean of the position diagonal (``stax.Flatten``; independent of the flatten order);
    ``width`` becomes ``C · prod(S)``, the fan-in of the next Dense. No-op on (D,).
    """
    nd = len(state.spatial)
    if nd == 0:
        return state.replace(var1=None, var2=None)
    size = math.prod(state.spatial)

    def diag_mean(t: torch.Tensor) -> torch.Tensor:
        lead = t.shape[: t.ndim - 2 * nd]
        return t.reshape(*lead, size, size).diagonal(dim1=-2, dim2=-1).mean(-1)

    new = _map_fields(state, diag_mean)
    return state.replace(**new, var1=None, var2=None, spatial=(), width=state.width * size)


# ----------------------------------------------------------------------------- nonlinearities


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


def _pointwise(state: KernelState, pair_fn, name: str) -> KernelState:
    """Apply ``pair_fn(K, Θ, left, right, exact) -> (K', Θ')`` to the cross and self kernels.

    ``exact`` when the variances are read off ``cov1``/``cov2`` (they travel with the state):
    then identical inputs give ``cos t == 1`` bit for bit. With cached ``var1``/``var2``
    (the off-diagonal tiles of :func:`ntklab.kernels.infinite.kernel_fn`) a cheaper form that
    differs in the last bits is used.
    """
    v1, v2 = self_variance(state)
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
    ntk_out = ntk if ntk is None or _is_zero(ntk) else ntk * u
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
    if ntk is not None and not _is_zero(ntk):
        # (4/π) / sqrt(a1 a2 - 4 k12²) = (4/π) r1 r2 / sqrt(1 - c²)
        d = (c * c).neg_().add_(1.0).rsqrt_().mul_(r1 * (4.0 / math.pi)).mul_(r2)
        ntk_out = d.mul_(ntk)
    nngp = c.arcsin_().mul_(2.0 / math.pi)
    return nngp, ntk_out


def relu(state: KernelState) -> KernelState:
    """ReLU: arc-cosine kernel of order 1 on NNGP, cov1, cov2; ``Θ' = Θ (π - t)/(2π)``.

    Needs ``K(x, x)[p, p]``, ``K(x', x')[p', p']`` (from ``var1``/``var2`` or the diagonals of
    ``cov1``/``cov2``) and ``K(x, x')[p, p']``; shapes unchanged. See :func:`_relu_pair`.
    """
    return _pointwise(state, _relu_pair, "Relu")


def erf(state: KernelState) -> KernelState:
    """``erf``: arcsine kernel on NNGP, cov1, cov2 and its derivative kernel on the NTK.

    Shapes unchanged. See :func:`_erf_pair`.
    """
    return _pointwise(state, _erf_pair, "Erf")


def identity(state: KernelState) -> KernelState:
    """Identity: kernels unchanged."""
    return state.replace(var1=None, var2=None)
