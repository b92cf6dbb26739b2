"""Tiles of the eNTK: index ranges, exactly symmetric diagonal blocks, reused buffers."""

from __future__ import annotations

import torch


def chunks(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    """``[(i, min(i + size, stop)) for i in range(start, stop, size)]``."""
    return [(i, min(i + size, stop)) for i in range(start, stop, size)]


def symmetrize(blk: torch.Tensor) -> torch.Tensor:
    """(B + Bᵀ)/2 of a diagonal block (exactly symmetric; ``full`` swaps the output axes too)."""
    return (blk + (blk.permute(1, 0, 3, 2) if blk.dim() == 4 else blk.T)) * 0.5


def workspace(
    ws: dict[str, torch.Tensor], name: str, numel: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """A flat buffer of ``numel`` elements from ``ws``, reallocated only when it grows."""
    buf = ws.get(name)
    if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
        buf = ws[name] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel]
