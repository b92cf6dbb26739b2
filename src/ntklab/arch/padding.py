"""Spatial bookkeeping shared by Conv and AvgPool: XLA ``SAME``/``VALID`` padding.

``VALID``: out = floor((in - k) / s) + 1, no padding.
``SAME``:  out = ceil(in / s); total = max((out - 1)·s + k - in, 0);
           pad_before = total // 2, pad_after = total - pad_before (zeros).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ntklab.errors import ArchError

Padding = str


def normalize_tuple(value: int | Sequence[int] | None, ndim: int | None, what: str) -> tuple[int, ...]:
    """Turn an int or a sequence into a tuple of positive ints (``None`` -> ones of length ndim)."""
    if value is None:
        return (1,) * (ndim or 1)
    tup = (int(value),) * (ndim or 1) if isinstance(value, int) else tuple(int(v) for v in value)
    if ndim is not None and len(tup) != ndim:
        raise ArchError(f"{what} must have {ndim} entries; got {list(tup)}.")
    if not tup or any(v < 1 for v in tup):
        raise ArchError(f"{what} must be positive integers; got {list(tup)}.")
    return tup


def pads_1d(size: int, k: int, s: int, padding: Padding) -> tuple[int, int, int]:
    """(pad_before, pad_after, out) along one axis."""
    if padding == "VALID":
        return 0, 0, (size - k) // s + 1
    if padding == "SAME":
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        return total // 2, total - total // 2, out
    raise ArchError(f"padding must be 'SAME' or 'VALID'; got {padding!r}.")


def conv_out_shape(
    name: str, in_shape: tuple[int, ...], k: tuple[int, ...], s: tuple[int, ...], padding: Padding
) -> tuple[int, ...]:
    """Spatial output shape of a windowed layer on input ``(C, *spatial)``."""
    nd = len(k)
    if len(in_shape) != nd + 1:
        want = "(C, L)" if nd == 1 else "(C, H, W)"
        raise ArchError(f"{name} with a {nd}-D window takes {want} inputs but got shape {in_shape}.")
    out = tuple(pads_1d(n, kk, ss, padding)[2] for n, kk, ss in zip(in_shape[1:], k, s))
    if any(o < 1 for o in out):
        raise ArchError(
            f"{name} window {list(k)} with {padding} padding does not fit input shape {in_shape}."
        )
    return out


def explicit_pads(spatial: Sequence[int], k: Sequence[int], s: Sequence[int], padding: Padding) -> list[int]:
    """Pads in ``F.pad`` order (last axis first): [left_W, right_W, top_H, bottom_H]."""
    pads: list[int] = []
    for n, kk, ss in reversed(list(zip(spatial, k, s))):
        lo, hi, _ = pads_1d(n, kk, ss, padding)
        pads += [lo, hi]
    return pads


def pad_input(x: torch.Tensor, pads: list[int]) -> torch.Tensor:
    """Zero-pad ``x`` (N, C, *spatial) with explicit pads (no-op when all zero)."""
    return F.pad(x, pads) if any(pads) else x
