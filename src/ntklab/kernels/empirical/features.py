"""The engine of the ``jacobian`` and ``structured`` routes: features in panels, blocks in tiles.

Features of a sample are its Jacobian rows (b, C', P_jac) for the Jacobian-route layers and
the fallback parameters, and its Gram factors for the Gram-route layers
(:mod:`~ntklab.kernels.empirical.capture`). Features of a row panel of R samples are held
while column chunks of S samples stream past (R ≈ 2S: the panel is built once, each chunk
once per panel); when every feature fits, R = n1 and S = n2 and nothing is rebuilt. Blocks
are computed as float64 sub-tiles of at most u×u samples, the Jacobian part by
:meth:`Mode.contract <ntklab.kernels.empirical.mode.Mode.contract>` and each Gram-route layer
by :func:`~ntklab.kernels.empirical.structured.gram_accumulate`; with ``x2=None`` only
sub-tiles on or above the diagonal are computed (u ≈ n/16, at least 256: about 53 % of the
pairs for n ≥ 4096), diagonal ones symmetrized and the others mirrored. Sizes follow the
shares of :mod:`~ntklab.kernels.empirical.budget`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from ntklab.kernels.empirical.budget import (
    CAPTURE_SHARE,
    FEATURES_SHARE,
    GRAM_SHARE,
    OUTPUT_SHARE,
    RESIDENT_SHARE,
)
from ntklab.kernels.empirical.capture import Factors, capture_into, jacobian_layout
from ntklab.kernels.empirical.job import Job, sync
from ntklab.kernels.empirical.route import gram_bytes_per_sample, gram_matmul_flops_per_pair
from ntklab.kernels.empirical.structured import gram_accumulate
from ntklab.kernels.empirical.tiles import chunks, symmetrize, workspace
from ntklab.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class Features:
    """Per-sample features of a batch: ``jac`` (b, C', P_jac) and Gram-route ``factors``."""

    jac: torch.Tensor | None
    factors: dict[str, Factors]

    def __getitem__(self, sl: slice) -> Features:
        return Features(
            None if self.jac is None else self.jac[sl],
            {k: Factors(f.a[sl], f.d[sl]) for k, f in self.factors.items()},
        )


def run_features(job: Job) -> None:
    """Run ``job`` with each layer on its ``route`` (see the module docstring)."""
    plan, mode, budget, tile, sym = job.plan, job.mode, job.budget, job.tile, job.sym
    x1, x2, result, st = job.x1, job.x2, job.sink, job.stats
    V = mode.cotangents(next(iter(plan.params.values())))
    n_cot = mode.n_cot
    itemsize = torch.finfo(plan.dtype).bits // 8
    n1, n2 = len(x1), len(x2)
    gram = [lp for lp in plan.layers if lp.route == "gram"]
    jac = [lp for lp in plan.layers if lp.route != "gram"]
    layout = jacobian_layout(plan, jac)
    keep = itemsize * n_cot * layout.size + sum(gram_bytes_per_sample(lp, n_cot, itemsize) for lp in gram)
    keep = max(keep, 1)
    work = itemsize * (
        sum(2 * lp.T * (lp.K + 1 + n_cot * lp.O) for lp in plan.layers)
        + (3 + n_cot) * plan.act_numel
        + 3 * n_cot * plan.fallback_params
    )
    u_cap = max(1, int(math.isqrt(max(1, int(OUTPUT_SHARE * budget) // ((8 + itemsize) * mode.entries)))))
    if tile:
        R = S = u = int(tile)
    else:
        M = max(2, int(FEATURES_SHARE * budget) // keep)
        if n1 + (0 if sym else n2) <= (int(RESIDENT_SHARE * budget) // keep if sym else M):
            R, S = n1, n2  # every feature fits (symmetric: one panel, no column buffer)
        else:
            R = max(1, min(n1, 2 * M // 3))
            S = max(1, min(n2, M - R))
        # sub-tiles: large enough for efficient GEMMs, small enough that the symmetric case
        # skips most blocks below the diagonal
        u = min(u_cap, max(256, -(-n1 // 16)) if sym else 2048)
    m = max(1, min(R, int(CAPTURE_SHARE * budget) // max(1, work)))  # capture sub-batch
    gram_elems = max(1, int(GRAM_SHARE * budget) // (2 * itemsize))
    st.panel, st.chunk = R, S
    log.debug(
        "eNTK tiles: panel %d, column chunk %d, output sub-tile %d, capture batch %d; %.3f MiB features/sample",
        R,
        S,
        u,
        m,
        keep / 2**20,
    )
    kw = {"dtype": plan.dtype, "device": plan.device}
    j_panel = torch.empty(R, n_cot, layout.size, **kw) if layout.size else None
    j_chunk = None
    f_panel: dict[str, Factors] = {}
    f_chunk: dict[str, Factors] = {}
    jac_pair = 2.0 * mode.pair_rows * layout.size
    gram_pair = sum(gram_matmul_flops_per_pair(lp, mode) for lp in gram)

    def features(x: torch.Tensor, buf: torch.Tensor | None, fbuf: dict[str, Factors], cap: int) -> Features:
        """Features of x, captured in sub-batches of m written into reused buffers (``buf``
        for the Jacobian, ``fbuf`` for Gram factors, ``cap`` samples each)."""
        t0 = time.perf_counter()
        factors: dict[str, Factors] = {}
        for i0, i1 in chunks(0, len(x), m):
            part = capture_into(plan, x[i0:i1], V, gram, None if buf is None else buf[i0:i1], layout)
            if i1 - i0 == len(x):
                factors = part
                break
            for k, f in part.items():
                if k not in fbuf or fbuf[k].a.shape[1:] != f.a.shape[1:]:
                    fbuf[k] = Factors(f.a.new_empty(cap, *f.a.shape[1:]), f.d.new_empty(cap, *f.d.shape[1:]))
                fbuf[k].a[i0:i1] = f.a
                fbuf[k].d[i0:i1] = f.d
            del part
        if not factors:
            factors = {k: Factors(f.a[: len(x)], f.d[: len(x)]) for k, f in fbuf.items()}
        sync(plan.device)
        st.features_s += time.perf_counter() - t0
        return Features(None if buf is None else buf[: len(x)], factors)

    ws: dict[str, torch.Tensor] = {}  # reused buffers: output sub-tile, Gram temporaries

    def block(f1: Features, f2: Features, b1: int, b2: int) -> torch.Tensor:
        t0 = time.perf_counter()
        shape = mode.output_shape(b1, b2)
        acc = workspace(ws, "acc", math.prod(shape), torch.float64, plan.device).view(shape).zero_()
        if f1.jac is not None:
            mode.contract(acc, f1.jac, f2.jac)
        for lp in gram:
            gram_accumulate(acc, f1.factors[lp.name], f2.factors[lp.name], mode, gram_elems, ws)
        sync(plan.device)
        st.contract_s += time.perf_counter() - t0
        st.contract_flops += b1 * b2 * (jac_pair + gram_pair)
        st.tiles += 1
        return acc

    panels = chunks(0, n1, R)
    n_tiles = 0
    for p0, p1 in panels:
        rows = chunks(p0, p1, u)
        cols = [cu for c0, c1 in chunks(p1 if sym else 0, n2, S) for cu in chunks(c0, c1, u)]
        n_tiles += len(rows) * len(cols) + (len(rows) * (len(rows) + 1) // 2 if sym else 0)
    with progress_bar(total=n_tiles, desc="eNTK", enabled=job.progress and n_tiles > 1) as bar:
        for p0, p1 in panels:
            fp = features(x1[p0:p1], j_panel, f_panel, R)
            rows = chunks(p0, p1, u)
            if sym:
                for a, (i0, i1) in enumerate(rows):
                    for j0, j1 in rows[a:]:
                        blk = block(fp[i0 - p0 : i1 - p0], fp[j0 - p0 : j1 - p0], i1 - i0, j1 - j0)
                        if j0 == i0:  # exactly symmetric diagonal blocks
                            blk = symmetrize(blk)
                        result.write(i0, i1, j0, j1, blk, mirror=j0 != i0)
                        bar.update(1)
            for c0, c1 in chunks(p1 if sym else 0, n2, S):
                if layout.size and j_chunk is None:
                    j_chunk = torch.empty(min(S, n2), n_cot, layout.size, **kw)
                fc = features(x2[c0:c1], j_chunk, f_chunk, S)
                for i0, i1 in rows:
                    for j0, j1 in chunks(c0, c1, u):
                        blk = block(fp[i0 - p0 : i1 - p0], fc[j0 - c0 : j1 - c0], i1 - i0, j1 - j0)
                        result.write(i0, i1, j0, j1, blk, mirror=sym)
                        bar.update(1)
                del fc
            del fp
            result.panel_done()
