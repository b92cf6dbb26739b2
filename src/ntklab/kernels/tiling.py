"""The eNTK engine: choose an implementation by cost, tile under a memory budget, write blocks.

Implementations (all exact, all accumulated in float64):

* ``jacobian`` — per-sample Jacobians contracted by one GEMM per tile
  (:mod:`ntklab.kernels.jacobian`);
* ``structured`` — the Gram route Σ_{t,t'} (a·a′)(δ·δ′) for every recognised affine layer,
  Jacobian contraction for the other parameters (:mod:`ntklab.kernels.structured`);
* ``ntvp`` — NTK-vector products, O(P) memory per basis vector (:mod:`ntklab.kernels.ntvp`);
* ``auto`` — per layer, the cheaper of the Gram and Jacobian routes by the flop estimates of
  :mod:`ntklab.kernels.structured` (reported as ``structured`` when any layer takes the Gram
  route, else ``jacobian``); ``ntvp`` only when two samples' features exceed the budget.

Tiling. Features (per-sample Jacobians and Gram factors) of a row panel of R samples are held
while column chunks of S samples stream past (R ≈ 2S: the panel is built once, each chunk
once per panel); when every feature fits, R = n1 and S = n2 and nothing is rebuilt. Blocks
are computed as float64 sub-tiles of at most u×u samples; with ``x2=None`` only sub-tiles
on or above the diagonal are computed (u ≈ n/16, at least 256: about 53 % of the pairs for
n ≥ 4096), diagonal ones symmetrized and the others mirrored. The budget is split ≈ 50 %
panel + column features, 25 % capture workspace (forward activations, C' backward passes,
unfolded patches), 10 % Gram temporaries, 10 % output sub-tiles.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ntklab.errors import ConfigError
from ntklab.kernels.capture import (
    Factors,
    LayerPlan,
    ModelPlan,
    build_plan,
    capture_into,
    cotangents,
    jacobian_layout,
    layer_summary,
    prepare_input,
)
from ntklab.kernels.jacobian import contract_into
from ntklab.kernels.modes import check_mode, output_shape
from ntklab.kernels.ntvp import ntvp_block, ntvp_chunk
from ntklab.kernels.precision import no_tf32
from ntklab.kernels.storage import open_kernel, release
from ntklab.kernels.structured import (
    ELEMENTWISE_FLOPS,
    gram_accumulate,
    gram_bytes_per_sample,
    gram_flops_per_pair,
    gram_matmul_flops_per_pair,
    jacobian_flops,
    workspace,
)
from ntklab.progress import progress_bar

log = logging.getLogger("ntklab.kernels.empirical")

IMPLEMENTATIONS = ("auto", "jacobian", "structured", "ntvp")

# Shares of the memory budget (the rest is headroom for the allocator and the input batch).
FEATURES_SHARE = 0.35  # row panel + column chunk of features
RESIDENT_SHARE = 0.55  # symmetric case: one panel holding every sample, no column buffer
CAPTURE_SHARE = 0.2  # forward activations, C' backward passes, unfolded patches
GRAM_SHARE = 0.08  # Gram-route temporaries
OUTPUT_SHARE = 0.08  # float64 output sub-tile and its float32 products
FLUSH_SHARE = 0.05  # memmap pages written before they are flushed and dropped


@dataclass
class Route:
    """The chosen implementation and its estimates.

    Attributes
    ----------
    implementation : {"jacobian", "structured", "ntvp"}
    gram : list of LayerPlan
        Layers on the Gram route (``structured`` only).
    flops : dict[str, float]
        Estimated flops of each implementation for the whole kernel.
    reason : str
        Why this implementation (logged at DEBUG).
    """

    implementation: str
    gram: list[LayerPlan]
    flops: dict[str, float]
    reason: str


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


@dataclass
class Stats:
    """Timings and counts of one run (filled when a ``stats`` dict is passed)."""

    implementation: str = ""
    features_s: float = 0.0
    contract_s: float = 0.0
    contract_flops: float = 0.0
    tiles: int = 0
    panel: int = 0
    chunk: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _pairs(n1: int, n2: int, sym: bool) -> float:
    return n1 * (n1 + 1) / 2 if sym else float(n1) * n2


#: Capture (forward + C' backward passes) runs well below GEMM speed (pooling, small convs).
CAPTURE_INEFFICIENCY = 3.0


def choose_route(
    plan: ModelPlan, mode: str, n_cot: int, n1: int, n2: int, sym: bool, budget: int, implementation: str
) -> Route:
    """Pick the implementation (and the Gram-route layers) from flop and memory estimates.

    The estimate of a plan counts the contraction (Gram or Jacobian, per layer, see
    :mod:`ntklab.kernels.structured`) over all computed pairs plus building features for
    every sample built, including the column chunks rebuilt once per row panel when the
    features do not all fit the budget. ``auto`` starts from the per-pair cheaper route of
    each layer and moves layers to the Gram route while that lowers the total.
    """
    C = plan.n_outputs
    itemsize = torch.finfo(plan.dtype).bits // 8
    pairs = _pairs(n1, n2, sym)
    fb_p = plan.fallback_params
    cc = C * C if mode == "full" else n_cot
    fwd = sum(2.0 * lp.T * lp.O * (lp.K if lp.kind == "affine" else 1) for lp in plan.layers) + 2.0 * fb_p
    capture = CAPTURE_INEFFICIENCY * fwd * (1 + n_cot) + (3.0 * n_cot * fwd if fb_p else 0.0)
    jac_pair = {lp.name: jacobian_flops(lp, mode, n_cot, C) for lp in plan.layers}
    gram_pair = {lp.name: gram_flops_per_pair(lp, mode, n_cot, C) for lp in plan.layers}

    def feat_bytes(gram: list[LayerPlan]) -> int:
        names = {lp.name for lp in gram}
        jac_p = fb_p + sum(lp.n_params for lp in plan.layers if lp.name not in names)
        return itemsize * n_cot * jac_p + sum(gram_bytes_per_sample(lp, n_cot, itemsize) for lp in gram)

    def built(gram: list[LayerPlan]) -> float:
        m = max(2, int(FEATURES_SHARE * budget) // max(1, feat_bytes(gram)))
        resident = int(RESIDENT_SHARE * budget) // max(1, feat_bytes(gram)) if sym else m
        if n1 + (0 if sym else n2) <= resident:
            return float(n1 + (0 if sym else n2))
        r = max(1, 2 * m // 3)
        return n1 + (n1 * n1 / (2 * r) if sym else n1 / r * n2)

    def total(gram: list[LayerPlan]) -> float:
        names = {lp.name for lp in gram}
        s = built(gram)
        f = pairs * 2.0 * cc * fb_p + s * capture
        if fb_p or len(names) < len(plan.layers):  # the Jacobian GEMM's own pass and buffers
            f += pairs * 2 * ELEMENTWISE_FLOPS * (C * C if mode == "full" else 1)
        for lp in plan.layers:
            if lp.name in names:
                f += pairs * gram_pair[lp.name]
            else:
                f += pairs * jac_pair[lp.name][0] + s * jac_pair[lp.name][1]
        return f

    all_gram = [lp for lp in plan.layers if lp.gram_ok]
    best = [lp for lp in all_gram if gram_pair[lp.name] < jac_pair[lp.name][0]]
    while True:  # greedy: move the layer that lowers the total most
        rest = [lp for lp in all_gram if lp not in best]
        trial = min(rest, key=lambda lp: total(best + [lp]), default=None)
        if trial is None or total(best + [trial]) >= total(best):
            break
        best.append(trial)
    best = [lp for lp in plan.layers if lp in best]
    flops = {
        "jacobian": total([]),
        "structured": total(all_gram),
        "auto": total(best),
        "ntvp": pairs * n_cot * 3.0 * fwd,
    }
    if implementation == "jacobian":
        return Route("jacobian", [], flops, "requested")
    if implementation == "structured":
        return Route("structured", all_gram, flops, "requested")
    if implementation == "ntvp":
        return Route("ntvp", [], flops, "requested")
    f = feat_bytes(best)
    if 4 * f > budget:
        return Route(
            "ntvp", [], flops, f"features of one sample take {f / 2**20:.1f} MiB, too many for the budget"
        )
    name = "structured" if best else "jacobian"
    why = (
        f"Gram route for {len(best)}/{len(plan.layers)} recognised layers is cheapest "
        f"({flops['auto'] / 1e9:.3g} GFLOP vs {flops['jacobian'] / 1e9:.3g} for Jacobian contraction)"
        if best
        else f"Jacobian contraction is cheapest ({flops['jacobian'] / 1e9:.3g} GFLOP)"
    )
    return Route(name, best, flops, why)


class _Output:
    """Destination of the kernel: a float64 tensor on the device, or a ``.npy`` memmap whose
    written pages are flushed and dropped from memory every ``flush_bytes``."""

    def __init__(
        self, shape: tuple[int, ...], path: str | Path | None, device: torch.device, flush_bytes: int
    ) -> None:
        self.full = len(shape) == 4
        self.flush_bytes = max(1, flush_bytes)
        self.pending = 0
        self.mm = None if path is None else open_kernel(path, shape)
        self.t = torch.zeros(shape, dtype=torch.float64, device=device) if path is None else None

    def write(self, i0: int, i1: int, j0: int, j1: int, blk: torch.Tensor, mirror: bool) -> None:
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
        if self.mm is not None:
            release(self.mm)
            self.pending = 0

    def result(self) -> torch.Tensor | np.memmap:
        if self.mm is None:
            return self.t
        self.mm.flush()
        return self.mm


def _symmetrize(blk: torch.Tensor) -> torch.Tensor:
    """(B + Bᵀ)/2 of a diagonal block (exactly symmetric; ``full`` swaps the output axes too)."""
    return (blk + (blk.permute(1, 0, 3, 2) if blk.dim() == 4 else blk.T)) * 0.5


def _chunks(a: int, b: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, b)) for i in range(a, b, size)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compute_ntk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    mode: str,
    output_index: int | None,
    *,
    params: Callable[[str, torch.Tensor], bool] | None,
    memory_budget_bytes: int,
    tile: int | None,
    progress: bool | None,
    implementation: str = "auto",
    out: str | Path | None = None,
    stats: dict[str, Any] | None = None,
) -> torch.Tensor | np.memmap:
    """The body of :func:`ntklab.kernels.empirical.empirical_ntk` (same arguments)."""
    if implementation not in IMPLEMENTATIONS:
        raise ConfigError(
            f"eNTK implementation must be one of {', '.join(IMPLEMENTATIONS)}; got {implementation!r}."
        )
    budget = int(memory_budget_bytes)
    if budget <= 0:
        raise ConfigError(f"memory_budget_bytes must be a positive integer; got {memory_budget_bytes!r}.")
    if tile is not None and int(tile) < 1:
        raise ConfigError(f"tile must be a positive integer; got {tile!r}.")
    if len(x1) == 0 or (x2 is not None and len(x2) == 0):
        raise ConfigError(
            f"eNTK inputs need at least one sample each; got x1 {tuple(x1.shape)}"
            + ("" if x2 is None else f" and x2 {tuple(x2.shape)}")
            + "."
        )
    st = Stats()
    with no_tf32():
        probe = x1[:3] if x2 is None or len(x1) >= 3 else torch.cat([x1, x2[: 3 - len(x1)].to(x1)])
        plan = build_plan(model, probe, params)
        check_mode(mode, output_index, plan.n_outputs)
        sym = x2 is None
        x1 = prepare_input(x1, plan.dtype, plan.device)
        x2 = x1 if sym else prepare_input(x2, plan.dtype, plan.device)
        n1, n2 = len(x1), len(x2)
        shape = output_shape(n1, n2, mode, plan.n_outputs)
        if out is None and 8 * math.prod(shape) > budget:
            log.warning(
                "the eNTK %s takes %.2f GiB in float64, more than memory_budget_bytes=%d; pass "
                "out='kernel.npy' to write it to disk tile by tile instead of holding it in memory.",
                shape,
                8 * math.prod(shape) / 2**30,
                budget,
            )
        V = cotangents(mode, output_index, plan.n_outputs, next(iter(plan.params.values())))
        n_cot = V.shape[0]
        route = choose_route(plan, mode, n_cot, n1, n2, sym, budget, implementation)
        for lp in plan.layers:
            lp.route = "gram" if any(lp is g for g in route.gram) else "jacobian"
        log.debug(
            "eNTK: %s (%s); C=%d P=%d (fallback %d), n1=%d n2=%d%s, mode=%s; estimates %s",
            route.implementation,
            route.reason,
            plan.n_outputs,
            plan.n_params,
            plan.fallback_params,
            n1,
            n2,
            " (symmetric)" if sym else "",
            mode,
            {k: f"{v / 1e9:.3g} GFLOP" for k, v in route.flops.items()},
        )
        for line in layer_summary(plan):
            log.debug("eNTK layer %s", line)
        st.implementation = route.implementation
        result = _Output(shape, out, plan.device, int(FLUSH_SHARE * budget))
        if route.implementation == "ntvp":
            _run_ntvp(plan, x1, x2, sym, mode, output_index, budget, tile, progress, result, st)
        else:
            _run_features(plan, route, x1, x2, sym, mode, V, budget, tile, progress, result, st)
        res = result.result()
    if stats is not None:
        stats.update(
            implementation=st.implementation,
            features_s=st.features_s,
            contract_s=st.contract_s,
            contract_flops=st.contract_flops,
            tiles=st.tiles,
            panel=st.panel,
            chunk=st.chunk,
            flops_estimate=route.flops,
            reason=route.reason,
            gram_layers=[lp.name for lp in route.gram],
            **st.extra,
        )
    return res


def _run_features(
    plan: ModelPlan,
    route: Route,
    x1: torch.Tensor,
    x2: torch.Tensor,
    sym: bool,
    mode: str,
    V: torch.Tensor,
    budget: int,
    tile: int | None,
    progress: bool | None,
    result: _Output,
    st: Stats,
) -> None:
    """Jacobian / structured engine: a resident row panel of features, streamed column chunks,
    float64 output sub-tiles."""
    C = plan.n_outputs
    n_cot = V.shape[0]
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
    cc = C * C if mode == "full" else 1
    u_cap = max(1, int(math.isqrt(max(1, int(OUTPUT_SHARE * budget) // ((8 + itemsize) * cc)))))
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
    if mode == "full":
        jac_pair = 2.0 * C * C * layout.size
    else:
        jac_pair = 2.0 * n_cot * layout.size
    gram_pair = sum(gram_matmul_flops_per_pair(lp, mode, n_cot, C) for lp in gram)

    def features(x: torch.Tensor, buf: torch.Tensor | None, fbuf: dict[str, Factors], cap: int) -> Features:
        """Features of x, captured in sub-batches of m written into reused buffers (``buf``
        for the Jacobian, ``fbuf`` for Gram factors, ``cap`` samples each)."""
        t0 = time.perf_counter()
        factors: dict[str, Factors] = {}
        for i0, i1 in _chunks(0, len(x), m):
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
        _sync(plan.device)
        st.features_s += time.perf_counter() - t0
        return Features(None if buf is None else buf[: len(x)], factors)

    ws: dict[str, torch.Tensor] = {}  # reused buffers: output sub-tile, Gram temporaries

    def block(f1: Features, f2: Features, b1: int, b2: int) -> torch.Tensor:
        t0 = time.perf_counter()
        shape = (b1, b2, C, C) if mode == "full" else (b1, b2)
        acc = workspace(ws, "acc", math.prod(shape), torch.float64, plan.device).view(shape).zero_()
        if f1.jac is not None:
            contract_into(acc, f1.jac, f2.jac, mode, C)
        for lp in gram:
            gram_accumulate(acc, lp, f1.factors[lp.name], f2.factors[lp.name], mode, C, gram_elems, ws)
        _sync(plan.device)
        st.contract_s += time.perf_counter() - t0
        st.contract_flops += b1 * b2 * (jac_pair + gram_pair)
        st.tiles += 1
        return acc

    panels = _chunks(0, n1, R)
    n_tiles = 0
    for p0, p1 in panels:
        rows = _chunks(p0, p1, u)
        cols = [cu for c0, c1 in _chunks(p1 if sym else 0, n2, S) for cu in _chunks(c0, c1, u)]
        n_tiles += len(rows) * len(cols) + (len(rows) * (len(rows) + 1) // 2 if sym else 0)
    with progress_bar(total=n_tiles, desc="eNTK", enabled=progress and n_tiles > 1) as bar:
        for p0, p1 in panels:
            fp = features(x1[p0:p1], j_panel, f_panel, R)
            rows = _chunks(p0, p1, u)
            if sym:
                for a, (i0, i1) in enumerate(rows):
                    for j0, j1 in rows[a:]:
                        blk = block(fp[i0 - p0 : i1 - p0], fp[j0 - p0 : j1 - p0], i1 - i0, j1 - j0)
                        if j0 == i0:  # exactly symmetric diagonal blocks
                            blk = _symmetrize(blk)
                        result.write(i0, i1, j0, j1, blk, mirror=j0 != i0)
                        bar.update(1)
            for c0, c1 in _chunks(p1 if sym else 0, n2, S):
                if layout.size and j_chunk is None:
                    j_chunk = torch.empty(min(S, n2), n_cot, layout.size, **kw)
                fc = features(x2[c0:c1], j_chunk, f_chunk, S)
                for i0, i1 in rows:
                    for j0, j1 in _chunks(c0, c1, u):
                        blk = block(fp[i0 - p0 : i1 - p0], fc[j0 - c0 : j1 - c0], i1 - i0, j1 - j0)
                        result.write(i0, i1, j0, j1, blk, mirror=sym)
                        bar.update(1)
                del fc
            del fp
            result.panel_done()


def _run_ntvp(
    plan: ModelPlan,
    x1: torch.Tensor,
    x2: torch.Tensor,
    sym: bool,
    mode: str,
    output_index: int | None,
    budget: int,
    tile: int | None,
    progress: bool | None,
    result: _Output,
    st: Stats,
) -> None:
    """NTK-vector products over S×S tiles (upper ones only when symmetric)."""
    itemsize = torch.finfo(plan.dtype).bits // 8
    C = plan.n_outputs
    per = itemsize * max(plan.act_numel, C) * 4
    S = (
        int(tile)
        if tile
        else max(1, min(max(len(x1), len(x2)), 256, int(math.isqrt(max(1, int(0.25 * budget) // per)))))
    )
    chunk = ntvp_chunk(plan, S, int(FEATURES_SHARE * budget))
    st.panel = st.chunk = S
    rows = _chunks(0, len(x1), S)
    cols = _chunks(0, len(x2), S)
    pairs = [(r, c) for r in rows for c in cols if not sym or c[0] >= r[0]]
    log.debug("eNTK ntvp: tile %d, %d basis vectors per vmap chunk, %d tiles", S, chunk, len(pairs))
    with progress_bar(total=len(pairs), desc="eNTK", enabled=progress and len(pairs) > 1) as bar:
        for (i0, i1), (j0, j1) in pairs:
            t0 = time.perf_counter()
            blk = ntvp_block(plan, x1[i0:i1], x2[j0:j1], mode, output_index, chunk)
            if sym and i0 == j0:
                blk = _symmetrize(blk)
            _sync(plan.device)
            st.contract_s += time.perf_counter() - t0
            st.tiles += 1
            result.write(i0, i1, j0, j1, blk, mirror=sym and j0 != i0)
            bar.update(1)
            if j1 == len(x2):
                result.panel_done()
