"""Where the eNTK goes: a float64 tensor on the device, or a float64 ``.npy`` memmap on disk.

A kernel too large for memory is written tile by tile to a standard ``.npy`` file, so
``numpy.load(path, mmap_mode="r")`` opens it anywhere without loading it.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap


def _release(mm: np.memmap) -> None:
    """Write dirty pages to disk and drop them from this process's resident memory.

    The pages stay in the OS page cache; without this, every page written counts toward the
    process's RSS until the memmap is closed.
    """
    mm.flush()
    raw = getattr(mm, "_mmap", None)
    if raw is not None and hasattr(mmap, "MADV_DONTNEED"):
        try:
            raw.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


class KernelSink:
    """Destination of a kernel of ``shape`` (n1, n2) or (n1, n2, C, C), written block by block.

    With ``path`` a ``.npy`` memmap whose written pages are flushed and dropped from memory
    every ``flush_bytes``, else a float64 tensor on ``device``.
    """

    def __init__(
        self, shape: tuple[int, ...], path: str | Path | None, device: torch.device, flush_bytes: int
    ) -> None:
        self.full = len(shape) == 4
        self.flush_bytes = max(1, flush_bytes)
        self.pending = 0
        self.mm = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.mm = open_memmap(Path(path), mode="w+", dtype=np.float64, shape=shape)
        self.t = torch.zeros(shape, dtype=torch.float64, device=device) if path is None else None

    def write(self, i0: int, i1: int, j0: int, j1: int, blk: torch.Tensor, mirror: bool) -> None:
        """K[i0:i1, j0:j1] = blk and, with ``mirror``, K[j0:j1, i0:i1] = blkᵀ (output axes
        swapped too for ``full``)."""
        tr = blk.permute(1, 0, 3, 2) if self.full else blk.T
        if self.mm is None:
            self.t[i0:i1, j0:j1] = blk
            if mirror:
                self.t[j0:j1, i0:i1] = tr
            return
        self.mm[i0:i1, j0:j1] = blk.cpu().numpy()
        if mirror:
            self.mm[j0:j1, i0:i1] = tr.cpu().numpy()
        self.pending += blk.numel() * 8 * (2 if mirror else 1)
        if self.pending >= self.flush_bytes:
            self.panel_done()

    def panel_done(self) -> None:
        """Flush the memmap's written pages and drop them from this process's memory."""
        if self.mm is not None:
            _release(self.mm)
            self.pending = 0

    def result(self) -> torch.Tensor | np.memmap:
        """The kernel: the tensor, or the flushed memmap."""
        if self.mm is None:
            return self.t
        self.mm.flush()
        return self.mm
