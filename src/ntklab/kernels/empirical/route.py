"""Route choice: which implementation computes the eNTK, from flop and memory estimates.

Implementations (all exact, all accumulated in float64):

* ``jacobian`` — per-sample Jacobians contracted by one GEMM per tile
  (:meth:`~ntklab.kernels.empirical.mode.Mode.contract`); 2·n1·n2·C'·P flops plus building
  the Jacobians, ≈ 2·b·C'·Σ_l T_l·O_l·K_l flops and C' backward passes;
* ``structured`` — the Gram route Σ_{t,t'} (a·a′)(δ·δ′) for every recognised affine layer
  (:mod:`~ntklab.kernels.empirical.structured`), 2·T²·(C'·O + K) flops per pair and layer,
  Jacobian contraction for the other parameters;
* ``ntvp`` — NTK-vector products (:mod:`~ntklab.kernels.empirical.ntvp`), ≈ 3·n1·n2·C'·F
  flops with F the forward flops of one sample, O(P) memory per basis vector;
* ``auto`` — per layer, the cheaper of the Gram and Jacobian routes (reported as
  ``structured`` when any layer takes the Gram route, else ``jacobian``); ``ntvp`` only when
  one sample's features exceed a quarter of the budget.

C' is the mode's cotangent rows and C² replaces it for ``full``
(:class:`~ntklab.kernels.empirical.mode.Mode`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ntklab.kernels.empirical.budget import FEATURES_SHARE, RESIDENT_SHARE
from ntklab.kernels.empirical.mode import Mode
from ntklab.kernels.empirical.plan import LayerPlan, ModelPlan

IMPLEMENTATIONS = ("auto", "jacobian", "structured", "ntvp")

#: Cost of one pass over a Gram product entry, in flop-equivalents (memory bound on CPU).
ELEMENTWISE_FLOPS = 32.0


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


def _k_eff(lp: LayerPlan) -> int:
    """Columns of the Gram-route input factor: K (weight) + 1 (bias)."""
    return (lp.K if lp.weight else 0) + (1 if lp.bias else 0)


def gram_flops_per_pair(lp: LayerPlan, mode: Mode) -> float:
    """Estimated flops of the Gram route for one pair of samples:
    T²·(2·(C'·O + K') + passes over the products), C' → C² for ``full``."""
    t2 = lp.T * lp.T
    k = _k_eff(lp)
    if mode.full:
        return t2 * (2.0 * (mode.entries * lp.O + k) + ELEMENTWISE_FLOPS * (2 * mode.entries + 4))
    # T = 1: one pass (product into the float64 sum); T > 1: two Gram outputs written and read
    # back, product, two reductions — about six passes over the T² entries
    return t2 * (2.0 * (mode.n_cot * lp.O + k) + ELEMENTWISE_FLOPS * (1 if lp.T == 1 else 6))


def gram_matmul_flops_per_pair(lp: LayerPlan, mode: Mode) -> float:
    """Flops of the two Gram matrix products alone, per pair of samples."""
    return lp.T * lp.T * 2.0 * (mode.pair_rows * lp.O + _k_eff(lp))


def jacobian_flops(lp: LayerPlan, mode: Mode) -> tuple[float, float]:
    """(flops per pair to contract, flops per sample to build) the layer's per-sample Jacobian:
    2·C'·P_l (C² for ``full``) and 2·C'·T·O·K."""
    pair = 2.0 * mode.pair_rows * lp.n_params
    build = 2.0 * mode.n_cot * lp.T * lp.O * (lp.K if lp.kind == "affine" else 1)
    return pair, build


def gram_bytes_per_sample(lp: LayerPlan, n_cot: int, itemsize: int) -> int:
    """Bytes of the factors kept per sample for the Gram route: a (T, K') and d (T, C', O)."""
    return itemsize * lp.T * (_k_eff(lp) + n_cot * lp.O)


def _pairs(n1: int, n2: int, sym: bool) -> float:
    return n1 * (n1 + 1) / 2 if sym else float(n1) * n2


#: Capture (forward + C' backward passes) runs well below GEMM speed (pooling, small convs).
CAPTURE_INEFFICIENCY = 3.0


def choose_route(
    plan: ModelPlan, mode: Mode, n1: int, n2: int, sym: bool, budget: int, implementation: str
) -> Route:
    """Pick the implementation (and the Gram-route layers) from flop and memory estimates.

    The estimate of a plan counts the contraction (Gram or Jacobian, per layer, see the
    module docstring) over all computed pairs plus building features for every sample built,
    including the column chunks rebuilt once per row panel when the features do not all fit
    the budget. ``auto`` starts from the per-pair cheaper route of
    each layer and moves layers to the Gram route while that lowers the total.
    """
    n_cot = mode.n_cot
    itemsize = torch.finfo(plan.dtype).bits // 8
    pairs = _pairs(n1, n2, sym)
    fb_p = plan.fallback_params
    fwd = sum(2.0 * lp.T * lp.O * (lp.K if lp.kind == "affine" else 1) for lp in plan.layers) + 2.0 * fb_p
    capture = CAPTURE_INEFFICIENCY * fwd * (1 + n_cot) + (3.0 * n_cot * fwd if fb_p else 0.0)
    jac_pair = {lp.name: jacobian_flops(lp, mode) for lp in plan.layers}
    gram_pair = {lp.name: gram_flops_per_pair(lp, mode) for lp in plan.layers}

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
        f = pairs * 2.0 * mode.pair_rows * fb_p + s * capture
        if fb_p or len(names) < len(plan.layers):  # the Jacobian GEMM's own pass and buffers
            f += pairs * 2 * ELEMENTWISE_FLOPS * mode.entries
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
