"""Memory and disk a run needs, checked before any work.

Kernel units hold their result (kernel blocks, float64 unless the unit stores another
``dtype``) in memory while they compute it and then store it; the network trainings' results
are a few numbers. Before a run trains anything, :func:`check_resources` estimates, from the
planned units' arguments:

* the largest result one unit holds in memory, which must fit ``kernel.memory_budget_mb``;
* the results still missing from the store, and the kernel files the analysis will assemble
  from blocks that do not exist yet, which together must fit the free disk of the store.

Either failure is one sentence with the figure the run needs. Units of an unknown function
count as small: the estimate covers the kernel units ntklab plans.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ntklab.errors import ResourceError
from ntklab.kernels.empirical.mode import Mode
from ntklab.run.store import Store
from ntklab.run.units import Unit

F64 = 8  # bytes per kernel entry unless a unit says its ``dtype``
HEADROOM = 16 * 2**20  # disk kept free beyond the estimate (manifests, failure records, the run folder)


@dataclass(frozen=True)
class Shape:
    """What a kernel's size depends on: evaluation rows (validation + test), outputs, mode."""

    eval_rows: int
    outputs: int
    mode: str

    @property
    def entry(self) -> int:
        """Bytes of one (x, x') entry: C×C blocks in ``full`` mode, else one float64."""
        return F64 * Mode(self.mode, self.outputs).entries


def _itemsize(args: dict[str, Any]) -> int:
    """Bytes per stored number of a unit: its ``dtype`` argument's, else float64's."""
    return np.dtype(args.get("dtype", "float64")).itemsize


def _n(args: dict[str, Any], name: str = "n") -> int:
    v = args.get(name)
    return int(v) if isinstance(v, int) else 0


def _entk(args: dict[str, Any], s: Shape) -> int:
    """K(train[:n], train[:n]) and K(val+test, train[:n])."""
    n = _n(args)
    return s.entry * (n * n + s.eval_rows * n)


def _probe(args: dict[str, Any], s: Shape) -> int:
    """K(train[:n], train[:n]) only."""
    return s.entry * _n(args) ** 2


def _span(v: Any) -> int:
    return int(v[1]) - int(v[0]) if isinstance(v, (list, tuple)) and len(v) == 2 else 0


def _pairs(args: dict[str, Any], s: Shape) -> int:
    """Pairs of one kernel block: train[rows] x train[cols], or val+test x train[cols]."""
    cols = _span(args.get("cols"))
    rows = s.eval_rows if args.get("part") == "cross" else _span(args.get("rows") or args.get("cols"))
    return rows * cols


def _infinite(args: dict[str, Any], s: Shape) -> int:
    """NNGP and NTK blocks (one number per pair, whatever the mode)."""
    return 2 * _itemsize(args) * _pairs(args, s)


def _entk_block(args: dict[str, Any], s: Shape) -> int:
    """One eNTK block."""
    return s.entry // F64 * _itemsize(args) * _pairs(args, s)


def _checkpoint(args: dict[str, Any], s: Shape) -> int:
    """train (N, N), cross (V+T, N) and probe_test (P, P) blocks at one checkpoint."""
    n, p = _n(args, "n_train"), _n(args, "probe_test")
    return s.entry * (n * n + s.eval_rows * n + p * p)


ESTIMATES: dict[str, Callable[[dict[str, Any], Shape], int]] = {
    "ntklab.experiments.units:entk_at_init": _entk,
    "ntklab.experiments.after_kernel:after_kernel": _entk,
    "ntklab.experiments.width_scaling:entk_probe": _probe,
    "ntklab.experiments.units:infinite_block": _infinite,
    "ntklab.experiments.units:entk_block": _entk_block,
    "ntklab.experiments.evolution_units:kernels_at_checkpoint": _checkpoint,
}


def result_bytes(unit: Unit, shape: Shape) -> int:
    """Estimated bytes of ``unit``'s result (0 for units that are not kernels)."""
    fn = ESTIMATES.get(unit.fn)
    return fn(unit.args, shape) if fn is not None else 0


def free_bytes(path: Path) -> int:
    """Free bytes for this user on the filesystem of ``path`` (or its nearest existing parent)."""
    p = path.resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def human(nbytes: float) -> str:
    """``1.5 GiB``, ``320 MiB``."""
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.1f} GiB"
    return f"{max(1, math.ceil(nbytes / 2**20))} MiB"


def check_resources(
    units: Sequence[Unit],
    shape: Shape,
    store: Store,
    budget_mb: int,
    free: Callable[[Path], int] = free_bytes,
    files: Sequence[tuple[Path, int]] = (),
) -> dict[str, int]:
    """Raise :class:`~ntklab.errors.ResourceError` if the run's kernels cannot fit the memory
    budget or the store's free disk; returns the figures (bytes) otherwise. ``files``: (path,
    bytes) of the kernel files the analysis assembles in the store; those not there yet count
    against its disk too."""
    sizes = {u.key: (u, result_bytes(u, shape)) for u in units}
    biggest, largest = max(sizes.values(), key=lambda p: p[1], default=(None, 0))
    if biggest is not None and largest > budget_mb * 2**20:
        need_mb = math.ceil(largest / 2**20)
        raise ResourceError(
            f"unit {biggest.label or biggest.key} holds a {human(largest)} kernel in memory, more than "
            f"kernel.memory_budget_mb = {budget_mb}; set kernel.memory_budget_mb to at least {need_mb} "
            "or lower data.n_max."
        )
    missing = sum(b for u, b in sizes.values() if b and not store.has(u.key))
    assembled = sum(b for f, b in files if not f.exists())
    if missing + assembled:
        have = free(store.root)
        if missing + assembled + HEADROOM > have:
            what = f"{human(missing)} of results"
            if assembled:
                what += f", {human(assembled)} of assembled kernel files"
            raise ResourceError(
                f"this run needs {human(missing + assembled + HEADROOM)} of disk for its kernels in "
                f"{store.root} ({what} and {human(HEADROOM)} to spare), but only {human(have)} "
                "is free there; free some space or point NTKLAB_CACHE_DIR at a larger disk."
            )
    return {"largest_result": largest, "store_needs": missing, "assembled_needs": assembled}
