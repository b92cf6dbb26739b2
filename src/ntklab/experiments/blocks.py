"""Kernels of many points as independent blocks: which blocks, and their assembly.

A kernel on n training points is split into side-B spans [(0, B), (B, 2B), ..., (., n)]:
K(train, train) in the blocks on and above the diagonal, and K(val+test, train) in column
blocks, about n²/2B² + 3n/2B blocks. Each block is its own unit, so the blocks run on every
worker or Ray node side by side, and a killed run recomputes only the blocks it had not
stored. A block depends on its index ranges, not on n, so runs whose n differ share the blocks
they have in common.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ntklab.pcg import release


def spans(n: int, block: int) -> list[tuple[int, int]]:
    """[(0, b), (b, 2b), ..., (., n)]: the row/column blocks of n points."""
    return [(i, min(i + block, n)) for i in range(0, n, block)]


def block_args(n: int, block: int, cross: bool = True) -> list[tuple[dict[str, Any], str]]:
    """The arguments and label of every block of a kernel on n training points: first
    (``cross``) ``{"part": "cross", "cols": [c0, c1]}`` for K(val+test, train[c0:c1]), then
    ``{"part": "train", "cols": [c0, c1], "rows": [r0, r1]}`` for K(train[r0:r1], train[c0:c1])
    with c0 ≥ r0."""
    sp = spans(n, block)
    out = [({"part": "cross", "cols": list(c)}, f"eval x train[{c[0]}:{c[1]}]") for c in sp] if cross else []
    out += [
        ({"part": "train", "cols": list(c), "rows": list(r)}, f"train[{r[0]}:{r[1]}] x train[{c[0]}:{c[1]}]")
        for r in sp
        for c in sp
        if c[0] >= r[0]
    ]
    return out


def mirrored(b: np.ndarray) -> np.ndarray:
    """K(x2, x1) from a block K(x1, x2): (n1, n2) → (n2, n1), or (n1, n2, C, C) → (n2, n1, C, C)
    with the output axes swapped too."""
    return b.transpose(1, 0, 3, 2) if b.ndim == 4 else b.T


def assemble(
    parts: list[tuple[dict[str, Any], np.ndarray]], n: int, train: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """``{"train": (n, n, ...), "cross": (V+T, n, ...)}`` from blocks of :func:`block_args`
    (``"cross"`` only when there are cross blocks). ``train``: the array to fill (say a
    memory map), else a new one."""
    out: dict[str, np.ndarray] = {}
    for a, b in parts:
        (c0, c1) = a["cols"]
        if a["part"] == "cross":
            if "cross" not in out:
                out["cross"] = np.empty((b.shape[0], n, *b.shape[2:]), b.dtype)
            out["cross"][:, c0:c1] = b
            continue
        if train is None:
            train = np.empty((n, n, *b.shape[2:]), b.dtype)
        (r0, r1) = a["rows"]
        train[r0:r1, c0:c1] = b
        train[c0:c1, r0:r1] = mirrored(b)
    if train is not None:
        out["train"] = train
    return out


def kernel_file(folder: Path, keys: list[str], name: str = "") -> Path:
    """The file in ``folder`` that :func:`memmap_kernel` assembles from the blocks with unit
    ``keys`` (``name``: which kernel of the blocks)."""
    digest = hashlib.sha256("\n".join([name, *sorted(keys)]).encode()).hexdigest()[:24]
    return folder / f"{digest}.npy"


def memmap_kernel(
    folder: Path,
    blocks: list[tuple[dict[str, Any], str]],
    load: Callable[[str], np.ndarray],
    n: int,
    name: str = "",
) -> dict[str, np.ndarray]:
    """:func:`assemble` of ``blocks`` ((arguments of :func:`block_args`, unit key); ``load(key)``
    reads a block), with K(train, train) in a read-only memory-mapped ``.npy`` file in
    ``folder`` named by the blocks' unit keys and ``name`` (which kernel of the blocks), so that
    a kernel larger than memory is paged from disk by the regression.

    The file is written once, block by block (one block in memory at a time; to a temporary
    name, then renamed), and reused by every later analysis of the same blocks without reading
    them again. K(val+test, train) is assembled in memory.
    """
    path = kernel_file(folder, [k for _, k in blocks], name)
    cross = assemble([(a, load(k)) for a, k in blocks if a["part"] == "cross"], n)
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tmp-{path.stem}-{os.getpid()}.npy"
        mm = None
        for a, k in blocks:
            if a["part"] != "train":
                continue
            b = load(k)
            if mm is None:
                mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=b.dtype, shape=(n, n, *b.shape[2:]))
            assemble([(a, b)], n, mm)
            del b
            mm.flush()
            release(mm)  # written pages go to the file, not the process's resident memory
        if mm is None:
            raise ValueError("memmap_kernel needs at least one block of K(train, train)")
        mm.flush()
        del mm
        os.replace(tmp, path)
    return {**cross, "train": np.load(path, mmap_mode="r")}
