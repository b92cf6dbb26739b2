"""Kernels on disk: float64 ``.npy`` memmaps written tile by tile and read back in blocks.

A kernel too large for memory is written with :func:`open_kernel` (a standard ``.npy`` file,
so ``numpy.load(path, mmap_mode="r")`` opens it anywhere) and read back with
:func:`iter_row_blocks`, :func:`read_block` or :func:`kernel_matmul`, which never hold more
than one block of rows in memory.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap


def open_kernel(path: str | Path, shape: tuple[int, ...]) -> np.memmap:
    """Create (or overwrite) a float64 ``.npy`` memmap of ``shape`` for writing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return open_memmap(path, mode="w+", dtype=np.float64, shape=shape)


def release(mm: np.memmap) -> None:
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


def load_kernel(path: str | Path) -> np.memmap:
    """Open a kernel written by ``empirical_ntk(..., out=path)`` read-only, without loading it."""
    return np.load(Path(path), mmap_mode="r")


def iter_row_blocks(K: np.ndarray, rows: int = 4096) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(row slice, K[row slice])`` as in-memory float64 arrays of at most ``rows`` rows."""
    for i in range(0, K.shape[0], rows):
        sl = slice(i, min(i + rows, K.shape[0]))
        yield sl, np.array(K[sl], dtype=np.float64)


def read_block(K: np.ndarray, rows: slice | np.ndarray, cols: slice | np.ndarray) -> np.ndarray:
    """``K[rows][:, cols]`` as an in-memory float64 array (e.g. a train/train or test/train
    block for kernel ridge regression on nested subsets)."""
    return np.array(np.asarray(K[rows])[:, cols], dtype=np.float64)


def kernel_matmul(K: np.ndarray, B: np.ndarray, rows: int = 4096) -> np.ndarray:
    """``K @ B`` in float64, reading ``K`` (n1, n2) ``rows`` rows at a time (predictions
    ``K(X*, X) α`` of kernel ridge regression without loading K)."""
    B = np.asarray(B, dtype=np.float64)
    out = np.empty((K.shape[0], *B.shape[1:]), dtype=np.float64)
    for sl, blk in iter_row_blocks(K, rows):
        out[sl] = blk @ B
    return out
