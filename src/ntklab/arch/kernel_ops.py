"""Operations on position-pair arrays shared by the layers' infinite-width kernel maps.

Arrays are in the blocked layout of :class:`~ntklab.kernels.state.KernelState`,
``(..., *S, *S)``; the Conv and AvgPool maps are built from :func:`window_sum` along one axis
or along a pair of axes (:func:`pair_axes`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ntklab.errors import ArchError
from ntklab.kernels.state import KernelState


def is_zero(t: torch.Tensor | None) -> bool:
    """True for the 0-dim zero that stands for an identically zero NTK."""
    return t is not None and t.ndim == 0


def check_spatial(name: str, state: KernelState, nd: int) -> None:
    """ArchError unless the activations have ``nd`` spatial axes (0: vectors)."""
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


def window_sum(
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


def pair_axes(t: torch.Tensor, nd: int, dim: int) -> tuple[int, int]:
    """Axes of spatial dim ``dim`` in the first and second position block of ``(..., *S, *S)``."""
    a = t.ndim - 2 * nd + dim
    return a, a + nd


def map_fields(
    state: KernelState, fn: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, torch.Tensor | None]:
    """Apply a linear position map ``fn`` to every tracked field (a 0-dim zero NTK stays)."""
    out: dict[str, torch.Tensor | None] = {}
    for name in ("nngp", "ntk", "cov1", "cov2"):
        t = getattr(state, name)
        out[name] = t if t is None or is_zero(t) else fn(t)
    if state.cov2 is state.cov1:  # x2 is x1: one self covariance
        out["cov2"] = out["cov1"]
    return out
